"""Masked attention blocks: multi-head attention, post-LN encoder/decoder layers, target attention.

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
            model_dim, kernel_initializer=tf.keras.initializers.GlorotUniform(), name="query")
        self.key_projection = tf.keras.layers.Dense(
            model_dim, kernel_initializer=tf.keras.initializers.GlorotUniform(), name="key")
        self.value_projection = tf.keras.layers.Dense(
            model_dim, kernel_initializer=tf.keras.initializers.GlorotUniform(), name="value")
        self.output_projection = tf.keras.layers.Dense(model_dim, name="output",
                                                       kernel_initializer=_xavier_normal())
        self.weights_dropout = tf.keras.layers.Dropout(dropout)

    def build(self, input_shape):
        shape = tf.TensorShape([None, None, self.model_dim])
        for projection in (self.query_projection, self.key_projection, self.value_projection,
                           self.output_projection):
            projection.build(shape)
        super().build(input_shape)

    def _split_heads(self, x: tf.Tensor) -> tf.Tensor:
        batch, length = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, [batch, length, self.num_heads, self.head_dim])
        return tf.transpose(x, [0, 2, 1, 3])  # (B, heads, L, head_dim)

    def call(self, query, value, mask, training=None, return_attention_scores=False):
        q = self._split_heads(self.query_projection(query))
        k = self._split_heads(self.key_projection(value))
        v = self._split_heads(self.value_projection(value))
        logits = tf.matmul(q, k, transpose_b=True) * (self.head_dim ** -0.5)
        weights = masked_softmax(logits, mask[:, tf.newaxis, :, :])
        context = tf.matmul(self.weights_dropout(weights, training=training), v)
        batch, length = tf.shape(query)[0], tf.shape(query)[1]
        context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [batch, length, self.model_dim])
        row_has_key = tf.cast(tf.reduce_any(mask, axis=-1, keepdims=True), context.dtype)
        output = self.output_projection(context) * row_has_key
        if return_attention_scores:
            return output, weights
        return output

    def get_config(self):
        config = super().get_config()
        config.update(model_dim=self.model_dim, num_heads=self.num_heads, dropout=self.dropout)
        return config


class _FeedForward(tf.keras.layers.Layer):
    """Dense(ff, relu) -> dropout -> Dense(d): (B, L, d) -> (B, L, d)."""

    def __init__(self, model_dim: int, feed_forward_dim: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.model_dim = model_dim
        self.feed_forward_dim = feed_forward_dim
        self.dropout = dropout
        self.inner = tf.keras.layers.Dense(feed_forward_dim, activation="relu",
                                           kernel_initializer=_xavier_normal(), name="inner")
        self.inner_dropout = tf.keras.layers.Dropout(dropout)
        self.outer = tf.keras.layers.Dense(model_dim, kernel_initializer=_xavier_normal(),
                                           name="outer")

    def build(self, input_shape):
        self.inner.build(tf.TensorShape([None, None, self.model_dim]))
        self.outer.build(tf.TensorShape([None, None, self.feed_forward_dim]))
        super().build(input_shape)

    def call(self, x, training=None):
        return self.outer(self.inner_dropout(self.inner(x), training=training))

    def get_config(self):
        config = super().get_config()
        config.update(model_dim=self.model_dim, feed_forward_dim=self.feed_forward_dim,
                      dropout=self.dropout)
        return config


class _PostNormBlock(tf.keras.layers.Layer):
    """Shared constructor arguments of the post-LayerNorm encoder and decoder layers."""

    def __init__(self, model_dim: int, num_heads: int, feed_forward_dim: int,
                 dropout: float = 0.1, layer_norm_epsilon: float = 1e-5, **kwargs):
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
        return (tf.keras.layers.Dropout(self.dropout),
                tf.keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name=name))

    def get_config(self):
        config = super().get_config()
        config.update(model_dim=self.model_dim, num_heads=self.num_heads,
                      feed_forward_dim=self.feed_forward_dim, dropout=self.dropout,
                      layer_norm_epsilon=self.layer_norm_epsilon)
        return config


class TransformerEncoderLayer(_PostNormBlock):
    """Post-LN self-attention layer (PyTorch's TransformerEncoderLayer, norm_first=False).

    x (B, L, d), mask (B, L, L) bool -> (B, L, d):
    x = LN(x + drop(MHA(x, x, mask))); x = LN(x + drop(FF(x))).
    The mixed encoder passes the transition mask (other type only); r2r/s2s pass padding only.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.self_attention = self._attention("self_attention")
        self.attention_dropout, self.attention_norm = self._residual_norm("attention_norm")
        self.output_dropout, self.output_norm = self._residual_norm("output_norm")

    def call(self, x, mask, training=None):
        attended = self.self_attention(x, x, mask, training=training)
        x = self.attention_norm(x + self.attention_dropout(attended, training=training))
        transformed = self.feed_forward(x, training=training)
        return self.output_norm(x + self.output_dropout(transformed, training=training))


class FusionDecoderLayer(_PostNormBlock):
    """Post-LN transformer decoder layer used for cross-attention fusion (spec 7).

    target (B, L, d), memory (B, L', d), target_mask (B, L) bool, memory_mask (B, L') bool
    -> (B, L, d). Self-attention over the target, cross-attention to the memory, feed-forward.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.self_attention = self._attention("self_attention")
        self.cross_attention = self._attention("cross_attention")
        self.self_dropout, self.self_norm = self._residual_norm("self_norm")
        self.cross_dropout, self.cross_norm = self._residual_norm("cross_norm")
        self.output_dropout, self.output_norm = self._residual_norm("output_norm")

    def call(self, target, memory, target_mask, memory_mask, training=None):
        length = tf.shape(target)[1]
        self_mask = tf.tile(target_mask[:, tf.newaxis, :], [1, length, 1])
        cross_mask = tf.tile(memory_mask[:, tf.newaxis, :], [1, length, 1])
        attended = self.self_attention(target, target, self_mask, training=training)
        x = self.self_norm(target + self.self_dropout(attended, training=training))
        crossed = self.cross_attention(x, memory, cross_mask, training=training)
        x = self.cross_norm(x + self.cross_dropout(crossed, training=training))
        transformed = self.feed_forward(x, training=training)
        return self.output_norm(x + self.output_dropout(transformed, training=training))


class TargetAttention(tf.keras.layers.Layer):
    """Eq. 8: v = V^T softmax(V W e_i) per candidate, padding masked, no 1/sqrt(d).

    sequence (B, L, d), targets (B, C, d), mask (B, L) bool -> (B, C, d). The history is
    encoded once per row and pooled for every candidate in one einsum. A row with no valid
    position pools to exact zeros.
    """

    def __init__(self, model_dim: int, init_std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.model_dim = model_dim
        self.init_std = init_std

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel", shape=(self.model_dim, self.model_dim),
            initializer=tf.keras.initializers.RandomNormal(stddev=self.init_std))
        super().build(input_shape)

    def call(self, sequence, targets, mask, return_attention_scores=False):
        logits = tf.einsum("bld,de,bce->bcl", sequence, self.kernel, targets)
        weights = masked_softmax(logits, mask[:, tf.newaxis, :])
        pooled = tf.einsum("bcl,bld->bcd", weights, sequence)
        if return_attention_scores:
            return pooled, weights
        return pooled

    def get_config(self):
        config = super().get_config()
        config.update(model_dim=self.model_dim, init_std=self.init_std)
        return config
