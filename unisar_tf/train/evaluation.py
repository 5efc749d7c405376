"""Test-split report of a trained model: HR@1/5/10 and NDCG@5/10 per task, JSON + Markdown.

    python -m unisar_tf.train.evaluation --model_dir out/models/unisar --data_dir out/amazon_beauty

Scores the best validation checkpoint only (model_dir/best), never the last epoch, and puts
the non-learned baselines next to it on the same examples: popularity (training-positive
counts), random ranking, ItemKNN and (search) query match (unisar_tf/train/baselines.py).
Writes model_dir/eval/{split}_metrics.json and {split}_metrics.md.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, Mapping, Optional

import numpy as np
import tensorflow as tf

from feature_specs import CANDIDATE_ITEMS
from feature_specs.data_spec import DataSpec
from feature_specs.serving import EXAMPLES_SIGNATURE, SCORES_OUTPUT
from unisar_tf import logs
from unisar_tf.data import reader
from unisar_tf.metrics import metrics_table, random_ranking_metrics, ranking_metrics
from unisar_tf.model import UniSARModel
from unisar_tf.train.baselines import ITEMKNN, POPULARITY, QUERY_MATCH, RANDOM, baseline_scores
from unisar_tf.train.gate import failed_comparators
from unisar_tf.train.run_dir import (
    BEST_FILE,
    SASREC,
    DataMismatchError,
    load_trained_model,
    read_best,
    run_eval_batch_size,
    run_transform_dir,
    sasrec_run_dir,
)

VALIDATION_METRIC = "NDCG@5"


# ------------------------------------------------------------------------------- evaluation
def scoring_function(model: UniSARModel, task: str, manifest: dict | DataSpec):
    """A traced (B, ...) features -> (B, C) scores function for one task's eval examples."""
    shapes = reader.shapes_from_manifest(manifest)
    spec = reader.parse_spec(shapes, None, with_query=task == "search")
    signature = {
        name: tf.TensorSpec((None,) + tuple(feature.shape), tf.int64)
        for name, feature in spec.items()
    }
    signature[CANDIDATE_ITEMS] = tf.TensorSpec((None, None), tf.int64)
    return tf.function(
        lambda batch: model(batch, training=False)[task], input_signature=[signature]
    )


def score_split(
    model: UniSARModel,
    data_dir: str,
    split: str,
    task: str,
    manifest: dict | DataSpec,
    batch_size: int = 512,
    rows: Optional[int] = None,
    score=None,
) -> np.ndarray:
    """Scores (n, C) for the first `rows` examples (all if None) of a split, in file order."""
    dataset = reader.read_examples(data_dir, split, task, batch_size, manifest)
    if rows is not None:
        dataset = dataset.unbatch().take(rows).batch(batch_size)
    score = score or scoring_function(model, task, manifest)
    parts = [score(batch).numpy() for batch in dataset]
    if not parts:
        raise ValueError(f"{data_dir}: {split}/{task} has no examples")
    return np.concatenate(parts)


def evaluate_model(
    model: UniSARModel,
    data_dir: str,
    split: str,
    manifest: dict | DataSpec,
    batch_size: int = 512,
    rows: Optional[int] = None,
    scorers: Optional[dict] = None,
) -> Dict[str, Dict[str, float]]:
    """{task: HR@1/5/10, NDCG@5/10} on 1 positive + N negatives for every task of the model."""
    scorers = scorers if scorers is not None else {}
    results = {}
    for task in model.config.tasks:
        if task not in scorers:
            scorers[task] = scoring_function(model, task, manifest)
        with reader.naming_bad_files(data_dir, (split,), (task,)):  # names a damaged file
            scores = score_split(
                model, data_dir, split, task, manifest, batch_size, rows, scorers[task]
            )
        results[task] = ranking_metrics(scores)
        results[task]["examples"] = int(len(scores))
    return results


def validation_score(metrics: Mapping[str, Mapping[str, float]]) -> float:
    """Mean NDCG@5 over the model's tasks (spec 10)."""
    return float(np.mean([metrics[task][VALIDATION_METRIC] for task in metrics]))


def baseline_metrics(
    data_dir: str,
    split: str,
    manifest: dict,
    num_items: int,
    tasks=("rec", "search"),
    transform_dir: Optional[str] = None,
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """The non-learned baselines on the split's own lists: {name: {task: metrics with
    "examples"}} for "popularity", "random" (exact expectation), "ItemKNN" and, for search,
    "query match" (definitions: unisar_tf/train/baselines.py), in that order.

    Data with one scenario only (a rec-only or search-only log) counts them on that
    scenario's training examples (`single_scenario_note` says so in the report).
    """

    width = DataSpec.of(manifest).candidates.eval
    scores = baseline_scores(
        data_dir, split, manifest, num_items, tuple(tasks), transform_dir=transform_dir
    )
    results: Dict[str, Dict[str, Dict[str, float]]] = {POPULARITY: {}, RANDOM: {}}
    for name, per_task in scores.items():
        for task, values in per_task.items():
            results.setdefault(name, {})[task] = dict(ranking_metrics(values), examples=len(values))
    for task, values in scores[POPULARITY].items():
        results[RANDOM][task] = dict(random_ranking_metrics(width), examples=len(values))
    return results


def single_scenario_note(manifest: dict) -> Optional[str]:
    """Where the training-count baselines come from, for data without training examples of
    one scenario; None for data with both."""
    present = reader.tasks_with_examples(manifest, "train")
    missing = [task for task in ("rec", "search") if task not in present]
    if not missing or not present:
        return None
    return (
        f"The data has no {' or '.join(missing)} training examples: popularity, ItemKNN "
        f"and query match are counted on the {' and '.join(present)} training examples "
        "alone."
    )


def evaluate_best(
    model_dir: str,
    data_dir: str,
    split: str = "test",
    batch_size: Optional[int] = None,
    with_baselines: bool = True,
    write: bool = True,
) -> dict:
    """Scores model_dir's best checkpoint on `split`; writes and returns the report.

    Report: {"split", "data_dir", "best_epoch", "validation_score", "model": name,
    name: {task: metrics}, "popularity": ..., "random": ...}; name is "unisar", or "SASRec"
    for a run of architecture "sasrec". A UniSAR run with a SASRec run beside it
    (unisar_tf.train.learned_baseline) also gets "SASRec": {"rec": metrics}.
    """

    manifest = reader.load_manifest(data_dir, run_transform_dir(model_dir))
    model = load_trained_model(model_dir, data_dir)
    best = read_best(model_dir)
    name = SASREC if model.config.architecture == "sasrec" else "unisar"
    report = {
        "split": split,
        "data_dir": data_dir,
        "model_dir": model_dir,
        "best_epoch": best["epoch"],
        "validation_score": best["validation_score"],
        "negatives_per_example": DataSpec.of(manifest).candidates.eval - 1,
        "model": name,
        name: evaluate_model(
            model, data_dir, split, manifest, batch_size or run_eval_batch_size(model_dir)
        ),
    }
    if with_baselines and name != SASREC:
        # The learned baseline trained beside this run (unisar_tf.train.learned_baseline), if any.
        sasrec = sasrec_metrics(model_dir, data_dir, split, batch_size)
        if sasrec is not None:
            report[SASREC] = sasrec
    if with_baselines:
        with reader.naming_bad_files(data_dir, ("train", split)):  # names a damaged file
            report.update(
                baseline_metrics(
                    data_dir, split, manifest, model.data.num_items, model.config.tasks
                )
            )
        note = single_scenario_note(manifest)
        if note:
            report["note"] = note
    flags = failed_comparator_notes(report)
    if flags:
        report["failed_comparators"] = flags
    if write:
        write_report(report, os.path.join(model_dir, "eval"), split)
    return report


def sasrec_metrics(
    model_dir: str, data_dir: str, split: str = "test", batch_size: Optional[int] = None
) -> Optional[Dict[str, dict]]:
    """{"rec": metrics with "examples"} of the best SASRec checkpoint beside model_dir on
    `split`, or None when model_dir has no finished SASRec run."""
    run_dir = sasrec_run_dir(model_dir)
    if not tf.io.gfile.exists(os.path.join(run_dir, BEST_FILE)):
        return None
    model = load_trained_model(run_dir, data_dir)
    manifest = reader.load_manifest(data_dir, run_transform_dir(run_dir))
    return evaluate_model(
        model, data_dir, split, manifest, batch_size or run_eval_batch_size(run_dir)
    )


def saved_model_scores(
    export_dir: str,
    data_dir: str,
    split: str = "test",
    tasks=("rec", "search"),
    batch_size: int = 512,
) -> Dict[str, "np.ndarray"]:
    """{task: (N, C) scores} of an exported SavedModel, through its `serving_default`
    signature, one row per list (positive at column 0).

    Scores the data job's serialized examples exactly as batch inference would (the
    signature picks the search head for examples with query_tokens), so what is measured
    is the artifact that gets pushed, not the training checkpoint. Rows are in file order
    (files read one after another), as `reader.read_examples(..., shuffle=False)` and
    `reader.read_feature` read them: row i pairs with row i of the baselines' scores.
    """
    import numpy as np

    score = tf.saved_model.load(export_dir).signatures[EXAMPLES_SIGNATURE]
    results = {}
    for task in tasks:
        records = tf.data.TFRecordDataset(
            reader.example_files(data_dir, split, task), compression_type="GZIP"
        ).batch(batch_size)
        with logs.native_log_threshold():  # grappler's lines on the first call
            results[task] = np.concatenate(
                [score(examples=batch)[SCORES_OUTPUT].numpy() for batch in records]
            )
    return results


def evaluate_saved_model(
    export_dir: str,
    data_dir: str,
    split: str = "test",
    tasks=("rec", "search"),
    batch_size: int = 512,
) -> Dict[str, Dict[str, float]]:
    """{task: HR/NDCG} of an exported SavedModel, through its `serving_default` signature
    (the metrics of `saved_model_scores`)."""

    return {
        task: dict(ranking_metrics(scores), examples=int(len(scores)))
        for task, scores in saved_model_scores(
            export_dir, data_dir, split, tasks, batch_size
        ).items()
    }


# The report's comparators a failed run can leave below the floor (random, popularity).
CHECKED_COMPARATORS = (SASREC, ITEMKNN, QUERY_MATCH)


def failed_comparator_notes(report: dict) -> list:
    """One line per (comparator, task) of the report whose NDCG@10 is at or below random's or
    popularity's on that task (the gate's rule, `gate.failed_comparators`): the learned and
    co-occurrence comparators, never the report's own model."""
    names = [
        name
        for name in (*CHECKED_COMPARATORS, POPULARITY, RANDOM)
        if name in report and name != report.get("model")
    ]
    metrics = {name: report[name] for name in names}
    notes = []
    for task in ("rec", "search"):
        for name, (floor_name, floor, value) in failed_comparators(metrics, task).items():
            notes.append(
                f"{name} on {task}: NDCG@10 {value:.4f} is at or below {floor_name} "
                f"({floor:.4f}): the comparator failed; it is not a result to "
                "compare with."
            )
    return notes


def report_markdown(report: dict) -> str:
    rows = {
        name: report[name]
        for name in ("unisar", "SASRec", "popularity", "random")
        if name in report
    }
    rows.update({name: report[name] for name in ("ItemKNN", "query match") if name in report})
    flags = failed_comparator_notes(report)
    return (
        f"Test-split metrics ({report['split']}), best validation epoch "
        f"{report['best_epoch']} (mean NDCG@5 {report['validation_score']:.4f}); "
        f"1 positive + {report['negatives_per_example']} sampled negatives, ties count "
        "against the positive.\n\n"
        + metrics_table(rows)
        + (f"\n{report['note']}\n" if report.get("note") else "")
        + ("\n" + "".join(f"- {flag}\n" for flag in flags) if flags else "")
    )


def write_report(report: dict, out_dir: str, split: str) -> Dict[str, str]:
    tf.io.gfile.makedirs(out_dir)
    paths = {
        "json": os.path.join(out_dir, f"{split}_metrics.json"),
        "markdown": os.path.join(out_dir, f"{split}_metrics.md"),
    }
    with tf.io.gfile.GFile(paths["json"], "w") as out:
        out.write(json.dumps(report, indent=2, sort_keys=True))
    with tf.io.gfile.GFile(paths["markdown"], "w") as out:
        out.write(report_markdown(report))
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--split", default="test", choices=("valid", "test"))
    parser.add_argument("--batch_size", type=int, default=None)
    args = parser.parse_args(argv)

    try:
        report = evaluate_best(args.model_dir, args.data_dir, args.split, args.batch_size)
    except (
        DataMismatchError,
        reader.ManifestMismatchError,
        reader.CorruptExampleFileError,
    ) as error:  # what to do, not a traceback
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(report_markdown(report))
    print(f"written to {os.path.join(args.model_dir, 'eval')}/{args.split}_metrics.{{json,md}}")


if __name__ == "__main__":
    main()
