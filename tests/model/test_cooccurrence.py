"""The co-occurrence features against the ItemKNN baseline and by hand."""

import numpy as np
import pytest
import tensorflow as tf
from helpers.model import cooccurrence_model, cooccurrence_parts

from unisar_tf.data.cooccurrence import item_cooccurrence, table_from_counts
from unisar_tf.layers.cooccurrence import ItemCooccurrence
from unisar_tf.model import build_model
from unisar_tf.train.baselines import itemknn_scores, normalized_cooccurrence

NUM_ITEMS = 8
# Training examples: (history items, positive).
HISTORIES = np.array([[1, 2, 0], [2, 3, 0], [1, 3, 3], [4, 0, 0]])
POSITIVES = np.array([3, 1, 2, 5])


def _layer():
    table = table_from_counts(item_cooccurrence(HISTORIES, POSITIVES, NUM_ITEMS), NUM_ITEMS)
    layer = ItemCooccurrence(NUM_ITEMS, table.num_pairs)
    layer.build(None)
    layer.set_table(table.pair_keys, table.pair_counts, table.item_totals)
    return layer, table


def test_table_holds_the_symmetric_counts():
    _, table = _layer()
    pairs = {
        (int(k) // NUM_ITEMS, int(k) % NUM_ITEMS): float(c)
        for k, c in zip(table.pair_keys, table.pair_counts)
    }
    # (1,3): example 0 (h=1, p=3) and example 1 (h=3, p=1) -> 2 each way.
    assert pairs[(1, 3)] == pairs[(3, 1)] == 2.0
    assert pairs[(4, 5)] == pairs[(5, 4)] == 1.0
    assert (2, 4) not in pairs
    # n(3) = cooc(3,1) + cooc(3,2) + cooc(3,...): (3,1)=2, (3,2)=1+1 (ex 0 h=2 p=3; ex 2 h=3 p=2)
    assert table.item_totals[3] == 4.0
    assert np.all(np.diff(table.pair_keys) > 0)


def test_pair_lookup_never_gathers_from_the_keys_variable():
    """A ResourceGather on pair_keys switches the variable to copy-on-read, after which the
    dense read searchsorted needs copies the whole key table on every call (~2 ms of a
    Beauty serving request). The lookup must search and gather on one dense read."""
    layer, _ = _layer()
    lookup = tf.function(layer.pair_count).get_concrete_function(
        tf.TensorSpec([None, None], tf.int64), tf.TensorSpec([None, None], tf.int64)
    )
    captured = {id(outer): inner for outer, inner in lookup.graph.captures}
    keys_handle = captured[id(layer.pair_keys.handle)]
    gathers = [op for op in lookup.graph.get_operations() if op.type == "ResourceGather"]
    assert gathers, "the counts are still gathered from their variable (no copy of it)"
    assert all(op.inputs[0] is not keys_handle for op in gathers)
    counts = lookup(tf.constant([[1, 2, 4]], tf.int64), tf.constant([[3, 3, 5]], tf.int64))
    np.testing.assert_array_equal(counts.numpy(), [[2.0, 2.0, 1.0]])


def test_sum_feature_equals_the_itemknn_baseline():
    layer, _ = _layer()
    history = np.array([[1, 2, 2, 0], [4, 0, 0, 0], [3, 1, 0, 0]])
    candidates = np.array([[3, 5, 6], [5, 1, 0], [2, 1, 4]])
    expected = itemknn_scores(
        normalized_cooccurrence(item_cooccurrence(HISTORIES, POSITIVES, NUM_ITEMS)),
        history,
        candidates,
    )
    features = layer(
        tf.constant(history),
        tf.constant([2, 4, 1]),
        tf.constant([0, 0, 0]),
        tf.constant(candidates),
    ).numpy()
    assert features.shape == (3, 3, 5)
    np.testing.assert_allclose(features[..., 0], expected, rtol=1e-6)
    normalized = normalized_cooccurrence(item_cooccurrence(HISTORIES, POSITIVES, NUM_ITEMS))
    # Row 0, candidate 3: terms of items 1 and 2 (2 repeated counts once); max is the larger.
    terms = [normalized[1, 3], normalized[2, 3]]
    np.testing.assert_allclose(features[0, 0, 0], sum(terms), rtol=1e-6)
    np.testing.assert_allclose(features[0, 0, 1], max(terms), rtol=1e-6)
    np.testing.assert_allclose(features[0, 0, 2], normalized[2, 3], rtol=1e-6)  # last rec: 2
    np.testing.assert_allclose(features[1, :, 2], expected[1], rtol=1e-6)  # only item 4
    np.testing.assert_array_equal(features[..., 3], 0.0)


def test_training_takes_out_the_examples_own_pairs():
    """Example 3 (history [4], positive 5) is the only source of cooc(4, 5): scored as in
    training, its positive must look unseen (0), as it would to a validation example."""
    layer, table = _layer()
    history = tf.constant([[4, 0, 0]])
    candidates = tf.constant([[5, 1]])
    last = tf.constant([4])
    seen = layer(history, last, tf.constant([0]), candidates).numpy()
    own = layer(history, last, tf.constant([0]), candidates, exclude_own_pair=True).numpy()
    assert seen[0, 0, 0] > 0
    np.testing.assert_array_equal(own[0, 0], 0.0)
    # Example 0 (history [1, 2], positive 3): without it cooc(1,3) 2 -> 1, cooc(2,3) 2 -> 1,
    # n(1) 4 -> 3, n(2) 4 -> 3, n(3) 4 -> 2 (counted by hand from the other three examples).
    own = layer(
        tf.constant([[1, 2, 0]]),
        tf.constant([2]),
        tf.constant([0]),
        tf.constant([[3]]),
        exclude_own_pair=True,
    ).numpy()
    totals = table.item_totals
    assert (totals[1], totals[2], totals[3]) == (4.0, 4.0, 4.0)
    np.testing.assert_allclose(own[0, 0, 0], 2.0 / np.sqrt(3.0 * 2.0), rtol=1e-6)
    np.testing.assert_allclose(own[0, 0, 2], 1.0 / np.sqrt(3.0 * 2.0), rtol=1e-6)  # item 2


def test_last_history_item_follows_history_types():
    from feature_specs import HISTORY_TYPES, REC_HISTORY_ITEMS, SEARCH_HISTORY_CLICKED_ITEMS
    from unisar_tf.data.cooccurrence import last_history_items

    features = {  # rows: rec then search; search then rec; no history
        HISTORY_TYPES: np.array([[1, 1, 2, 0], [2, 1, 0, 0], [0, 0, 0, 0]]),
        REC_HISTORY_ITEMS: np.array([[4, 5], [6, 0], [0, 0]]),
        SEARCH_HISTORY_CLICKED_ITEMS: np.array([[[7], [0]], [[3], [0]], [[0], [0]]]),
    }
    np.testing.assert_array_equal(last_history_items(features), [7, 6, 0])


def test_directed_table_keeps_the_direction_and_excludes_the_own_transition():
    """trans(2 -> 3) = 2, trans(2 -> 5) = 1: terms are P(c | 2) = 2/3 and 1/3; nothing goes
    3 -> 2. In training (candidate 0 = 3 is the positive) one 2 -> 3 count and one of
    2's out-going total are the example's own: 1/2 and 1/2."""
    import scipy.sparse as sp

    counts = sp.csr_matrix(
        (np.array([2.0, 1.0]), (np.array([2, 2]), np.array([3, 5]))), shape=(NUM_ITEMS, NUM_ITEMS)
    )
    table = table_from_counts(counts, NUM_ITEMS)
    layer = ItemCooccurrence(NUM_ITEMS, table.num_pairs, symmetric=False)
    layer.build(None)
    layer.set_table(table.pair_keys, table.pair_counts, table.item_totals)
    last = tf.constant([2])
    seen = layer(last[:, None], last, last, tf.constant([[3, 5]])).numpy()
    np.testing.assert_allclose(seen[0, :, 0], [2 / 3, 1 / 3], rtol=1e-6)
    own = layer(last[:, None], last, last, tf.constant([[3, 5]]), exclude_own_pair=True).numpy()
    np.testing.assert_allclose(own[0, :, 0], [1 / 2, 1 / 2], rtol=1e-6)
    backwards = layer(
        tf.constant([[3]]), tf.constant([3]), tf.constant([3]), tf.constant([[2]])
    ).numpy()
    assert backwards[0, 0, 0] == 0.0


def _default_model():
    """The default preset's model on 8 items with captions and a filled co-occurrence table."""
    return cooccurrence_model()


def _batch():
    return {
        "user_id": tf.constant([1, 2]),
        "history_types": tf.constant([[1, 2, 0, 0, 0], [1, 0, 0, 0, 0]]),
        "rec_history_items": tf.constant([[1, 0, 0], [4, 0, 0]]),
        "search_history_query_tokens": tf.constant(
            [[[4, 0, 0, 0], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]]]
        ),
        "search_history_clicked_items": tf.constant([[[2], [0]], [[0], [0]]]),
        "candidate_items": tf.constant([[3, 1, 2], [5, 3, 6]]),
        "query_tokens": tf.constant([[5, 4, 0, 0], [7, 0, 0, 0]]),
    }


def test_query_match_features_count_query_words_among_item_words():
    model = _default_model()
    features = model._query_match_features(_batch(), "search").numpy()
    # Row 0, query {5, 4}: item 3 has {6, 7, 5} -> 1 of 2; item 1 {4, 5} -> 2; item 2 {4} -> 1.
    np.testing.assert_allclose(features[0], [[1, 0.5], [2, 1.0], [1, 0.5]])
    # Row 1, query {7}: items 5 and 6 have no words; item 3 has 7.
    np.testing.assert_allclose(features[1], [[0, 0], [1, 1.0], [0, 0]])
    np.testing.assert_array_equal(model._query_match_features(_batch(), "rec").numpy(), 0.0)


def test_transition_feature_reads_the_most_recent_behaviour():
    """Row 0's newest behaviour is the search click 2 (history_types [rec, search]); the only
    transition is 2 -> 3, so candidate 3 gets log(1 + 100 * 1) and the others 0; row 1's newest
    is rec item 4, with no transitions."""
    model = _default_model()
    transition = model._cooccurrence_features(_batch(), training=False).numpy()[..., 5]
    np.testing.assert_allclose(transition[0], [np.log1p(100.0), 0.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(transition[1], 0.0)


def test_softmax_ranking_loss_is_the_positives_cross_entropy():
    model = _default_model()
    batch = _batch()
    logits = model.score_logits(batch, model.encode_history(batch), ["rec"])["rec"].numpy()
    expected = np.mean(-logits[:, 0] + np.log(np.exp(logits).sum(axis=1)))
    rel = {
        "rel_negative_items": tf.constant([1, 2, 3, 4]),
        "rel_negative_query_tokens": tf.zeros((4, 4), tf.int64),
    }
    model.task_loss("rec", batch, rel)
    np.testing.assert_allclose(
        float(model.loss_trackers["rec_bce"].result()), expected, rtol=1e-4, atol=1e-6
    )


def test_build_model_requires_the_cooccurrence_tables_it_reads(tmp_path):
    """No model with silently all-zero tables: the default preset's config needs its tables
    (or a checkpoint that holds them), a config without the features refuses them, and
    tables of another size than the data facts say are refused."""
    config, data, side, tables = cooccurrence_parts()
    with pytest.raises(ValueError, match="uses co-occurrence features: pass cooccurrence"):
        build_model(config, data, side_features=side)
    with pytest.raises(ValueError, match="does not use them"):
        build_model(
            config.replace(use_cooccurrence=False), data, side_features=side, cooccurrence=tables
        )
    with pytest.raises(ValueError, match="the data facts say 1 and 1"):
        build_model(
            config, data.replace(cooccurrence_pairs=1), side_features=side, cooccurrence=tables
        )
    with pytest.raises(ValueError, match="the data has side features: pass side_features"):
        build_model(config, data, cooccurrence=tables)
    tf.keras.utils.set_random_seed(3)
    model = build_model(config, data, side_features=side, cooccurrence=tables)
    np.testing.assert_array_equal(model.cooccurrence.pair_keys.numpy(), tables[0].pair_keys)
    np.testing.assert_array_equal(model.cooccurrence.pair_counts.numpy(), tables[0].pair_counts)
    np.testing.assert_array_equal(model.transitions.pair_counts.numpy(), tables[1].pair_counts)
    # A restore fills the tables of a model built for one: same tables, same scores.
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    restored = build_model(config, data, side_features=side, tables_from_checkpoint=True)
    np.testing.assert_array_equal(restored.cooccurrence.pair_counts.numpy(), 0.0)
    tf.train.Checkpoint(model=restored).restore(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(restored.cooccurrence.pair_counts.numpy(), tables[0].pair_counts)
    batch = _batch()
    for task, scores in model(batch).items():
        np.testing.assert_allclose(restored(batch)[task].numpy(), scores.numpy(), rtol=1e-6)
