"""The quality gate: bless a model only if it beats every comparator on every task, clearly.

    decision = decide({"rec": scores, "search": scores},            # the model, (N, C) each
                      {"popularity": {"rec": ..., "search": ...},   # non-learned baselines
                       "query match": {"search": ...},
                       "last blessed": {"rec": ..., "search": ...}})
    decision.blessed, decision.reasons, decision.to_dict()          # JSON-ready
    decide(..., GateOptions(min_improvement=0.01))  # or decide(..., min_improvement=0.01)

Scores are (N, C) matrices, one row per test list, positive at column 0, as everywhere in
the project (unisar_tf.metrics): row i of the model's matrix and row i of a comparator's
matrix must be the same list. A comparator's entry may also be a number, a constant NDCG@10
per list; random ranking is added to every task that way, as its exact expectation for C
candidates (unisar_tf.tools.demo.random_ranking_metrics), so it has no sampling noise of its own.

The statistic, per task and comparator: the per-list NDCG@10 of the positive (ties count
against it, `positive_rank_numpy`) of the model minus that of the comparator, d_i. Reported:
the mean difference, its paired standard error sd(d) / sqrt(N), and a one-sided lower
confidence bound on the mean difference from a paired bootstrap (resample lists with
replacement, the same lists for model and comparator; the (1 - confidence) quantile of the
resampled means; seeded, so a decision can be replayed).

The rule: blessed only if, for EACH task separately and EACH comparator, all of
  - lower bound > 0              (better than the comparator by more than the noise),
  - difference > min_improvement (TFX's absolute change threshold),
  - difference > min_relative_improvement x comparator's NDCG@10 (the relative one)
hold (the settings: `GateOptions`, unisar_tf/train/gate_options.py, their one definition).
A mean over tasks never decides: a model that wins one task and loses the other is
refused, naming the losing task. `confidence=0` turns the noise test off (only the thresholds
apply): for fixtures of a handful of lists, where no model can be told from noise.

A comparator that failed to learn is not a result to beat: one whose mean NDCG@10 on a task
is at or below random ranking's (its exact expectation) or popularity's (when popularity is
a comparator of that task) is flagged there (`failed_comparators`; the row's
`comparator_failed`): the gate could not compare with it, never counts it as beaten, and
does not refuse the model for it (the model must still pass every other comparison); the
decision carries one "could not compare" note per flagged row. Random and popularity are the
floor and are never flagged (popularity may be below random: popularity-sampled negatives).
SASRec, ItemKNN, query match and the last blessed model are all subject to the rule.

numpy only (no TensorFlow graph, no TFX); `unisar_tf.metrics` supplies the rank rule.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from unisar_tf.metrics import positive_rank_numpy, random_ranking_metrics
from unisar_tf.train.gate_options import DEFAULTS, GateOptions

__all__ = [
    "Comparison",
    "FLOORS",
    "GateDecision",
    "GateOptions",
    "LAST_BLESSED",
    "POPULARITY",
    "RANDOM",
    "SCORE_METRIC",
    "bootstrap_lower_bound",
    "comparison_table",
    "could_not_compare",
    "decide",
    "failed_comparators",
    "ndcg_per_list",
    "paired_comparison",
    "random_ndcg",
]

K = 10
SCORE_METRIC = f"NDCG@{K}"
RANDOM = "random"
POPULARITY = "popularity"
LAST_BLESSED = "last blessed"
# The reference floor: a comparator at or below one of these on a task failed to learn there.
FLOORS = (RANDOM, POPULARITY)

ComparatorScores = Union[np.ndarray, float]


def ndcg_per_list(scores, k: int = K) -> np.ndarray:
    """(N, C) scores, positive at column 0 -> (N,) NDCG@k of the positive per list:
    1 / log2(rank + 1) if rank <= k else 0, rank = 1 + #negatives scoring >= the positive."""
    ranks = positive_rank_numpy(scores).astype(np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def random_ndcg(num_candidates: int, k: int = K) -> float:
    """Exact expected NDCG@k of random ranking: the positive's rank uniform on 1..C."""
    if k == K:
        return float(random_ranking_metrics(num_candidates)[SCORE_METRIC])
    ranks = np.arange(1, num_candidates + 1, dtype=np.float64)
    return float(np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0).mean())


def bootstrap_lower_bound(
    differences,
    confidence: float = DEFAULTS.confidence,
    samples: int = DEFAULTS.bootstrap_samples,
    seed: int = DEFAULTS.seed,
) -> float:
    """One-sided lower `confidence` bound on mean(differences): the (1 - confidence)
    quantile of the means of `samples` resamples (with replacement) of the N values.

    Seeded: the same inputs give the same bound; equal-length inputs are resampled with the
    same rows, so all comparisons of a task see the same bootstrap lists."""
    differences = np.asarray(differences, dtype=np.float64).reshape(-1)
    n = differences.size
    if n == 0:
        raise ValueError("no lists to bootstrap")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if samples < 1:
        raise ValueError(f"bootstrap samples must be >= 1, got {samples}")
    rng = np.random.default_rng(seed)
    means = np.empty(samples, np.float64)
    chunk = max(1, 4_000_000 // n)  # at most ~32 MB of row indices at a time
    for start in range(0, samples, chunk):
        size = min(chunk, samples - start)
        rows = rng.integers(0, n, size=(size, n))
        means[start : start + size] = differences[rows].mean(axis=1)
    return float(np.quantile(means, 1.0 - confidence))


def paired_comparison(
    model_values,
    baseline_values: Union[np.ndarray, float],
    confidence: float = DEFAULTS.confidence,
    samples: int = DEFAULTS.bootstrap_samples,
    seed: int = DEFAULTS.seed,
) -> Dict[str, Optional[float]]:
    """Model vs comparator on the same lists, from per-list values (N,) each (or a constant
    for the comparator): {"model", "baseline", "difference", "standard_error", "lower_bound",
    "lists"}. standard_error is None for a single list; lower_bound is None when
    confidence is 0 (no noise test)."""
    model_values = np.asarray(model_values, dtype=np.float64).reshape(-1)
    if np.ndim(baseline_values) == 0:
        baseline_values = np.full_like(model_values, float(baseline_values))
    baseline_values = np.asarray(baseline_values, dtype=np.float64).reshape(-1)
    n = model_values.size
    if n == 0:
        raise ValueError("no lists to compare")
    if baseline_values.size != n:
        raise ValueError(f"not paired: {n} model lists, {baseline_values.size} comparator " "lists")
    differences = model_values - baseline_values
    return {
        "model": float(model_values.mean()),
        "baseline": float(baseline_values.mean()),
        "difference": float(differences.mean()),
        "standard_error": (float(differences.std(ddof=1) / math.sqrt(n)) if n > 1 else None),
        "lower_bound": (
            bootstrap_lower_bound(differences, confidence, samples, seed)
            if confidence > 0
            else None
        ),
        "lists": int(n),
    }


@dataclasses.dataclass
class Comparison:
    """One row of the gate: the model against one comparator on one task."""

    task: str
    comparator: str
    model: float
    baseline: float
    difference: float
    standard_error: Optional[float]
    lower_bound: Optional[float]
    lists: int
    passed: bool
    failures: List[str]
    # The comparator failed to learn on this task (at or below `floor_name`'s NDCG@10
    # `floor`): not passed, not a refusal, and not counted as beaten.
    comparator_failed: bool = False
    floor_name: Optional[str] = None
    floor: Optional[float] = None


@dataclasses.dataclass
class GateDecision:
    blessed: bool
    rows: List[Comparison]
    reasons: List[str]
    settings: Dict[str, float]
    metric: str = SCORE_METRIC
    # One "could not compare" note per flagged row (`could_not_compare`).
    failed_comparators: List[str] = dataclasses.field(default_factory=list)

    @property
    def reason(self) -> str:
        """One line: every refusal, or what the model beat; then the comparators the gate
        could not compare with (never among what it beat)."""
        return "; ".join(part for part in [self.verdict, *self.failed_comparators] if part)

    @property
    def verdict(self) -> str:
        """`reason` without the could-not-compare notes."""
        if self.reasons:
            return "; ".join(self.reasons)
        per_task: Dict[str, List[Comparison]] = {}
        for row in self.rows:
            if not row.comparator_failed:
                per_task.setdefault(row.task, []).append(row)
        parts = []
        for task, rows in per_task.items():
            # "beats" only when it does; a negative min_improvement can pass a worse model.
            verb = "beats" if all(row.difference > 0 for row in rows) else "passes the gate against"
            against = ", ".join(
                f"{row.comparator} {row.baseline:.4f} ({row.difference:+.4f})" for row in rows
            )
            parts.append(f"{task}: {self.metric} {rows[0].model:.4f} {verb} {against}")
        return "; ".join(parts)

    def refuse(self, reason: str) -> "GateDecision":
        """This decision, not blessed, with `reason` first (e.g. a rule outside the rows)."""
        return dataclasses.replace(self, blessed=False, reasons=[reason, *self.reasons])

    def to_dict(self) -> dict:
        return {
            "blessed": self.blessed,
            "metric": self.metric,
            "reason": self.reason,
            "reasons": list(self.reasons),
            "failed_comparators": list(self.failed_comparators),
            "settings": dict(self.settings),
            "rows": [dataclasses.asdict(row) for row in self.rows],
        }


def _ndcg_of(value) -> float:
    """A mean NDCG@10: a number, or a metrics dict holding it."""
    return float(value[SCORE_METRIC] if isinstance(value, Mapping) else value)


def failed_comparators(
    metrics_by_name: Mapping[str, Mapping[str, object]], task: str, floors=FLOORS
) -> Dict[str, Tuple[str, float, float]]:
    """The comparators that failed to learn on `task`: {name: (floor name, floor's NDCG@10,
    its NDCG@10)} for every name whose mean NDCG@10 is at or below that of a floor (random,
    popularity) present for the task; the floors themselves are never flagged.

    metrics_by_name: {name: {task: mean NDCG@10, or a metrics dict with "NDCG@10"}}; names
    without `task` are skipped. The floor named is the highest one reached (random on ties).
    """
    values = {
        name: _ndcg_of(per_task[task])
        for name, per_task in metrics_by_name.items()
        if isinstance(per_task, Mapping) and per_task.get(task) is not None
    }
    reached = sorted(
        ((values[name], -index, name) for index, name in enumerate(floors) if name in values),
        reverse=True,
    )  # highest floor first
    flagged = {}
    for name, value in values.items():
        if name in floors:
            continue
        for floor, _, floor_name in reached:
            if value <= floor:
                flagged[name] = (floor_name, floor, value)
                break
    return flagged


def could_not_compare(
    task: str, name: str, floor_name: str, floor: float, value: float, metric: str = SCORE_METRIC
) -> str:
    """The gate's note for a flagged comparator (`failed_comparators`)."""
    return (
        f"{task}: could not compare with {name}: its {metric} {value:.4f} is at or below "
        f"{floor_name}'s {floor:.4f} (the comparator failed; not counted as beaten)"
    )


def _failures(stats: dict, options: GateOptions) -> List[str]:
    """The conditions a comparison row fails, each with its numbers."""
    failed = []
    if options.confidence > 0 and not stats["lower_bound"] > 0:
        failed.append(f"lower bound {stats['lower_bound']:+.4f} <= 0")
    if not stats["difference"] > options.min_improvement:
        failed.append(f"difference {stats['difference']:+.4f} <= {options.min_improvement}")
    if options.min_relative_improvement:
        needed = options.min_relative_improvement * stats["baseline"]
        if not stats["difference"] > needed:
            failed.append(
                f"difference {stats['difference']:+.4f} <= {needed:.4f} "
                f"({options.min_relative_improvement:g} x {stats['baseline']:.4f})"
            )
    return failed


def _refusal(task: str, name: str, stats: dict, options: GateOptions) -> str:
    """e.g. "search: NDCG@10 0.0307 does not beat random 0.0454 (difference -0.0147, 95%
    lower bound -0.0170; needs lower bound > 0 and difference > 0.0)"."""
    numbers = f"difference {stats['difference']:+.4f}"
    needs = []
    if options.confidence > 0:
        numbers += f", {options.confidence:.0%} lower bound {stats['lower_bound']:+.4f}"
        needs.append("lower bound > 0")
    needs.append(f"difference > {options.min_improvement}")
    if options.min_relative_improvement:
        needs.append(f"difference > {options.min_relative_improvement:g} x {name}")
    return (
        f"{task}: {SCORE_METRIC} {stats['model']:.4f} does not beat {name} "
        f"{stats['baseline']:.4f} ({numbers}; needs {' and '.join(needs)})"
    )


def decide(
    model_scores: Mapping[str, np.ndarray],
    comparators: Mapping[str, Mapping[str, ComparatorScores]],
    options: Optional[GateOptions] = None,
    *,
    include_random: bool = True,
    flag_failed: bool = True,
    **settings,
) -> GateDecision:
    """The blessing decision.

    model_scores: {task: (N, C) scores}, every task the model is judged on.
    comparators: {name: {task: (N, C) scores of the same lists, or a constant NDCG@10}}; a
    comparator without a task (e.g. query match has no rec) is not compared there.
    options: the gate's settings (default: GateOptions()); settings: single ones by name on
    top, e.g. decide(..., min_improvement=0.02, seed=3) (GateOptions' fields).
    include_random: compare with random ranking's exact NDCG@10 on every task too (first).
    flag_failed: flag a comparator at or below random's (exact, even without its row) or
    popularity's NDCG@10 on a task as failed there (`failed_comparators`): not beaten, not
    a refusal, one note in `failed_comparators` of the decision; False counts it as any other.
    """
    if options is not None and not isinstance(options, GateOptions):
        raise TypeError(f"options must be a GateOptions, got {options!r}")
    options = GateOptions.from_dict(settings, options)
    if not model_scores:
        raise ValueError("no tasks to judge the model on")
    if not 0.0 <= options.confidence < 1.0:
        raise ValueError(
            "confidence must be in [0, 1) (0 = no noise test), got " f"{options.confidence}"
        )
    rows: List[Comparison] = []
    reasons: List[str] = []
    notes: List[str] = []
    for task, scores in model_scores.items():
        scores = np.asarray(scores)
        model_values = ndcg_per_list(scores)
        random_value = random_ndcg(scores.shape[1])
        named: Dict[str, ComparatorScores] = {}
        if include_random:
            named[RANDOM] = random_value
        for name, per_task in comparators.items():
            if per_task is not None and per_task.get(task) is not None:
                named[name] = per_task[task]
        for name, values in named.items():
            if np.ndim(values) != 0:
                values = np.asarray(values)
                if values.shape != scores.shape:
                    raise ValueError(
                        f"{task}: {name} scores have shape {values.shape}, the "
                        f"model's {scores.shape}: not the same lists"
                    )
                named[name] = ndcg_per_list(values)
        flagged = {}
        if flag_failed:
            means = {name: {task: float(np.mean(values))} for name, values in named.items()}
            means[RANDOM] = {task: random_value}  # the floor even without its row
            flagged = failed_comparators(means, task)
        for name, values in named.items():
            stats = paired_comparison(
                model_values, values, options.confidence, options.bootstrap_samples, options.seed
            )
            if name in flagged:
                floor_name, floor, value = flagged[name]
                rows.append(
                    Comparison(
                        task=task,
                        comparator=name,
                        passed=False,
                        failures=[],
                        comparator_failed=True,
                        floor_name=floor_name,
                        floor=floor,
                        **stats,
                    )
                )
                notes.append(could_not_compare(task, name, floor_name, floor, value))
                continue
            failures = _failures(stats, options)
            rows.append(
                Comparison(
                    task=task, comparator=name, passed=not failures, failures=failures, **stats
                )
            )
            if failures:
                reasons.append(_refusal(task, name, stats, options))
    return GateDecision(
        blessed=not reasons,
        rows=rows,
        reasons=reasons,
        settings=options.to_dict(),
        failed_comparators=notes,
    )


def comparison_table(decision: Union[GateDecision, dict]) -> str:
    """Markdown: one line per (task, comparator) row of a decision (or its to_dict())."""
    if isinstance(decision, GateDecision):
        decision = decision.to_dict()
    confidence = decision["settings"].get("confidence", 0)
    bound = f"{confidence:.0%} lower bound" if confidence else "lower bound (off)"
    lines = [
        f"| task | compared with | model {decision['metric']} | theirs | difference | "
        f"standard error | {bound} | lists | passes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def number(value: Optional[float], sign: str = "+") -> str:
        return "n/a" if value is None else f"{value:{sign}.4f}"

    def passes(row: dict) -> str:
        if row.get("comparator_failed"):
            return "comparator failed"
        return "yes" if row["passed"] else "NO"

    for row in decision["rows"]:
        lines.append(
            f"| {row['task']} | {row['comparator']} | {row['model']:.4f} | "
            f"{row['baseline']:.4f} | {row['difference']:+.4f} | "
            f"{number(row['standard_error'], '')} | {number(row['lower_bound'])} | "
            f"{row['lists']} | {passes(row)} |"
        )
    return "\n".join(lines) + "\n"
