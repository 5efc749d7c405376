"""The retrieval recall tool: ranks of the positive are the service's order, metrics by hand."""

import numpy as np

from unisar_tf.data.retrieval_index import (
    RetrievalParams,
    Sequences,
    TwoTowerIndex,
    TwoTowerParams,
    build_index,
)
from unisar_tf.tools.retrieval_recall import (
    ITEMKNN,
    POPULARITY,
    RANDOM,
    RETRIEVAL,
    evaluate,
    metrics_from_ranks,
    positive_ranks,
    random_metrics,
)


def random_log(seed, users=60, items=30):
    rng = np.random.default_rng(seed)
    recent = np.zeros((users, 4), np.int64)
    for row in range(users):
        length = rng.integers(0, 5)
        recent[row, :length] = rng.choice(np.arange(1, items + 1), length, replace=False)
    positives = rng.integers(1, items + 1, users)
    tasks = np.where(rng.random(users) < 0.5, "rec", "search")
    return Sequences(recent, positives, tasks)


def test_positive_ranks_are_places_in_the_retrievers_order():
    catalogue = np.array([""] + [f"i{k}" for k in range(1, 31)], dtype=object)
    index = build_index(random_log(0), catalogue, RetrievalParams(neighbours=5, recent_items=3))
    users = random_log(1, users=20)
    scores = index.scores(users.recent)
    for row in range(len(users.positives)):
        history = set(users.recent[row][users.recent[row] > 0].tolist())
        order = index.top_ids(scores[row], len(catalogue), history)
        for positive in range(1, len(catalogue)):
            rank = positive_ranks(
                scores[row : row + 1],
                index.popularity,
                users.recent[row : row + 1],
                np.array([positive]),
            )[0]
            if positive in history:
                assert rank == np.inf
            else:
                assert rank == order.index(positive), (row, positive)


def test_metrics_by_hand():
    ranks = np.array([0, 60, 150, np.inf])
    metrics = metrics_from_ranks(ranks)
    assert metrics["Recall@50"] == 0.25 and metrics["Recall@100"] == 0.5
    assert metrics["Recall@200"] == 0.75
    np.testing.assert_allclose(metrics["NDCG@100"], (1 + 1 / np.log2(62)) / 4)
    # 300 items; one user with 2 history items (298 left), one whose positive is in history.
    users = Sequences(np.array([[1, 2], [3, 0]]), np.array([5, 3]), np.array(["rec", "rec"]))
    expected = random_metrics(users, 300)
    np.testing.assert_allclose(expected["Recall@100"], 100 / 298 / 2)
    np.testing.assert_allclose(expected["Recall@200"], 200 / 298 / 2)
    gains = sum(1 / np.log2(r + 2) for r in range(100))
    np.testing.assert_allclose(expected["NDCG@100"], gains / 298 / 2)


def test_evaluate_reports_every_method_per_task():
    catalogue = np.array([""] + [f"i{k}" for k in range(1, 31)], dtype=object)
    results = evaluate(
        random_log(2), random_log(3, users=40), catalogue, RetrievalParams(neighbours=5)
    )
    assert list(results) == [RETRIEVAL, ITEMKNN, POPULARITY, RANDOM]
    for groups in results.values():
        assert set(groups) == {"all", "rec", "search"}
        assert 0 <= groups["all"]["Recall@50"] <= groups["all"]["Recall@100"] <= 1


def test_two_tower_ranks_match_its_top_k():
    """Learned scores (negative ones too) take the partial-sort path of top_ids."""
    rng = np.random.default_rng(4)
    items = 30
    catalogue = np.array([""] + [f"i{k}" for k in range(1, items + 1)], dtype=object)
    vectors = rng.normal(size=(items + 1, 4)).astype(np.float32)
    vectors[5] = vectors[6]  # two items with equal scores: popularity, then id, orders them
    popularity = rng.integers(0, 5, items + 1).astype(np.float32)
    index = TwoTowerIndex(
        catalogue,
        popularity,
        vectors,
        rng.normal(size=(items + 1, 4)),
        np.eye(4),
        np.zeros(4),
        TwoTowerParams(dim=4, history=3),
    )
    users = random_log(5, users=15, items=items)
    scores = index.scores(users.recent)
    assert (scores < 0).any()
    for row in range(len(users.positives)):
        history = set(users.recent[row][users.recent[row] > 0].tolist())
        for k in (1, 7, items):
            order = index.top_ids(scores[row], k, history)
            assert len(order) == min(k, items - len(history))
            for place, item in enumerate(order):
                rank = positive_ranks(
                    scores[row : row + 1], popularity, users.recent[row : row + 1], np.array([item])
                )[0]
                assert rank == place, (row, k, item)
