"""The contrastive losses equal a direct NumPy computation on small fixed tensors."""

import numpy as np
import tensorflow as tf

from unisar_tf.losses import (
    QueryItemRelevanceLoss,
    TransitionAlignmentLoss,
    bilinear_info_nce,
    nt_xent_bilinear,
)


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def numpy_nt_xent(a, b, w, tau):
    """Reference formula: z = [a; b], sim = tanh(z W z^T) / tau, drop self, partner positive."""
    n = len(a)
    z = np.concatenate([a, b])
    sim = np.tanh(z @ w @ z.T) / tau
    losses = []
    for k in range(2 * n):
        partner = (k + n) % (2 * n)
        others = [j for j in range(2 * n) if j != k]
        row = sim[k, others]
        losses.append(-_log_softmax(row)[others.index(partner)])
    return float(np.mean(losses))


def numpy_info_nce(anchors, positives, negatives, w, tau):
    pos = np.tanh(np.sum((anchors @ w) * positives, axis=1, keepdims=True))
    neg = np.tanh((anchors @ w) @ negatives.T)
    logits = np.concatenate([pos, neg], axis=1) / tau
    return float(np.mean(-_log_softmax(logits)[:, 0]))


RNG = np.random.default_rng(7)
A = RNG.normal(size=(3, 4)).astype(np.float32)
B = RNG.normal(size=(3, 4)).astype(np.float32)
W = RNG.normal(size=(4, 4)).astype(np.float32) * 0.5


def test_nt_xent_equals_numpy():
    got = nt_xent_bilinear(A, B, W, tf.constant(0.1), tf.constant([True, True, True]))
    np.testing.assert_allclose(got.numpy(), numpy_nt_xent(A, B, W, 0.1), rtol=1e-5)


def test_nt_xent_leaves_out_rows_without_history():
    # Row 2 has no history of this kind: the loss is that of rows 0-1 alone.
    got = nt_xent_bilinear(A, B, W, tf.constant(0.2), tf.constant([True, True, False]))
    np.testing.assert_allclose(got.numpy(), numpy_nt_xent(A[:2], B[:2], W, 0.2), rtol=1e-5)
    none_valid = nt_xent_bilinear(A, B, W, tf.constant(0.2), tf.constant([False] * 3))
    assert none_valid.numpy() == 0.0


def test_alignment_layer_mean_pools_valid_positions():
    same = RNG.normal(size=(3, 2, 4)).astype(np.float32)
    other = RNG.normal(size=(3, 2, 4)).astype(np.float32)
    valid = np.array([[True, False], [True, True], [True, True]])
    layer = TransitionAlignmentLoss(4, initial_temperature=0.1)
    got = layer(tf.constant(same), tf.constant(other), tf.constant(valid)).numpy()
    weights = valid[..., None].astype(np.float32)
    a = (same * weights).sum(1) / weights.sum(1)
    b = (other * weights).sum(1) / weights.sum(1)
    expected = numpy_nt_xent(a, b, layer.kernel.numpy(), 0.1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert len(layer.trainable_weights) == 2  # W and the learnable temperature


def test_info_nce_equals_numpy_and_is_zero_without_pairs():
    negatives = RNG.normal(size=(5, 4)).astype(np.float32)
    got = bilinear_info_nce(A, B, negatives, W, tf.constant(0.5))
    np.testing.assert_allclose(got.numpy(), numpy_info_nce(A, B, negatives, W, 0.5), rtol=1e-5)
    empty = bilinear_info_nce(
        np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32), negatives, W, tf.constant(0.5)
    )
    assert empty.numpy() == 0.0


def test_relevance_loss_is_mean_of_both_directions():
    neg_items = RNG.normal(size=(6, 4)).astype(np.float32)
    neg_queries = RNG.normal(size=(6, 4)).astype(np.float32)
    layer = QueryItemRelevanceLoss(4, initial_temperature=0.1)
    got = layer(A, B, neg_items, neg_queries).numpy()
    w = layer.kernel.numpy()
    expected = 0.5 * (
        numpy_info_nce(A, B, neg_items, w, 0.1) + numpy_info_nce(B, A, neg_queries, w, 0.1)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_temperatures_are_learnable():
    layer = QueryItemRelevanceLoss(4, initial_temperature=0.1)
    neg = RNG.normal(size=(6, 4)).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = layer(A, B, neg, neg)
    grads = tape.gradient(loss, [layer.temperature, layer.kernel])
    assert all(g is not None and np.any(g.numpy() != 0) for g in grads)
