"""Item co-occurrence features: what the ItemKNN baseline knows, as model inputs.

Beyond the paper (docs/tuning.md): on sparse logs an item's co-occurrence counts carry more
than an embedding learned from a handful of clicks. The layer holds the training split's
symmetric (history item, positive item) counts (unisar_tf.data.cooccurrence) as non-trainable
variables, so they are checkpointed, exported and served with the model, and turns them into
a few scores per candidate that the prediction head reads next to UniSAR's interests.
"""

from __future__ import annotations

import tensorflow as tf

# Per candidate: ItemKNN's sum over the distinct history items, the largest single term,
# the terms of the most recent rec item and of the most recent search click, and the
# candidate's own total n(c) (how often it co-occurs at all: a popularity signal).
NUM_COOCCURRENCE_FEATURES = 5


class ItemCooccurrence(tf.keras.layers.Layer):
    """(history (B, H), last_rec (B,), last_click (B,), candidates (B, C)) -> (B, C, 5).

    The table: `pair_keys` (P,) int64, sorted, key = left * num_items + right for every
    nonzero count; `pair_counts` (P,) float32; `item_totals` (num_items,) float32, n(x) = the
    sum of x's counts. A term is cooc(h, c) / sqrt(n(h) n(c)) (the ItemKNN baseline's), or
    for a directed table (`symmetric=False`) trans(h, c) / n(h), the estimate of P(c | h).

    With `exclude_own_pair` (training), candidate column 0 is the example's own positive,
    and the example itself is in the counts: its pairs are taken out (cooc(h, p) - 1,
    n(h) - 1 for every history item, n(p) - |H|), so training sees the counts as an unseen
    example would and the model does not learn "co-occurs at all = positive".
    """

    def __init__(self, num_items: int, num_pairs: int, symmetric: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.num_items = num_items
        self.num_pairs = max(int(num_pairs), 1)
        # False: directed counts (last item -> next positive), where an example adds nothing
        # to its positive's own total.
        self.symmetric = symmetric

    def build(self, input_shape=None):
        self.pair_keys = self.add_weight(
            name="pair_keys",
            shape=(self.num_pairs,),
            dtype=tf.int64,
            initializer="zeros",
            trainable=False,
        )
        self.pair_counts = self.add_weight(
            name="pair_counts",
            shape=(self.num_pairs,),
            dtype=tf.float32,
            initializer="zeros",
            trainable=False,
        )
        self.item_totals = self.add_weight(
            name="item_totals",
            shape=(self.num_items,),
            dtype=tf.float32,
            initializer="zeros",
            trainable=False,
        )
        super().build(input_shape)

    def set_table(self, pair_keys, pair_counts, item_totals) -> None:
        pair_keys = tf.convert_to_tensor(pair_keys, tf.int64)
        if pair_keys.shape != (self.num_pairs,) or tuple(item_totals.shape) != (self.num_items,):
            raise ValueError(
                f"{self.name}: expected {self.num_pairs} pairs and "
                f"{self.num_items} totals, got {pair_keys.shape[0]} and "
                f"{item_totals.shape[0]}"
            )
        self.pair_keys.assign(pair_keys)
        self.pair_counts.assign(tf.convert_to_tensor(pair_counts, tf.float32))
        self.item_totals.assign(tf.convert_to_tensor(item_totals, tf.float32))

    def pair_count(self, left: tf.Tensor, right: tf.Tensor) -> tf.Tensor:
        """cooc(left, right) for int ids of one shape (0 for padding or unseen pairs)."""
        left, right = tf.cast(left, tf.int64), tf.cast(right, tf.int64)
        keys = left * self.num_items + right
        flat = tf.reshape(keys, [-1])
        # Search and gather on one dense read of the keys. A ResourceGather on the variable
        # would switch it to copy-on-read, and every dense read (searchsorted's) would then
        # copy the whole table: 8 bytes x P per request (~2 ms of a Beauty request).
        sorted_keys = tf.convert_to_tensor(self.pair_keys)
        index = tf.minimum(tf.searchsorted(sorted_keys, flat), self.num_pairs - 1)
        found = tf.logical_and(
            tf.equal(tf.gather(sorted_keys, index), flat),
            tf.reshape(tf.logical_and(left > 0, right > 0), [-1]),
        )
        counts = tf.where(found, tf.gather(self.pair_counts, index), 0.0)
        return tf.reshape(counts, tf.shape(keys))

    def call(self, history, last_rec, last_click, candidates, exclude_own_pair=False):
        history = tf.cast(history, tf.int64)
        candidates = tf.cast(candidates, tf.int64)
        # Distinct history items: a repeat of an earlier slot is masked out.
        same = tf.equal(history[:, :, tf.newaxis], history[:, tf.newaxis, :])  # (B, H, H)
        earlier = tf.linalg.band_part(tf.ones_like(same, tf.float32), -1, 0) - tf.eye(
            tf.shape(history)[1]
        )  # [j, i] = 1 for i < j
        repeat = tf.reduce_any(tf.logical_and(same, earlier > 0), axis=2)
        valid = tf.logical_and(history > 0, tf.logical_not(repeat))  # (B, H)
        history = tf.where(valid, history, tf.zeros_like(history))
        num_history = tf.reduce_sum(tf.cast(valid, tf.float32), axis=1)  # (B,)

        cooc = self.pair_count(history[:, :, tf.newaxis], candidates[:, tf.newaxis, :])
        history_totals = tf.gather(self.item_totals, history)  # (B, H)
        candidate_totals = tf.gather(self.item_totals, candidates)  # (B, C)
        if exclude_own_pair:
            own = tf.one_hot(
                tf.zeros_like(candidates[:, 0], tf.int32), tf.shape(candidates)[1]
            )  # (B, C): column 0
            cooc = tf.maximum(
                cooc - own[:, tf.newaxis, :] * tf.cast(valid, tf.float32)[:, :, tf.newaxis], 0.0
            )
            history_totals = history_totals - tf.cast(valid, tf.float32)
            if self.symmetric:
                candidate_totals = candidate_totals - own * num_history[:, tf.newaxis]
        if self.symmetric:  # cosine: cooc(h, c) / sqrt(n(h) n(c))
            norm = tf.sqrt(
                tf.maximum(history_totals, 0.0)[:, :, tf.newaxis]
                * tf.maximum(candidate_totals, 0.0)[:, tf.newaxis, :]
            )
        else:  # directed: P(c | h) = trans(h, c) / (h's out-going total)
            norm = tf.maximum(history_totals, 0.0)[:, :, tf.newaxis] * tf.ones_like(cooc)
        terms = tf.math.divide_no_nan(cooc, norm)  # (B, H, C)

        def term_of(item):  # (B,) -> (B, C): the term of one history item (0 if padding)
            hit = tf.logical_and(tf.equal(history, tf.cast(item, tf.int64)[:, tf.newaxis]), valid)
            return tf.reduce_sum(terms * tf.cast(hit, tf.float32)[:, :, tf.newaxis], axis=1)

        return tf.stack(
            [
                tf.reduce_sum(terms, axis=1),
                tf.reduce_max(terms, axis=1),
                term_of(last_rec),
                term_of(last_click),
                tf.maximum(candidate_totals, 0.0),
            ],
            axis=-1,
        )

    def get_config(self):
        config = super().get_config()
        config.update(num_items=self.num_items, num_pairs=self.num_pairs, symmetric=self.symmetric)
        return config
