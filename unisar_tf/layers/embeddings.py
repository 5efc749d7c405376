"""Entity embeddings (spec section 2): raw id tables, tanh projection, query and session
encoders."""

from __future__ import annotations

import tensorflow as tf


def _xavier_normal() -> tf.keras.initializers.Initializer:
    # The reference initialises tables and Linear kernels with xavier_normal.
    return tf.keras.initializers.GlorotNormal()


class EntityEmbedding(tf.keras.layers.Layer):
    """Raw id table of width `raw_dim`, then `tanh(Dense(output_dim))`.

    ids (...) int -> (..., output_dim). With `zero_padding`, id 0 maps to an exact zero
    vector (not tanh(bias)), as the reference's item embedding does. `side_dim` > 0: `call`
    also takes side-feature vectors (..., side_dim) concatenated to the id embedding before
    the projection (spec 2: "each entity's raw features are concatenated and projected").
    """

    def __init__(
        self,
        vocab_size: int,
        raw_dim: int,
        output_dim: int,
        zero_padding: bool = True,
        side_dim: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.raw_dim = raw_dim
        self.output_dim = output_dim
        self.zero_padding = zero_padding
        self.side_dim = side_dim
        self.table = tf.keras.layers.Embedding(
            vocab_size, raw_dim, embeddings_initializer=_xavier_normal(), name="table"
        )
        self.projection = tf.keras.layers.Dense(
            output_dim, activation="tanh", kernel_initializer=_xavier_normal(), name="projection"
        )

    def build(self, input_shape):
        self.table.build(input_shape)
        self.projection.build(tf.TensorShape([None, self.raw_dim + self.side_dim]))
        super().build(input_shape)

    @property
    def embeddings(self) -> tf.Variable:
        return self.table.embeddings

    def call(self, ids: tf.Tensor, side: tf.Tensor = None) -> tf.Tensor:
        raw = self.table(ids)
        if self.side_dim:
            if side is None:
                raise ValueError(
                    f"{self.name} was built with side_dim={self.side_dim}: "
                    "pass the side-feature vectors"
                )
            raw = tf.concat([raw, side], axis=-1)
        projected = self.projection(raw)
        if self.zero_padding:
            projected *= tf.cast(tf.not_equal(ids, 0), projected.dtype)[..., tf.newaxis]
        return projected

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            raw_dim=self.raw_dim,
            output_dim=self.output_dim,
            zero_padding=self.zero_padding,
            side_dim=self.side_dim,
        )
        return config


def trim_token_padding(tokens: tf.Tensor) -> tf.Tensor:
    """(..., L) word ids -> (..., L') with L' = 1 + the last column any row uses (L' >= 1).

    Queries are short (Beauty: at most 5 words in 50 slots); dropping the columns that are
    padding in every row makes the word lookup and its gradient ~10x cheaper, and is exact.
    """
    length = tf.shape(tokens)[-1]
    used_columns = tf.reshape(tf.not_equal(tokens, 0), [-1, length])
    positions = tf.range(1, length + 1)[tf.newaxis, :]
    kept = tf.maximum(tf.reduce_max(tf.where(used_columns, positions, 0)), 1)
    return tokens[..., :kept]


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
        self.word_table = tf.keras.layers.Embedding(
            vocab_size, raw_dim, embeddings_initializer=_xavier_normal(), name="word_table"
        )
        self.projection = tf.keras.layers.Dense(
            output_dim, activation="tanh", kernel_initializer=_xavier_normal(), name="projection"
        )

    def build(self, input_shape):
        # The item embedding may have used the word table first (captions, spec 2): building
        # it again would create a second, orphaned table.
        if not self.word_table.built:
            self.word_table.build(input_shape)
        self.projection.build(tf.TensorShape([None, self.raw_dim]))
        super().build(input_shape)

    @property
    def embeddings(self) -> tf.Variable:
        return self.word_table.embeddings

    def mean_word_embedding(self, tokens: tf.Tensor) -> tf.Tensor:
        """(..., L) word ids -> (..., raw_dim) masked mean of raw word vectors (0 if empty)."""
        tokens = trim_token_padding(tokens)
        word_mask = tf.cast(tf.not_equal(tokens, 0), tf.float32)[..., tf.newaxis]
        word_sum = tf.reduce_sum(self.word_table(tokens) * word_mask, axis=-2)
        word_count = tf.reduce_sum(word_mask, axis=-2)
        return tf.math.divide_no_nan(word_sum, word_count)

    def call(self, tokens: tf.Tensor) -> tf.Tensor:
        return self.projection(self.mean_word_embedding(tokens))

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, raw_dim=self.raw_dim, output_dim=self.output_dim)
        return config


def search_behaviour_embedding(
    query_embedding: tf.Tensor,
    clicked_item_embedding: tf.Tensor,
    clicked_items: tf.Tensor,
    session_valid: tf.Tensor,
) -> tf.Tensor:
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
        self.positions = self.add_weight(
            name="positions",
            shape=(self.max_length, self.output_dim),
            initializer=_xavier_normal(),
            trainable=True,
        )
        super().build(input_shape)

    def call(self, sequence: tf.Tensor) -> tf.Tensor:
        length = tf.shape(sequence)[1]
        return sequence + self.positions[tf.newaxis, :length, :]

    def get_config(self):
        config = super().get_config()
        config.update(max_length=self.max_length, output_dim=self.output_dim)
        return config


class IdAttributes(tf.keras.layers.Layer):
    """Per-id integer attributes held in the model: ids (...) -> (..., width) int32.

    The table (num_ids, width) is a non-trainable variable, so it is saved and served with
    the model; fill it with `set_table` (rows are ids; row 0, padding, should be all 0).
    """

    def __init__(self, num_ids: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.num_ids = num_ids
        self.width = width

    def build(self, input_shape):
        self.table = self.add_weight(
            name="table",
            shape=(self.num_ids, self.width),
            dtype=tf.int32,
            initializer="zeros",
            trainable=False,
        )
        super().build(input_shape)

    def set_table(self, values) -> None:
        values = tf.convert_to_tensor(values, tf.int32)
        if values.shape != (self.num_ids, self.width):
            raise ValueError(
                f"{self.name}: table must have shape {(self.num_ids, self.width)}, "
                f"got {tuple(values.shape)}"
            )
        self.table.assign(values)

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.table, tf.cast(ids, tf.int32))

    def get_config(self):
        config = super().get_config()
        config.update(num_ids=self.num_ids, width=self.width)
        return config


class CategoricalSideFeatures(tf.keras.layers.Layer):
    """ids (...) -> (..., columns * raw_dim): each attribute column through its own table.

    The attributes come from an IdAttributes table (KuaiSAR: an item's first/second-level
    category; a user's active levels and one-hot features).
    """

    def __init__(self, num_ids: int, vocab_sizes, raw_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.num_ids = num_ids
        self.vocab_sizes = tuple(vocab_sizes)
        self.raw_dim = raw_dim
        self.attributes = IdAttributes(num_ids, len(self.vocab_sizes), name="attributes")
        self.tables = [
            tf.keras.layers.Embedding(
                size, raw_dim, embeddings_initializer=_xavier_normal(), name=f"column_{index}"
            )
            for index, size in enumerate(self.vocab_sizes)
        ]

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        values = self.attributes(ids)
        return tf.concat(
            [table(values[..., index]) for index, table in enumerate(self.tables)], axis=-1
        )

    def get_config(self):
        config = super().get_config()
        config.update(num_ids=self.num_ids, vocab_sizes=self.vocab_sizes, raw_dim=self.raw_dim)
        return config
