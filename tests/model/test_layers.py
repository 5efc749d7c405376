"""Layer behaviour: masks, gathering by type, embeddings, target attention, experts."""

import numpy as np
import pytest
import tensorflow as tf

from unisar_tf.layers import (
    EntityEmbedding,
    FusionDecoderLayer,
    MaskedMultiHeadAttention,
    MultiLayerPerceptron,
    MultiTaskExperts,
    PositionalEmbedding,
    QueryEncoder,
    StackedExperts,
    TargetAttention,
    TransformerEncoderLayer,
    gather_by_type,
    masked_mean,
    merge_histories,
    search_behaviour_embedding,
    transition_attention_mask,
)
from unisar_tf.losses import QueryItemRelevanceLoss, TransitionAlignmentLoss

REC, SEARCH, PAD = 1, 2, 0


def test_mixed_attention_gives_zero_weight_to_same_type_and_padded_keys():
    types = tf.constant([[REC, SEARCH, REC, SEARCH, SEARCH, PAD, PAD]])
    mask = transition_attention_mask(types)
    attention = MaskedMultiHeadAttention(8, 2)
    x = tf.random.stateless_normal([1, 7, 8], seed=[1, 2])
    _, weights = attention(x, x, mask, return_attention_scores=True)
    weights = weights.numpy()[0]  # (heads, 7, 7)
    t = types.numpy()[0]
    forbidden = (t[:, None] == t[None, :]) | (t[None, :] == PAD)
    assert np.all(weights[:, forbidden] == 0.0)
    # Real query rows distribute all their weight over the allowed keys.
    np.testing.assert_allclose(weights[:, :5].sum(-1), 1.0, rtol=1e-6)
    assert np.all(weights[:, :5][:, ~forbidden[:5]] > 0)


def test_mixed_encoder_without_search_history_is_finite_and_attention_output_zero():
    types = tf.constant([[REC, REC, REC, PAD], [REC, SEARCH, PAD, PAD]])
    mask = transition_attention_mask(types)
    x = tf.random.stateless_normal([2, 4, 8], seed=[3, 4])
    attention = MaskedMultiHeadAttention(8, 2)
    attended, weights = attention(x, x, mask, return_attention_scores=True)
    assert np.all(np.isfinite(attended.numpy()))
    # Row 0 has no search behaviour: no rec position may attend anything.
    assert np.all(weights.numpy()[0] == 0.0)
    assert np.all(attended.numpy()[0] == 0.0)
    assert np.any(attended.numpy()[1, :2] != 0.0)
    encoded = TransformerEncoderLayer(8, 2, 8, dropout=0.1)(x, mask, training=True)
    assert np.all(np.isfinite(encoded.numpy()))


def test_transition_mask_off_keeps_only_padding_mask():
    types = tf.constant([[REC, SEARCH, REC, PAD]])
    mask = transition_attention_mask(types, use_transition_mask=False).numpy()[0]
    expected = np.array([[True, True, True, False]] * 3 + [[False] * 4])
    np.testing.assert_array_equal(mask, expected)


def test_gather_by_type_keeps_time_order_and_drops_padding():
    types = tf.constant([[SEARCH, REC, REC, SEARCH, REC, PAD, PAD, PAD]])
    # Each slot's vector holds its own position, so order is visible.
    mixed = tf.cast(tf.tile(tf.range(1, 9)[tf.newaxis, :, tf.newaxis], [1, 1, 2]), tf.float32)
    rec, rec_valid = gather_by_type(mixed, types, REC, length=4)
    search, search_valid = gather_by_type(mixed, types, SEARCH, length=4)
    np.testing.assert_array_equal(rec.numpy()[0, :, 0], [2, 3, 5, 0])
    np.testing.assert_array_equal(rec_valid.numpy()[0], [True, True, True, False])
    np.testing.assert_array_equal(search.numpy()[0, :, 0], [1, 4, 0, 0])
    np.testing.assert_array_equal(search_valid.numpy()[0], [True, True, False, False])


def test_merge_then_gather_returns_each_list():
    types = tf.constant(
        [[REC, SEARCH, SEARCH, REC, PAD, PAD], [SEARCH, SEARCH, PAD, PAD, PAD, PAD]]
    )
    rec = tf.constant(np.arange(1, 2 * 3 * 2 + 1, dtype=np.float32).reshape(2, 3, 2))
    search = -tf.constant(np.arange(1, 2 * 3 * 2 + 1, dtype=np.float32).reshape(2, 3, 2))
    merged = merge_histories(rec, search, types).numpy()
    np.testing.assert_array_equal(merged[0, 0], rec[0, 0])
    np.testing.assert_array_equal(merged[0, 1], search[0, 0])
    np.testing.assert_array_equal(merged[0, 2], search[0, 1])
    np.testing.assert_array_equal(merged[0, 3], rec[0, 1])
    assert np.all(merged[0, 4:] == 0) and np.all(merged[1, 2:] == 0)
    back, valid = gather_by_type(tf.constant(merged), types, SEARCH, length=3)
    np.testing.assert_array_equal(back.numpy()[1, :2], search.numpy()[1, :2])
    np.testing.assert_array_equal(valid.numpy(), [[True, True, False], [True, True, False]])


def test_entity_embedding_maps_padding_to_exact_zero():
    layer = EntityEmbedding(10, 4, 6, zero_padding=True)
    out = layer(tf.constant([[0, 3], [5, 0]])).numpy()
    assert np.all(out[0, 0] == 0) and np.all(out[1, 1] == 0)
    kernel, bias = layer.projection.kernel.numpy(), layer.projection.bias.numpy()
    expected = np.tanh(layer.embeddings.numpy()[3] @ kernel + bias)
    np.testing.assert_allclose(out[0, 1], expected, rtol=1e-5, atol=1e-6)
    users = EntityEmbedding(10, 4, 6, zero_padding=False)
    assert np.any(users(tf.constant([0])).numpy() != 0)


def test_query_encoder_is_masked_mean_then_projection():
    layer = QueryEncoder(20, 4, 6)
    tokens = tf.constant([[3, 7, 0, 0], [0, 0, 0, 0]])
    out = layer(tokens).numpy()
    table = layer.embeddings.numpy()
    kernel, bias = layer.projection.kernel.numpy(), layer.projection.bias.numpy()
    np.testing.assert_allclose(
        out[0], np.tanh((table[3] + table[7]) / 2 @ kernel + bias), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(out[1], np.tanh(bias), rtol=1e-6)  # empty query: mean 0


def test_search_behaviour_is_query_plus_mean_of_real_clicks():
    query = tf.constant([[[1.0, 1.0], [2.0, 2.0], [5.0, 5.0]]])
    clicks = tf.constant([[[3, 4], [0, 0], [9, 0]]])
    click_emb = tf.constant(
        [[[[2.0, 0.0], [4.0, 2.0]], [[7.0, 7.0], [7.0, 7.0]], [[1.0, 3.0], [8.0, 8.0]]]]
    )
    valid = tf.constant([[True, True, False]])
    out = search_behaviour_embedding(query, click_emb, clicks, valid).numpy()[0]
    np.testing.assert_allclose(out[0], [1 + 3, 1 + 1])  # mean of two clicks
    np.testing.assert_allclose(out[1], [2, 2])  # no click: the query alone
    np.testing.assert_allclose(out[2], [0, 0])  # padded session


def test_target_attention_matches_formula_and_is_zero_without_history():
    layer = TargetAttention(4, init_std=0.5)
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(2, 3, 4)).astype(np.float32)
    targets = rng.normal(size=(2, 5, 4)).astype(np.float32)
    mask = np.array([[True, True, False], [False, False, False]])
    pooled = layer(tf.constant(seq), tf.constant(targets), tf.constant(mask)).numpy()
    w = layer.kernel.numpy()
    logits = np.einsum("ld,de,ce->cl", seq[0, :2], w, targets[0])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(pooled[0], weights @ seq[0, :2], rtol=1e-5, atol=1e-6)
    assert np.all(pooled[1] == 0)


def test_positional_embedding_adds_learned_rows():
    layer = PositionalEmbedding(5, 3)
    x = tf.zeros([2, 5, 3])
    out = layer(x).numpy()
    np.testing.assert_array_equal(out[0], layer.positions.numpy())
    np.testing.assert_array_equal(out[1], layer.positions.numpy())


def test_multi_task_experts_match_numpy_gate_mixture():
    layer = MultiTaskExperts(["rec", "search"], 2, 3, expert_units=4, tower_units=[5], dropout=0.0)
    x = tf.random.stateless_normal([2, 3, 6], seed=[5, 6])
    out = layer(x)
    xn = x.numpy()

    def experts(stack):
        return np.maximum(
            np.einsum("bci,eio->bceo", xn, stack.kernel.numpy()) + stack.bias.numpy(), 0
        )

    shared = experts(layer.shared_experts)
    for task in ("rec", "search"):
        mixed_inputs = np.concatenate([experts(layer.specific_experts[task]), shared], axis=2)
        gate = layer.gates[task]
        logits = xn @ gate.kernel.numpy() + gate.bias.numpy()
        g = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        assert g.shape[-1] == 5  # 3 specific + 2 shared experts
        mixed = np.einsum("bce,bceo->bco", g, mixed_inputs)
        dense = layer.towers[task].hidden[0]
        expected = np.maximum(mixed @ dense.kernel.numpy() + dense.bias.numpy(), 0)
        np.testing.assert_allclose(out[task].numpy(), expected, rtol=1e-4, atol=1e-5)


LAYER_CASES = [
    (lambda: EntityEmbedding(10, 4, 6), lambda: (tf.constant([[1, 0, 3]]),)),
    (lambda: QueryEncoder(10, 4, 6), lambda: (tf.constant([[1, 2, 0]]),)),
    (lambda: PositionalEmbedding(3, 4), lambda: (tf.ones([2, 3, 4]),)),
    (
        lambda: MaskedMultiHeadAttention(8, 2),
        lambda: (tf.ones([1, 3, 8]), tf.ones([1, 3, 8]), tf.ones([1, 3, 3], tf.bool)),
    ),
    (
        lambda: TransformerEncoderLayer(8, 2, 8),
        lambda: (tf.random.stateless_normal([1, 3, 8], [1, 1]), tf.ones([1, 3, 3], tf.bool)),
    ),
    (
        lambda: FusionDecoderLayer(8, 2, 8),
        lambda: (
            tf.random.stateless_normal([1, 3, 8], [1, 2]),
            tf.random.stateless_normal([1, 3, 8], [1, 3]),
            tf.constant([[True, True, False]]),
            tf.constant([[True, False, False]]),
        ),
    ),
    (
        lambda: TargetAttention(8),
        lambda: (tf.ones([1, 3, 8]), tf.ones([1, 2, 8]), tf.constant([[True, True, False]])),
    ),
    (lambda: StackedExperts(3, 4, 0.1), lambda: (tf.ones([1, 2, 6]),)),
    (lambda: MultiLayerPerceptron([4, 3], 0.1, output_units=1), lambda: (tf.ones([2, 5]),)),
    (lambda: MultiTaskExperts(["rec", "search"], 2, 2, 4, [3], 0.1), lambda: (tf.ones([1, 2, 6]),)),
    (
        lambda: TransitionAlignmentLoss(4, 0.1),
        lambda: (
            tf.random.stateless_normal([3, 2, 4], [2, 1]),
            tf.random.stateless_normal([3, 2, 4], [2, 2]),
            tf.ones([3, 2], tf.bool),
        ),
    ),
    (
        lambda: QueryItemRelevanceLoss(4, 0.5),
        lambda: tuple(tf.random.stateless_normal([3, 4], [3, i]) for i in range(4)),
    ),
]


@pytest.mark.parametrize("make_layer,make_inputs", LAYER_CASES)
def test_layer_rebuilt_from_config_gives_identical_outputs(make_layer, make_inputs):
    layer = make_layer()
    inputs = make_inputs()
    expected = layer(*inputs)
    clone = type(layer).from_config(layer.get_config())
    clone(*inputs)
    clone.set_weights(layer.get_weights())
    tf.nest.map_structure(
        lambda a, b: np.testing.assert_allclose(a.numpy(), b.numpy()), expected, clone(*inputs)
    )


def test_masked_mean_ignores_padding_and_handles_empty_rows():
    seq = tf.constant([[[1.0], [3.0], [100.0]], [[5.0], [5.0], [5.0]]])
    valid = tf.constant([[True, True, False], [False, False, False]])
    np.testing.assert_allclose(masked_mean(seq, valid).numpy(), [[2.0], [0.0]])


def _padded_batch(lengths, width, dim, seed):
    """(B, width, d) random rows (padded slots hold garbage too) and the (B, width) valid prefix."""
    x = tf.random.stateless_normal([len(lengths), width, dim], seed=[seed, 7])
    valid = tf.constant([[position < length for position in range(width)] for length in lengths])
    return x, valid


def test_encoder_layer_computes_only_valid_positions_and_matches_the_full_computation():
    layer = TransformerEncoderLayer(8, 2, 16, dropout=0.3)  # dropout must be off at inference
    x, valid = _padded_batch([5, 2, 0, 1], width=5, dim=8, seed=11)
    keys = tf.tile(valid[:, tf.newaxis, :], [1, 5, 1])  # every query row: real keys only
    packed = layer(x, keys, training=False, valid=valid).numpy()
    full = layer(x, keys, training=False).numpy()  # valid=None: every slot computed
    v = valid.numpy()
    np.testing.assert_allclose(packed[v], full[v], rtol=1e-5, atol=1e-6)
    assert np.all(packed[~v] == 0.0)  # exact zeros, not small numbers
    assert np.all(np.abs(full[v]) > 0) and np.any(full[~v] != 0.0)  # the comparison is not 0 == 0
    # The garbage in padded slots must not leak into real positions.
    noisy = tf.where(valid[..., tf.newaxis], x, 100.0 * tf.ones_like(x))
    np.testing.assert_allclose(
        layer(noisy, keys, training=False, valid=valid).numpy(), packed, rtol=1e-5, atol=1e-6
    )
    # Each row equals the layer run on that row's real prefix alone (no padding at all).
    for row, length in enumerate(v.sum(axis=1)):
        if length:
            alone = layer(
                x[row : row + 1, :length], tf.ones([1, length, length], tf.bool), training=False
            ).numpy()[0]
            np.testing.assert_allclose(packed[row, :length], alone, rtol=1e-5, atol=1e-6)


def test_fusion_decoder_layer_matches_the_layer_on_the_trimmed_batch():
    layer = FusionDecoderLayer(8, 2, 16, dropout=0.3)
    target, target_valid = _padded_batch([4, 1, 3, 0], width=4, dim=8, seed=21)
    memory, memory_valid = _padded_batch([2, 4, 3, 0], width=4, dim=8, seed=22)
    out = layer(target, memory, target_valid, memory_valid, training=False).numpy()
    every_slot = layer(
        target,
        memory,
        target_valid,
        memory_valid,
        training=False,
        positions=tf.ones_like(target_valid),
    ).numpy()
    tv, mv = target_valid.numpy(), memory_valid.numpy()
    assert np.all(out[~tv] == 0.0)
    np.testing.assert_allclose(out[tv], every_slot[tv], rtol=1e-5, atol=1e-6)
    for row in range(len(tv)):
        n, m = int(tv[row].sum()), int(mv[row].sum())
        if n == 0:  # row 3: no target position at all
            continue
        trimmed = layer(
            target[row : row + 1, :n],
            memory[row : row + 1, :m],
            tf.ones([1, n], tf.bool),
            tf.ones([1, m], tf.bool),
            training=False,
        ).numpy()[0]
        np.testing.assert_allclose(out[row, :n], trimmed, rtol=1e-5, atol=1e-6)
