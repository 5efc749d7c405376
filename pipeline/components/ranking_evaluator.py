"""RankingEvaluator: HR/NDCG of the trained SavedModel on the test split, and the blessing.

Why not TFMA's Evaluator: every UniSAR example is one ranked list (1 positive + 99
negatives in `candidate_items`, scored together so the user's history is encoded once), and
the metrics are per-list ranks (HR@k, NDCG@k of the positive). TFMA computes ranking metrics
over one example per (query, item) pair grouped by a query key, so it would need the test
split flattened 100x into pair examples and a model signature scoring pairs; this component
scores the lists through the model's own `serving_default` signature instead, which is the
artifact the Pusher pushes (unisar_tf.evaluate.evaluate_saved_model).

Blessing rule: the model is blessed when its mean NDCG@10 over the tasks beats popularity
ranking on the same test lists by more than `min_improvement`, and, when a previously
blessed model is given (`baseline_model`, from a LatestBlessedModelStrategy resolver), beats
that model's score on this data too. The last blessed model itself (a re-run whose Trainer
was cached) is not blessed again, so re-running never pushes a duplicate. The ModelBlessing artifact carries the custom
properties TFX's Pusher and LatestBlessedModelStrategy read (`blessed`, `current_model_id`)
and a BLESSED / NOT_BLESSED file, as TFX's Evaluator writes; the report (JSON + Markdown)
goes to the ModelEvaluation artifact.
"""

import json
import os
from typing import Dict, Optional

from tfx import v1 as tfx
from tfx.types import standard_artifacts

SCORE_METRIC = "NDCG@10"


def mean_score(metrics: Dict[str, Dict[str, float]]) -> float:
    return sum(task[SCORE_METRIC] for task in metrics.values()) / len(metrics)


def blessing_decision(candidate: float, popularity: float, baseline: Optional[float],
                      min_improvement: float) -> Dict[str, object]:
    """Whether to bless, and why (the reason is kept on the artifact)."""
    if candidate <= popularity + min_improvement:
        return {"blessed": False, "reason": f"{SCORE_METRIC} {candidate:.4f} does not beat "
                f"popularity {popularity:.4f} by more than {min_improvement}"}
    if baseline is not None and candidate <= baseline + min_improvement:
        return {"blessed": False, "reason": f"{SCORE_METRIC} {candidate:.4f} does not beat the "
                f"last blessed model's {baseline:.4f} by more than {min_improvement}"}
    against = "popularity" + (" and the last blessed model" if baseline is not None else "")
    return {"blessed": True, "reason": f"{SCORE_METRIC} {candidate:.4f} beats {against}"}


def _markdown(report: dict) -> str:
    from unisar_tf.evaluate import metrics_table

    rows = {"candidate": report["candidate"], "popularity": report["popularity"],
            "random": report["random"]}
    if report.get("baseline_model"):
        rows["last blessed"] = report["baseline_model"]
    verdict = "BLESSED" if report["blessed"] else "NOT BLESSED"
    return (f"Split `{report['split']}`; 1 positive + "
            f"{report['candidates'] - 1} negatives per list.\n\n"
            + metrics_table(rows) + f"\n**{verdict}**: {report['reason']}\n")


def score_last_blessed(export_dir: str, data_dir: str, split: str, tasks) -> Dict[str, dict]:
    """The last blessed model's metrics on these examples, or a clear error if that model
    reads another example format (e.g. one exported before Transform joined the pipeline:
    its serving_default parses ids, these examples carry raw strings)."""
    import tensorflow as tf

    from unisar_tf.evaluate import evaluate_saved_model

    try:
        return evaluate_saved_model(export_dir, data_dir, split, tasks)
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
        transform_graph: tfx.dsl.components.InputArtifact[
            standard_artifacts.TransformGraph] = None,
        split: tfx.dsl.components.Parameter[str] = "test",
        min_improvement: tfx.dsl.components.Parameter[float] = 0.0,
) -> None:
    """Scores `model` on the test lists, compares with the baselines, writes the blessing.

    transform_graph: the Transform output the examples' raw ids go through (the pipeline's).
    """
    from tfx.utils import path_utils

    from unisar_tf import data
    from unisar_tf.evaluate import baseline_metrics, evaluate_saved_model

    data_dir = examples.uri
    # Raw-id examples: the popularity baseline counts items by Transform's ids; the models
    # map the same raw examples with the graph inside their serving_default signature.
    manifest = data.load_manifest(data_dir, transform_graph.uri if transform_graph else None)
    tasks = [t for t in ("rec", "search") if manifest["examples"][split].get(t)]
    candidate = evaluate_saved_model(path_utils.serving_model_path(model.uri), data_dir,
                                     split, tasks)
    baselines = baseline_metrics(data_dir, split, manifest,
                                 manifest["vocab_sizes"]["items"] + 1, tasks)
    baseline = None
    if baseline_model is not None:
        baseline = score_last_blessed(path_utils.serving_model_path(baseline_model.uri),
                                      data_dir, split, tasks)
    decision = blessing_decision(mean_score(candidate), mean_score(baselines["popularity"]),
                                 None if baseline is None else mean_score(baseline),
                                 min_improvement)
    if baseline_model is not None and baseline_model.id == model.id:
        # A re-run whose Trainer was cached: this model is already blessed and pushed, and
        # blessing it again would push a duplicate version.
        decision = {"blessed": False, "reason": f"model {model.id} is already the last "
                    "blessed model; not blessed (or pushed) again"}
    report = {"split": split, "candidates": manifest["shapes"]["eval_candidates"],
              "candidate": candidate, "popularity": baselines["popularity"],
              "random": baselines["random"], "baseline_model": baseline, **decision}
    with open(os.path.join(evaluation.uri, "metrics.json"), "w") as out:
        json.dump(report, out, indent=2, sort_keys=True)
    with open(os.path.join(evaluation.uri, "metrics.md"), "w") as out:
        out.write(_markdown(report))

    blessed = bool(decision["blessed"])
    with open(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w"):
        pass
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_int_custom_property("current_model_id", model.id)
    blessing.set_string_custom_property("current_model", model.uri)
    blessing.set_string_custom_property("reason", str(decision["reason"]))
    blessing.set_float_custom_property(SCORE_METRIC, mean_score(candidate))
    if baseline_model is not None:
        blessing.set_int_custom_property("baseline_model_id", baseline_model.id)
    evaluation.set_float_custom_property(SCORE_METRIC, mean_score(candidate))
    print(_markdown(report), flush=True)
