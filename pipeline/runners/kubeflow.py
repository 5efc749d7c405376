"""Compile the UniSAR TFX pipeline for Kubeflow Pipelines (KFP v2 / Vertex AI Pipelines).

    python -m pipeline.runners.kubeflow --image REGISTRY/unisar-tfx:TAG \
        --pipeline_root gs://BUCKET/tfx --data_root gs://BUCKET/raw --adapter amazon_beauty \
        --serving_dir gs://BUCKET/serving --output unisar_pipeline.json \
        --beam_arg=--runner=DataflowRunner --beam_arg=--project=PROJECT \
        --beam_arg=--region=REGION --beam_arg=--temp_location=gs://BUCKET/tmp

writes the pipeline spec (JSON) that `kfp` submits (`kfp.client.Client().create_run_from_
pipeline_package(...)`) or that Vertex AI Pipelines runs. The pipeline is the same
`create_pipeline` the local runner uses; only the runner differs. Beam stages run where the
--beam_arg options say (DirectRunner inside the container by default; Dataflow, Flink or
Spark by options, not code). The image is built from the repo's Dockerfile.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional, Sequence

DEFAULT_IMAGE = "unisar-tfx:latest"
DEFAULT_PIPELINE_NAME = "unisar"


def compile_pipeline(output: str, image: str, pipeline_root: str, data_root: str, adapter: str,
                     serving_dir: str, beam_pipeline_args: Sequence[str],
                     pipeline_name: str = DEFAULT_PIPELINE_NAME,
                     build_options: Optional[dict] = None) -> dict:
    """Write the KFP v2 pipeline JSON to `output` and return it as a dict."""
    from tfx import v1 as tfx

    from pipeline.tfx_pipeline import create_pipeline

    pipeline = create_pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root, data_root=data_root,
        adapter=adapter, serving_dir=serving_dir,
        beam_pipeline_args=list(beam_pipeline_args),
        # Kubeflow supplies ML Metadata itself; the pipeline must not name a database.
        metadata_connection_config=None, build_options=build_options)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            display_name=pipeline_name, default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output)),
        output_filename=os.path.basename(output))
    return runner.run(pipeline, write_out=True)


def main(argv: Optional[List[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--image", default=DEFAULT_IMAGE,
                        help="container image every component runs in (see Dockerfile)")
    parser.add_argument("--pipeline_name", default=DEFAULT_PIPELINE_NAME)
    parser.add_argument("--pipeline_root", required=True,
                        help="artifact root the cluster can write (e.g. gs://bucket/tfx)")
    parser.add_argument("--data_root", required=True, help="raw logs, as the cluster sees them")
    parser.add_argument("--adapter", default="amazon_beauty",
                        help="input adapter / dataset name (pipeline.build_examples)")
    parser.add_argument("--serving_dir", required=True,
                        help="where the Pusher writes unisar/<version> (the volume or bucket "
                             "TF Serving watches)")
    parser.add_argument("--output", default="unisar_pipeline.json")
    parser.add_argument("--beam_arg", action="append", default=[],
                        help="a Beam pipeline option, repeatable, e.g. "
                             "--beam_arg=--runner=DataflowRunner")
    args = parser.parse_args(argv)
    compile_pipeline(args.output, args.image, args.pipeline_root, args.data_root, args.adapter,
                     args.serving_dir, args.beam_arg, args.pipeline_name)
    print(f"pipeline spec: {os.path.abspath(args.output)} (image {args.image})")
    return args.output


if __name__ == "__main__":
    main()
