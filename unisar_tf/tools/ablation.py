"""Ablation runner: UniSAR and every spec-12 variant, same data, seed and budget (Table 5).

    python -m unisar_tf.tools.ablation --data_dir out/amazon_beauty --out_dir out/ablation \
        --max_epochs 10

Each variant trains with the trainer (early stopping on validation mean NDCG@5, test metrics
from its best checkpoint) into out_dir/<variant>/. Baselines give the numbers a scale: the
non-learned popularity (training-positive counts), ItemKNN and (search) query match
(unisar_tf/train/baselines.py), and a trained model without history (user + item + query
embeddings into the same heads). Writes out_dir/ablation.{md,json,png}.

`--variant_set default_preset` trains the default preset's additions taken out one at a time
instead (config.DEFAULT_PRESET_ABLATIONS, Δ against "default"); `--variants` picks names from
either set.

Finished variants are reused on a re-run (their test report exists), so an interrupted
ablation continues where it stopped; unfinished ones resume from their last epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from typing import Dict, List, Optional, Sequence

import tensorflow as tf

from unisar_tf import logs
from unisar_tf.config import ABLATIONS, BASELINES, DEFAULT_PRESET_ABLATIONS, preset
from unisar_tf.data import reader
from unisar_tf.train.evaluation import baseline_metrics, evaluate_best, write_report
from unisar_tf.train.trainer import Trainer, TrainerOptions

JOINT_PAIR = ("w/o joint training (rec)", "w/o joint training (search)")
TABLE_METRICS = ("NDCG@5", "NDCG@10")
NON_LEARNED = ("popularity", "ItemKNN", "query match")  # table rows, in this order
# --variant_set: spec 12's variants with the trained baselines, or the default preset's
# additions one at a time; the table's deltas are against the set's reference (REFERENCES).
VARIANT_SETS = {
    "spec12": {**ABLATIONS, **BASELINES},
    "default_preset": dict(DEFAULT_PRESET_ABLATIONS),
}
REFERENCES = ("UniSAR", "default")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def variant_overrides(
    names: Optional[Sequence[str]] = None, variant_set: str = "spec12"
) -> Dict[str, dict]:
    """Variant name -> config overrides: every variant of `variant_set` (VARIANT_SETS; spec 12
    plus the trained baselines by default), or the named ones, from any set."""
    if not names:
        return dict(VARIANT_SETS[variant_set])
    everything = {}
    for variants in VARIANT_SETS.values():
        everything.update(variants)
    unknown = [name for name in names if name not in everything]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {sorted(everything)}")
    return {name: everything[name] for name in names}


def run_variant(name: str, overrides: dict, args: argparse.Namespace) -> dict:
    """Trains (or reuses) one variant; returns its test report."""

    model_dir = os.path.join(args.out_dir, slug(name))
    report_path = os.path.join(model_dir, "eval", "test_metrics.json")
    if tf.io.gfile.exists(report_path):
        with tf.io.gfile.GFile(report_path) as handle:
            print(f"[{name}] reusing {report_path}", flush=True)
            return json.load(handle)
    config = preset(args.preset, seed=args.seed, **dict(args.base_overrides, **overrides))
    options = TrainerOptions(
        data_dir=args.data_dir,
        model_dir=model_dir,
        max_epochs=args.max_epochs,
        seed=args.seed,
        steps_per_epoch=args.steps_per_epoch,
        validation_rows=args.validation_rows,
        verbose=args.verbose,
    )
    print(f"[{name}] training into {model_dir}", flush=True)
    started = time.time()
    summary = Trainer(config, options).fit()
    report = evaluate_best(model_dir, args.data_dir, "test", with_baselines=False, write=False)
    report.update(
        variant=name,
        overrides={k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
        epochs_run=summary["epochs_run"],
        stopped_early=summary["stopped_early"],
        train_seconds=time.time() - started,
    )
    write_report(report, os.path.join(model_dir, "eval"), "test")
    return report


def model_metrics(report: dict) -> Dict[str, dict]:
    """{task: metrics} of the trained model of an evaluate_best report (UniSAR or SASRec)."""
    return report[report.get("model", "unisar")]


def table_rows(reports: Dict[str, dict], baselines: Dict[str, dict]) -> List[dict]:
    """One row per variant: {"name", "rec": metrics or None, "search": ..., "epochs": ...}.

    A single-task model (SASRec, one half of "w/o joint training") has None for the other task.
    """
    rows = []
    for name, report in reports.items():
        if name in JOINT_PAIR:
            continue
        rows.append(
            {
                "name": name,
                "rec": model_metrics(report).get("rec"),
                "search": model_metrics(report).get("search"),
                "best_epoch": report["best_epoch"],
                "epochs_run": report.get("epochs_run"),
            }
        )
    if all(name in reports for name in JOINT_PAIR):  # two single-task models, one row
        rec, search = (reports[name] for name in JOINT_PAIR)
        rows.insert(
            len([r for r in rows if r["name"] in ABLATIONS]),
            {
                "name": "w/o joint training",
                "rec": model_metrics(rec)["rec"],
                "search": model_metrics(search)["search"],
                "best_epoch": f"{rec['best_epoch']}/{search['best_epoch']}",
                "epochs_run": f"{rec.get('epochs_run')}/{search.get('epochs_run')}",
            },
        )
    # The non-learned baselines (random stays in the JSON); query match has search only.
    for name in NON_LEARNED:
        if name in baselines:
            rows.append(
                {
                    "name": name,
                    "rec": baselines[name].get("rec"),
                    "search": baselines[name].get("search"),
                    "best_epoch": "-",
                    "epochs_run": "-",
                }
            )
    return rows


def _cell(metrics: Optional[dict]) -> str:
    if metrics is None:
        return "-"
    return " / ".join(f"{metrics[name]:.4f}" for name in TABLE_METRICS)


def ablation_markdown(rows: List[dict], header: str) -> str:
    reference = next((row for row in rows if row["name"] in REFERENCES), None)
    lines = [
        header,
        "",
        "| variant | rec NDCG@5 / NDCG@10 | search NDCG@5 / NDCG@10 | "
        "Δ rec NDCG@10 | Δ search NDCG@10 | best epoch | epochs run |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        deltas = []
        for task in ("rec", "search"):
            if (
                reference is None
                or row[task] is None
                or reference[task] is None
                or row is reference
            ):
                deltas.append("")
            else:
                deltas.append(f"{row[task]['NDCG@10'] - reference[task]['NDCG@10']:+.4f}")
        lines.append(
            f"| {row['name']} | {_cell(row['rec'])} | {_cell(row['search'])} | "
            f"{deltas[0]} | {deltas[1]} | {row['best_epoch']} | {row['epochs_run']} |"
        )
    return "\n".join(lines) + "\n"


def bar_chart(rows: List[dict], path: str, title: str) -> None:
    """Grouped bars of test NDCG@10 per variant, one bar per task."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import numpy as np

    names = [row["name"] for row in rows]
    positions = np.arange(len(rows))
    width = 0.4
    figure, axes = plt.subplots(figsize=(max(8, 0.75 * len(rows)), 4.5))
    for offset, task in ((-width / 2, "rec"), (width / 2, "search")):
        values = [row[task]["NDCG@10"] if row[task] else 0.0 for row in rows]
        bars = axes.bar(positions + offset, values, width, label=task)
        axes.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    axes.set_xticks(positions)
    axes.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    axes.set_ylabel("test NDCG@10")
    axes.set_title(title, fontsize=9)
    axes.legend()
    axes.margins(y=0.15)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(args: argparse.Namespace) -> dict:
    tf.io.gfile.makedirs(args.out_dir)
    variants = variant_overrides(args.variants, args.variant_set)
    manifest = reader.load_spec(args.data_dir)
    num_items = manifest.vocab_sizes.item_table
    baselines = baseline_metrics(args.data_dir, "test", manifest, num_items)
    budget = (
        f"max {args.max_epochs} epochs"
        + (f" x {args.steps_per_epoch} steps" if args.steps_per_epoch else "")
        + ", early stopping on validation"
    )
    reference = next((name for name in variants if name in REFERENCES), "UniSAR")
    header = (
        f"Test NDCG@5 / NDCG@10 on `{args.data_dir}` ({args.preset} preset, seed "
        f"{args.seed}, {budget}); Δ is against {reference}. Each model is scored from "
        "its best validation epoch."
    )
    paths = {kind: os.path.join(args.out_dir, f"ablation.{kind}") for kind in ("md", "json", "png")}
    reports: Dict[str, dict] = {}
    for name, overrides in variants.items():
        reports[name] = run_variant(name, overrides, args)
        # Written after every variant, so a long ablation can be read while it runs.
        rows = table_rows(reports, baselines)
        result = {
            "data_dir": args.data_dir,
            "preset": args.preset,
            "seed": args.seed,
            "max_epochs": args.max_epochs,
            "steps_per_epoch": args.steps_per_epoch,
            "base_overrides": args.base_overrides,
            "rows": rows,
            "random": baselines["random"],
            "pending": [n for n in variants if n not in reports],
        }
        with tf.io.gfile.GFile(paths["md"], "w") as out:
            pending = result["pending"]
            out.write(
                ablation_markdown(rows, header)
                + (f"\nStill to run: {', '.join(pending)}.\n" if pending else "")
            )
        with tf.io.gfile.GFile(paths["json"], "w") as out:
            out.write(json.dumps(result, indent=2, sort_keys=True))
    bar_chart(
        rows, paths["png"], f"UniSAR ablations, {os.path.basename(os.path.normpath(args.data_dir))}"
    )
    print(ablation_markdown(rows, header))
    print("written: " + ", ".join(paths.values()))
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_epochs", type=int, default=10)
    parser.add_argument("--steps_per_epoch", type=int, default=None)
    parser.add_argument("--validation_rows", type=int, default=None)
    parser.add_argument(
        "--variant_set",
        default="spec12",
        choices=sorted(VARIANT_SETS),
        help="spec12: spec 12's variants and the trained baselines; "
        "default_preset: the default preset's additions one at a time "
        "(use with --preset default)",
    )
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated subset from either set, e.g. 'UniSAR,w/o r2r,"
        "no history' or 'default,w/o wide term'",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="config override for every variant, " "e.g. --set batch_size=512 --set use_mmoe=false",
    )
    parser.add_argument(
        "--verbose", type=int, default=1, help="0 silent, 1 a line per epoch, 2 also a progress bar"
    )
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
    try:
        args.base_overrides = parse_set_overrides(args.overrides)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    return args


def parse_set_overrides(texts: Sequence[str]) -> Dict[str, object]:
    """`--set FIELD=VALUE` flags -> {field: value}, VALUE read as JSON when it parses
    (numbers, booleans, lists), else kept as text; ValueError without the "="."""
    overrides: Dict[str, object] = {}
    for text in texts:
        key, separator, value = text.partition("=")
        if not separator:
            raise ValueError(f"--set expects FIELD=VALUE, got {text!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def main(argv=None) -> None:
    logs.setup([])  # the Trainer's progress lines; --verbose here is the Trainer's level
    args = parse_args(argv)
    # Each variant builds and traces its own model; TF's retracing warnings are expected here.
    tf.get_logger().setLevel("ERROR")
    run(args)


if __name__ == "__main__":
    main()
