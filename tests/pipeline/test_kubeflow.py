"""The Kubeflow compile: one pipeline spec naming every component and the configured image,
the runner's options in the components' parameters, the pipeline's runtime parameters, an
offline compile for a gs:// root, and the Dockerfile that image is built from."""

import json
import os
import re
import socket
from importlib import metadata

import pytest
import tensorflow as tf
from google.protobuf import json_format
from helpers import REPO
from helpers.pipeline import COMPONENTS  # the same pipeline
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline.components import run_parameters
from pipeline.runners import kubeflow
from pipeline.tfx_pipeline import PipelineOptions
from unisar_tf.config import SASREC_MAX_EPOCHS
from unisar_tf.train.gate_options import GateOptions

pytestmark = pytest.mark.slow  # compiles the TFX pipeline

EVENT_LOG_DIR = os.path.join(REPO, "tests", "fixtures", "event_log")
IMAGE = "registry.example.com/unisar-tfx:1.2.3"
BEAM_ARGS = [
    "--runner=DataflowRunner",
    "--project=proj",
    "--region=europe-west4",
    "--temp_location=gs://bucket/tmp",
]


def _strings(node):
    """Every string anywhere in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def _compile(tmp_path, *options, pipeline_root=None):
    """kubeflow.main on the event-log fixture; (the spec as a dict, its pipelineSpec). The
    JSON must parse strictly (no unknown field) as the kfp-pipeline-spec PipelineJob."""
    output = tmp_path / "unisar_pipeline.json"
    kubeflow.main(
        [
            "--image",
            IMAGE,
            "--pipeline_root",
            pipeline_root or str(tmp_path / "root"),
            "--data_root",
            EVENT_LOG_DIR,
            "--adapter",
            "event_log",
            "--serving_dir",
            "gs://bucket/serving",
            "--output",
            str(output),
            "--schema_dir",
            str(tmp_path / "schemas"),
        ]
        + list(options)
    )
    spec = json.loads(output.read_text())
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineJob())  # raises on unknown fields
    return spec, spec["pipelineSpec"]


def _parameters(pipeline_spec, task):
    return pipeline_spec["root"]["dag"]["tasks"][task].get("inputs", {}).get("parameters", {})


def _constant(parameter):
    """A task parameter's compiled constant (JSON-decoded when it is a JSON string), from a
    2.1 spec (`constant`) or a 2.0 one (`constantValue: {intValue: "3"}`...)."""
    runtime_value = parameter["runtimeValue"]
    if "constant" in runtime_value:
        value = runtime_value["constant"]
    else:
        [value] = runtime_value["constantValue"].values()
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _defaults(spec):
    """The run parameters' defaults in runtimeConfig (2.1: parameterValues, numbers as
    floats; 2.0: parameters, int64 as strings), as {name: int or str}."""
    config = spec["runtimeConfig"]
    if "parameterValues" in config:
        return {
            name: int(value) if isinstance(value, float) else value
            for name, value in config["parameterValues"].items()
        }
    return {
        name: int(value) if kind == "intValue" else value
        for name, item in config["parameters"].items()
        for kind, value in item.items()
    }


def test_compiled_spec_names_every_component_the_image_and_the_beam_options(tmp_path):
    spec, pipeline_spec = _compile(tmp_path, *[f"--beam_arg={arg}" for arg in BEAM_ARGS])
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    # KFP v2 compiles the resolver into two tasks (blessings, then the blessed model).
    assert sorted(tasks) == sorted(
        [name for name in COMPONENTS if name != "LatestBlessedModelResolver"]
        + [
            "LatestBlessedModelResolver-model-blessing-resolver",
            "LatestBlessedModelResolver-model-resolver",
        ]
    )
    executors = pipeline_spec["deploymentSpec"]["executors"]
    images = {
        executor["container"]["image"] for executor in executors.values() if "container" in executor
    }
    assert images == {IMAGE}
    text = list(_strings(spec))
    for arg in BEAM_ARGS:  # Beam stages go where the options say, not where the code says
        assert any(arg in value for value in text), arg
    assert any("gs://bucket/serving/unisar" in value for value in text)  # the Pusher's target
    # Components run with the project's code from the image, not a packaged module file.
    assert any("pipeline.trainer_module.run_fn" in value for value in text)


def test_dockerfile_builds_on_the_pinned_tfx_image_with_legacy_keras():
    text = open(os.path.join(REPO, "Dockerfile")).read()
    [base] = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert base == f"tensorflow/tfx:{metadata.version('tfx')}"
    assert re.search(r"^ENV TF_USE_LEGACY_KERAS=1$", text, flags=re.M)
    for source in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, flags=re.M):
        for path in source.split():
            assert os.path.exists(os.path.join(REPO, path)), path
    # The extra packages are taken from the lock at their pinned versions.
    pinned = re.search(r"grep -E '\^\((.+?)\)==", text).group(1).split("|")
    lock = open(os.path.join(REPO, "requirements.lock")).read()
    for name in pinned:
        assert re.search(rf"^{re.escape(name)}==", lock, flags=re.M), name


def test_run_to_run_values_are_pipeline_parameters_with_the_options_as_defaults(tmp_path):
    spec, pipeline_spec = _compile(
        tmp_path,
        "--max_epochs",
        "3",
        "--train_option",
        "batch_size=64",
        "--train_option",
        "embedding_dim=16",
        "--preset",
        "paper",
        "--steps_per_epoch",
        "5",
        "--build_option",
        "seed=2",
        "--max_users",
        "7",
        "--min_improvement",
        "0.01",
        "--confidence",
        "0",
        "--bootstrap_samples",
        "10",
        "--gate_seed",
        "4",
    )
    defaults = {"data_root": EVENT_LOG_DIR, "max_epochs": 3, "batch_size": 64, "push": 1}
    assert pipeline_spec["schemaVersion"] == "2.1.0"
    # The spec itself declares them with their defaults (what the KFP client submits) ...
    assert pipeline_spec["root"]["inputDefinitions"]["parameters"] == {
        "data_root": {"parameterType": "STRING", "defaultValue": EVENT_LOG_DIR},
        "max_epochs": {"parameterType": "NUMBER_INTEGER", "defaultValue": 3},
        "batch_size": {"parameterType": "NUMBER_INTEGER", "defaultValue": 64},
        "push": {"parameterType": "NUMBER_INTEGER", "defaultValue": 1},
    }
    # ... and so does the job's runtimeConfig (what Vertex AI starts from).
    assert _defaults(spec) == defaults
    # The parameters reach the components...
    wired = {
        (task, name): parameter["componentInputParameter"]
        for task in pipeline_spec["root"]["dag"]["tasks"]
        for name, parameter in _parameters(pipeline_spec, task).items()
        if "componentInputParameter" in parameter
    }
    assert wired == {
        ("SequenceExampleGen", "data_root"): "data_root",
        ("Trainer", "max_epochs"): "max_epochs",
        ("Trainer", "batch_size"): "batch_size",
        ("Pusher", "push"): "push",
    }
    # ... and so do the runner's build, training and gate options.
    trainer = _parameters(pipeline_spec, "Trainer")
    assert _constant(trainer["custom_config"]) == {
        "preset": "paper",
        "max_epochs": 3,
        "steps_per_epoch": 5,
        "config_overrides": {"batch_size": 64, "embedding_dim": 16},
    }
    # The learned baseline's Trainer: the preset, seed and caps, its own recipe and budget
    # (not the model's max_epochs: SASRec needs many more epochs).
    assert _constant(_parameters(pipeline_spec, "SASRecTrainer")["custom_config"]) == {
        "preset": "paper",
        "max_epochs": SASREC_MAX_EPOCHS,
        "steps_per_epoch": 5,
        "learned_baseline": "SASRec",
    }
    example_gen = _parameters(pipeline_spec, "SequenceExampleGen")
    assert _constant(example_gen["build_options"]) == {
        "seed": 2,
        "max_users": 7,
        "id_format": "raw",
    }
    assert _constant(example_gen["adapter"]) == "event_log"
    evaluator = {
        name: _constant(value)
        for name, value in _parameters(pipeline_spec, "RankingEvaluator").items()
    }
    assert evaluator == {
        "min_improvement": 0.01,
        "min_relative_improvement": 0.0,
        "confidence": 0.0,
        "bootstrap_samples": 10,
        "seed": 4,
    }


def test_batch_size_parameter_defaults_to_the_presets(tmp_path):
    from unisar_tf.config import preset

    spec, _ = _compile(tmp_path, "--preset", "paper")
    assert _defaults(spec)["batch_size"] == preset("paper").training.batch_size
    assert _defaults(spec)["max_epochs"] == 100


def test_spec_version_2_0_declares_the_same_parameters(tmp_path):
    spec, pipeline_spec = _compile(tmp_path, "--spec_version", "2.0", "--max_epochs", "3")
    assert pipeline_spec["schemaVersion"] == "2.0.0"
    assert pipeline_spec["root"]["inputDefinitions"]["parameters"] == {
        "data_root": {"type": "STRING"},
        "max_epochs": {"type": "INT"},
        "batch_size": {"type": "INT"},
        "push": {"type": "INT"},
    }
    assert _defaults(spec) == {
        "data_root": EVENT_LOG_DIR,
        "max_epochs": 3,
        "batch_size": 1024,
        "push": 1,
    }
    assert _parameters(pipeline_spec, "Trainer")["max_epochs"] == {
        "componentInputParameter": "max_epochs"
    }


def test_kfp_package_is_the_pipeline_spec_alone_as_yaml(tmp_path):
    import yaml

    package = tmp_path / "unisar_pipeline.yaml"
    spec, pipeline_spec = _compile(tmp_path, "--kfp_package", str(package))
    document = yaml.safe_load(package.read_text())
    assert document == pipeline_spec
    json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec())  # strict


@pytest.fixture
def offline(monkeypatch):
    """No host can be resolved or connected to, and no remote path can be touched through
    tf.io.gfile (TF's GCS client resolves hosts in C++, below the socket patch)."""

    def refuse(*args, **kwargs):
        raise OSError(f"offline test: network use {args[:2]}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    for name in ("exists", "makedirs", "GFile", "rename", "glob", "listdir", "isdir", "copy"):
        original = getattr(tf.io.gfile, name)

        def local_only(path, *args, _original=original, **kwargs):
            if "://" in str(path):
                raise OSError(f"offline test: tf.io.gfile on {path}")
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(tf.io.gfile, name, local_only)


def test_gs_pipeline_root_compiles_offline_with_the_schema_in_the_image(tmp_path, offline):
    spec, pipeline_spec = _compile(tmp_path, pipeline_root="gs://bucket/tfx")
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/tfx"
    assert sorted(pipeline_spec["root"]["inputDefinitions"]["parameters"]) == [
        "batch_size",
        "data_root",
        "max_epochs",
        "push",
    ]
    schema_gens = {
        task: _constant(parameters["schema_file"])
        for task in pipeline_spec["root"]["dag"]["tasks"]
        for parameters in [_parameters(pipeline_spec, task)]
        if "schema_file" in parameters
    }
    assert sorted(schema_gens) == [
        "ImportSchemaGen",
        "ImportSchemaGenRec",
        "ImportSchemaGenSearch",
        "ImportSchemaGenTransform",
    ]
    for path in schema_gens.values():
        # Read where the image has them (the Dockerfile copies pipeline/ to /unisar/pipeline),
        # written at compile time into the local --schema_dir, nothing in the bucket.
        assert path.startswith(kubeflow.DEFAULT_IMAGE_SCHEMA_DIR + "/"), path
        local = tmp_path / "schemas" / os.path.relpath(path, kubeflow.DEFAULT_IMAGE_SCHEMA_DIR)
        assert local.is_file() and "feature {" in local.read_text(), local
    assert not any("_schemas" in value for value in _strings(spec))


def test_default_schema_dir_is_the_folder_the_dockerfile_copies():
    assert kubeflow.DEFAULT_SCHEMA_DIR == os.path.join(REPO, "pipeline", "schemas")
    text = open(os.path.join(REPO, "Dockerfile")).read()
    assert re.search(r"^WORKDIR /unisar$", text, flags=re.M)
    assert re.search(r"^COPY pipeline \./pipeline$", text, flags=re.M)
    assert kubeflow.DEFAULT_IMAGE_SCHEMA_DIR == "/unisar/pipeline/schemas"


def test_run_parameters_rewrite_the_trainers_config():
    config = json.loads(
        run_parameters.train_config_with(
            json.dumps(
                {"preset": "paper", "max_epochs": 100, "config_overrides": {"embedding_dim": 16}}
            ),
            3,
            64,
        )
    )
    assert config == {
        "preset": "paper",
        "max_epochs": 3,
        "config_overrides": {"embedding_dim": 16, "batch_size": 64},
    }
    assert json.loads(run_parameters.train_config_with(None, None, None)) == {}


def test_push_parameter_zero_records_the_model_as_not_pushed(tmp_path):
    from tfx.types import standard_artifacts

    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    # Neither model nor blessing is read: push=0 decides before the blessing check.
    run_parameters.PusherExecutor().Do({}, {"pushed_model": [pushed]}, {"push": 0})
    assert pushed.get_int_custom_property("pushed") == 0


def test_trainer_executor_hands_run_fn_the_run_parameters(monkeypatch):
    from tfx.components.trainer import executor as trainer_executor

    seen = {}
    monkeypatch.setattr(
        trainer_executor.GenericExecutor,
        "Do",
        lambda self, inputs, outputs, properties: seen.update(properties),
    )
    run_parameters.TrainerExecutor().Do(
        {},
        {},
        {
            "custom_config": json.dumps({"preset": "paper", "max_epochs": 100}),
            "max_epochs": 2,
            "batch_size": 32,
            "run_fn": "pipeline.trainer_module.run_fn",
        },
    )
    assert seen == {
        "run_fn": "pipeline.trainer_module.run_fn",
        "custom_config": json.dumps(
            {"preset": "paper", "max_epochs": 2, "config_overrides": {"batch_size": 32}}
        ),
    }


def test_both_runners_turn_the_same_options_into_the_same_pipeline_arguments(monkeypatch):
    from pipeline.runners import local

    seen = {}
    # Both give create_pipeline's PipelineOptions as their 8th / 9th positional argument.
    monkeypatch.setattr(local, "run", lambda *args, **kwargs: seen.update(local=args[7]) or [])
    monkeypatch.setattr(local, "format_report", lambda rows: "")
    monkeypatch.setattr(local, "outcome_summary", lambda rows: "")
    monkeypatch.setattr(
        kubeflow, "compile_pipeline", lambda *args, **kwargs: seen.update(kubeflow=args[8])
    )
    shared = [
        "--data_root",
        EVENT_LOG_DIR,
        "--adapter",
        "event_log",
        "--pipeline_root",
        "gs://bucket/tfx",
        "--serving_dir",
        "gs://bucket/serving",
        "--build_option",
        "train_negative_pool=20",
        "--max_users",
        "9",
        "--preset",
        "kuaisar",
        "--max_epochs",
        "2",
        "--train_option",
        "batch_size=256",
        "--validation_rows",
        "50",
        "--min_improvement",
        "0.02",
        "--min_relative_improvement",
        "0.1",
        "--bootstrap_samples",
        "20",
    ]
    local.main(shared + ["--metadata", "/nonexistent/metadata.sqlite"])
    kubeflow.main(shared)
    expected = {
        "build_options": {"train_negative_pool": 20, "max_users": 9},
        "train_config": {
            "preset": "kuaisar",
            "max_epochs": 2,
            "validation_rows": 50,
            "config_overrides": {"batch_size": 256},
        },
        "gate": GateOptions(
            min_improvement=0.02,
            min_relative_improvement=0.1,
            confidence=0.95,
            bootstrap_samples=20,
            seed=0,
        ),
    }
    for runner in ("local", "kubeflow"):
        assert isinstance(seen[runner], PipelineOptions), runner
        assert {key: getattr(seen[runner], key) for key in expected} == expected, runner


def test_relative_path_build_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="absolute paths"):
        kubeflow.compile_pipeline(
            str(tmp_path / "p.json"),
            IMAGE,
            "gs://bucket/tfx",
            "gs://bucket/raw",
            "amazon",
            "gs://bucket/serving",
            [],
            options=PipelineOptions(build_options={"sequences": "seq.txt"}),
            schema_dir=str(tmp_path / "schemas"),
        )


def test_sasrec_trainer_takes_its_own_budget_and_zero_leaves_it_out(tmp_path):
    _, pipeline_spec = _compile(tmp_path, "--max_epochs", "3", "--sasrec_max_epochs", "7")
    assert (
        _constant(_parameters(pipeline_spec, "SASRecTrainer")["custom_config"])["max_epochs"] == 7
    )
    evaluator_inputs = pipeline_spec["root"]["dag"]["tasks"]["RankingEvaluator"]["inputs"]
    assert evaluator_inputs["artifacts"]["learned_baseline"]["taskOutputArtifact"] == {
        "producerTask": "SASRecTrainer",
        "outputArtifactKey": "model",
    }
    _, pipeline_spec = _compile(tmp_path, "--sasrec_max_epochs", "0")
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    assert "SASRecTrainer" not in tasks and "Trainer" in tasks
    assert "learned_baseline" not in tasks["RankingEvaluator"]["inputs"].get("artifacts", {})


def _container(pipeline_spec, task):
    """The compiled container of a task (through its component's executor)."""
    component = pipeline_spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
    label = pipeline_spec["components"][component]["executorLabel"]
    return pipeline_spec["deploymentSpec"]["executors"][label]["container"]


def test_trainer_resources_reach_both_trainers_and_nothing_else(tmp_path):
    _, pipeline_spec = _compile(
        tmp_path,
        "--trainer_cpu",
        "8",
        "--trainer_memory_gb",
        "32",
        "--trainer_accelerator_type",
        "NVIDIA_TESLA_T4",
        "--trainer_accelerator_count",
        "2",
    )
    for task in ("Trainer", "SASRecTrainer"):
        assert _container(pipeline_spec, task)["resources"] == {
            "cpuLimit": 8.0,
            "memoryLimit": 32.0,
            "accelerator": {"type": "NVIDIA_TESLA_T4", "count": "2"},
        }, task
    for task in ("Transform", "RankingEvaluator", "SequenceExampleGen"):
        assert "resources" not in _container(pipeline_spec, task), task
    _, plain = _compile(tmp_path)
    assert "resources" not in _container(plain, "Trainer")


def test_vertex_training_puts_the_worker_pools_in_both_trainers(tmp_path):
    _, pipeline_spec = _compile(
        tmp_path,
        "--vertex_project",
        "proj",
        "--vertex_region",
        "europe-west4",
        "--vertex_workers",
        "3",
        "--vertex_machine_type",
        "n1-highmem-16",
        "--vertex_accelerator_type",
        "NVIDIA_TESLA_V100",
        "--vertex_accelerator_count",
        "2",
        "--max_epochs",
        "3",
    )
    machine = {
        "machine_type": "n1-highmem-16",
        "accelerator_type": "NVIDIA_TESLA_V100",
        "accelerator_count": 2,
    }
    for task in ("Trainer", "SASRecTrainer"):
        custom = _constant(_parameters(pipeline_spec, task)["custom_config"])
        assert custom["ai_platform_enable_vertex"] is True, task
        assert custom["ai_platform_vertex_region"] == "europe-west4"
        job = custom["ai_platform_training_args"]
        assert job["project"] == "proj"
        # The chief pool, then the other 2 workers: one job of 3 replicas under TF_CONFIG.
        assert job["worker_pool_specs"] == [
            {"machine_spec": machine, "replica_count": 1, "container_spec": {"image_uri": IMAGE}},
            {"machine_spec": machine, "replica_count": 2, "container_spec": {"image_uri": IMAGE}},
        ]
    # The Trainer launches the job and still takes the run parameters.
    trainer_args = " ".join(_container(pipeline_spec, "Trainer")["args"])
    assert "pipeline.components.run_parameters.VertexTrainerExecutor" in trainer_args
    assert _parameters(pipeline_spec, "Trainer")["max_epochs"] == {
        "componentInputParameter": "max_epochs"
    }
    assert "google_cloud_ai_platform.trainer.executor" in " ".join(
        _container(pipeline_spec, "SASRecTrainer")["args"]
    )


def test_vertex_training_needs_a_project_region_and_image():
    from pipeline import tfx_pipeline

    with pytest.raises(ValueError, match=r"missing \['image'\]"):
        tfx_pipeline.vertex_custom_config({"project": "p", "region": "r"})
    with pytest.raises(ValueError, match=r"unknown \['gpus'\]"):
        tfx_pipeline.vertex_custom_config({"project": "p", "region": "r", "image": "i", "gpus": 2})
    with pytest.raises(ValueError, match="unknown trainer resource"):
        tfx_pipeline.trainer_platform_config({"gpu": 1})
