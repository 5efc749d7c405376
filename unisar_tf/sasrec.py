"""SASRec (Kang and McAuley, ICDM 2018): the learned single-task sequential baseline for rec.

A user is the merged, time-ordered list of items they interacted with in either scenario:
rec items and, for each search session, its first clicked item. Causal self-attention over
that list (learned positions, pre-LN blocks, as in the paper) gives the representation at
the last real position; a candidate's logit is its dot product with the candidate's
embedding in the same item table. No user id, no queries, no scenario types.

It takes the project's examples (feature_specs names) and the Trainer's batches, so it trains,
validates and reports exactly like UniSAR:

    config = amazon_preset(architecture="sasrec", tasks=("rec",), embedding_dim=50, ...)
    model = build_model(config, data)        # unisar_tf.model.build_model; data: DataFacts
    scores = model(features)["rec"]          # (B, C) click probabilities

    python -m unisar_tf.train --data_dir D --model_dir M --architecture sasrec --tasks rec

Differences from the paper, all forced by training on the project's examples:
- The loss is the paper's binary cross-entropy (positive vs sampled negatives) at one position
  per example, the example's target, instead of at every position of one sequence per user.
  A user's rec training examples are the successive prefixes of their history, so the rec
  positions are all trained; positions whose next item is a search click are not.
- Negatives are the Trainer's (`num_train_negatives` drawn per epoch from the example's pool,
  popularity-sampled like the evaluation's), not one uniform draw per position.
- BCE is averaged over the 1 + K candidates (tfrs Ranking), i.e. the paper's sum of the
  positive and negative terms divided by 1 + K.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Tuple

import tensorflow as tf
import tensorflow_recommenders as tfrs

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
)
from unisar_tf.config import DataFacts, SASRecConfig
from unisar_tf.layers import (
    PositionalEmbedding,
    TransformerEncoderLayer,
    merge_histories,
    padding_attention_mask,
)

Features = Mapping[str, tf.Tensor]


def first_clicks(clicked_items: tf.Tensor) -> tf.Tensor:
    """(B, S, K) clicked items per session -> (B, S): the first nonzero click, 0 if none."""
    clicked = tf.not_equal(clicked_items, 0)
    first = tf.argmax(tf.cast(clicked, tf.int32), axis=-1, output_type=tf.int32)  # 0 if none
    return tf.gather(clicked_items, first, batch_dims=2)


def merged_item_sequence(
    history_types: tf.Tensor, rec_items: tf.Tensor, clicked_items: tf.Tensor
) -> Tuple[tf.Tensor, tf.Tensor]:
    """The user's items in time order, right-aligned: SASRec's input sequence.

    history_types (B, M), rec_items (B, R), clicked_items (B, S, K) ->
    items (B, M) int, valid (B, M) bool. The i-th TYPE_REC slot of history_types is
    rec_items[i], the j-th TYPE_SEARCH slot is the first click of session j; slots without an
    item (padding, a session without clicks) are dropped and the rest moved to the end, so
    items[:, -1] is the most recent item and padding (0) comes first, as in the paper.
    """
    types = tf.cast(history_types, tf.int32)
    searched = first_clicks(clicked_items)
    items = merge_histories(rec_items[..., tf.newaxis], searched[..., tf.newaxis], types)[..., 0]
    valid = tf.not_equal(items, 0)
    # Stable sort on "is an item": the empty slots first, then the items in their time order.
    order = tf.argsort(tf.cast(valid, tf.int32), axis=1, stable=True)
    return tf.gather(items, order, batch_dims=1), tf.gather(valid, order, batch_dims=1)


def causal_attention_mask(valid: tf.Tensor) -> tf.Tensor:
    """valid (B, L) bool -> (B, L, L) bool: a real position i attends real positions j <= i.

    Padded query positions attend nothing (the encoder does not compute them).
    """
    length = tf.shape(valid)[1]
    earlier = tf.cast(tf.linalg.band_part(tf.ones([length, length]), -1, 0), tf.bool)
    allowed = tf.logical_and(padding_attention_mask(valid), earlier[tf.newaxis])
    return tf.logical_and(allowed, valid[:, :, tf.newaxis])


class SASRecModel(tfrs.Model):
    """SASRec on the project's examples; the interface of UniSARModel for the rec task.

    Its SASRecConfig: embedding_dim (d), num_layers (blocks), num_heads, feed_forward_dim,
    dropout, layer_norm_epsilon, l2_weight and embedding_l2_mode (on the item and position
    tables, as the paper's l2_emb), pack_history; from the DataFacts: num_items and rec_len +
    search_len (the sequence length M).

    `call(features)`: history_types (B, M), rec_history_items (B, R),
    search_history_clicked_items (B, S, K), candidate_items (B, C) -> {"rec": (B, C)} click
    probabilities. Other features (user_id, queries) are accepted and ignored.

    `compute_loss(inputs)`: inputs = {"rec": features with the positive at candidate_items[:, 0],
    ...} (other keys, e.g. "rel_negatives", are ignored) -> BCE over the candidates
    + l2_weight * 0.5 * sum(w^2) of the embedding tables.
    """

    def __init__(self, config: SASRecConfig, data: DataFacts, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.data = data
        c = config
        d = c.embedding_dim
        self.sequence_length = data.rec_len + data.search_len
        self.item_table = tf.keras.layers.Embedding(
            data.num_items,
            d,
            embeddings_initializer=tf.keras.initializers.GlorotNormal(),
            name="item_embedding",
        )
        self.positions = PositionalEmbedding(self.sequence_length, d, name="positions")
        self.embedding_dropout = tf.keras.layers.Dropout(c.dropout)
        self.blocks = [
            TransformerEncoderLayer(
                d,
                c.num_heads,
                c.feed_forward_dim,
                c.dropout,
                c.layer_norm_epsilon,
                norm_first=True,
                name=f"block_{i}",
            )
            for i in range(c.num_layers)
        ]
        self.final_norm = tf.keras.layers.LayerNormalization(
            epsilon=c.layer_norm_epsilon, name="final_norm"
        )
        self.ranking_task = tfrs.tasks.Ranking(  # per-list losses, averaged in compute_loss
            loss=tf.keras.losses.BinaryCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.NONE
            ),
            name="rec_ranking",
        )
        self.loss_trackers = {name: tf.keras.metrics.Mean(name=name) for name in ("rec_bce", "l2")}

    # ---------------------------------------------------------------------------- encoding
    def embed_items(self, ids: tf.Tensor) -> tf.Tensor:
        """(...) item ids -> (..., d); id 0 (padding) is an exact zero vector."""
        vectors = self.item_table(ids)
        return vectors * tf.cast(tf.not_equal(ids, 0), vectors.dtype)[..., tf.newaxis]

    def encode_sequence(
        self, items: tf.Tensor, valid: tf.Tensor, training: bool = False
    ) -> tf.Tensor:
        """items (B, L) int, valid (B, L) bool -> (B, L, d): each position's causal encoding.

        Embeddings scaled by sqrt(d) plus learned positions, dropout, then pre-LN blocks with a
        causal mask and a final LayerNorm (the paper's architecture). Padded positions are 0.
        """
        c = self.config
        mask = tf.cast(valid, tf.float32)[..., tf.newaxis]
        x = self.embed_items(items) * math.sqrt(c.embedding_dim)
        x = self.embedding_dropout(self.positions(x), training=training) * mask
        attention_mask = causal_attention_mask(valid)
        for block in self.blocks:
            x = block(x, attention_mask, training=training, valid=valid if c.pack_history else None)
        return self.final_norm(x) * mask

    def user_representation(self, features: Features, training: bool = False) -> tf.Tensor:
        """(B, d): the encoding at the last position, the most recent item (0 if no history)."""
        items, valid = merged_item_sequence(
            features[HISTORY_TYPES],
            features[REC_HISTORY_ITEMS],
            features[SEARCH_HISTORY_CLICKED_ITEMS],
        )
        return self.encode_sequence(items, valid, training=training)[:, -1, :]

    def logits(self, features: Features, training: bool = False) -> tf.Tensor:
        """(B, C): dot(user representation (B, d), candidate embedding (B, C, d))."""
        user = self.user_representation(features, training=training)
        candidates = self.embed_items(features[CANDIDATE_ITEMS])
        return tf.squeeze(tf.matmul(candidates, user[:, :, tf.newaxis]), axis=-1)

    def call(self, features: Features, training: bool = False) -> Dict[str, tf.Tensor]:
        return {"rec": tf.sigmoid(self.logits(features, training=training))}

    def set_side_features(self, side_features) -> None:
        """SASRec uses item ids only: side features (KuaiSAR) are accepted and ignored."""

    # -------------------------------------------------------------------------------- loss
    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        if "rec" not in inputs:
            raise ValueError(f"compute_loss needs a 'rec' batch; got keys {sorted(inputs)}")
        features = inputs["rec"]
        logits = self.logits(features, training=training)
        labels = tf.one_hot(tf.zeros(tf.shape(logits)[:1], tf.int32), tf.shape(logits)[1])
        bce = tf.reduce_mean(
            self.ranking_task(labels=labels, predictions=logits, training=training)
        )
        l2 = self.l2_penalty(features)
        self.loss_trackers["rec_bce"].update_state(bce)
        self.loss_trackers["l2"].update_state(l2)
        return bce + self.config.l2_weight * l2

    def l2_penalty(self, features: Features) -> tf.Tensor:
        """0.5 * sum(w^2) of the position table and the item table (the paper's l2_emb; like
        tf.nn.l2_loss). embedding_l2_mode "batch_rows": only the item rows the batch reads
        (its sequence items and candidates)."""
        penalty = tf.reduce_sum(tf.square(self.positions.positions))
        table = self.item_table.embeddings
        if self.config.embedding_l2_mode == "batch_rows":
            items, _ = merged_item_sequence(
                features[HISTORY_TYPES],
                features[REC_HISTORY_ITEMS],
                features[SEARCH_HISTORY_CLICKED_ITEMS],
            )
            used = tf.concat(
                [tf.reshape(items, [-1]), tf.reshape(features[CANDIDATE_ITEMS], [-1])], axis=0
            )
            used = tf.unique(used)[0]
            penalty += tf.reduce_sum(tf.square(tf.gather(table, tf.boolean_mask(used, used > 0))))
        else:
            penalty += tf.reduce_sum(tf.square(table))
        return 0.5 * penalty
