"""The retrieval index: recent items from example features, hand-computed neighbour tables on a
tiny log, scoring with popularity back-fill, files in both id formats, the export writer."""

import json
import math
import os

import numpy as np
import pytest
from helpers.retrieval import write_tiny_data

from feature_specs import TYPE_REC, TYPE_SEARCH
from unisar_tf.data.retrieval_index import (
    RETRIEVAL_DIR,
    RetrievalIndex,
    RetrievalParams,
    Sequences,
    TwoTowerIndex,
    TwoTowerParams,
    build_index,
    read_index,
    read_sequences,
    recent_items,
    training_index,
)
from unisar_tf.export.push import ONLINE_DIR, ONLINE_ITEMS_FILE
from unisar_tf.export.retrieval import retrieval_writer

R, S = TYPE_REC, TYPE_SEARCH
CATALOGUE = np.array(["", "a", "b", "c", "d"], dtype=object)  # ids 1..4
A, B, C, D = 1, 2, 3, 4
# Three training examples: (recent items, latest first; positive).
TINY = Sequences(
    recent=np.array([[A, 0], [B, A], [A, 0]]),
    positives=np.array([B, C, B]),
    tasks=np.array(["rec", "rec", "search"]),
)
# Window 2, decay 0.5: trans(a, b) = 1 + 1, trans(b, c) = 1, trans(a, c) = 0.5.
# Co-occurrence: cooc(a, b) = 2, cooc(a, c) = cooc(b, c) = 1 (both ways); n(a) = n(b) = 3,
# n(c) = 2. Popularity: b 2, c 1, a and d 0.
PARAMS = RetrievalParams(
    neighbours=2,
    transition_window=2,
    transition_decay=0.5,
    recent_items=2,
    recency_decay=0.5,
    transition_weight=0.5,
)


def test_recent_items_merge_rec_and_search_latest_first_distinct():
    types = np.array([[R, S, R, S, 0, 0], [S, R, 0, 0, 0, 0]])
    rec = np.array([[5, 7, 0, 0], [3, 0, 0, 0]])
    clicks = np.array([[[9, 5], [7, 0]], [[4, 3], [0, 0]]])
    # Row 0 in time order: rec 5, search (9, 5), rec 7, search (7): latest first 7, 9, 5.
    np.testing.assert_array_equal(recent_items(types, rec, clicks, 4), [[7, 9, 5, 0], [3, 4, 0, 0]])
    np.testing.assert_array_equal(recent_items(types, rec, clicks, 1), [[7], [3]])
    assert recent_items(types, rec, clicks).shape == (2, 12)  # 6 slots x 2 clicks


def test_neighbour_tables_are_the_hand_counted_ones():
    index = build_index(TINY, CATALOGUE, PARAMS)
    trans_ids, trans = index.neighbours["transition"], index.weights["transition"]
    np.testing.assert_array_equal(trans_ids[A], [B, C])
    np.testing.assert_allclose(trans[A], [2 / 2.5, 0.5 / 2.5])
    np.testing.assert_array_equal(trans_ids[B], [C, 0])
    np.testing.assert_allclose(trans[B], [1, 0])
    assert not trans_ids[C].any() and not trans_ids[D].any()
    cooc_ids, cooc = index.neighbours["cooccurrence"], index.weights["cooccurrence"]
    np.testing.assert_array_equal(cooc_ids[A], [B, C])
    np.testing.assert_allclose(cooc[A], [2 / 3, 1 / math.sqrt(6)], rtol=1e-6)
    np.testing.assert_array_equal(cooc_ids[C], [A, B])  # a tie: the smaller id first
    np.testing.assert_allclose(cooc[C], [1 / math.sqrt(6)] * 2, rtol=1e-6)
    np.testing.assert_array_equal(index.popularity, [0, 0, 2, 1, 0])
    # K = 1 keeps each row's best only.
    small = build_index(TINY, CATALOGUE, PARAMS.replace(neighbours=1))
    np.testing.assert_array_equal(small.neighbours["cooccurrence"][:, 0], [0, B, A, A, 0])


def test_scores_mix_tables_with_recency_and_backfill_by_popularity():
    index = build_index(TINY, CATALOGUE, PARAMS)
    scores = index.scores(np.array([[A, 0], [B, A]]))
    expected_b = 0.5 * 0.8 + 0.5 * 2 / 3
    expected_c = 0.5 * 0.2 + 0.5 / math.sqrt(6)
    np.testing.assert_allclose(scores[0], [0, 0, expected_b, expected_c, 0], rtol=1e-6)
    # User 2: b (weight 1) then a (weight 0.5).
    np.testing.assert_allclose(scores[1, C], 0.5 + 0.5 / math.sqrt(6) + 0.5 * expected_c, rtol=1e-6)
    assert index.retrieve(["a"], 3) == ["b", "c", "d"]  # history out, d back-filled
    # c's only neighbours tie (a, b by co-occurrence): popularity orders them.
    assert index.retrieve(["c"], 4) == ["b", "a", "d"]  # fewer: the catalogue is used up
    assert index.retrieve(["a"], 2, exclude=["b"]) == ["c", "d"]
    assert index.retrieve([], 4) == ["b", "c", "a", "d"]  # cold start: popularity, then id
    assert index.retrieve(["unknown"], 2) == ["b", "c"]
    assert index.retrieve(["a", "b", "a"], 5) == ["c", "d"]


def test_files_round_trip_give_identical_results(tmp_path):
    index = build_index(TINY, CATALOGUE, PARAMS)
    index.write(str(tmp_path))
    assert json.load(open(tmp_path / "items.json")) == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(
        np.load(tmp_path / "transition_neighbours.npy"), [[1, 2], [2, -1], [-1, -1], [-1, -1]]
    )
    loaded = RetrievalIndex.read(str(tmp_path))
    assert loaded.params == PARAMS
    for table in ("transition", "cooccurrence"):
        np.testing.assert_array_equal(loaded.neighbours[table], index.neighbours[table])
        np.testing.assert_array_equal(loaded.weights[table], index.weights[table])
    for recent in ([], ["a"], ["c"], ["b", "a"], ["d", "c"]):
        assert loaded.retrieve(recent, 4) == index.retrieve(recent, 4)
    np.save(tmp_path / "popularity.npy", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="popularity.npy"):
        RetrievalIndex.read(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no retrieval index"):
        RetrievalIndex.read(str(tmp_path / "missing"))


@pytest.mark.parametrize("raw", [False, True], ids=["ids", "raw"])
def test_training_split_files_give_the_hand_counted_index(tmp_path, raw):
    data_dir = write_tiny_data(tmp_path, raw)
    sequences = read_sequences(data_dir, "train", CATALOGUE)
    np.testing.assert_array_equal(sequences.recent[:, :2], TINY.recent)
    assert not sequences.recent[:, 2:].any()
    np.testing.assert_array_equal(sequences.positives, TINY.positives)
    np.testing.assert_array_equal(sequences.tasks, TINY.tasks)
    expected = build_index(TINY, CATALOGUE, PARAMS)
    built = training_index(data_dir, CATALOGUE, PARAMS)
    for table in ("transition", "cooccurrence"):
        np.testing.assert_array_equal(built.neighbours[table], expected.neighbours[table])
    # Without a catalogue: the data's vocab/ (c, a, b, d), the same items by name.
    by_vocab = training_index(data_dir, params=PARAMS)
    assert list(by_vocab.items) == ["", "c", "a", "b", "d"]
    assert by_vocab.retrieve(["a"], 3) == expected.retrieve(["a"], 3)


def test_export_writer_uses_the_exports_items(tmp_path):
    data_dir = write_tiny_data(tmp_path / "data", raw=True)
    export = tmp_path / "export"
    os.makedirs(export / ONLINE_DIR)
    # The ranker knows b, c, d only: a is no candidate, and no history item either.
    (export / ONLINE_DIR / ONLINE_ITEMS_FILE).write_text("d\nb\nc\n")
    retrieval_writer(data_dir, "cooccurrence", PARAMS)(str(export))
    index = RetrievalIndex.read(str(export / RETRIEVAL_DIR))
    assert list(index.items) == ["", "d", "b", "c"]
    assert index.info["training_examples"] == 3 and index.info["clicks_per_session"] == 1
    assert index.retrieve([], 3) == ["b", "c", "d"]
    assert index.retrieve(["b"], 1) == ["c"]  # trans(b, c) survives; a's rows are gone


def tiny_two_tower():
    """Items a..d in 2-d: a user's vector is the weighted mean of history vectors (kernel I,
    bias 0), an item's score the dot product with its item vector."""
    item_vectors = np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0.5, 0.5]], np.float32)
    history_vectors = np.array([[0, 0], [1, 0], [0, 1], [0, 0], [0, 0]], np.float32)
    return TwoTowerIndex(
        CATALOGUE,
        np.array([0, 0, 2, 1, 0]),
        item_vectors,
        history_vectors,
        np.eye(2, dtype=np.float32),
        np.zeros(2, np.float32),
        TwoTowerParams(dim=2, history=2, decay=0.5),
        {"clicks_per_session": 1},
    )


def test_two_tower_scores_and_order_by_hand(tmp_path):
    index = tiny_two_tower()
    # History b (latest, weight 1), a (0.5): user = (0.5 * (1, 0) + (0, 1)) / 1.5.
    user = np.array([1 / 3, 2 / 3])
    np.testing.assert_allclose(
        index.scores(np.array([[B, A]]))[0, 1:], [user[0], user[1], -user[0], 0.5], rtol=1e-6
    )
    # d (0.5) > c (negative); history out.
    assert index.retrieve(["b", "a"], 4) == ["d", "c"]
    assert index.retrieve(["a"], 3) == ["d", "b", "c"]  # a: (1, 0): d 0.5, b 0 > c -1
    assert index.retrieve([], 4) == ["b", "c", "a", "d"]  # no known item: popularity
    assert index.retrieve(["unknown"], 1) == ["b"]
    index.write(str(tmp_path))
    loaded = read_index(str(tmp_path))
    assert isinstance(loaded, TwoTowerIndex) and loaded.params == index.params
    for recent in ([], ["a"], ["b", "a"], ["c"]):
        assert loaded.retrieve(recent, 4) == index.retrieve(recent, 4)
    np.testing.assert_array_equal(loaded.item_vectors, index.item_vectors)
    meta = json.load(open(tmp_path / "index.json"))
    meta["method"] = "other"
    json.dump(meta, open(tmp_path / "index.json", "w"))
    with pytest.raises(ValueError, match="unknown method 'other'"):
        read_index(str(tmp_path))
