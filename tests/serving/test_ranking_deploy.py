"""The ranking service's deployment files (serving/deploy/docker-compose.yaml,
ranking_kubernetes.yaml, ranking.Dockerfile) parse and agree with the service's CLI, with each
other and with the TF Serving deployment (kubernetes.yaml, docker_cpu.sh's flags).

No TensorFlow import: the CLI's flags are read from serving/ranking_service.py's source.
"""

from __future__ import annotations

import ast
import re
import urllib.parse
from pathlib import Path
from typing import Dict, List

import pytest
import yaml
from helpers import REPO as REPO_DIR

REPO = Path(REPO_DIR)
DEPLOY = REPO / "serving" / "deploy"
COMPOSE = DEPLOY / "docker-compose.yaml"
KUBERNETES = DEPLOY / "ranking_kubernetes.yaml"
TF_SERVING_KUBERNETES = DEPLOY / "kubernetes.yaml"
DOCKERFILE = DEPLOY / "ranking.Dockerfile"
MODEL_MOUNT = "/models/unisar"
IMAGE = "unisar-ranking:latest"


def cli_flags() -> Dict[str, dict]:
    """--flag -> {"required": bool, "default": value} of `python -m serving.ranking_service`."""
    tree = ast.parse((REPO / "serving" / "ranking_service.py").read_text())
    flags = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "add_argument"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            keywords = {k.arg: k.value for k in node.keywords}
            default = keywords.get("default")
            flags[node.args[0].value] = {
                "required": isinstance(keywords.get("required"), ast.Constant)
                and keywords["required"].value is True,
                "default": default.value if isinstance(default, ast.Constant) else None,
            }
    return flags


def parse_flags(args: List[str]) -> Dict[str, str]:
    flags = {}
    for arg in args:
        match = re.fullmatch(r"(--[a-z0-9_]+)(?:=(.*))?", arg)
        assert match, f"not a --flag[=value] argument: {arg!r}"
        assert match.group(1) not in flags, f"{match.group(1)} given twice"
        flags[match.group(1)] = match.group(2)
    return flags


def check_service_args(args: List[str]) -> Dict[str, str]:
    """Every flag is the CLI's, the required ones are there; returns them."""
    known = cli_flags()
    flags = parse_flags(args)
    assert set(flags) <= set(known), f"not a ranking_service flag: {set(flags) - set(known)}"
    required = {name for name, spec in known.items() if spec["required"]}
    assert required <= set(flags), f"missing required flags {required - set(flags)}"
    # In a container the service must listen beyond its own loopback to be reachable.
    assert flags["--host"] == "0.0.0.0"
    assert flags["--model_base_path"] == MODEL_MOUNT
    assert int(flags["--deadline_ms"]) > 0
    return flags


def test_the_cli_defines_the_flags_the_deployments_rely_on():
    flags = cli_flags()
    assert flags["--store"]["required"] and flags["--model_base_path"]["required"]
    assert flags["--host"]["default"] == "127.0.0.1"
    assert (flags["--http_port"]["default"], flags["--grpc_port"]["default"]) == (8080, 8081)


# --- docker compose ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def _published(service: dict) -> Dict[int, str]:
    """container port -> "host_ip:host_port" of a compose service's `ports`."""
    published = {}
    for entry in service.get("ports", []):
        host_ip, host_port, container_port = entry.split(":")
        published[int(container_port)] = f"{host_ip}:{host_port}"
    return published


def test_compose_runs_the_three_services_on_loopback_ports(compose):
    services = compose["services"]
    assert set(services) == {"redis", "tf-serving", "ranking"}
    for name, service in services.items():
        for host in _published(service).values():
            assert host.startswith("127.0.0.1:"), f"{name} publishes {host} beyond loopback"


def test_compose_ranking_args_match_the_cli_ports_and_the_other_services(compose):
    services = compose["services"]
    ranking = services["ranking"]
    flags = check_service_args(ranking["command"])
    assert set(_published(ranking)) == {int(flags["--http_port"]), int(flags["--grpc_port"])}
    assert f":{flags['--http_port']}/readyz" in " ".join(ranking["healthcheck"]["test"])

    store = urllib.parse.urlparse(flags["--store"])
    assert store.scheme == "redis" and store.hostname == "redis"
    assert store.port in _published(services["redis"])
    host, port = flags["--model_server"].split(":")
    tf_flags = parse_flags(services["tf-serving"]["command"])
    assert host == "tf-serving" and port == tf_flags["--port"]
    assert ranking["depends_on"]["redis"]["condition"] == "service_healthy"

    assert ranking["image"] == IMAGE
    assert (
        REPO / "serving" / "deploy" / ranking["build"]["context"] / ranking["build"]["dockerfile"]
    ).resolve() == DOCKERFILE.resolve()


def test_compose_mounts_the_same_models_read_only_in_tf_serving_and_ranking(compose):
    sources = set()
    for name in ("tf-serving", "ranking"):
        mounts = [v for v in compose["services"][name]["volumes"] if v["target"] == MODEL_MOUNT]
        assert len(mounts) == 1 and mounts[0]["read_only"] is True, name
        assert mounts[0]["source"].endswith("}/unisar")
        sources.add(mounts[0]["source"])
    assert len(sources) == 1


def test_compose_tf_serving_has_the_kubernetes_flags_with_cpu_batching(compose):
    tf_serving = compose["services"]["tf-serving"]
    kubernetes = [d for d in yaml.safe_load_all(TF_SERVING_KUBERNETES.read_text()) if d]
    container = next(d for d in kubernetes if d["kind"] == "Deployment")["spec"]["template"][
        "spec"
    ]["containers"][0]
    expected = parse_flags(container["args"])
    expected["--batching_parameters_file"] = "/config/batching_cpu.config"
    assert parse_flags(tf_serving["command"]) == expected
    assert tf_serving["image"] == container["image"].removesuffix("-gpu")
    config_mount = next(v for v in tf_serving["volumes"] if v["target"] == "/config")
    assert (DEPLOY / config_mount["source"]).resolve() == (REPO / "serving" / "config")


# --- Kubernetes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests():
    documents = [d for d in yaml.safe_load_all(KUBERNETES.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}


def test_kubernetes_has_the_ranking_service_and_redis(manifests):
    assert set(manifests) == {
        ("Deployment", "unisar-ranking"),
        ("Service", "unisar-ranking"),
        ("StatefulSet", "unisar-redis"),
        ("Service", "unisar-redis"),
    }
    for kind, name in [("Deployment", "unisar-ranking"), ("StatefulSet", "unisar-redis")]:
        spec = manifests[(kind, name)]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert manifests[("Service", name)]["spec"]["selector"].items() <= labels.items()


def _container_ports(container: dict) -> Dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def test_kubernetes_ranking_args_ports_and_probes_agree(manifests):
    pod = manifests[("Deployment", "unisar-ranking")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    flags = check_service_args(container["args"])
    ports = _container_ports(container)
    assert ports == {"http": int(flags["--http_port"]), "grpc": int(flags["--grpc_port"])}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service_ports = {
        p["name"]: (p["port"], p["targetPort"])
        for p in manifests[("Service", "unisar-ranking")]["spec"]["ports"]
    }
    assert service_ports == {"http": (ports["http"], "http"), "grpc": (ports["grpc"], "grpc")}
    assert container["image"] == IMAGE


def test_kubernetes_ranking_points_at_tf_serving_and_redis(manifests):
    container = manifests[("Deployment", "unisar-ranking")]["spec"]["template"]["spec"][
        "containers"
    ][0]
    flags = parse_flags(container["args"])
    tf_serving = {
        (d["kind"], d["metadata"]["name"]): d
        for d in yaml.safe_load_all(TF_SERVING_KUBERNETES.read_text())
        if d
    }
    grpc_port = {
        p["name"]: p["port"] for p in tf_serving[("Service", "unisar-serving")]["spec"]["ports"]
    }["grpc"]
    assert flags["--model_server"] == f"unisar-serving:{grpc_port}"

    store = urllib.parse.urlparse(flags["--store"])
    redis_ports = {
        p["name"]: p["port"] for p in manifests[("Service", "unisar-redis")]["spec"]["ports"]
    }
    assert (store.scheme, store.hostname, store.port) == (
        "redis",
        "unisar-redis",
        redis_ports["redis"],
    )
    redis = manifests[("StatefulSet", "unisar-redis")]["spec"]["template"]["spec"]["containers"][0]
    assert _container_ports(redis)["redis"] == redis_ports["redis"] == 6379


def test_kubernetes_ranking_reads_the_models_tf_serving_serves(manifests):
    """Same claim and subPath as TF Serving's pod, read-only, at --model_base_path."""
    pod = manifests[("Deployment", "unisar-ranking")]["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == MODEL_MOUNT)
    assert mount["readOnly"] is True and mount["subPath"] == "unisar"
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    tf_pod = next(
        d
        for d in yaml.safe_load_all(TF_SERVING_KUBERNETES.read_text())
        if d and d["kind"] == "Deployment"
    )["spec"]["template"]["spec"]
    tf_volume = next(v for v in tf_pod["volumes"] if "persistentVolumeClaim" in v)
    assert volume["persistentVolumeClaim"] == tf_volume["persistentVolumeClaim"]


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_runs_the_service_with_locked_packages():
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert 'ENTRYPOINT ["python", "-m", "serving.ranking_service"]' in lines
    defaults = cli_flags()
    exposed = next(line for line in lines if line.startswith("EXPOSE")).split()[1:]
    assert exposed == [
        str(defaults["--http_port"]["default"]),
        str(defaults["--grpc_port"]["default"]),
    ]
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"COPY {source}: no such path"
    install = re.search(r"-c requirements\.lock\s*\\?\s*([^\n]+)", text).group(1).split()
    locked = {
        line.split("==")[0]
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if "==" in line
    }
    assert set(install) <= locked, set(install) - locked
    assert {"tensorflow", "tensorflow-serving-api", "grpcio", "redis"} <= set(install)
