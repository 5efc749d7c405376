"""The TFX pipeline (pipeline/tfx_pipeline.py) end to end on the event-log fixture.

LocalDagRunner with SQLite ML Metadata in a temp dir, Beam in memory. One good run (with the
negative pool on, so the schema's optional `negative_pool` is exercised), a cached re-run,
and a run whose builder is broken on purpose, which the AnomalyGate must stop.
"""

import glob
import json
import os
import shutil
import types

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
import tensorflow_transform as tft
from helpers import FIXTURES
from helpers.pipeline import COMPONENTS
from ml_metadata.metadata_store import metadata_store
from tensorflow_metadata.proto.v0 import anomalies_pb2

from feature_specs import example_schema as fs
from feature_specs import tfmd_schema
from pipeline import beam_job, trainer_module
from pipeline import sequence_builder as sb
from pipeline.components import ranking_evaluator, validation
from pipeline.components import sequence_example_gen as seg
from pipeline.runners import local
from pipeline.tfx_pipeline import PipelineOptions
from unisar_tf.train.gate_options import GateOptions

pytestmark = pytest.mark.slow  # runs the TFX pipeline

EVENT_LOG_DIR = os.path.join(FIXTURES, "event_log")
IN_MEMORY = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]
# Small shapes (as tests/pipeline/test_data_job.py) and a pool of 3 negatives per training example.
BUILD_OPTIONS = {
    "num_train_negatives": 2,
    "num_eval_negatives": 3,
    "rec_len": 4,
    "search_len": 4,
    "query_len": 3,
    "train_negative_pool": 3,
}
SPLITS = ["train_rec", "train_search", "valid_rec", "valid_search", "test_rec", "test_search"]
# Hand-computed for the fixture (tests/fixtures/README.md, tests/pipeline/test_data_job.py).
EXAMPLES = {
    "train_rec": 1,
    "train_search": 1,
    "valid_rec": 2,
    "valid_search": 2,
    "test_rec": 3,
    "test_search": 3,
}
# A small model and one short epoch: the fixture has a handful of examples.
TRAIN_CONFIG = {
    "max_epochs": 1,
    "steps_per_epoch": 2,
    "config_overrides": {
        "batch_size": 4,
        "embedding_dim": 8,
        "raw_embedding_dim": 4,
        "feed_forward_dim": 8,
        "expert_units": 4,
        "tower_units": [8],
        "head_units": [8],
        "num_relevance_negatives": 4,
    },
}
# The fixture's 3 test lists of 4 candidates cannot tell a model from any baseline, so the
# good run blesses anything not 1.0 NDCG@10 below each comparator, with the noise test off
# (confidence 0); the gate itself is tested in tests/train/test_gate.py, and a run with an
# impossible margin (and the default noise test) must not push.
ALWAYS_BLESS = -1.0
NO_NOISE_TEST = {"confidence": 0.0}


def run_pipeline(
    root,
    enable_cache=True,
    name="unisar_test",
    min_improvement=ALWAYS_BLESS,
    train_config=None,
    gate_options=None,
):
    options = PipelineOptions(
        build_options=dict(BUILD_OPTIONS),
        train_config=train_config or TRAIN_CONFIG,
        # SASRec's own budget is up to 60 epochs; one short one is enough here.
        sasrec_max_epochs=(train_config or TRAIN_CONFIG)["max_epochs"],
        gate=GateOptions.from_legacy(
            min_improvement, NO_NOISE_TEST if gate_options is None else gate_options
        ),
    )
    return local.run(
        name,
        str(root / "pipeline"),
        EVENT_LOG_DIR,
        "event_log",
        str(root / "serving"),
        IN_MEMORY,
        str(root / "metadata.sqlite"),
        options,
        enable_cache=enable_cache,
    )


def store_of(root):
    return metadata_store.MetadataStore(local.metadata_config(str(root / "metadata.sqlite")))


def read_split(uri, split):
    files = sorted(glob.glob(os.path.join(uri, f"Split-{split}", "*")))
    assert files and all(os.path.getsize(path) > 0 for path in files), (split, files)
    return [
        tf.train.Example.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP")
    ]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfx")
    rows = run_pipeline(root)
    return root, rows


def test_every_component_completes(good_run):
    _, rows = good_run
    assert sorted(row["component"] for row in rows) == sorted(COMPONENTS)
    assert {row["component"]: row["state"] for row in rows} == {
        name: "COMPLETE" for name in COMPONENTS
    }
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
            # Raw ids (strings): Transform maps them.
            assert len(features[fs.CANDIDATE_ITEMS].bytes_list.value) == (
                3 if split.startswith("train") else 4
            )
    # The data job's other outputs sit next to the splits; the manifest points at the splits.
    manifest = beam_job.load_manifest(examples.uri)
    assert manifest["files"]["train/rec"] == "Split-train_rec/data-*.tfrecord.gz"
    assert manifest["beam_args"][:3] == IN_MEMORY  # the pipeline's beam_pipeline_args
    assert manifest["build_options"]["train_negative_pool"] == 3
    assert manifest["id_format"] == "raw"
    for name in ("schema.pbtxt", "vocab/items.txt", "vocab/item_clicks.tsv"):
        assert os.path.isfile(os.path.join(examples.uri, name)), name
    assert glob.glob(os.path.join(examples.uri, "rejected", "rejected-*.jsonl"))


def test_schema_imported_and_statistics_exist(good_run):
    root, _ = good_run
    store = store_of(root)
    schemas = {
        artifact.uri.split(os.sep)[-3]: artifact
        for artifact in store.get_artifacts_by_type("Schema")
        if "/Transform/" not in artifact.uri
    }  # (Transform's post-transform schema)
    assert sorted(schemas) == [
        "ImportSchemaGen",
        "ImportSchemaGenRec",
        "ImportSchemaGenSearch",
        "ImportSchemaGenTransform",
    ]
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
    full = tfmd_schema.build_schema(shapes, 3, 4, negative_pool=3, id_format="raw")
    for split in SPLITS:
        [path] = glob.glob(os.path.join(statistics.uri, f"Split-{split}", "*"))
        stats = tfdv.load_stats_binary(path)
        for environment in (tfmd_schema.ENV_REC, tfmd_schema.ENV_SEARCH):
            expected = tfdv.validate_statistics(stats, full, environment=environment)
            got = tfdv.validate_statistics(
                stats, validation.schema_for_environment(full, environment)
            )
            assert sorted(got.anomaly_info) == sorted(expected.anomaly_info), (split, environment)
            in_own_environment = split.endswith(f"_{environment.lower()}")
            assert (not got.anomaly_info) == in_own_environment, (split, environment)


def test_rerun_with_cache_reuses_every_execution_and_pushes_nothing_new(good_run):
    root, _ = good_run
    rows = run_pipeline(root)
    states = {row["component"]: row["state"] for row in rows}
    # Everything up to the model is reused; the resolver now finds the first run's blessed
    # model, so the evaluator runs again, sees the same model and does not re-bless it.
    judged = ("LatestBlessedModelResolver", "RankingEvaluator", "Pusher")
    assert states == {name: "COMPLETE" if name in judged else "CACHED" for name in COMPONENTS}
    assert len(store_of(root).get_artifacts_by_type("Examples")) == 1  # no new examples
    evaluator = next(row for row in rows if row["component"] == "RankingEvaluator")
    with open(os.path.join(evaluator["outputs"]["evaluation"][0], "metrics.json")) as handle:
        report = json.load(handle)
    assert not report["blessed"] and "already the last blessed model" in report["reason"]
    assert report["reasons"][0].endswith(
        "already the last blessed model; not blessed (or " "pushed) again"
    )
    assert report["baseline_model"] == report["candidate"]  # the same model
    assert len(_pushed_versions(root)) == 1


def _pushed_versions(root):
    base = root / "serving" / "unisar"
    return sorted(int(name) for name in os.listdir(base)) if base.is_dir() else []


def test_blessed_model_is_pushed_loads_and_scores(good_run):
    root, rows = good_run
    by_component = {row["component"]: row for row in rows}
    [blessing_uri] = by_component["RankingEvaluator"]["outputs"]["blessing"]
    assert os.path.exists(os.path.join(blessing_uri, "BLESSED"))
    [evaluation_uri] = by_component["RankingEvaluator"]["outputs"]["evaluation"]
    with open(os.path.join(evaluation_uri, "metrics.json")) as handle:
        report = json.load(handle)
    assert report["blessed"] and report["candidate"]["rec"]["examples"] == EXAMPLES["test_rec"]
    assert report["baseline_model"] is None and report["reasons"] == []  # a first run
    # The gate compared each task with random and every non-learned baseline, paired.
    assert {"popularity", "random"} <= set(report["baselines"])
    gate_rows = report["gate"]["rows"]
    for task in ("rec", "search"):
        compared = [row["comparator"] for row in gate_rows if row["task"] == task]
        assert compared[0] == "random" and len(compared) == len(set(compared))
        assert set(compared) == {
            name for name, per_task in report["baselines"].items() if task in per_task
        }
    # Every row passed, or (3 lists cannot tell much) its comparator scored at or below
    # random or popularity and was flagged, which neither passes nor refuses the model.
    assert all(
        (row["passed"] or row["comparator_failed"])
        and row["lists"] == EXAMPLES[f"test_{row['task']}"]
        and row["lower_bound"] is None
        for row in gate_rows
    )  # noise test off
    flagged = [row for row in gate_rows if row["comparator_failed"]]
    assert len(report["failed_comparators"]) == len(flagged)
    assert all(not row["failures"] for row in flagged)
    # The learned baseline (SASRecTrainer's SASRec) is scored on rec only, and gated against.
    assert set(report["baselines"]["SASRec"]) == {"rec"}
    assert report["baselines"]["SASRec"]["rec"]["examples"] == EXAMPLES["test_rec"]
    assert "SASRec" in [row["comparator"] for row in gate_rows if row["task"] == "rec"]
    [sasrec_model] = by_component["SASRecTrainer"]["outputs"]["model"]
    assert by_component["RankingEvaluator"]["inputs"]["learned_baseline"] == [sasrec_model]
    sasrec = tf.saved_model.load(os.path.join(sasrec_model, "Format-Serving"))
    assert set(sasrec.signatures) == {"recommend", "serving_default"}
    assert report["gate"]["settings"] == {
        "min_improvement": -1.0,
        "min_relative_improvement": 0.0,
        "confidence": 0.0,
        "bootstrap_samples": 1000,
        "seed": 0,
    }
    with open(os.path.join(evaluation_uri, "metrics.md")) as handle:
        markdown = handle.read()
    # The table: candidate, popularity, random, then the other baselines.
    order = [markdown.index(f"| {name} | rec |") for name in ("candidate", "popularity", "random")]
    assert order == sorted(order) and "| popularity | search |" in markdown
    assert all(
        f"| {name} | {task} |" in markdown
        for name, per_task in report["baselines"].items()
        for task in per_task
    )
    assert "| rec | random |" in markdown and "**BLESSED**" in markdown

    [version] = _pushed_versions(root)
    pushed = str(root / "serving" / "unisar" / str(version))
    assert by_component["Pusher"]["pushed_destination"] == pushed
    assert "pushed model: " + pushed in local.outcome_summary(rows)
    # The pushed export is the serving export: raw ids in, one score per candidate out.
    model = tf.saved_model.load(pushed)
    assert set(model.signatures) == {"recommend", "search", "serving_default"}
    # The served vocabulary is Transform's (an asset of the export, named as in the graph).
    vocabulary = open(os.path.join(pushed, "assets", "items")).read().split()
    [graph] = store_of(root).get_artifacts_by_type("TransformGraph")
    assert vocabulary == [
        w.decode() for w in tft.TFTransformOutput(graph.uri).vocabulary_by_name("items")
    ]
    scores = model.signatures["recommend"](
        user_id=tf.constant(["nobody"]),
        candidate_item_ids=tf.constant([vocabulary[:3]]),
        rec_history_item_ids=tf.constant([[vocabulary[3]]]),
        rec_history_timestamps=tf.constant([[1]], tf.int64),
        rec_history_length=tf.constant([1], tf.int64),
        search_history_queries=tf.constant([[""]]),
        search_history_clicked_item_ids=tf.constant([[[""]]]),
        search_history_timestamps=tf.constant([[0]], tf.int64),
        search_history_length=tf.constant([0], tf.int64),
    )["scores"].numpy()
    assert scores.shape == (1, 3) and ((scores > 0) & (scores < 1)).all()


def test_evaluator_report_and_gate_options():
    """The report's Markdown and the pipeline's gate parameters, without running anything
    (the rule itself: tests/train/test_gate.py)."""
    from pipeline import tfx_pipeline
    from unisar_tf.train import gate

    rows = {
        "rec": np.array([[0.9, 0.1, 0.2, 0.3]] * 4),
        "search": np.array([[0.1, 0.9, 0.8, 0.7]] * 4),
    }  # rank 1 on rec, rank 4 on search
    popularity = {
        "rec": np.array([[0.1, 0.9, 0.2, 0.3]] * 4),
        "search": np.array([[0.9, 0.1, 0.2, 0.3]] * 4),
    }
    decision = gate.decide(rows, {"popularity": popularity})
    metrics = ranking_evaluator.metrics_of(rows)
    report = {
        "split": "test",
        "candidates": 4,
        "candidate": metrics,
        "baseline_model": None,
        "baselines": {"popularity": ranking_evaluator.metrics_of(popularity)},
        "blessed": decision.blessed,
        "reason": decision.reason,
        "reasons": decision.reasons,
        "gate": decision.to_dict(),
    }
    markdown = ranking_evaluator.report_markdown(report)
    assert not decision.blessed and "**NOT BLESSED**:" in markdown
    assert [reason.split(":")[0] for reason in decision.reasons] == ["search", "search"]
    assert "- search: NDCG@10 0.4307 does not beat popularity 1.0000" in markdown
    assert "| search | popularity | 0.4307 | 1.0000 | -0.5693 |" in markdown
    assert ranking_evaluator.mean_score(metrics) == pytest.approx((1 + 0.4307) / 2, abs=1e-4)

    # The former helpers, deprecated (GateOptions: tests/pipeline/test_gate_options.py).
    with pytest.warns(DeprecationWarning):
        assert tfx_pipeline.evaluator_gate_options() == ranking_evaluator.GATE_DEFAULTS
        assert tfx_pipeline.evaluator_gate_options(0.01, {"confidence": 0.9, "seed": 3}) == dict(
            ranking_evaluator.GATE_DEFAULTS, min_improvement=0.01, confidence=0.9, seed=3
        )
        with pytest.raises(ValueError, match="confidense"):
            tfx_pipeline.evaluator_gate_options(0.0, {"confidense": 0.9})


def test_trainer_module_runs_in_isolation(good_run, tmp_path):
    """run_fn with the FnArgs the TFX Trainer would pass, outside any pipeline."""
    root, _ = good_run
    [examples] = store_of(root).get_artifacts_by_type("Examples")
    [graph] = store_of(root).get_artifacts_by_type("TransformGraph")
    fn_args = types.SimpleNamespace(
        train_files=[
            os.path.join(examples.uri, "Split-train_rec", "*"),
            os.path.join(examples.uri, "Split-train_search", "*"),
        ],
        eval_files=[os.path.join(examples.uri, "Split-valid_rec", "*")],
        model_run_dir=str(tmp_path / "run"),
        serving_model_dir=str(tmp_path / "serving"),
        transform_output=graph.uri,
        custom_config=dict(TRAIN_CONFIG),
    )
    assert trainer_module.examples_root(fn_args) == examples.uri
    trainer_module.run_fn(fn_args)
    assert os.path.isfile(tmp_path / "run" / "best.json")
    served = tf.saved_model.load(str(tmp_path / "serving"))
    assert set(served.signatures) == {"recommend", "search", "serving_default"}
    # serving_default reads the raw examples: the Transform graph is inside the export.
    records = [example.SerializeToString() for example in read_split(examples.uri, "test_rec")]
    scores = served.signatures["serving_default"](examples=tf.constant(records))["scores"]
    assert scores.shape == (EXAMPLES["test_rec"], 4)


def test_transform_analyzes_the_training_splits(good_run):
    """The vocabularies hold exactly the values of the training examples, and the Transform
    artifact is what the Trainer and the evaluator were given."""
    root, rows = good_run
    store = store_of(root)
    [examples] = store.get_artifacts_by_type("Examples")
    [graph] = store.get_artifacts_by_type("TransformGraph")
    output = tft.TFTransformOutput(graph.uri)
    seen = {"users": set(), "items": set(), "words": set()}
    for split in ("train_rec", "train_search"):
        for example in read_split(examples.uri, split):
            for name, feature in example.features.feature.items():
                if name in fs.ID_FEATURE_VOCABULARIES:
                    seen[fs.ID_FEATURE_VOCABULARIES[name]].update(
                        v for v in feature.bytes_list.value if v
                    )
    for kind, values in seen.items():
        assert set(output.vocabulary_by_name(kind)) == values, kind
    by_component = {row["component"]: row for row in rows}
    assert by_component["Trainer"]["inputs"]["transform_graph"] == [graph.uri]
    assert by_component["RankingEvaluator"]["inputs"]["transform_graph"] == [graph.uri]
    with pytest.raises(ValueError, match="Split-<name>"):
        trainer_module.examples_root(types.SimpleNamespace(train_files=["/data/train/*"]))


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
    assert (
        "split train_search, feature 'history_types' (ERROR; INT_TYPE_BIG_INT): "
        "Unexpectedly large value: 3."
    ) in message
    assert "split valid_rec, feature 'user_id' (ERROR; SCHEMA_MISSING_COLUMN)" in message
    assert "train_rec" not in message and "test_rec" not in message
    rows = local.executions_since(
        local.metadata_config(str(tmp_path / "metadata.sqlite")), "unisar_broken", 0
    )
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
        "Unexpectedly large value: 3."
    ]
    assert validation.describe_anomalies(
        "test_rec", anomalies_pb2.Anomalies(data_missing=True)
    ) == ["split test_rec: no data (empty split)"]


def test_build_options_are_checked_when_the_component_is_built():
    with pytest.raises(ValueError, match="max_user"):
        seg.SequenceExampleGen(
            data_root=EVENT_LOG_DIR, adapter="event_log", build_options={"max_user": 5}
        )
    with pytest.raises(ValueError, match="output"):
        seg.SequenceExampleGen(
            data_root=EVENT_LOG_DIR, adapter="event_log", build_options={"output": "/tmp/x"}
        )
    with pytest.raises(ValueError, match="train_negative_pool"):
        seg.SequenceExampleGen(
            data_root=EVENT_LOG_DIR, adapter="event_log", build_options={"train_negative_pool": 2}
        )  # < 4 negatives
    gen = seg.SequenceExampleGen(
        data_root=EVENT_LOG_DIR,
        adapter="event_log",
        build_options={"strict_holdout": True, "seed": 3},
    )
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


def test_a_model_that_misses_the_bar_is_not_pushed(good_run):
    """Same pipeline and ML Metadata as the good run, with a margin no model clears: the
    evaluator (now also comparing with the last blessed model) refuses, the Pusher skips."""
    root, _ = good_run
    rows = run_pipeline(
        root, min_improvement=1.0, train_config=dict(TRAIN_CONFIG, seed=1), gate_options={}
    )
    by_component = {row["component"]: row for row in rows}
    assert by_component["Trainer"]["state"] == "COMPLETE"  # a new model (another seed)
    assert by_component["RankingEvaluator"]["state"] == "COMPLETE"
    [blessing_uri] = by_component["RankingEvaluator"]["outputs"]["blessing"]
    assert os.path.exists(os.path.join(blessing_uri, "NOT_BLESSED"))
    [evaluation_uri] = by_component["RankingEvaluator"]["outputs"]["evaluation"]
    with open(os.path.join(evaluation_uri, "metrics.json")) as handle:
        report = json.load(handle)
    assert report["baseline_model"] is not None  # the first run's blessed model
    assert not report["blessed"]
    # No NDCG@10 difference exceeds 1.0: every comparison fails, each refusal says so; a
    # comparator at or below random or popularity on these 3 lists is flagged instead.
    all_rows = report["gate"]["rows"]
    assert {row["comparator"] for row in all_rows} >= {"random", "popularity", "last blessed"}
    assert not any(row["passed"] for row in all_rows)
    gate_rows = [row for row in all_rows if not row["comparator_failed"]]
    assert {row["comparator"] for row in gate_rows} >= {"random", "popularity"}
    assert all(
        f"difference {row['difference']:+.4f} <= 1.0" in row["failures"] for row in gate_rows
    )
    assert len(report["reasons"]) == len(gate_rows)
    assert len(report["failed_comparators"]) == len(all_rows) - len(gate_rows)
    assert all(
        "needs lower bound > 0 and difference > 1.0" in reason for reason in report["reasons"]
    )
    assert report["gate"]["settings"]["confidence"] == 0.95  # the default noise test
    assert by_component["Pusher"]["pushed_destination"] is None
    assert len(_pushed_versions(root)) == 1
    assert "pushed model: none this run" in local.outcome_summary(rows)
