"""Compile the UniSAR TFX pipeline for Kubeflow Pipelines (KFP v2 / Vertex AI Pipelines).

    python -m pipeline.runners.kubeflow --image REGISTRY/unisar-tfx:TAG \
        --pipeline_root gs://BUCKET/tfx --data_root gs://BUCKET/raw --adapter amazon_beauty \
        --serving_dir gs://BUCKET/serving --output unisar_pipeline.json \
        --build_option train_negative_pool=20 --max_epochs 2 --train_option batch_size=256 \
        --beam_arg=--runner=DataflowRunner --beam_arg=--project=PROJECT \
        --beam_arg=--region=REGION --beam_arg=--temp_location=gs://BUCKET/tmp

writes the pipeline job (JSON) that Vertex AI Pipelines runs (`google.cloud.aiplatform.
PipelineJob`) and, with --kfp_package PATH.yaml, the pipeline spec alone that the KFP client
submits (`kfp.Client().create_run_from_pipeline_package(...)`). The
pipeline is the same `create_pipeline` the local runner uses, with the same build, training
and gate options (pipeline/runners/options.py); only the runner differs.

Pipeline parameters (the spec's `root.inputDefinitions`; set per run, defaults from the
options): `data_root` (str), `max_epochs` (int), `batch_size` (int) and `push` (int, 1/0).

The schema files ImportSchemaGen reads are written at compile time into --schema_dir, by
default the `pipeline/schemas/` folder of this checkout, which the Dockerfile copies into the
image; the spec names them where the image has them (--image_schema_dir). So compiling needs
no access to the pipeline root (gs://... works offline), and the image must be built after
compiling (docs/pipeline.md). Beam stages run where the --beam_arg options say (DirectRunner
inside the container by default; Dataflow, Flink or Spark by options, not code).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List, Optional, Sequence

from pipeline.adapters import registry
from pipeline.runners import options

DEFAULT_IMAGE = "unisar-tfx:latest"
DEFAULT_PIPELINE_NAME = "unisar"
# The checkout's pipeline/schemas/, which the Dockerfile's `COPY pipeline ./pipeline` puts at
# /unisar/pipeline/schemas in the image.
DEFAULT_SCHEMA_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas"
)
DEFAULT_IMAGE_SCHEMA_DIR = "/unisar/pipeline/schemas"
# KFP pipeline spec schema: 2.1 (parameterType, defaults in the spec) is what KFP 2 backends
# and Vertex AI Pipelines read today; 2.0 is TFX 1.15's default.
SPEC_VERSIONS = ("2.1", "2.0")
DEFAULT_SPEC_VERSION = "2.1"
SCHEMA_FILE_KEY = "schema_file"  # ImportSchemaGen's parameter


def runtime_parameters(data_root: str, train_config: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The pipeline's runtime parameters, their defaults from the compile's options:
    {"data_root", "max_epochs", "batch_size", "push": RuntimeParameter}."""
    from tfx import v1 as tfx

    from unisar_tf.config import preset

    train_config = dict(train_config or {})
    overrides = dict(train_config.get("config_overrides") or {})
    batch_size = overrides.get("batch_size")
    if batch_size is None:
        batch_size = preset(train_config.get("preset", "default")).training.batch_size
    parameter = tfx.dsl.experimental.RuntimeParameter
    return {
        "data_root": parameter(name="data_root", ptype=str, default=data_root),
        "max_epochs": parameter(
            name="max_epochs", ptype=int, default=int(train_config.get("max_epochs", 100))
        ),
        "batch_size": parameter(name="batch_size", ptype=int, default=int(batch_size)),
        "push": parameter(name="push", ptype=int, default=1),
    }


def compile_pipeline(
    output: str,
    image: str,
    pipeline_root: str,
    data_root: str,
    adapter: str,
    serving_dir: str,
    beam_pipeline_args: Sequence[str],
    pipeline_name: str = DEFAULT_PIPELINE_NAME,
    options=None,
    *,
    schema_dir: str = DEFAULT_SCHEMA_DIR,
    image_schema_dir: str = DEFAULT_IMAGE_SCHEMA_DIR,
    spec_version: str = DEFAULT_SPEC_VERSION,
    kfp_package: Optional[str] = None,
    **deprecated_keywords,
) -> dict:
    """Write the KFP v2 pipeline job JSON to `output` and return it as a dict. options:
    create_pipeline's PipelineOptions (its former loose keywords still work for one release,
    with a DeprecationWarning). The schema
    files go to the local schema_dir; the spec reads them from image_schema_dir.
    spec_version "2.1" (the parameters' defaults also in root.inputDefinitions) or "2.0".
    kfp_package: also write the pipeline spec alone, as YAML, the package the KFP client's
    create_run_from_pipeline_package takes (.yaml)."""
    if spec_version not in SPEC_VERSIONS:
        raise ValueError(f"spec_version {spec_version!r}: one of {SPEC_VERSIONS}")
    from tfx import v1 as tfx

    from pipeline.tfx_pipeline import create_pipeline, options_or_keywords

    options = options_or_keywords("compile_pipeline", options, deprecated_keywords)
    build_options = options.build_options
    relative = sorted(
        name
        for name in registry.path_flags()
        if isinstance((build_options or {}).get(name), str)
        and not (os.path.isabs(build_options[name]) or "://" in build_options[name])
    )
    if relative:  # SequenceExampleGen joins them with data_root, a parameter here
        raise ValueError(
            f"build option(s) {relative}: give absolute paths or URIs on Kubeflow "
            "(data_root is a pipeline parameter, unknown at compile time)"
        )
    parameters = runtime_parameters(data_root, options.train_config)
    # The spec's runtimeConfig carries the defaults; a run's arguments replace them.
    defaults = {name: parameter.default for name, parameter in parameters.items()}
    schema_dir = os.path.abspath(schema_dir)
    pipeline = create_pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        data_root=parameters.pop("data_root"),
        adapter=adapter,
        serving_dir=serving_dir,
        beam_pipeline_args=list(beam_pipeline_args),
        # Kubeflow supplies ML Metadata itself; the pipeline must not name a database.
        metadata_connection_config=None,
        options=options,
        schema_dir=schema_dir,
        run_parameters=parameters,
    )
    for component in pipeline.components:  # the schema files, where the image has them
        path = component.exec_properties.get(SCHEMA_FILE_KEY)
        if isinstance(path, str) and path.startswith(schema_dir + os.sep):
            component.exec_properties[SCHEMA_FILE_KEY] = (
                image_schema_dir.rstrip("/")
                + "/"
                + os.path.relpath(path, schema_dir).replace(os.sep, "/")
            )
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            display_name=pipeline_name,
            default_image=image,
            use_pipeline_spec_2_1=spec_version == "2.1",
        )
    )
    spec = runner.run(pipeline, parameter_values=defaults, write_out=False)
    if spec_version == "2.1":  # the spec alone (a KFP package) then carries the defaults
        inputs = spec["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
        for name, value in defaults.items():
            inputs[name]["defaultValue"] = value
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as handle:
        json.dump(spec, handle, indent=2, sort_keys=True)
    if kfp_package:
        import yaml

        os.makedirs(os.path.dirname(os.path.abspath(kfp_package)), exist_ok=True)
        with open(kfp_package, "w") as handle:
            yaml.safe_dump(spec["pipelineSpec"], handle, sort_keys=True)
    return spec


def main(argv: Optional[List[str]] = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--image",
        default=DEFAULT_IMAGE,
        help="container image every component runs in (see Dockerfile)",
    )
    parser.add_argument("--pipeline_name", default=DEFAULT_PIPELINE_NAME)
    parser.add_argument(
        "--pipeline_root",
        required=True,
        help="artifact root the cluster can write (e.g. gs://bucket/tfx)",
    )
    parser.add_argument(
        "--data_root",
        required=True,
        help="raw logs, as the cluster sees them: the default of the "
        "pipeline parameter data_root",
    )
    parser.add_argument(
        "--adapter",
        default="amazon_beauty",
        help="input adapter / dataset name (pipeline.build_examples)",
    )
    parser.add_argument(
        "--serving_dir",
        required=True,
        help="where the Pusher writes unisar/<version> (the volume or bucket "
        "TF Serving watches)",
    )
    parser.add_argument(
        "--output",
        default="unisar_pipeline.json",
        help="the pipeline job JSON (Vertex AI Pipelines' template)",
    )
    parser.add_argument(
        "--kfp_package",
        default=None,
        metavar="PATH.yaml",
        help="also write the pipeline spec alone as YAML, the package "
        "kfp.Client().create_run_from_pipeline_package takes",
    )
    parser.add_argument(
        "--spec_version",
        default=DEFAULT_SPEC_VERSION,
        choices=SPEC_VERSIONS,
        help="KFP pipeline spec schema version",
    )
    parser.add_argument(
        "--schema_dir",
        default=DEFAULT_SCHEMA_DIR,
        help="local folder the schema files are written to (copied into "
        "the image by the Dockerfile)",
    )
    parser.add_argument(
        "--image_schema_dir",
        default=DEFAULT_IMAGE_SCHEMA_DIR,
        help="where the image has --schema_dir",
    )
    # --max_epochs and --train_option batch_size=N give the defaults of the pipeline
    # parameters max_epochs and batch_size.
    options.add_pipeline_options(parser)
    args = parser.parse_args(argv)
    compile_pipeline(
        args.output,
        args.image,
        args.pipeline_root,
        args.data_root,
        args.adapter,
        args.serving_dir,
        args.beam_arg,
        args.pipeline_name,
        options.pipeline_options(parser, args),
        schema_dir=args.schema_dir,
        image_schema_dir=args.image_schema_dir,
        spec_version=args.spec_version,
        kfp_package=args.kfp_package,
    )
    print(
        f"pipeline spec: {os.path.abspath(args.output)} (image {args.image}; schema files "
        f"under {os.path.abspath(args.schema_dir)}: build the image after compiling)"
    )
    return args.output


if __name__ == "__main__":
    main()
