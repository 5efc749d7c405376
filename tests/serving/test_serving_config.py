"""The TF Serving deployment files (serving/config, serving/deploy) parse and agree.

Every text-proto config is parsed into the message TF Serving reads it as, so a misspelt
field fails here instead of at server start-up. The Kubernetes manifest and both docker
scripts are checked against the configs: same image version as the installed serving API,
same container paths, every referenced config file present.

No TensorFlow import: the protos need only protobuf. The tensorflow-serving-api wheel ships
ModelServerConfig but not BatchingParameters or MonitoringConfig, so those two are built
below from their .proto definitions in tensorflow/serving (field names, numbers and types
copied exactly; unused later fields omitted, so using one in a config fails the parse).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest
import yaml
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from helpers import REPO as REPO_DIR
from tensorflow_serving.config import model_server_config_pb2

REPO = Path(REPO_DIR)
CONFIG_DIR = REPO / "serving" / "config"
DEPLOY_DIR = REPO / "serving" / "deploy"
KUBERNETES_YAML = DEPLOY_DIR / "kubernetes.yaml"
SCRIPTS = {"gpu": DEPLOY_DIR / "docker_gpu.sh", "cpu": DEPLOY_DIR / "docker_cpu.sh"}
BATCHING_FILES = {"gpu": "batching_gpu.config", "cpu": "batching_cpu.config"}

MODEL_NAME = "unisar"
MODEL_MOUNT = "/models/unisar"  # container path of <serving_dir>/unisar
CONFIG_MOUNT = "/config"  # container path of serving/config
GRPC_PORT, REST_PORT = 8500, 8501

# Flags of tensorflow_model_server 2.15 (tensorflow_serving/model_servers/main.cc) that a
# deployment here may use; the server refuses to start on an unknown flag.
MODEL_SERVER_FLAGS = {
    "port",
    "rest_api_port",
    "rest_api_num_threads",
    "rest_api_timeout_in_ms",
    "enable_batching",
    "batching_parameters_file",
    "model_config_file",
    "model_config_file_poll_wait_seconds",
    "file_system_poll_wait_seconds",
    "monitoring_config_file",
    "enable_model_warmup",
    "num_request_iterations_for_warmup",
    "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism",
    "per_process_gpu_memory_fraction",
    "grpc_channel_arguments",
    "grpc_max_threads",
}


# --- protos -----------------------------------------------------------------------------


def _field(message, name, number, field_type, type_name=None, repeated=False):
    field = message.field.add(
        name=name,
        number=number,
        type=field_type,
        label=(
            descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
            if repeated
            else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
        ),
    )
    if type_name:
        field.type_name = type_name


@functools.lru_cache(maxsize=None)
def _mirrored_protos():
    """BatchingParameters and MonitoringConfig as in tensorflow/serving 2.15:
    tensorflow_serving/servables/tensorflow/session_bundle_config.proto (fields 1-7) and
    tensorflow_serving/config/monitoring_config.proto, in a private descriptor pool."""
    F = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)

    batching_file = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    batching = batching_file.message_type.add(name="BatchingParameters")
    int64_value, string_value = ".google.protobuf.Int64Value", ".google.protobuf.StringValue"
    _field(batching, "max_batch_size", 1, F.TYPE_MESSAGE, int64_value)
    _field(batching, "batch_timeout_micros", 2, F.TYPE_MESSAGE, int64_value)
    _field(batching, "max_enqueued_batches", 3, F.TYPE_MESSAGE, int64_value)
    _field(batching, "num_batch_threads", 4, F.TYPE_MESSAGE, int64_value)
    _field(batching, "thread_pool_name", 5, F.TYPE_MESSAGE, string_value)
    _field(batching, "allowed_batch_sizes", 6, F.TYPE_INT64, repeated=True)
    _field(batching, "pad_variable_length_inputs", 7, F.TYPE_BOOL)
    pool.Add(batching_file)

    monitoring_file = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
    )
    prometheus = monitoring_file.message_type.add(name="PrometheusConfig")
    _field(prometheus, "enable", 1, F.TYPE_BOOL)
    _field(prometheus, "path", 2, F.TYPE_STRING)
    monitoring = monitoring_file.message_type.add(name="MonitoringConfig")
    _field(
        monitoring, "prometheus_config", 1, F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig"
    )
    pool.Add(monitoring_file)

    def message_class(full_name):
        descriptor = pool.FindMessageTypeByName(full_name)
        if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.21
            return message_factory.GetMessageClass(descriptor)
        return message_factory.MessageFactory(pool).GetPrototype(descriptor)

    return (
        message_class("tensorflow.serving.BatchingParameters"),
        message_class("tensorflow.serving.MonitoringConfig"),
    )


def batching_parameters_class():
    try:  # the real module, should a tensorflow-serving-api release ship it
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2

        return session_bundle_config_pb2.BatchingParameters
    except ImportError:
        return _mirrored_protos()[0]


def monitoring_config_class():
    try:
        from tensorflow_serving.config import monitoring_config_pb2

        return monitoring_config_pb2.MonitoringConfig
    except ImportError:
        return _mirrored_protos()[1]


def parse(text: str, message_class):
    return text_format.Parse(text, message_class())


def parse_file(name: str, message_class):
    return parse((CONFIG_DIR / name).read_text(), message_class)


def batching_problems(params) -> List[str]:
    """What TF Serving would reject, or what breaks serving this model, in BatchingParameters."""
    problems = []
    for name in (
        "max_batch_size",
        "batch_timeout_micros",
        "num_batch_threads",
        "max_enqueued_batches",
    ):
        if not params.HasField(name):
            problems.append(f"{name} not set (TF Serving's default is not meant for serving)")
    if params.max_batch_size.value <= 0:
        problems.append("max_batch_size must be > 0")
    if params.batch_timeout_micros.value < 0:
        problems.append("batch_timeout_micros must be >= 0")
    if params.num_batch_threads.value < 1:
        problems.append("num_batch_threads must be >= 1")
    if params.max_enqueued_batches.value < 1:
        problems.append("max_enqueued_batches must be >= 1")
    if not params.pad_variable_length_inputs:
        problems.append("pad_variable_length_inputs must be true: inner dims vary per request")
    sizes = list(params.allowed_batch_sizes)
    if sizes:
        if sizes[0] <= 0 or any(b <= a for a, b in zip(sizes, sizes[1:])):
            problems.append(f"allowed_batch_sizes {sizes} must be positive and increasing")
        if sizes[-1] != params.max_batch_size.value:
            problems.append(
                f"allowed_batch_sizes must end at max_batch_size "
                f"({params.max_batch_size.value}), not {sizes[-1]}"
            )
    return problems


@pytest.fixture(scope="module")
def models_config():
    return parse_file("models.config", model_server_config_pb2.ModelServerConfig)


@pytest.fixture(scope="module")
def batching():
    return {
        kind: parse_file(name, batching_parameters_class()) for kind, name in BATCHING_FILES.items()
    }


@pytest.fixture(scope="module")
def monitoring():
    return parse_file("monitoring.config", monitoring_config_class())


@pytest.fixture(scope="module")
def serving_api_version():
    return importlib.metadata.version("tensorflow-serving-api")


# --- config files -----------------------------------------------------------------------


def test_models_config_serves_unisar_from_the_container_mount(models_config):
    configs = models_config.model_config_list.config
    assert len(configs) == 1
    model = configs[0]
    assert model.name == MODEL_NAME
    assert model.base_path == MODEL_MOUNT
    assert model.model_platform == "tensorflow"
    policy = model.model_version_policy
    assert policy.WhichOneof("policy_choice") == "latest"
    assert policy.latest.num_versions in (1, 2)


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_batching_config_is_valid(batching, kind):
    assert batching_problems(batching[kind]) == []


def test_batching_values_suit_their_hardware(batching):
    gpu, cpu = batching["gpu"], batching["cpu"]
    # Online serving: a request waits at most 10 ms for its batch to fill.
    assert 0 < gpu.batch_timeout_micros.value <= 10_000
    assert 0 <= cpu.batch_timeout_micros.value <= gpu.batch_timeout_micros.value
    # Batches of users (each ~100 candidates): big enough to fill a GPU, not unbounded.
    assert 16 <= gpu.max_batch_size.value <= 512
    assert 1 <= cpu.max_batch_size.value <= gpu.max_batch_size.value
    # One batch thread per core: the CPU variant targets 2-8 cores.
    assert 2 <= cpu.num_batch_threads.value <= 8
    assert 1 <= gpu.num_batch_threads.value <= 16
    # The queue bounds the wait before TF Serving answers UNAVAILABLE.
    assert cpu.max_enqueued_batches.value <= gpu.max_enqueued_batches.value <= 1000


def test_batching_problems_catches_bad_values():
    bad = parse(
        "max_batch_size { value: 64 }\n" "allowed_batch_sizes: [8, 32, 16]\n",
        batching_parameters_class(),
    )
    problems = batching_problems(bad)
    assert any("pad_variable_length_inputs" in p for p in problems)
    assert any("increasing" in p for p in problems)
    assert any("end at max_batch_size" in p for p in problems)
    assert any("num_batch_threads not set" in p for p in problems)


def test_monitoring_config_enables_prometheus(monitoring):
    assert monitoring.prometheus_config.enable is True
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"


@pytest.mark.parametrize(
    "text,message",
    [
        ("max_batch_sise { value: 1 }", "batching"),  # misspelt field
        ("max_batch_size: 64", "batching"),  # wrapper written as a plain value
        ("max_batch_size { value: 64 }\nmax_batch_size { value: 32 }", "batching"),  # twice
        ("prometheus_config { enabled: true }", "monitoring"),
        ('model_config_list { config { nmae: "unisar" } }', "models"),
    ],
)
def test_a_typo_fails_to_parse(text, message):
    message_class = {
        "batching": batching_parameters_class(),
        "monitoring": monitoring_config_class(),
        "models": model_server_config_pb2.ModelServerConfig,
    }[message]
    with pytest.raises(text_format.ParseError):
        parse(text, message_class)


# --- Kubernetes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests():
    documents = [d for d in yaml.safe_load_all(KUBERNETES_YAML.read_text()) if d]
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == ["Deployment", "Service"]
    return {d["kind"]: d for d in documents}


@pytest.fixture(scope="module")
def pod(manifests):
    return manifests["Deployment"]["spec"]["template"]


@pytest.fixture(scope="module")
def container(pod):
    containers = pod["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _port_number(container: Dict, port) -> int:
    """A probe or Service targetPort (number or name) -> the container port number."""
    numbers = {p["name"]: p["containerPort"] for p in container["ports"]}
    if isinstance(port, int):
        assert port in numbers.values(), f"port {port} is not a container port"
        return port
    assert port in numbers, f"no container port named {port!r}"
    return numbers[port]


def _flags(args: List[str]) -> Dict[str, str]:
    flags = {}
    for arg in args:
        match = re.fullmatch(r"--([a-z0-9_]+)(?:=(.*))?", arg)
        assert match, f"not a --flag[=value] argument: {arg!r}"
        name, value = match.groups()
        assert name not in flags, f"--{name} given twice"
        flags[name] = value
    return flags


def _check_server_args(args: List[str], batching_file: str) -> Dict[str, str]:
    """The model server flags every deployment passes; returns them as a dict."""
    flags = _flags(args)
    unknown = set(flags) - MODEL_SERVER_FLAGS
    assert not unknown, f"not a tensorflow_model_server 2.15 flag: {sorted(unknown)}"
    assert flags["port"] == str(GRPC_PORT)
    assert flags["rest_api_port"] == str(REST_PORT)
    assert "enable_batching" in flags and flags["enable_batching"] in (None, "true")
    assert flags["model_config_file"] == f"{CONFIG_MOUNT}/models.config"
    assert flags["batching_parameters_file"] == f"{CONFIG_MOUNT}/{batching_file}"
    assert flags["monitoring_config_file"] == f"{CONFIG_MOUNT}/monitoring.config"
    for name, value in flags.items():
        if name.endswith("_file"):
            assert value.startswith(CONFIG_MOUNT + "/"), f"--{name}={value} outside /config"
            assert (
                CONFIG_DIR / value[len(CONFIG_MOUNT) + 1 :]
            ).is_file(), f"--{name}={value}: serving/config has no such file"
    return flags


def test_deployment_runs_the_pinned_gpu_image(container, serving_api_version):
    assert serving_api_version == "2.15.1"
    assert container["image"] == f"tensorflow/serving:{serving_api_version}-gpu"
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert "cpu" in container["resources"]["requests"]
    assert "memory" in container["resources"]["requests"]


def test_deployment_args_point_at_the_repo_configs(container, pod, batching):
    _check_server_args(container["args"], BATCHING_FILES["gpu"])
    # The ConfigMap generated from serving/config is what /config holds.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    config_mounts = [m for m in mounts.values() if m["mountPath"] == CONFIG_MOUNT]
    assert len(config_mounts) == 1
    assert volumes[config_mounts[0]["name"]]["configMap"]["name"] == "unisar-serving-config"
    assert "--from-file=serving/config" in KUBERNETES_YAML.read_text()
    # batching_gpu.config sizes its threads to the pod's CPU request.
    assert int(container["resources"]["requests"]["cpu"]) == batching["gpu"].num_batch_threads.value


def test_model_volume_is_the_pushers_claim_mounted_read_only(container, pod, models_config):
    base_path = models_config.model_config_list.config[0].base_path
    model_mounts = [m for m in container["volumeMounts"] if m["mountPath"] == base_path]
    assert len(model_mounts) == 1
    mount = model_mounts[0]
    assert mount.get("readOnly") is True
    assert mount.get("subPath") == MODEL_NAME  # the Pusher writes <serving_dir>/unisar/<v>
    volume = {v["name"]: v for v in pod["spec"]["volumes"]}[mount["name"]]
    claim = volume["persistentVolumeClaim"]
    assert claim["claimName"] == "unisar-serving"
    assert claim.get("readOnly") is True


def test_probes_use_the_model_status_endpoint(container):
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == f"/v1/models/{MODEL_NAME}"
    assert _port_number(container, readiness["port"]) == REST_PORT
    assert _port_number(container, container["livenessProbe"]["tcpSocket"]["port"]) == GRPC_PORT
    # Loading plus warmup happens before the ports open; liveness must wait for it.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_service_exposes_the_container_ports(manifests, container, pod):
    service = manifests["Service"]["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP"
    labels = pod["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert manifests["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    exposed = {p["port"]: _port_number(container, p["targetPort"]) for p in service["ports"]}
    assert exposed == {GRPC_PORT: GRPC_PORT, REST_PORT: REST_PORT}
    assert sorted(p["containerPort"] for p in container["ports"]) == [GRPC_PORT, REST_PORT]


def test_prometheus_annotations_match_monitoring_config(pod, monitoring):
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == monitoring.prometheus_config.path
    assert annotations["prometheus.io/port"] == str(REST_PORT)


# --- docker scripts ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_script_is_valid_bash(kind):
    result = subprocess.run(["bash", "-n", str(SCRIPTS[kind])], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(SCRIPTS[kind], os.X_OK)
    assert "set -euo pipefail" in SCRIPTS[kind].read_text()


def _run_with_fake_docker(tmp_path: Path, script: Path, *args: str, env=None):
    """Runs the script with a `docker` on PATH that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "docker"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$FAKE_DOCKER_ARGS"\n')
    fake.chmod(0o755)
    record = tmp_path / "docker_args.txt"
    environment = {k: v for k, v in os.environ.items() if k != "SERVING_DIR"}
    environment.update(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        FAKE_DOCKER_ARGS=str(record),
        **(env or {}),
    )
    result = subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=30,
    )
    argv = record.read_text().splitlines() if record.exists() else None
    return result, argv


@pytest.fixture
def serving_dir(tmp_path):
    version = tmp_path / "serving" / MODEL_NAME / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    return tmp_path / "serving"


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_script_runs_the_same_server_as_kubernetes(
    kind, tmp_path, serving_dir, container, serving_api_version
):
    result, argv = _run_with_fake_docker(
        tmp_path, SCRIPTS[kind], str(serving_dir), "--file_system_poll_wait_seconds=5"
    )
    assert result.returncode == 0, result.stderr
    assert argv[0] == "run"
    image = f"tensorflow/serving:{serving_api_version}" + ("-gpu" if kind == "gpu" else "")
    assert argv.count(image) == 1
    docker_options, server_args = argv[1 : argv.index(image)], argv[argv.index(image) + 1 :]

    # Extra arguments go to the model server, after the deployment's own flags.
    assert server_args[-1] == "--file_system_poll_wait_seconds=5"
    flags = _check_server_args(server_args, BATCHING_FILES[kind])
    kubernetes_flags = _flags(container["args"])
    kubernetes_flags["batching_parameters_file"] = f"{CONFIG_MOUNT}/{BATCHING_FILES[kind]}"
    del flags["file_system_poll_wait_seconds"]
    assert flags == kubernetes_flags

    mounts = [docker_options[i + 1] for i, o in enumerate(docker_options) if o == "--mount"]
    assert sorted(mounts) == sorted(
        [
            f"type=bind,source={serving_dir / MODEL_NAME},target={MODEL_MOUNT},readonly",
            f"type=bind,source={CONFIG_DIR},target={CONFIG_MOUNT},readonly",
        ]
    )
    published = [docker_options[i + 1] for i, o in enumerate(docker_options) if o == "-p"]
    if kind == "gpu":
        assert docker_options[docker_options.index("--gpus") + 1] == "all"
        assert sorted(published) == [f"{GRPC_PORT}:{GRPC_PORT}", f"{REST_PORT}:{REST_PORT}"]
    else:
        assert "--gpus" not in docker_options
        assert sorted(published) == [
            f"127.0.0.1:{GRPC_PORT}:{GRPC_PORT}",
            f"127.0.0.1:{REST_PORT}:{REST_PORT}",
        ]


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_script_serving_dir_from_env_and_missing_dir(kind, tmp_path, serving_dir):
    result, argv = _run_with_fake_docker(
        tmp_path, SCRIPTS[kind], env={"SERVING_DIR": str(serving_dir)}
    )
    assert result.returncode == 0, result.stderr
    assert f"type=bind,source={serving_dir / MODEL_NAME},target={MODEL_MOUNT},readonly" in argv

    (tmp_path / "docker_args.txt").unlink()
    result, argv = _run_with_fake_docker(tmp_path, SCRIPTS[kind], str(tmp_path / "nowhere"))
    assert result.returncode != 0
    assert "unisar not found" in result.stderr
    assert argv is None  # docker never ran


def test_script_default_serving_dir_is_out_serving(tmp_path):
    (tmp_path / "out" / "serving" / MODEL_NAME / "3").mkdir(parents=True)
    result, argv = _run_with_fake_docker(tmp_path, SCRIPTS["cpu"])
    assert result.returncode == 0, result.stderr
    assert "no <version>/saved_model.pb" in result.stderr  # warned, still started
    model_source = tmp_path / "out" / "serving" / MODEL_NAME
    assert f"type=bind,source={model_source},target={MODEL_MOUNT},readonly" in argv
