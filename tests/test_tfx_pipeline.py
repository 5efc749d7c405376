"""The TFX pipeline (pipeline/tfx_pipeline.py) end to end on the event-log fixture.

LocalDagRunner with SQLite ML Metadata in a temp dir, Beam in memory. One good run (with the
negative pool on, so the schema's optional `negative_pool` is exercised), a cached re-run,
and a run whose builder is broken on purpose, which the AnomalyGate must stop.
"""
import glob
import json
import os
import shutil

import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from ml_metadata.metadata_store import metadata_store
from tensorflow_metadata.proto.v0 import anomalies_pb2

from feature_specs import example_schema as fs
from feature_specs import tfmd_schema
from pipeline import beam_job
from pipeline import sequence_builder as sb
from pipeline.components import sequence_example_gen as seg
from pipeline.components import validation
from pipeline.runners import local

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
EVENT_LOG_DIR = os.path.join(FIXTURES, "event_log")
IN_MEMORY = ["--runner=DirectRunner", "--direct_num_workers=1",
             "--direct_running_mode=in_memory"]
# Small shapes (as tests/test_data_job.py) and a pool of 3 negatives per training example.
BUILD_OPTIONS = {"num_train_negatives": 2, "num_eval_negatives": 3, "rec_len": 4,
                 "search_len": 4, "query_len": 3, "train_negative_pool": 3}
SPLITS = ["train_rec", "train_search", "valid_rec", "valid_search", "test_rec", "test_search"]
# Hand-computed for the fixture (tests/fixtures/README.md, tests/test_data_job.py).
EXAMPLES = {"train_rec": 1, "train_search": 1, "valid_rec": 2, "valid_search": 2,
            "test_rec": 3, "test_search": 3}
COMPONENTS = ["SequenceExampleGen", "ImportSchemaGen", "ImportSchemaGenRec",
              "ImportSchemaGenSearch", "StatisticsGen", "ExampleValidatorRec",
              "ExampleValidatorSearch", "AnomalyGate"]


def run_pipeline(root, enable_cache=True, name="unisar_test"):
    return local.run(name, str(root / "pipeline"), EVENT_LOG_DIR, "event_log",
                     str(root / "serving"), IN_MEMORY, str(root / "metadata.sqlite"),
                     dict(BUILD_OPTIONS), enable_cache=enable_cache)


def store_of(root):
    return metadata_store.MetadataStore(local.metadata_config(str(root / "metadata.sqlite")))


def read_split(uri, split):
    files = sorted(glob.glob(os.path.join(uri, f"Split-{split}", "*")))
    assert files and all(os.path.getsize(path) > 0 for path in files), (split, files)
    return [tf.train.Example.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfx")
    rows = run_pipeline(root)
    return root, rows


def test_every_component_completes(good_run):
    _, rows = good_run
    assert sorted(row["component"] for row in rows) == sorted(COMPONENTS)
    assert {row["component"]: row["state"] for row in rows} == {
        name: "COMPLETE" for name in COMPONENTS}
    assert all(row["seconds"] >= 0 for row in rows)


def test_examples_artifact_has_six_splits_and_the_job_outputs(good_run):
    root, _ = good_run
    [examples] = store_of(root).get_artifacts_by_type("Examples")
    assert json.loads(examples.properties["split_names"].string_value) == SPLITS
    custom = examples.custom_properties
    assert custom["payload_format"].string_value == "FORMAT_TF_EXAMPLE"
    assert custom["file_format"].string_value == "tfrecords_gzip"
    assert {split: custom[f"examples_{split}"].int_value for split in SPLITS} == EXAMPLES
    assert custom["examples_total"].int_value == 12
    assert custom["rejected_total"].int_value == 8  # one planted bad row per reason
    assert custom["rejected_missing_user_id"].int_value == 1
    assert custom["vocab_items"].int_value == 14
    assert custom["input_fingerprint"].string_value
    for split in SPLITS:
        records = read_split(examples.uri, split)
        assert len(records) == EXAMPLES[split]
        for example in records:
            features = example.features.feature
            assert (fs.QUERY_TOKENS in features) == split.endswith("_search")
            assert (fs.NEGATIVE_POOL in features) == split.startswith("train")
            assert len(features[fs.CANDIDATE_ITEMS].int64_list.value) == (
                3 if split.startswith("train") else 4)
    # The data job's other outputs sit next to the splits; the manifest points at the splits.
    manifest = beam_job.load_manifest(examples.uri)
    assert manifest["files"]["train/rec"] == "Split-train_rec/data-*.tfrecord.gz"
    assert manifest["beam_args"][:3] == IN_MEMORY  # the pipeline's beam_pipeline_args
    assert manifest["build_options"]["train_negative_pool"] == 3
    for name in ("schema.pbtxt", "vocab/items.txt", "vocab/item_clicks.tsv"):
        assert os.path.isfile(os.path.join(examples.uri, name)), name
    assert glob.glob(os.path.join(examples.uri, "rejected", "rejected-*.jsonl"))


def test_schema_imported_and_statistics_exist(good_run):
    root, _ = good_run
    store = store_of(root)
    schemas = {artifact.uri.split(os.sep)[-3]: artifact
               for artifact in store.get_artifacts_by_type("Schema")}
    assert sorted(schemas) == ["ImportSchemaGen", "ImportSchemaGenRec", "ImportSchemaGenSearch"]
    full = tfdv.load_schema_text(os.path.join(schemas["ImportSchemaGen"].uri, "schema.pbtxt"))
    [examples] = store.get_artifacts_by_type("Examples")
    # The imported schema is the one the data job wrote for the same options.
    assert full == tfdv.load_schema_text(os.path.join(examples.uri, "schema.pbtxt"))
    rec = tfdv.load_schema_text(os.path.join(schemas["ImportSchemaGenRec"].uri, "schema.pbtxt"))
    assert fs.QUERY_TOKENS not in {f.name for f in rec.feature}
    assert fs.NEGATIVE_POOL in {f.name for f in rec.feature}

    [statistics] = store.get_artifacts_by_type("ExampleStatistics")
    assert json.loads(statistics.properties["split_names"].string_value) == SPLITS
    for split in SPLITS:
        [path] = glob.glob(os.path.join(statistics.uri, f"Split-{split}", "*"))
        stats = tfdv.load_stats_binary(path)
        assert stats.datasets[0].num_examples == EXAMPLES[split]
    # Both validators found nothing: every split matches its environment's view.
    anomalies = store.get_artifacts_by_type("ExampleAnomalies")
    assert len(anomalies) == 2
    assert validation.anomaly_report(_as_tfx_artifacts(anomalies)) == []


def _as_tfx_artifacts(mlmd_artifacts):
    from tfx.types import standard_artifacts

    result = []
    for mlmd_artifact in mlmd_artifacts:
        artifact = standard_artifacts.ExampleAnomalies()
        artifact.set_mlmd_artifact(mlmd_artifact)
        result.append(artifact)
    return result


def test_environment_views_validate_like_tfdv_environments(good_run):
    """A rec split against the SEARCH view (and the reverse) gives TFDV's environment result:
    the views reproduce `validate_statistics(..., environment=...)` on the full schema."""
    root, _ = good_run
    store = store_of(root)
    [statistics] = store.get_artifacts_by_type("ExampleStatistics")
    shapes = fs.SequenceShapes(rec_len=4, search_len=4, query_len=3, clicks_per_session=5)
    full = tfmd_schema.build_schema(shapes, 3, 4, negative_pool=3)
    for split in SPLITS:
        [path] = glob.glob(os.path.join(statistics.uri, f"Split-{split}", "*"))
        stats = tfdv.load_stats_binary(path)
        for environment in (tfmd_schema.ENV_REC, tfmd_schema.ENV_SEARCH):
            expected = tfdv.validate_statistics(stats, full, environment=environment)
            got = tfdv.validate_statistics(
                stats, validation.schema_for_environment(full, environment))
            assert sorted(got.anomaly_info) == sorted(expected.anomaly_info), (split, environment)
            in_own_environment = split.endswith(f"_{environment.lower()}")
            assert (not got.anomaly_info) == in_own_environment, (split, environment)


def test_rerun_with_cache_reuses_every_execution(good_run):
    root, _ = good_run
    rows = run_pipeline(root)
    assert {row["component"]: row["state"] for row in rows} == {
        name: "CACHED" for name in COMPONENTS}
    assert len(store_of(root).get_artifacts_by_type("Examples")) == 1  # no new examples


def _broken_builder(original):
    """A builder regression: train_search examples get history type 3 (unknown) and valid_rec
    examples lose user_id."""
    def build(*args, **kwargs):
        for split, scenario, record in original(*args, **kwargs):
            example = tf.train.Example.FromString(record)
            features = example.features.feature
            if (split, scenario) == (sb.SPLIT_TRAIN, "search"):
                features[fs.HISTORY_TYPES].int64_list.value[0] = 3
            if (split, scenario) == (sb.SPLIT_VALID, "rec"):
                del features[fs.USER_ID]
            yield split, scenario, example.SerializeToString()
    return build


def test_broken_column_stops_the_run_naming_split_and_feature(tmp_path, monkeypatch):
    # Beam runs in this process (in-memory DirectRunner), so the patched builder is used.
    monkeypatch.setattr(sb, "build_user_tf_examples", _broken_builder(sb.build_user_tf_examples))
    with pytest.raises(validation.AnomaliesFound) as raised:
        run_pipeline(tmp_path, enable_cache=False, name="unisar_broken")
    message = str(raised.value)
    assert ("split train_search, feature 'history_types' (ERROR; INT_TYPE_BIG_INT): "
            "Unexpectedly large value: 3.") in message
    assert "split valid_rec, feature 'user_id' (ERROR; SCHEMA_MISSING_COLUMN)" in message
    assert "train_rec" not in message and "test_rec" not in message
    rows = local.executions_since(local.metadata_config(str(tmp_path / "metadata.sqlite")),
                                  "unisar_broken", 0)
    states = {row["component"]: row["state"] for row in rows}
    assert states["ExampleValidatorRec"] == states["ExampleValidatorSearch"] == "COMPLETE"
    assert states["AnomalyGate"] == "FAILED"


def test_gate_message_lists_each_anomaly():
    anomalies = anomalies_pb2.Anomalies()
    info = anomalies.anomaly_info["history_types"]
    info.severity = anomalies_pb2.AnomalyInfo.ERROR
    info.description = "Unexpectedly large value: 3."
    info.reason.add(type=anomalies_pb2.AnomalyInfo.INT_TYPE_BIG_INT)
    anomalies.data_missing = False
    assert validation.describe_anomalies("train_search", anomalies) == [
        "split train_search, feature 'history_types' (ERROR; INT_TYPE_BIG_INT): "
        "Unexpectedly large value: 3."]
    assert validation.describe_anomalies("test_rec", anomalies_pb2.Anomalies(
        data_missing=True)) == ["split test_rec: no data (empty split)"]


def test_build_options_are_checked_when_the_component_is_built():
    with pytest.raises(ValueError, match="max_user"):
        seg.SequenceExampleGen(data_root=EVENT_LOG_DIR, adapter="event_log",
                               build_options={"max_user": 5})
    with pytest.raises(ValueError, match="output"):
        seg.SequenceExampleGen(data_root=EVENT_LOG_DIR, adapter="event_log",
                               build_options={"output": "/tmp/x"})
    with pytest.raises(ValueError, match="train_negative_pool"):
        seg.SequenceExampleGen(data_root=EVENT_LOG_DIR, adapter="event_log",
                               build_options={"train_negative_pool": 2})  # < 4 negatives
    gen = seg.SequenceExampleGen(data_root=EVENT_LOG_DIR, adapter="event_log",
                                 build_options={"strict_holdout": True, "seed": 3})
    assert gen.exec_properties["build_options"] == {"strict_holdout": True, "seed": 3}


def test_input_fingerprint_follows_the_raw_files(tmp_path):
    data = tmp_path / "logs"
    shutil.copytree(EVENT_LOG_DIR, data)
    args = seg.job_args("event_log", str(data), {}, output=str(tmp_path / "out"))
    assert args.events == [str(data / "*.csv")]  # the folder: its CSV files (no Parquet)
    before = seg.input_fingerprint(args)
    assert seg.input_fingerprint(args) == before
    with open(data / "events.csv", "a", encoding="utf-8") as handle:
        handle.write("rec,1,dave,,i1,9000,\n")
    assert seg.input_fingerprint(args) != before
