"""The README's main job: the full TFX pipeline on the raw Amazon Beauty logs, a small budget.

    python -m pipeline.main_job [--max_epochs 1 --batch_size 1024 --pipeline_root out/tfx]

1. Runs the TFX pipeline (pipeline/tfx_pipeline.py) with LocalDagRunner and ML Metadata in
   SQLite: SequenceExampleGen (the Beam data job, DirectRunner with 2 processes) ->
   StatisticsGen -> schema import and validation -> AnomalyGate -> Trainer (the project's
   trainer, the default preset, `--max_epochs` epochs) -> RankingEvaluator (test HR/NDCG
   on 1 + 99 lists; blessed only if on each task it beats random, every baseline and the last
   blessed model beyond the noise, unisar_tf/train/gate.py) -> Pusher
   (`<serving_dir>/unisar/<version>`, only if blessed).
2. Prints each component's state and wall time, the evaluation report, BLESSED and where the
   pushed model is or NOT BLESSED with every reason (nothing pushed), then how plain
   query-attribute matching ranks the test search lists (the semi-synthetic search task's
   difficulty, pipeline/query_matching.py).

Re-running is safe: unchanged components are cached, and a model that is already the last
blessed one is not pushed again. The default preset's best validation epoch on Beauty is the
first (docs/results.md: later epochs overfit), so one epoch gives the converged model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def verdict_reasons(report: dict) -> list:
    """Why the model was not blessed (one per failed comparison); [] when it was."""
    if report["blessed"]:
        return []
    return list(report.get("reasons") or [report["reason"]])


def blessing_verdict(report: dict, pushed: Optional[str]) -> str:
    """Plainly: BLESSED and where it went, or NOT BLESSED, why, and that nothing was pushed."""
    if report["blessed"]:
        where = f"pushed to {pushed}" if pushed else "the Pusher pushed nothing this run (cached)"
        return f"BLESSED: {report['reason']}\n{where}"
    reasons = verdict_reasons(report)
    failed = report.get("failed_comparators") or []
    return (
        "NOT BLESSED: nothing pushed; the serving model is unchanged. "
        f"{len(reasons)} reason(s):\n"
        + "\n".join(f"  - {reason}" for reason in reasons)
        + "".join(f"\n  - {note}" for note in failed)
    )


def main(argv: Optional[Sequence[str]] = None) -> dict:
    from unisar_tf import logs

    logs.setup(argv)  # first: quiet unless --verbose, before anything imports TensorFlow
    from pipeline import build_examples
    from unisar_tf.flags import deprecated_alias

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data_root",
        default=build_examples.DEFAULT_SHARED_DATA,
        help="the folder holding amazon_beauty/",
    )
    parser.add_argument("--pipeline_root", default=os.path.join(REPO_ROOT, "out", "tfx"))
    parser.add_argument(
        "--serving_dir",
        default=os.path.join(REPO_ROOT, "out", "serving"),
        help="blessed models are pushed to <serving_dir>/unisar/<version>",
    )
    parser.add_argument(
        "--max_epochs",
        type=int,
        default=1,
        help="the default preset peaks after the first epoch on Beauty",
    )
    deprecated_alias(parser, "--epochs", "--max_epochs")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=1024,
        help="rec examples per step (1,024, the preset's, gives 34 steps an epoch)",
    )
    parser.add_argument(
        "--sasrec_max_epochs",
        type=int,
        default=None,
        help="epoch budget of the learned rec baseline (SASRecTrainer) the "
        "evaluator reports and gates against (default: its own, early "
        "stopping ends it first); 0: none",
    )
    deprecated_alias(parser, "--sasrec_epochs", "--sasrec_max_epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_cache", action="store_true", help="re-run every component")
    parser.add_argument("--json", help="also write the results to this JSON file")
    logs.add_verbose_flag(parser)
    args = parser.parse_args(argv)

    from pipeline import beam_job, query_matching
    from pipeline.runners import local
    from pipeline.tfx_pipeline import PipelineOptions

    print(
        "== running the TFX pipeline on ../shared/data/amazon_beauty (LocalDagRunner)", flush=True
    )
    # A pool of 20 negatives per training example: the default preset scores all 20 against
    # the positive every step (a softmax), in a fresh order each epoch.
    # Queries of 8 words: Beauty's longest query has 6, and the spec's 50 (KuaiSAR) costs 6x
    # more work in every query tensor; truncation would be counted in the manifest.
    build_options = {"seed": args.seed, "train_negative_pool": 20, "query_len": 8}
    train_config = {
        "max_epochs": args.max_epochs,
        "seed": args.seed,
        "config_overrides": {"batch_size": args.batch_size},
    }
    # The blessing gate keeps its defaults (GateOptions, unisar_tf/train/gate_options.py).
    options = PipelineOptions(
        build_options=build_options,
        train_config=train_config,
        sasrec_max_epochs=args.sasrec_max_epochs,
    )
    rows = local.run(
        "unisar",
        args.pipeline_root,
        args.data_root,
        "amazon_beauty",
        args.serving_dir,
        list(beam_job.DEFAULT_LOCAL_BEAM_ARGS),
        os.path.join(args.pipeline_root, "metadata.sqlite"),
        options,
        enable_cache=not args.no_cache,
    )
    print("\n" + local.format_report(rows))
    by_component = {row["component"]: row for row in rows}

    # The evaluator printed its table while it ran (above the component report).
    [evaluation_uri] = by_component["RankingEvaluator"]["outputs"]["evaluation"]
    with open(os.path.join(evaluation_uri, "metrics.json")) as handle:
        report = json.load(handle)
    print(local.outcome_summary(rows))
    pushed = by_component["Pusher"].get("pushed_destination")
    print("\n" + blessing_verdict(report, pushed), flush=True)
    if pushed:
        print(
            f"serve it: python -m serving.server --model_base_path {os.path.dirname(pushed)}"
            "  (docs/serving.md)"
        )

    [examples_uri] = by_component["SequenceExampleGen"]["outputs"]["examples"]
    attributes = os.path.join(args.data_root, "amazon_beauty", "Beauty_item2attributes.json")
    matching = query_matching.matching_report(examples_uri, attributes)
    print(
        "\n== query-attribute matching on the test search lists (the search task's "
        "difficulty)\n" + query_matching.format_report(matching)
    )
    print(f"\nexamples, vocabularies and manifest: {examples_uri}")
    print(f"ML Metadata and artifacts: {args.pipeline_root}")

    summary = {
        "components": [{k: row[k] for k in ("component", "state", "seconds")} for row in rows],
        "blessed": bool(report["blessed"]),
        "reasons": verdict_reasons(report),
        "evaluation": report,
        "pushed": pushed,
        "query_matching": matching,
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
