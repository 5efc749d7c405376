"""The Kubeflow compile: one pipeline spec naming every component and the configured image,
and the Dockerfile that image is built from."""
import json
import os
import re

from importlib import metadata

from pipeline.runners import kubeflow

from test_tfx_pipeline import COMPONENTS  # the same pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENT_LOG_DIR = os.path.join(REPO, "tests", "fixtures", "event_log")
IMAGE = "registry.example.com/unisar-tfx:1.2.3"
BEAM_ARGS = ["--runner=DataflowRunner", "--project=proj", "--region=europe-west4",
             "--temp_location=gs://bucket/tmp"]


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


def test_compiled_spec_names_every_component_the_image_and_the_beam_options(tmp_path):
    output = tmp_path / "unisar_pipeline.json"
    kubeflow.main(["--image", IMAGE, "--pipeline_root", str(tmp_path / "root"),
                   "--data_root", EVENT_LOG_DIR, "--adapter", "event_log",
                   "--serving_dir", "gs://bucket/serving", "--output", str(output)]
                  + [f"--beam_arg={arg}" for arg in BEAM_ARGS])
    spec = json.loads(output.read_text())
    pipeline_spec = spec.get("pipelineSpec", spec)
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    # KFP v2 compiles the resolver into two tasks (blessings, then the blessed model).
    assert sorted(tasks) == sorted(
        [name for name in COMPONENTS if name != "LatestBlessedModelResolver"]
        + ["LatestBlessedModelResolver-model-blessing-resolver",
           "LatestBlessedModelResolver-model-resolver"])
    executors = pipeline_spec["deploymentSpec"]["executors"]
    images = {executor["container"]["image"] for executor in executors.values()
              if "container" in executor}
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
