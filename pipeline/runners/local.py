"""Run the UniSAR TFX pipeline on this machine: LocalDagRunner, ML Metadata in SQLite.

    python -m pipeline.runners.local --data_root ../shared/data --adapter amazon_beauty \
        --pipeline_root out/tfx --serving_dir out/serving --max_users 200
    python -m pipeline.runners.local --data_root tests/fixtures/kuaisar --adapter kuaisar \
        --pipeline_root out/tfx_kuaisar --serving_dir out/serving \
        --build_option num_eval_negatives=9 --build_option train_negative_pool=10 \
        --beam_arg=--direct_running_mode=in_memory --beam_arg=--direct_num_workers=1

Beam stages run where the --beam_arg options say; without any, on the DirectRunner with 2
worker processes (beam_job.DEFAULT_LOCAL_BEAM_ARGS, as build_examples); for small slices
in-memory is quicker (--beam_arg=--direct_running_mode=in_memory
--beam_arg=--direct_num_workers=1). Prints each component's wall time, read from its ML
Metadata execution (create -> last update), and where its output artifacts are.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

from pipeline.adapters import registry
from pipeline.runners import options

DEFAULT_PIPELINE_NAME = "unisar"


def metadata_config(path: str):
    from tfx import v1 as tfx

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return tfx.orchestration.metadata.sqlite_metadata_connection_config(path)


def run(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    adapter: str,
    serving_dir: str,
    beam_pipeline_args: Sequence[str],
    metadata_path: str,
    options=None,
    enable_cache: bool = True,
    **deprecated_keywords,
) -> List[dict]:
    """Runs the pipeline; returns `executions_since` for this run (one dict per component).
    A failing component raises (e.g. AnomalyGate's AnomaliesFound). options: create_pipeline's
    PipelineOptions (build, training, the blessing gate); its former loose keywords still
    work for one release, with a DeprecationWarning."""
    from tfx import v1 as tfx

    from pipeline.tfx_pipeline import create_pipeline, options_or_keywords

    options = options_or_keywords("run", options, deprecated_keywords)
    if options.trainer_resources:
        raise ValueError(
            "trainer resources (--trainer_cpu, ...) are container resources on "
            "Kubeflow; LocalDagRunner runs every component in this process"
        )
    config = metadata_config(metadata_path)
    pipeline = create_pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        data_root=data_root,
        adapter=adapter,
        serving_dir=serving_dir,
        beam_pipeline_args=list(beam_pipeline_args),
        metadata_connection_config=config,
        options=options,
        enable_cache=enable_cache,
    )
    started_ms = int(time.time() * 1000)
    tfx.orchestration.LocalDagRunner().run(pipeline)
    return executions_since(config, pipeline_name, started_ms)


def executions_since(config, pipeline_name: str, since_ms: int) -> List[dict]:
    """Executions of the pipeline's components registered at or after since_ms, in order:
    {"component", "state" (COMPLETE, CACHED, FAILED...), "seconds", "inputs" and "outputs":
    {key: [uri]}}.
    MLMD keeps create and last-update times per execution, i.e. the component's run."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    store = metadata_store.MetadataStore(config)
    prefix = f"{pipeline_name}."
    rows = []
    for context in store.get_contexts_by_type("node"):
        if not context.name.startswith(prefix):
            continue
        for execution in store.get_executions_by_context(context.id):
            if execution.create_time_since_epoch < since_ms:
                continue
            outputs: Dict[str, List[str]] = {}
            events = store.get_events_by_execution_ids([execution.id])
            output_ids = {
                event.artifact_id: event.path.steps[0].key
                for event in events
                if event.type == metadata_store_pb2.Event.OUTPUT
            }
            input_keys = {
                event.artifact_id: event.path.steps[0].key
                for event in events
                if event.type == metadata_store_pb2.Event.INPUT
            }
            inputs: Dict[str, List[str]] = {}
            for artifact in store.get_artifacts_by_id(list(input_keys)):
                inputs.setdefault(input_keys[artifact.id], []).append(artifact.uri)
            pushed_destination = None
            for artifact in store.get_artifacts_by_id(list(output_ids)):
                outputs.setdefault(output_ids[artifact.id], []).append(artifact.uri)
                pushed = artifact.custom_properties.get("pushed")
                if pushed is not None and pushed.int_value == 1:  # the Pusher's PushedModel
                    pushed_destination = artifact.custom_properties[
                        "pushed_destination"
                    ].string_value
            rows.append(
                {
                    "pushed_destination": pushed_destination,
                    "component": context.name[len(prefix) :],
                    "state": metadata_store_pb2.Execution.State.Name(execution.last_known_state),
                    "seconds": (
                        execution.last_update_time_since_epoch - execution.create_time_since_epoch
                    )
                    / 1000.0,
                    "started_ms": execution.create_time_since_epoch,
                    "inputs": inputs,
                    "outputs": outputs,
                }
            )
    return sorted(rows, key=lambda row: row["started_ms"])


def format_report(rows: List[dict]) -> str:
    lines = [f"{'component':<26} {'state':<9} {'seconds':>8}  outputs"]
    for row in rows:
        outputs = "; ".join(
            f"{key}: {', '.join(uris)}" for key, uris in sorted(row["outputs"].items())
        )
        lines.append(
            f"{row['component']:<26} {row['state']:<9} {row['seconds']:>8.1f}  " f"{outputs}"
        )
    lines.append(f"{'total':<26} {'':<9} {sum(r['seconds'] for r in rows):>8.1f}")
    return "\n".join(lines)


def outcome_summary(rows: List[dict]) -> str:
    """Where this run's evaluation report is, whether it was blessed, and what was pushed."""
    by_component = {row["component"]: row for row in rows}
    lines = []
    evaluator = by_component.get("RankingEvaluator")
    if evaluator:
        for uri in evaluator["outputs"].get("evaluation", []):
            lines.append(f"evaluation report: {os.path.join(uri, 'metrics.md')}")
        for uri in evaluator["outputs"].get("blessing", []):
            blessed = os.path.exists(os.path.join(uri, "BLESSED"))
            lines.append(f"blessing: {'BLESSED' if blessed else 'NOT BLESSED'} ({uri})")
    pusher = by_component.get("Pusher")
    pushed = pusher and pusher.get("pushed_destination")
    lines.append(
        f"pushed model: {pushed}"
        if pushed
        else "pushed model: none this run (not blessed, or cached)"
    )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    from unisar_tf import logs

    logs.setup(argv)  # first: quiet unless --verbose, before anything imports TensorFlow
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data_root", required=True, help="raw data (see SequenceExampleGen)")
    parser.add_argument(
        "--adapter",
        default="amazon_beauty",
        help="a registered adapter: " + ", ".join(sorted(registry.adapters())),
    )
    parser.add_argument("--pipeline_root", required=True, help="artifacts go here")
    parser.add_argument(
        "--serving_dir", required=True, help="where the Pusher will write unisar/<version>"
    )
    parser.add_argument(
        "--metadata", help="ML Metadata SQLite file " "(default <pipeline_root>/metadata.sqlite)"
    )
    parser.add_argument("--pipeline_name", default=DEFAULT_PIPELINE_NAME)
    parser.add_argument("--no_cache", action="store_true", help="re-run every component")
    options.add_pipeline_options(parser)  # build, Beam, training and gate options
    logs.add_verbose_flag(parser)
    args = parser.parse_args(argv)

    from pipeline import beam_job

    pipeline_options = options.pipeline_options(parser, args)
    beam_args = args.beam_arg or list(beam_job.DEFAULT_LOCAL_BEAM_ARGS)
    metadata_path = args.metadata or os.path.join(args.pipeline_root, "metadata.sqlite")
    rows = run(
        args.pipeline_name,
        args.pipeline_root,
        args.data_root,
        args.adapter,
        args.serving_dir,
        beam_args,
        metadata_path,
        pipeline_options,
        enable_cache=not args.no_cache,
    )
    print(format_report(rows))
    print(outcome_summary(rows))
    print(
        f"\nML Metadata: {os.path.abspath(metadata_path)}; artifacts under "
        f"{os.path.abspath(args.pipeline_root)}",
        file=sys.stderr,
    )
    return rows


if __name__ == "__main__":
    main()
