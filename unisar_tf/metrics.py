"""HR@k and NDCG@k for the 1-positive + N-negative protocol (spec section 11).

Scores come as a `(batch, num_candidates)` matrix whose column 0 is the positive and whose
other columns are sampled negatives. The rank of the positive is its 1-based position after
sorting the row by score, and per row

    HR@k   = 1                   if rank <= k else 0
    NDCG@k = 1 / log2(rank + 1)  if rank <= k else 0

averaged over rows (with one relevant item the ideal DCG is 1, so DCG is NDCG).

Ties are broken deterministically and pessimistically:

    rank = 1 + (number of negatives whose score is >= the positive's score)

so a positive tied with two negatives ranks below both of them (rank 3), and a model that
gives every candidate the same score gets rank = num_candidates rather than a free HR@1. The
rule is written as "not (negative < positive)", so a NaN score (positive or negative) also
counts against the positive: a broken model can never look good.

tf-ranking breaks ties by random shuffling instead; `tensorflow_ranking_metrics` exposes its
metrics only as a cross-check on tie-free scores. The metrics here are the project's own,
deterministic ones. This module is the one place the project touches tensorflow-ranking, and
it imports it lazily, so nothing else breaks if a later TF version drops it.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

__all__ = [
    "HitRateAtK",
    "NDCGAtK",
    "positive_first_labels",
    "positive_rank",
    "positive_rank_numpy",
    "ranking_metrics",
    "ranking_metrics_from_ranks",
    "tensorflow_ranking_metrics",
]

DEFAULT_HR_KS = (1, 5, 10)
DEFAULT_NDCG_KS = (5, 10)


def positive_rank(scores: tf.Tensor) -> tf.Tensor:
    """Pessimistic rank of the positive (column 0): (batch, C) float -> (batch,) int32 in [1, C]."""
    scores = tf.convert_to_tensor(scores)
    positive = scores[:, :1]
    negatives = scores[:, 1:]
    # "not <" instead of ">=" so NaNs on either side count as beating the positive.
    beats_positive = tf.logical_not(negatives < positive)
    return 1 + tf.reduce_sum(tf.cast(beats_positive, tf.int32), axis=1)


def positive_rank_numpy(scores: np.ndarray) -> np.ndarray:
    """NumPy twin of `positive_rank`: (batch, C) -> (batch,) int64 in [1, C], same tie rule."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"scores must be (batch, num_candidates), got shape {scores.shape}")
    beats_positive = ~(scores[:, 1:] < scores[:, :1])
    return 1 + beats_positive.sum(axis=1).astype(np.int64)


def _hit_rate(ranks, k: int):
    return (ranks <= k).astype(np.float64)


def _ndcg(ranks, k: int):
    ranks = ranks.astype(np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def ranking_metrics_from_ranks(
    ranks: np.ndarray, ks: Sequence[int] = DEFAULT_HR_KS, ndcg_ks: Sequence[int] = DEFAULT_NDCG_KS
) -> Dict[str, float]:
    """Mean HR@k and NDCG@k from 1-based ranks of shape (batch,).

    Returns {"HR@1": ..., "HR@5": ..., "HR@10": ..., "NDCG@5": ..., "NDCG@10": ...} (for the
    default ks) as python floats.
    """
    ranks = np.asarray(ranks).reshape(-1)
    if ranks.size == 0:
        raise ValueError("no ranks given: HR and NDCG of an empty set are undefined")
    if np.any(ranks < 1):
        raise ValueError(f"ranks are 1-based, got a minimum of {ranks.min()}")
    results = {f"HR@{k}": float(_hit_rate(ranks, k).mean()) for k in ks}
    results.update({f"NDCG@{k}": float(_ndcg(ranks, k).mean()) for k in ndcg_ks})
    return results


def ranking_metrics(
    scores: np.ndarray, ks: Sequence[int] = DEFAULT_HR_KS, ndcg_ks: Sequence[int] = DEFAULT_NDCG_KS
) -> Dict[str, float]:
    """Mean HR@k and NDCG@k of a (batch, C) NumPy score matrix, positive at column 0."""
    return ranking_metrics_from_ranks(positive_rank_numpy(scores), ks=ks, ndcg_ks=ndcg_ks)


def random_ranking_metrics(num_candidates: int) -> Dict[str, float]:
    """Exact expectation of each metric when the positive's rank is uniform on 1..C."""
    return ranking_metrics_from_ranks(np.arange(1, num_candidates + 1))


# The metric columns of every report (trainer, evaluator, ablation, demo), in this order.
METRIC_ORDER = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10")


def metrics_table(
    rows: Mapping[str, Mapping[str, Mapping[str, float]]], tasks=("rec", "search")
) -> str:
    """Markdown: one line per (model, task) with METRIC_ORDER columns."""
    lines = [
        "| model | task | " + " | ".join(METRIC_ORDER) + " | examples |",
        "|---|---|" + "---|" * (len(METRIC_ORDER) + 1),
    ]
    for name, per_task in rows.items():
        for task in tasks:
            if task not in per_task:
                continue
            metrics = per_task[task]
            cells = " | ".join(f"{metrics[key]:.4f}" for key in METRIC_ORDER)
            lines.append(f"| {name} | {task} | {cells} | {int(metrics.get('examples', 0))} |")
    return "\n".join(lines) + "\n"


class _PositiveRankMetric(tf.keras.metrics.Mean):
    """Streaming mean of a per-row function of the positive's rank.

    `update_state(y_true, y_pred, sample_weight=None)`: y_pred is (batch, C) scores with the
    positive at column 0; y_true is ignored (the positive is always column 0, so labels carry
    no information; None is accepted); sample_weight is optional, shape (batch,).
    """

    name_prefix = ""  # the default name is f"{name_prefix}@{k}"

    def __init__(self, k: int, name: Optional[str] = None, dtype=None, **kwargs):
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        super().__init__(name=name or f"{self.name_prefix}@{int(k)}", dtype=dtype, **kwargs)
        self.k = int(k)

    def _values_from_ranks(self, ranks: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        del y_true  # the positive is column 0 by construction
        values = self._values_from_ranks(positive_rank(y_pred))
        return super().update_state(values, sample_weight=sample_weight)

    def get_config(self):
        config = super().get_config()
        config["k"] = self.k
        return config


@tf.keras.utils.register_keras_serializable(package="unisar_tf")
class HitRateAtK(_PositiveRankMetric):
    """Streaming HR@k: mean over rows of 1[rank <= k]. y_pred (batch, C), positive at column 0."""

    name_prefix = "HR"

    def _values_from_ranks(self, ranks: tf.Tensor) -> tf.Tensor:
        return tf.cast(ranks <= self.k, self.dtype)


@tf.keras.utils.register_keras_serializable(package="unisar_tf")
class NDCGAtK(_PositiveRankMetric):
    """Streaming NDCG@k: mean of 1/log2(rank+1) if rank <= k else 0. y_pred (batch, C)."""

    name_prefix = "NDCG"

    def _values_from_ranks(self, ranks: tf.Tensor) -> tf.Tensor:
        ranks = tf.cast(ranks, self.dtype)
        gain = tf.cast(np.log(2.0), self.dtype) / tf.math.log(ranks + 1.0)
        return tf.where(ranks <= self.k, gain, tf.zeros_like(gain))


def positive_first_labels(scores) -> tf.Tensor:
    """One-hot relevance labels for tf-ranking: (batch, C) scores -> (batch, C) float32,
    1 at column 0 and 0 elsewhere (tf-ranking wants labels the shape of the scores)."""
    scores = tf.convert_to_tensor(scores)
    num_candidates = tf.shape(scores)[1]
    labels = tf.one_hot(tf.zeros(tf.shape(scores)[:1], tf.int32), num_candidates)
    return tf.cast(labels, tf.float32)


def tensorflow_ranking_metrics(
    ks: Sequence[int] = DEFAULT_HR_KS,
) -> Dict[str, tf.keras.metrics.Metric]:
    """tf-ranking's `HitsMetric(topn=k)` and `NDCGMetric(topn=k)` for each k in `ks`.

    Returns {"HR@k": HitsMetric, "NDCG@k": NDCGMetric, ...}; metric names are prefixed "tfr_".
    Call them as `metric(positive_first_labels(scores), scores)`: tf-ranking (0.5.5) wants
    y_true as relevance labels of the same (batch, C) shape as the scores, here one-hot at
    column 0 (its default gain 2^y - 1 and discount 1/log2(rank + 1) then give exactly
    NDCG@k = 1/log2(rank + 1) for rank <= k).

    tf-ranking breaks ties by randomly shuffling before sorting, so it agrees with this
    module only on tie-free scores; it is a cross-check, and `HitRateAtK` / `NDCGAtK` are the
    project's deterministic metrics.
    """
    # Lazy import: keeps tensorflow-ranking (which pins TF < 2.16) out of every other module.
    import tensorflow_ranking as tfr

    metrics: Dict[str, tf.keras.metrics.Metric] = {}
    for k in ks:
        metrics[f"HR@{k}"] = tfr.keras.metrics.HitsMetric(topn=k, name=f"tfr_HR@{k}")
        metrics[f"NDCG@{k}"] = tfr.keras.metrics.NDCGMetric(topn=k, name=f"tfr_NDCG@{k}")
    return metrics
