"""RankingEvaluator: HR/NDCG of the trained SavedModel on the test split, and the blessing.

Why not TFMA's Evaluator: every UniSAR example is one ranked list (1 positive + 99
negatives in `candidate_items`, scored together so the user's history is encoded once), and
the metrics are per-list ranks (HR@k, NDCG@k of the positive). TFMA computes ranking metrics
over one example per (query, item) pair grouped by a query key, so it would need the test
split flattened 100x into pair examples and a model signature scoring pairs; this component
scores the lists through the model's own `serving_default` signature instead, which is the
artifact the Pusher pushes (unisar_tf.train.evaluation.saved_model_scores).

Blessing rule (unisar_tf/train/gate.py): the candidate's per-list NDCG@10 is compared, list by
list on the same test lists, with random ranking (its exact expectation), every non-learned
baseline (popularity, ItemKNN, query match: unisar_tf.train.baselines), on rec the learned
baseline when given (`learned_baseline`: SASRecTrainer's SASRec, unisar_tf.train.learned_baseline)
and, when given (`baseline_model`, from a LatestBlessedModelStrategy resolver), the last
blessed model. It is
blessed only if, on EACH task separately and against EACH of them, the one-sided lower
`confidence` bound of the mean difference (seeded paired bootstrap) is above 0 and the mean
difference is above `min_improvement` (absolute) and above `min_relative_improvement` times
the comparator's NDCG@10 (the settings: GateOptions, unisar_tf/train/gate_options.py); a
refusal names the task, the comparator and both numbers. A comparator at or below random's
or popularity's NDCG@10 on a task (e.g. a SASRec or last blessed model that failed to learn)
is flagged there: the gate could not compare with it, never counts it as beaten, and the
report says so under the verdict. A mean over tasks
never decides. The last blessed model itself (a re-run whose Trainer was
cached) is not blessed again, so re-running never pushes a duplicate. The ModelBlessing
artifact carries the custom properties TFX's Pusher and LatestBlessedModelStrategy read
(`blessed`, `current_model_id`), the `reason`, and a BLESSED / NOT_BLESSED file, as TFX's
Evaluator writes; the report (JSON + Markdown: every model's metrics and the gate's rows)
goes to the ModelEvaluation artifact.
"""

import json
import os
import warnings
from typing import TYPE_CHECKING, Dict, Optional, Sequence

from tfx import v1 as tfx
from tfx.types import standard_artifacts

from unisar_tf.train.gate_options import DEFAULTS, GateOptions

if TYPE_CHECKING:  # annotations only: the component module loads without NumPy work
    import numpy as np

SCORE_METRIC = "NDCG@10"


def __getattr__(name: str):
    """GATE_DEFAULTS, deprecated: the gate's defaults are GateOptions()'s fields."""
    if name == "GATE_DEFAULTS":
        warnings.warn(
            "ranking_evaluator.GATE_DEFAULTS is deprecated and will be removed in "
            "the next release: use GateOptions().to_dict() "
            "(unisar_tf.train.gate_options)",
            DeprecationWarning,
            stacklevel=2,
        )
        return DEFAULTS.to_dict()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def mean_score(metrics: Dict[str, Dict[str, float]]) -> float:
    return sum(task[SCORE_METRIC] for task in metrics.values()) / len(metrics)


def compute_baseline_scores(
    data_dir: str,
    split: str,
    manifest: dict,
    num_items: int,
    tasks: Sequence[str] = ("rec", "search"),
    transform_dir: Optional[str] = None,
) -> Dict[str, Dict[str, "np.ndarray"]]:
    """{baseline: {task: (N, C) scores}} of every non-learned baseline (popularity, ItemKNN,
    query match: `unisar_tf.train.baselines.baseline_scores`), rows paired with the model's."""
    from unisar_tf.train.baselines import baseline_scores

    return baseline_scores(
        data_dir, split, manifest, num_items, tuple(tasks), transform_dir=transform_dir
    )


def metrics_of(scores: Dict[str, "np.ndarray"]) -> Dict[str, Dict[str, float]]:
    """{task: HR/NDCG and examples} of {task: (N, C) scores}."""
    from unisar_tf.metrics import ranking_metrics

    return {
        task: dict(ranking_metrics(values), examples=int(len(values)))
        for task, values in scores.items()
    }


def report_markdown(report: dict) -> str:
    """The evaluation table (candidate, last blessed, popularity, random, every baseline,
    both tasks), the gate's per-task comparisons, and the verdict with its reasons and the
    comparators it could not compare with (they failed: at or below random or popularity)."""
    from unisar_tf.metrics import metrics_table
    from unisar_tf.train import gate

    rows = {"candidate": report["candidate"]}
    if report.get("baseline_model"):
        rows[gate.LAST_BLESSED] = report["baseline_model"]
    rows.update(report["baselines"])
    verdict = "BLESSED" if report["blessed"] else "NOT BLESSED"
    decision = report["gate"]
    settings = decision["settings"]
    needs = []
    if settings["confidence"]:
        needs.append(
            f"its {settings['confidence']:.0%} lower bound (paired bootstrap, "
            f"{settings['bootstrap_samples']} resamples, seed {settings['seed']}) "
            "above 0"
        )
    needs.append(f"a difference above {settings['min_improvement']}")
    if settings["min_relative_improvement"]:
        needs.append(
            f"above {settings['min_relative_improvement']:g} x the comparator's " f"{SCORE_METRIC}"
        )
    rule = (
        f"Gate: on each task, {SCORE_METRIC} minus each comparator's, list by list; "
        "needs "
        + " and ".join(needs)
        + ("" if settings["confidence"] else " (noise test off: confidence 0)")
        + "."
    )
    failed = report.get("failed_comparators", decision.get("failed_comparators", []))
    if report["blessed"]:
        # The reason ends with the could-not-compare notes, listed on their own below.
        said = report["reason"]
        suffix = "".join(f"; {note}" for note in failed)
        if failed and said.endswith(suffix):
            said = said[: -len(suffix)]
        why = f"**{verdict}**: {said}\n"
    else:
        why = f"**{verdict}**:\n" + "".join(f"- {reason}\n" for reason in report["reasons"])
    if failed:
        why += (
            "\n**Could not compare** (the comparator's NDCG@10 is at or below random's or "
            "popularity's: it failed, and is not counted as beaten):\n"
            + "".join(f"- {note}\n" for note in failed)
        )
    return (
        f"Split `{report['split']}`; 1 positive + "
        f"{report['candidates'] - 1} negatives per list.\n\n"
        + metrics_table(rows)
        + "\n"
        + rule
        + "\n\n"
        + gate.comparison_table(decision)
        + "\n"
        + why
    )


def score_last_blessed(
    export_dir: str, data_dir: str, split: str, tasks
) -> Dict[str, "np.ndarray"]:
    """The last blessed model's per-list scores on these examples, or a clear error if that model
    reads another example format (e.g. one exported before Transform joined the pipeline:
    its serving_default parses ids, these examples carry raw strings)."""
    import tensorflow as tf

    from unisar_tf.train.evaluation import saved_model_scores

    try:
        return saved_model_scores(export_dir, data_dir, split, tasks)
    except tf.errors.InvalidArgumentError as error:
        raise RuntimeError(
            f"the last blessed model {export_dir} cannot read the examples in {data_dir} "
            "(it was exported for another example format, e.g. before Transform owned the "
            "ids): run the pipeline with a fresh pipeline root or metadata store, or retire "
            f"that model's blessing; parser said: {str(error).splitlines()[0][:300]}"
        ) from error


@tfx.dsl.components.component
def RankingEvaluator(  # noqa: N802 (TFX component names are classes)
    examples: tfx.dsl.components.InputArtifact[standard_artifacts.Examples],
    model: tfx.dsl.components.InputArtifact[standard_artifacts.Model],
    evaluation: tfx.dsl.components.OutputArtifact[standard_artifacts.ModelEvaluation],
    blessing: tfx.dsl.components.OutputArtifact[standard_artifacts.ModelBlessing],
    baseline_model: tfx.dsl.components.InputArtifact[standard_artifacts.Model] = None,
    learned_baseline: tfx.dsl.components.InputArtifact[standard_artifacts.Model] = None,
    transform_graph: tfx.dsl.components.InputArtifact[standard_artifacts.TransformGraph] = None,
    split: tfx.dsl.components.Parameter[str] = "test",
    # GateOptions' fields, one execution property each (GateOptions.to_dict(); TFX needs
    # them spelled out), their defaults read from it.
    min_improvement: tfx.dsl.components.Parameter[float] = DEFAULTS.min_improvement,
    min_relative_improvement: tfx.dsl.components.Parameter[float] = (
        DEFAULTS.min_relative_improvement
    ),
    confidence: tfx.dsl.components.Parameter[float] = DEFAULTS.confidence,
    bootstrap_samples: tfx.dsl.components.Parameter[int] = DEFAULTS.bootstrap_samples,
    seed: tfx.dsl.components.Parameter[int] = DEFAULTS.seed,
) -> None:
    """Scores `model` on the test lists, compares with the baselines, writes the blessing.

    transform_graph: the Transform output the examples' raw ids go through (the pipeline's).
    learned_baseline: SASRecTrainer's model (the learned rec baseline), scored through its
    export like the model and compared with it on the rec task.
    min_improvement, min_relative_improvement, confidence, bootstrap_samples, seed: the
    blessing gate's settings, GateOptions' fields (unisar_tf/train/gate_options.py).
    """
    from tfx.utils import path_utils

    from unisar_tf.data import reader
    from unisar_tf.metrics import random_ranking_metrics
    from unisar_tf.train import gate
    from unisar_tf.train.baselines import BASELINE_ORDER
    from unisar_tf.train.evaluation import saved_model_scores
    from unisar_tf.train.run_dir import SASREC

    data_dir = examples.uri
    transform_dir = transform_graph.uri if transform_graph else None
    # Raw-id examples: the baselines count items by Transform's ids; the models map the
    # same raw examples with the graph inside their serving_default signature.
    manifest = reader.load_spec(data_dir, transform_dir)
    tasks = [t for t in ("rec", "search") if manifest.examples.count(split, t)]
    width = manifest.candidates.eval
    # Every score matrix below has row i = list i in file order, so they pair up.
    candidate_scores = saved_model_scores(
        path_utils.serving_model_path(model.uri), data_dir, split, tasks
    )
    baseline_scores = compute_baseline_scores(
        data_dir,
        split,
        manifest,
        manifest.vocab_sizes.item_table,
        tasks,
        transform_dir=transform_dir,
    )
    comparators = dict(baseline_scores)
    if learned_baseline is not None and "rec" in tasks:
        comparators[SASREC] = saved_model_scores(
            path_utils.serving_model_path(learned_baseline.uri), data_dir, split, ["rec"]
        )
    # A re-run whose Trainer was cached: the resolver returns this very model.
    same_model = baseline_model is not None and baseline_model.id == model.id
    if baseline_model is not None and not same_model:
        comparators[gate.LAST_BLESSED] = score_last_blessed(
            path_utils.serving_model_path(baseline_model.uri), data_dir, split, tasks
        )
    options = GateOptions(
        min_improvement=min_improvement,
        min_relative_improvement=min_relative_improvement,
        confidence=confidence,
        bootstrap_samples=bootstrap_samples,
        seed=seed,
    )
    decision = gate.decide(candidate_scores, comparators, options)
    if same_model:
        # This model is already blessed and pushed; blessing it again would push a duplicate.
        decision = decision.refuse(
            f"model {model.id} is already the last blessed model; not " "blessed (or pushed) again"
        )

    candidate = metrics_of(candidate_scores)
    baselines = {name: metrics_of(per_task) for name, per_task in baseline_scores.items()}
    if SASREC in comparators:
        baselines[SASREC] = metrics_of(comparators[SASREC])
    baselines[gate.RANDOM] = {
        task: dict(random_ranking_metrics(width), examples=candidate[task]["examples"])
        for task in tasks
    }
    # Report order: popularity, random, ItemKNN, query match (then anything new).
    baselines = {
        name: baselines[name]
        for name in [
            *(n for n in BASELINE_ORDER if n in baselines),
            *(n for n in baselines if n not in BASELINE_ORDER),
        ]
    }
    last_blessed = None
    if same_model:
        last_blessed = candidate
    elif baseline_model is not None:
        last_blessed = metrics_of(comparators[gate.LAST_BLESSED])
    report = {
        "split": split,
        "candidates": width,
        "candidate": candidate,
        "popularity": baselines["popularity"],
        "random": baselines[gate.RANDOM],
        "baselines": baselines,
        "baseline_model": last_blessed,
        "blessed": decision.blessed,
        "reason": decision.reason,
        "reasons": list(decision.reasons),
        "failed_comparators": list(decision.failed_comparators),
        "gate": decision.to_dict(),
    }
    with open(os.path.join(evaluation.uri, "metrics.json"), "w") as out:
        json.dump(report, out, indent=2, sort_keys=True)
    markdown = report_markdown(report)
    with open(os.path.join(evaluation.uri, "metrics.md"), "w") as out:
        out.write(markdown)

    blessed = bool(decision.blessed)
    with open(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w"):
        pass
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_int_custom_property("current_model_id", model.id)
    blessing.set_string_custom_property("current_model", model.uri)
    blessing.set_string_custom_property("reason", decision.reason)
    blessing.set_float_custom_property(SCORE_METRIC, mean_score(candidate))
    for task in tasks:
        blessing.set_float_custom_property(f"{SCORE_METRIC}_{task}", candidate[task][SCORE_METRIC])
    if baseline_model is not None:
        blessing.set_int_custom_property("baseline_model_id", baseline_model.id)
    evaluation.set_float_custom_property(SCORE_METRIC, mean_score(candidate))
    print(markdown, flush=True)
