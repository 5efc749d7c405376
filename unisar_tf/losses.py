"""Contrastive losses of UniSAR (spec sections 5 and 6), each owning its bilinear W and tau."""

from __future__ import annotations

import tensorflow as tf

from unisar_tf.layers.transitions import masked_mean

_EXCLUDED_LOGIT = -1e9


def _xavier_normal() -> tf.keras.initializers.Initializer:
    return tf.keras.initializers.GlorotNormal()


def nt_xent_bilinear(
    first: tf.Tensor,
    second: tf.Tensor,
    kernel: tf.Tensor,
    temperature: tf.Tensor,
    row_valid: tf.Tensor,
) -> tf.Tensor:
    """NT-Xent with similarity tanh(z W z^T) / tau over z = [first; second].

    first, second (B, d); kernel (d, d); row_valid (B,) bool -> scalar.
    Row k's positive is its partner (k <-> k + B); every other valid row is a negative; a row
    never scores itself. Rows of users with no history of that kind are left out as anchors
    and as negatives (the reference divides by zero there); no valid row gives 0.
    """
    batch = tf.shape(first)[0]
    z = tf.concat([first, second], axis=0)  # (2B, d)
    valid = tf.concat([row_valid, row_valid], axis=0)
    logits = tf.tanh(tf.matmul(tf.matmul(z, kernel), z, transpose_b=True)) / temperature
    allowed = tf.logical_and(valid[tf.newaxis, :], tf.logical_not(tf.eye(2 * batch, dtype=tf.bool)))
    logits = tf.where(allowed, logits, _EXCLUDED_LOGIT)
    partner = tf.concat([tf.range(batch, 2 * batch), tf.range(batch)], axis=0)
    per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=partner, logits=logits)
    weights = tf.cast(valid, per_row.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(per_row * weights), tf.reduce_sum(weights))


def bilinear_info_nce(
    anchors: tf.Tensor,
    positives: tf.Tensor,
    negatives: tf.Tensor,
    kernel: tf.Tensor,
    temperature: tf.Tensor,
) -> tf.Tensor:
    """InfoNCE of each anchor against its positive and a shared pool of negatives.

    anchors, positives (P, d); negatives (N, d); kernel (d, d) -> scalar (0 when P = 0).
    Logits are tanh(a W x^T) / tau; the positive is column 0.
    """
    projected = tf.matmul(anchors, kernel)  # (P, d)
    positive_logit = tf.reduce_sum(projected * positives, axis=1, keepdims=True)
    negative_logits = tf.matmul(projected, negatives, transpose_b=True)
    logits = tf.tanh(tf.concat([positive_logit, negative_logits], axis=1)) / temperature
    per_anchor = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.zeros(tf.shape(logits)[:1], tf.int32), logits=logits
    )
    count = tf.cast(tf.shape(per_anchor)[0], per_anchor.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(per_anchor), count)


class _BilinearContrastiveLoss(tf.keras.layers.Layer):
    """Owns the bilinear similarity kernel W (d, d) and the learnable temperature tau."""

    def __init__(self, model_dim: int, initial_temperature: float, **kwargs):
        super().__init__(**kwargs)
        self.model_dim = model_dim
        self.initial_temperature = initial_temperature

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel", shape=(self.model_dim, self.model_dim), initializer=_xavier_normal()
        )
        self.temperature = self.add_weight(
            name="temperature",
            shape=(),
            initializer=tf.keras.initializers.Constant(self.initial_temperature),
        )
        super().build(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(model_dim=self.model_dim, initial_temperature=self.initial_temperature)
        return config


class TransitionAlignmentLoss(_BilinearContrastiveLoss):
    """L_align for one pair of views (spec 5), e.g. (H_r2r, H_s2r) on the rec list.

    same_view, other_view (B, L, d), valid (B, L) bool -> scalar. Each view is mean-pooled over
    valid positions first.
    """

    def call(self, same_view, other_view, valid):
        row_valid = tf.reduce_any(valid, axis=1)
        return nt_xent_bilinear(
            masked_mean(same_view, valid),
            masked_mean(other_view, valid),
            self.kernel,
            self.temperature,
            row_valid,
        )


class QueryItemRelevanceLoss(_BilinearContrastiveLoss):
    """L_rel (spec 6): mean of query->item and item->query InfoNCE with one shared W and tau.

    query_embeddings (P, d) and clicked_item_embeddings (P, d) are the (history query, clicked
    item) pairs; negative_items (N, d), negative_queries (N, d) are sampled -> scalar.
    """

    def call(self, query_embeddings, clicked_item_embeddings, negative_items, negative_queries):
        query_to_item = bilinear_info_nce(
            query_embeddings, clicked_item_embeddings, negative_items, self.kernel, self.temperature
        )
        item_to_query = bilinear_info_nce(
            clicked_item_embeddings,
            query_embeddings,
            negative_queries,
            self.kernel,
            self.temperature,
        )
        return 0.5 * (query_to_item + item_to_query)
