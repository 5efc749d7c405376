"""serving.profile_request: node names to components (the profile of a real export is in
test_serving_e2e, beside the export it reads)."""

from serving import profile_request as profile


def test_nodes_are_assigned_to_the_model_layer_or_the_serving_part_they_run_in():
    cases = {
        "StatefulPartitionedCall_8/StatefulPartitionedCall/uni_sar_model_1/experts/"
        "shared_experts/MatMul_1": "experts",
        "StatefulPartitionedCall/uni_sar_model/rec_fusion_0/GatherNd": "rec_fusion",
        "StatefulPartitionedCall/uni_sar_model/Sum_10": profile.MODEL_OTHER,
        "StatefulPartitionedCall/sas_rec_model/block_0/MatMul": "block",
        "StatefulPartitionedCall_8/StatefulPartitionedCall/transform_features_layer_2/"
        "StatefulPartitionedCall": profile.TRANSFORM,
        "apply_vocab_6/None_Lookup/LookupTableFindV2": profile.VOCABULARY,
        "_SOURCE": profile.EXECUTOR,
        "Func/StatefulPartitionedCall_8/input/_12": profile.EXECUTOR,
        "StatefulPartitionedCall_8/StatefulPartitionedCall/StringSplit": profile.GLUE,
    }
    assert {name: profile.component_of(name) for name in cases} == cases
