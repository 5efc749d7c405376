"""Masked attention blocks: multi-head attention, encoder (post- or pre-LN) and decoder layers,
target attention.

Masks are boolean with True = "may attend". A query row with no allowed key (a user with no
search history, say) gets an exact zero attention output instead of the reference's NaN.
"""

from __future__ import annotations

import tensorflow as tf

_MASKED_LOGIT = -1e9  # exp() underflows to exactly 0 in float32 next to any allowed key.


def _xavier_normal() -> tf.keras.initializers.Initializer:
    return tf.keras.initializers.GlorotNormal()


def masked_softmax(logits: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Softmax over the last axis restricted to `mask`; all-masked rows give all-zero weights.

    logits (..., L) float, mask (..., L) bool -> (..., L).
    """
    mask = tf.cast(mask, logits.dtype)
    weights = tf.nn.softmax(logits + (1.0 - mask) * _MASKED_LOGIT, axis=-1)
    row_has_key = tf.reduce_max(mask, axis=-1, keepdims=True)
    return weights * mask * row_has_key


class PackedSequence:
    """The real positions of a padded batch, gathered into rows.

    valid (B, L) bool. `pack` (B, L, ...) -> (N, ...) keeps the N valid positions in row-major
    order; `unpack` (N, d) -> (B, L, d) puts them back with zeros at padded positions.
    Transformer blocks run their position-wise layers (projections, feed-forward, LayerNorm,
    dropout) on packed rows: Beauty histories fill ~13 of 60 slots, so most of the padded
    work would be wasted.
    """

    def __init__(self, padded: tf.Tensor, valid: tf.Tensor):
        self.index = tf.where(valid)  # (N, 2) int64
        self.shape = tf.shape(padded, out_type=tf.int64)
        self.rows = self.pack(padded)

    def with_rows(self, rows: tf.Tensor) -> "PackedSequence":
        """The same positions holding new rows (N, d') (a layer's output)."""
        packed = object.__new__(PackedSequence)
        packed.index, packed.shape, packed.rows = self.index, self.shape, rows
        return packed

    def pack(self, padded: tf.Tensor) -> tf.Tensor:
        return tf.gather_nd(padded, self.index)

    def unpack(self, rows: tf.Tensor) -> tf.Tensor:
        shape = tf.concat([self.shape[:2], tf.shape(rows, out_type=tf.int64)[1:]], axis=0)
        return tf.scatter_nd(self.index, rows, shape)


class MaskedMultiHeadAttention(tf.keras.layers.Layer):
    """Scaled dot-product attention with `num_heads` heads and dropout on the weights.

    query (B, Lq, d), value (B, Lk, d), mask (B, Lq, Lk) bool -> (B, Lq, d)
    [and weights (B, heads, Lq, Lk) with return_attention_scores=True].
    Rows whose mask is all False output exact zeros (no bias leaks through).
    """

    def __init__(self, model_dim: int, num_heads: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if model_dim % num_heads:
            raise ValueError(f"model_dim={model_dim} not divisible by num_heads={num_heads}")
        self.model_dim = model_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.head_dim = model_dim // num_heads
        # A fresh initializer per projection: a shared unseeded one repeats its values.
        self.query_projection = tf.keras.layers.Dense(
            model_dim, kernel_initializer=tf.keras.initializers.GlorotUniform(), name="query"
        )
        self.key_projection = tf.keras.layers.Dense(
            model_dim, kernel_initializer=tf.keras.initializers.GlorotUniform(), name="key"
        )
        self.value_projection = tf.keras.layers.Dense(
            model_dim, kernel_initializer=tf.keras.initializers.GlorotUniform(), name="value"
        )
        self.output_projection = tf.keras.layers.Dense(
            model_dim, name="output", kernel_initializer=_xavier_normal()
        )
        self.weights_dropout = tf.keras.layers.Dropout(dropout)

    def build(self, input_shape):
        shape = tf.TensorShape([None, None, self.model_dim])
        for projection in (
            self.query_projection,
            self.key_projection,
            self.value_projection,
            self.output_projection,
        ):
            projection.build(shape)
        super().build(input_shape)

    def _split_heads(self, x: tf.Tensor) -> tf.Tensor:
        batch, length = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, [batch, length, self.num_heads, self.head_dim])
        return tf.transpose(x, [0, 2, 1, 3])  # (B, heads, L, head_dim)

    def _attend(self, q, k, v, mask, training):
        """Heads-split q (B, h, Lq, dh), k, v (B, h, Lk, dh) -> context (B, Lq, d), weights."""
        logits = tf.matmul(q, k, transpose_b=True) * (self.head_dim**-0.5)
        weights = masked_softmax(logits, mask[:, tf.newaxis, :, :])
        context = tf.matmul(self.weights_dropout(weights, training=training), v)
        batch, length = tf.shape(q)[0], tf.shape(q)[2]
        context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [batch, length, self.model_dim])
        return context, weights

    def call(self, query, value, mask, training=None, return_attention_scores=False):
        q = self._split_heads(self.query_projection(query))
        k = self._split_heads(self.key_projection(value))
        v = self._split_heads(self.value_projection(value))
        context, weights = self._attend(q, k, v, mask, training)
        row_has_key = tf.cast(tf.reduce_any(mask, axis=-1, keepdims=True), context.dtype)
        output = self.output_projection(context) * row_has_key
        if return_attention_scores:
            return output, weights
        return output

    def call_packed(self, query: "PackedSequence", value: "PackedSequence", mask, training=None):
        """The same attention on packed rows: query.rows (Nq, d), value.rows (Nk, d) -> (Nq, d).

        The projections and the output layer run on real positions only; scores and weights
        use the padded (B, Lq, Lk) layout, where padded keys are masked anyway.
        """
        q = self._split_heads(query.unpack(self.query_projection(query.rows)))
        k = self._split_heads(value.unpack(self.key_projection(value.rows)))
        v = self._split_heads(value.unpack(self.value_projection(value.rows)))
        context, _ = self._attend(q, k, v, mask, training)
        row_has_key = tf.cast(query.pack(tf.reduce_any(mask, axis=-1)), context.dtype)
        return self.output_projection(query.pack(context)) * row_has_key[:, tf.newaxis]

    def get_config(self):
        config = super().get_config()
        config.update(model_dim=self.model_dim, num_heads=self.num_heads, dropout=self.dropout)
        return config


class _FeedForward(tf.keras.layers.Layer):
    """Dense(ff, relu) -> dropout -> Dense(d): (..., d) -> (..., d)."""

    def __init__(self, model_dim: int, feed_forward_dim: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.model_dim = model_dim
        self.feed_forward_dim = feed_forward_dim
        self.dropout = dropout
        self.inner = tf.keras.layers.Dense(
            feed_forward_dim, activation="relu", kernel_initializer=_xavier_normal(), name="inner"
        )
        self.inner_dropout = tf.keras.layers.Dropout(dropout)
        self.outer = tf.keras.layers.Dense(
            model_dim, kernel_initializer=_xavier_normal(), name="outer"
        )

    def build(self, input_shape):
        self.inner.build(tf.TensorShape([None, None, self.model_dim]))
        self.outer.build(tf.TensorShape([None, None, self.feed_forward_dim]))
        super().build(input_shape)

    def call(self, x, training=None):
        return self.outer(self.inner_dropout(self.inner(x), training=training))

    def get_config(self):
        config = super().get_config()
        config.update(
            model_dim=self.model_dim, feed_forward_dim=self.feed_forward_dim, dropout=self.dropout
        )
        return config


class _PostNormBlock(tf.keras.layers.Layer):
    """Shared constructor arguments of the post-LayerNorm encoder and decoder layers."""

    def __init__(
        self,
        model_dim: int,
        num_heads: int,
        feed_forward_dim: int,
        dropout: float = 0.1,
        layer_norm_epsilon: float = 1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.model_dim = model_dim
        self.num_heads = num_heads
        self.feed_forward_dim = feed_forward_dim
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.feed_forward = _FeedForward(model_dim, feed_forward_dim, dropout, name="feed_forward")

    def _attention(self, name: str) -> MaskedMultiHeadAttention:
        return MaskedMultiHeadAttention(self.model_dim, self.num_heads, self.dropout, name=name)

    def _residual_norm(self, name: str):
        return (
            tf.keras.layers.Dropout(self.dropout),
            tf.keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name=name),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            model_dim=self.model_dim,
            num_heads=self.num_heads,
            feed_forward_dim=self.feed_forward_dim,
            dropout=self.dropout,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config


class TransformerEncoderLayer(_PostNormBlock):
    """Self-attention layer (PyTorch's TransformerEncoderLayer), post-LN unless `norm_first`.

    x (B, L, d), mask (B, L, L) bool, valid (B, L) bool or None (= all) -> (B, L, d):
    post-LN (UniSAR): x = LN(x + drop(MHA(x, x, mask))); x = LN(x + drop(FF(x))).
    norm_first (pre-LN, SASRec): x = x + drop(MHA(LN(x), LN(x), mask)); x = x + drop(FF(LN(x))).
    The mixed encoder passes the transition mask (other type only); r2r/s2s pass padding only;
    SASRec a causal mask. Only `valid` positions are computed; the others are exact zeros.
    """

    def __init__(self, *args, norm_first: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm_first = norm_first
        self.self_attention = self._attention("self_attention")
        self.attention_dropout, self.attention_norm = self._residual_norm("attention_norm")
        self.output_dropout, self.output_norm = self._residual_norm("output_norm")

    def get_config(self):
        config = super().get_config()
        config.update(norm_first=self.norm_first)
        return config

    def call(self, x, mask, training=None, valid=None):
        if valid is None:
            valid = tf.ones(tf.shape(x)[:2], tf.bool)
        packed = PackedSequence(x, valid)
        if self.norm_first:
            normed = packed.with_rows(self.attention_norm(packed.rows))
            attended = self.self_attention.call_packed(normed, normed, mask, training=training)
            rows = packed.rows + self.attention_dropout(attended, training=training)
            transformed = self.feed_forward(self.output_norm(rows), training=training)
            return packed.unpack(rows + self.output_dropout(transformed, training=training))
        attended = self.self_attention.call_packed(packed, packed, mask, training=training)
        rows = self.attention_norm(
            packed.rows + self.attention_dropout(attended, training=training)
        )
        transformed = self.feed_forward(rows, training=training)
        rows = self.output_norm(rows + self.output_dropout(transformed, training=training))
        return packed.unpack(rows)


class FusionDecoderLayer(_PostNormBlock):
    """Post-LN transformer decoder layer used for cross-attention fusion (spec 7).

    target (B, L, d), memory (B, L', d), target_mask (B, L) bool, memory_mask (B, L') bool
    -> (B, L, d). Self-attention over the target, cross-attention to the memory, feed-forward.
    Only valid target positions (or `positions`) are computed; the others are exact zeros.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.self_attention = self._attention("self_attention")
        self.cross_attention = self._attention("cross_attention")
        self.self_dropout, self.self_norm = self._residual_norm("self_norm")
        self.cross_dropout, self.cross_norm = self._residual_norm("cross_norm")
        self.output_dropout, self.output_norm = self._residual_norm("output_norm")

    def call(self, target, memory, target_mask, memory_mask, training=None, positions=None):
        """positions (B, L) bool: target slots to compute (default target_mask)."""
        length = tf.shape(target)[1]
        self_mask = tf.tile(target_mask[:, tf.newaxis, :], [1, length, 1])
        cross_mask = tf.tile(memory_mask[:, tf.newaxis, :], [1, length, 1])
        packed_target = PackedSequence(target, target_mask if positions is None else positions)
        attended = self.self_attention.call_packed(
            packed_target, packed_target, self_mask, training=training
        )
        rows = self.self_norm(packed_target.rows + self.self_dropout(attended, training=training))
        crossed = self.cross_attention.call_packed(
            packed_target.with_rows(rows),
            PackedSequence(memory, memory_mask),
            cross_mask,
            training=training,
        )
        rows = self.cross_norm(rows + self.cross_dropout(crossed, training=training))
        transformed = self.feed_forward(rows, training=training)
        rows = self.output_norm(rows + self.output_dropout(transformed, training=training))
        return packed_target.unpack(rows)


class TargetAttention(tf.keras.layers.Layer):
    """Eq. 8: v = V^T softmax(V W e_i) per candidate, padding masked, no 1/sqrt(d).

    sequence (B, L, d), targets (B, C, d), mask (B, L) bool -> (B, C, d). The history is
    encoded once per row and pooled for every candidate in one batched matmul. A row with no valid
    position pools to exact zeros.
    """

    def __init__(self, model_dim: int, init_std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.model_dim = model_dim
        self.init_std = init_std

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.model_dim, self.model_dim),
            initializer=tf.keras.initializers.RandomNormal(stddev=self.init_std),
        )
        super().build(input_shape)

    def call(self, sequence, targets, mask, return_attention_scores=False):
        # (V W) first, once per row; then one batched matmul per row for all candidates.
        keys = tf.matmul(sequence, self.kernel)  # (B, L, d)
        logits = tf.matmul(targets, keys, transpose_b=True)  # (B, C, L)
        weights = masked_softmax(logits, mask[:, tf.newaxis, :])
        pooled = tf.matmul(weights, sequence)  # (B, C, d)
        if return_attention_scores:
            return pooled, weights
        return pooled

    def get_config(self):
        config = super().get_config()
        config.update(model_dim=self.model_dim, init_std=self.init_std)
        return config
