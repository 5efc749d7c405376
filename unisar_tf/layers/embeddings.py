"""Entity embeddings (spec section 2): raw id tables, tanh projection, query and session encoders."""
from __future__ import annotations

import tensorflow as tf


def _xavier_normal() -> tf.keras.initializers.Initializer:
    # The reference initialises tables and Linear kernels with xavier_normal.
    return tf.keras.initializers.GlorotNormal()


class EntityEmbedding(tf.keras.layers.Layer):
    """Raw id table of width `raw_dim`, then `tanh(Dense(output_dim))`.

    ids (...) int -> (..., output_dim). With `zero_padding`, id 0 maps to an exact zero
    vector (not tanh(bias)), as the reference's item embedding does.
    """

    def __init__(self, vocab_size: int, raw_dim: int, output_dim: int,
                 zero_padding: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.raw_dim = raw_dim
        self.output_dim = output_dim
        self.zero_padding = zero_padding
        self.table = tf.keras.layers.Embedding(vocab_size, raw_dim,
                                               embeddings_initializer=_xavier_normal(),
                                               name="table")
        self.projection = tf.keras.layers.Dense(output_dim, activation="tanh",
                                                kernel_initializer=_xavier_normal(),
                                                name="projection")

    def build(self, input_shape):
        self.table.build(input_shape)
        self.projection.build(tf.TensorShape([None, self.raw_dim]))
        super().build(input_shape)

    @property
    def embeddings(self) -> tf.Variable:
        return self.table.embeddings

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        projected = self.projection(self.table(ids))
        if self.zero_padding:
            projected *= tf.cast(tf.not_equal(ids, 0), projected.dtype)[..., tf.newaxis]
        return projected

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, raw_dim=self.raw_dim,
                      output_dim=self.output_dim, zero_padding=self.zero_padding)
        return config


class QueryEncoder(tf.keras.layers.Layer):
    """Masked mean of word embeddings, then `tanh(Dense(output_dim))`.

    tokens (..., query_len) int -> (..., output_dim). An all-padding query averages to 0
    before the projection (so it encodes to tanh(bias)); callers that need padded search
    slots to be exactly 0 zero them (see SearchBehaviourEmbedding).
    """

    def __init__(self, vocab_size: int, raw_dim: int, output_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.raw_dim = raw_dim
        self.output_dim = output_dim
        self.word_table = tf.keras.layers.Embedding(vocab_size, raw_dim,
                                                    embeddings_initializer=_xavier_normal(),
                                                    name="word_table")
        self.projection = tf.keras.layers.Dense(output_dim, activation="tanh",
                                                kernel_initializer=_xavier_normal(),
                                                name="projection")

    def build(self, input_shape):
        self.word_table.build(input_shape)
        self.projection.build(tf.TensorShape([None, self.raw_dim]))
        super().build(input_shape)

    @property
    def embeddings(self) -> tf.Variable:
        return self.word_table.embeddings

    def call(self, tokens: tf.Tensor) -> tf.Tensor:
        word_mask = tf.cast(tf.not_equal(tokens, 0), tf.float32)[..., tf.newaxis]
        word_sum = tf.reduce_sum(self.word_table(tokens) * word_mask, axis=-2)
        word_count = tf.reduce_sum(word_mask, axis=-2)
        mean = tf.math.divide_no_nan(word_sum, word_count)
        return self.projection(mean)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, raw_dim=self.raw_dim,
                      output_dim=self.output_dim)
        return config


def search_behaviour_embedding(query_embedding: tf.Tensor, clicked_item_embedding: tf.Tensor,
                               clicked_items: tf.Tensor, session_valid: tf.Tensor) -> tf.Tensor:
    """e_q + mean of the clicked items' embeddings (spec 2); exact 0 for padded sessions.

    query_embedding (B, S, d), clicked_item_embedding (B, S, K, d), clicked_items (B, S, K) int,
    session_valid (B, S) bool -> (B, S, d). A session without clicks is e_q alone.
    """
    click_mask = tf.cast(tf.not_equal(clicked_items, 0), tf.float32)
    click_sum = tf.reduce_sum(clicked_item_embedding * click_mask[..., tf.newaxis], axis=-2)
    click_count = tf.maximum(tf.reduce_sum(click_mask, axis=-1, keepdims=True), 1.0)
    behaviour = query_embedding + click_sum / click_count
    return behaviour * tf.cast(session_valid, behaviour.dtype)[..., tf.newaxis]


class PositionalEmbedding(tf.keras.layers.Layer):
    """Learned positions: (B, L, d) -> (B, L, d) with position 0 = oldest kept behaviour."""

    def __init__(self, max_length: int, output_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self.output_dim = output_dim

    def build(self, input_shape):
        self.positions = self.add_weight(name="positions", shape=(self.max_length, self.output_dim),
                                         initializer=_xavier_normal(), trainable=True)
        super().build(input_shape)

    def call(self, sequence: tf.Tensor) -> tf.Tensor:
        length = tf.shape(sequence)[1]
        return sequence + self.positions[tf.newaxis, :length, :]

    def get_config(self):
        config = super().get_config()
        config.update(max_length=self.max_length, output_dim=self.output_dim)
        return config
