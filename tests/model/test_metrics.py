"""HR@k / NDCG@k: hand-computed values, the pessimistic tie rule, Keras streaming, tf-ranking."""

import math

import numpy as np
import pytest
import tensorflow as tf

from unisar_tf.metrics import (
    HitRateAtK,
    NDCGAtK,
    positive_first_labels,
    positive_rank,
    positive_rank_numpy,
    ranking_metrics,
    ranking_metrics_from_ranks,
    tensorflow_ranking_metrics,
)

# Three rows of 8 candidates, positive in column 0, hand-ranked 1, 2 and 6.
WORKED_SCORES = np.array(
    [
        [0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],  # nothing beats 0.9 -> rank 1
        [0.5, 0.1, 0.8, 0.2, 0.3, 0.0, 0.4, 0.1],  # only 0.8 -> rank 2
        [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.1, 0.2],  # 0.4..0.8 -> rank 6
    ],
    dtype=np.float32,
)
WORKED_RANKS = [1, 2, 6]
# Per row: HR@1 = (1, 0, 0), HR@5 = (1, 1, 0), HR@10 = (1, 1, 1),
# NDCG@5 = (1, 1/log2(3), 0), NDCG@10 = (1, 1/log2(3), 1/log2(7)).
INV_LOG2_3 = 0.6309297535714575
INV_LOG2_7 = 0.35620718710802216
WORKED_EXPECTED = {
    "HR@1": 1 / 3,
    "HR@5": 2 / 3,
    "HR@10": 1.0,
    "NDCG@5": (1.0 + INV_LOG2_3) / 3,
    "NDCG@10": (1.0 + INV_LOG2_3 + INV_LOG2_7) / 3,
}


def _keras_values(scores, sample_weight=None):
    values = {}
    for metric in (HitRateAtK(1), HitRateAtK(5), HitRateAtK(10), NDCGAtK(5), NDCGAtK(10)):
        metric.update_state(None, tf.constant(scores), sample_weight=sample_weight)
        values[metric.name] = float(metric.result())
    return values


def test_literal_constants_are_the_formula():
    assert INV_LOG2_3 == pytest.approx(1 / math.log2(3))
    assert INV_LOG2_7 == pytest.approx(1 / math.log2(7))


def test_positive_scored_highest_ranks_first():
    scores = np.array([[0.9, 0.1, 0.5, 0.3]], dtype=np.float32)
    assert positive_rank(scores).numpy().tolist() == [1]
    assert positive_rank_numpy(scores).tolist() == [1]
    assert ranking_metrics(scores) == {
        "HR@1": 1.0,
        "HR@5": 1.0,
        "HR@10": 1.0,
        "NDCG@5": 1.0,
        "NDCG@10": 1.0,
    }


def test_positive_tied_with_two_negatives_ranks_below_both():
    scores = np.array([[0.5, 0.5, 0.2, 0.5, 0.1]], dtype=np.float32)
    assert positive_rank(scores).numpy().tolist() == [3]
    assert positive_rank_numpy(scores).tolist() == [3]
    metrics = ranking_metrics(scores)
    assert metrics["HR@1"] == 0.0
    assert metrics["HR@5"] == 1.0
    assert metrics["NDCG@5"] == pytest.approx(0.5)  # 1/log2(4)


def test_constant_scores_get_the_last_rank_not_a_free_hit():
    scores = np.zeros((2, 100), dtype=np.float32)
    assert positive_rank(scores).numpy().tolist() == [100, 100]
    assert ranking_metrics(scores)["HR@10"] == 0.0
    assert _keras_values(scores)["HR@10"] == 0.0


def test_nan_scores_count_against_the_positive():
    scores = np.array([[np.nan, 0.1, 0.2], [0.9, np.nan, 0.2]], dtype=np.float32)
    assert positive_rank(scores).numpy().tolist() == [3, 2]
    assert positive_rank_numpy(scores).tolist() == [3, 2]


def test_rank_beyond_k_gives_zero_hit_and_zero_ndcg():
    # Six negatives above the positive -> rank 7.
    scores = np.array([[0.3, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1, 0.2, 0.0]], dtype=np.float32)
    assert positive_rank_numpy(scores).tolist() == [7]
    metrics = ranking_metrics(scores)
    assert metrics["HR@5"] == 0.0
    assert metrics["NDCG@5"] == 0.0
    assert metrics["HR@10"] == 1.0
    assert metrics["NDCG@10"] == pytest.approx(1 / 3)  # 1/log2(8)


def test_worked_example_numpy():
    assert positive_rank_numpy(WORKED_SCORES).tolist() == WORKED_RANKS
    assert positive_rank(WORKED_SCORES).numpy().tolist() == WORKED_RANKS
    metrics = ranking_metrics(WORKED_SCORES)
    assert set(metrics) == set(WORKED_EXPECTED)
    for name, expected in WORKED_EXPECTED.items():
        assert metrics[name] == pytest.approx(expected, abs=1e-12), name
        assert isinstance(metrics[name], float)


def test_worked_example_keras():
    values = _keras_values(WORKED_SCORES)
    for name, expected in WORKED_EXPECTED.items():
        assert values[name] == pytest.approx(expected, abs=1e-6), name


def test_metrics_from_ranks_custom_cutoffs():
    metrics = ranking_metrics_from_ranks(np.array([1, 3, 20]), ks=(3,), ndcg_ks=(20,))
    assert metrics == pytest.approx({"HR@3": 2 / 3, "NDCG@20": (1 + 1 / 2 + 1 / math.log2(21)) / 3})
    with pytest.raises(ValueError):
        ranking_metrics_from_ranks(np.array([], dtype=np.int64))
    with pytest.raises(ValueError):
        ranking_metrics_from_ranks(np.array([0, 1]))


def test_tf_and_numpy_ranks_agree_with_many_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(50, 20)).astype(np.float32)  # ties everywhere
    np.testing.assert_array_equal(positive_rank(scores).numpy(), positive_rank_numpy(scores))


def test_keras_metrics_accumulate_across_batches_like_the_concatenation():
    rng = np.random.default_rng(7)
    first = rng.normal(size=(5, 12)).astype(np.float32)
    second = rng.normal(size=(9, 12)).astype(np.float32)
    first[:, 0] += 1.0  # spread ranks so the metrics are not all zero
    second[:, 0] += 1.5
    expected = ranking_metrics(np.concatenate([first, second]), ks=(1, 5), ndcg_ks=(5, 10))
    assert 0.0 < expected["NDCG@5"] < 1.0
    for metric in (HitRateAtK(1), HitRateAtK(5), NDCGAtK(5), NDCGAtK(10)):
        metric.update_state(None, first)
        metric.update_state(tf.zeros_like(second), second)
        assert float(metric.result()) == pytest.approx(expected[metric.name], abs=1e-6)
        metric.reset_state()
        assert float(metric.result()) == 0.0


def test_keras_metric_sample_weight_drops_rows():
    metric = HitRateAtK(1)
    metric.update_state(None, WORKED_SCORES, sample_weight=tf.constant([0.0, 1.0, 1.0]))
    assert float(metric.result()) == 0.0  # the only hit (row 0) has weight 0


def test_keras_metric_config_round_trip():
    for metric in (HitRateAtK(5), NDCGAtK(10, name="ndcg_ten")):
        restored = type(metric).from_config(metric.get_config())
        assert restored.k == metric.k
        assert restored.name == metric.name
    assert HitRateAtK(5).name == "HR@5"
    assert NDCGAtK(10).name == "NDCG@10"
    with pytest.raises(ValueError):
        HitRateAtK(0)


def test_positive_first_labels_is_one_hot_at_column_zero():
    labels = positive_first_labels(tf.zeros((2, 4))).numpy()
    np.testing.assert_array_equal(labels, [[1, 0, 0, 0], [1, 0, 0, 0]])


def test_matches_tensorflow_ranking_on_tie_free_scores():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(64, 100)).astype(np.float32)
    scores[:, 0] += 2.5  # spread the positive's rank over 1..~30 so every cutoff matters
    assert all(len(np.unique(row)) == row.size for row in scores)  # tie-free
    ours = ranking_metrics(scores, ks=(1, 5, 10), ndcg_ks=(1, 5, 10))
    assert 0.0 < ours["HR@1"] and ours["HR@10"] < 1.0  # a non-trivial comparison

    labels = positive_first_labels(scores)
    for name, tfr_metric in tensorflow_ranking_metrics(ks=(1, 5, 10)).items():
        tfr_metric.update_state(labels, tf.constant(scores))
        assert float(tfr_metric.result()) == pytest.approx(ours[name], abs=1e-6), name
