"""The TFX pipeline's component ids (tests/pipeline/test_tfx_pipeline.py, test_kubeflow.py)."""

COMPONENTS = [
    "SequenceExampleGen",
    "ImportSchemaGen",
    "ImportSchemaGenRec",
    "ImportSchemaGenSearch",
    "StatisticsGen",
    "ExampleValidatorRec",
    "ExampleValidatorSearch",
    "AnomalyGate",
    "ImportSchemaGenTransform",
    "Transform",
    "Trainer",
    "SASRecTrainer",
    "LatestBlessedModelResolver",
    "RankingEvaluator",
    "Pusher",
]
