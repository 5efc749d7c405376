"""The UniSAR model (spec sections 2-10) as a TensorFlow Recommenders model.

One history encoding per user row feeds both tasks; every candidate of that row is scored
against it with target attention, so 100 candidates cost one transformer pass, not 100.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Sequence

import tensorflow as tf
import tensorflow_recommenders as tfrs

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    QUERY_TOKENS,
    REC_HISTORY_ITEMS,
    REL_NEGATIVE_ITEMS,
    REL_NEGATIVE_QUERY_TOKENS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    SEARCH_HISTORY_QUERY_TOKENS,
    TYPE_REC,
    TYPE_SEARCH,
    USER_ID,
    model_feature_shapes,
)
from unisar_tf.config import DataFacts, ModelConfig, SASRecConfig, UniSARConfig
from unisar_tf.layers import (
    CategoricalSideFeatures,
    EntityEmbedding,
    FusionDecoderLayer,
    IdAttributes,
    MultiLayerPerceptron,
    MultiTaskExperts,
    PositionalEmbedding,
    QueryEncoder,
    TargetAttention,
    TransformerEncoderLayer,
    gather_by_type,
    merge_histories,
    padding_attention_mask,
    search_behaviour_embedding,
    transition_attention_mask,
)
from unisar_tf.layers.cooccurrence import NUM_COOCCURRENCE_FEATURES, ItemCooccurrence
from unisar_tf.losses import QueryItemRelevanceLoss, TransitionAlignmentLoss
from unisar_tf.sasrec import SASRecModel  # the rec baseline (architecture="sasrec")

Features = Mapping[str, tf.Tensor]

# The wide term's starting weights for the match features (_cooccurrence_features then
# _query_match_features): co-occurrence sum, max, last rec item, last search click, candidate
# popularity, last item -> candidate transition, query-word overlap, overlap fraction.
MATCH_FEATURE_PRIOR = (1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0)


def match_feature_prior(config: ModelConfig) -> tuple:
    """MATCH_FEATURE_PRIOR without the features the config switches off."""
    pairs = NUM_COOCCURRENCE_FEATURES  # ItemCooccurrence's; then the transition, the overlap
    return (
        MATCH_FEATURE_PRIOR[:pairs]
        + MATCH_FEATURE_PRIOR[pairs : pairs + 1] * config.cooccurrence_transitions
        + MATCH_FEATURE_PRIOR[pairs + 1 :] * config.cooccurrence_query_overlap
    )


@dataclasses.dataclass
class HistoryEncoding:
    """What one pass over a batch of histories yields (R = rec length, S = search length)."""

    rec_interests: tf.Tensor  # V_r (B, R, d)
    rec_valid: tf.Tensor  # (B, R) bool
    search_interests: tf.Tensor  # V_s (B, S, d)
    search_valid: tf.Tensor  # (B, S) bool
    views: Dict[str, tf.Tensor]  # H_r2r, H_s2r (B, R, d) and H_s2s, H_r2s (B, S, d) that exist
    history_query_embeddings: tf.Tensor  # (B, S, d)
    history_click_embeddings: tf.Tensor  # (B, S, K, d)
    history_click_valid: tf.Tensor  # (B, S, K) bool


def _valid_prefix(history_types: tf.Tensor, type_id: int, length: int) -> tf.Tensor:
    """(B, M) types -> (B, length) bool: the first count(type_id) slots of that list are real."""
    count = tf.reduce_sum(
        tf.cast(tf.equal(history_types, type_id), tf.int32), axis=1, keepdims=True
    )
    return tf.range(length)[tf.newaxis, :] < count


class UniSARModel(tfrs.Model):
    """UniSAR: transition-aware user modelling that scores recommendation and search.

    `call(features)` takes one batch of examples (feature_specs names): user_id (B,),
    history_types (B, M), rec_history_items (B, R), search_history_query_tokens (B, S, Q),
    search_history_clicked_items (B, S, K), candidate_items (B, C) and, to get search scores,
    query_tokens (B, Q). It returns {"rec": (B, C), "search": (B, C)} click probabilities for
    the tasks the model has (search only when query_tokens is given).

    `compute_loss(inputs)` takes {"rec": features, "search": features, "rel_negatives":
    {rel_negative_items (N,), rel_negative_query_tokens (N, Q)}} with the positive at column 0
    of candidate_items, and returns spec 10's objective (L2 included).
    """

    def __init__(self, config: ModelConfig, data: DataFacts, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.data = data
        c = config
        d = c.embedding_dim
        block = dict(
            model_dim=d,
            num_heads=c.num_heads,
            feed_forward_dim=c.feed_forward_dim,
            dropout=c.dropout,
            layer_norm_epsilon=c.layer_norm_epsilon,
        )

        raw = c.raw_embedding_dim
        # Side features (spec 2), only when the config names them (KuaiSAR; Amazon is ids only).
        self.item_categories = (
            CategoricalSideFeatures(
                data.num_items, data.item_category_vocab_sizes, raw, name="item_categories"
            )
            if data.item_category_vocab_sizes
            else None
        )
        self.item_captions = (
            IdAttributes(data.num_items, data.item_caption_length, name="item_captions")
            if data.item_caption_length
            else None
        )
        self.user_side_features = (
            CategoricalSideFeatures(
                data.num_users, data.user_feature_vocab_sizes, raw, name="user_side_features"
            )
            if data.user_feature_vocab_sizes
            else None
        )
        item_side_dim = raw * (len(data.item_category_vocab_sizes) + bool(data.item_caption_length))
        self.user_embedding = EntityEmbedding(
            data.num_users,
            raw,
            d,
            zero_padding=False,
            side_dim=raw * len(data.user_feature_vocab_sizes),
            name="user_embedding",
        )
        self.item_embedding = EntityEmbedding(
            data.num_items, raw, d, zero_padding=True, side_dim=item_side_dim, name="item_embedding"
        )
        self.query_encoder = QueryEncoder(
            data.num_words, c.raw_embedding_dim, d, name="query_encoder"
        )

        self.rec_encoder = self.search_encoder = self.mixed_encoder = None
        self.rec_fusion = self.search_fusion = None
        # use_history=False is the no-history baseline: user, candidate and query only.
        if c.use_history and c.use_r2r:
            self.rec_positions = PositionalEmbedding(data.rec_len, d, name="rec_positions")
            self.rec_encoder = [
                TransformerEncoderLayer(**block, name=f"rec_encoder_{i}")
                for i in range(c.num_layers)
            ]
        if c.use_history and c.use_s2s:
            self.search_positions = PositionalEmbedding(data.search_len, d, name="search_positions")
            self.search_encoder = [
                TransformerEncoderLayer(**block, name=f"search_encoder_{i}")
                for i in range(c.num_layers)
            ]
        if c.use_history and c.uses_mixed_encoder:
            self.mixed_positions = PositionalEmbedding(
                data.rec_len + data.search_len, d, name="mixed_positions"
            )
            self.mixed_encoder = [
                TransformerEncoderLayer(**block, name=f"mixed_encoder_{i}")
                for i in range(c.num_layers)
            ]

        if c.use_history:
            self.rec_fusion = (
                [FusionDecoderLayer(**block, name=f"rec_fusion_{i}") for i in range(c.num_layers)]
                if c.use_fusion_rec
                else None
            )
            self.search_fusion = (
                [
                    FusionDecoderLayer(**block, name=f"search_fusion_{i}")
                    for i in range(c.num_layers)
                ]
                if c.use_fusion_search
                else None
            )
            self.rec_pooling = TargetAttention(d, c.target_attention_init_std, name="rec_pooling")
            self.search_pooling = TargetAttention(
                d, c.target_attention_init_std, name="search_pooling"
            )

        # An alignment term exists only when both of its views do (spec 12).
        self.rec_alignment = self.search_alignment = self.relevance = None
        if c.use_history and c.use_alignment_loss and c.beta_alignment > 0:
            if c.use_r2r and c.use_s2r:
                self.rec_alignment = TransitionAlignmentLoss(
                    d, c.alignment_temperature, name="rec_alignment"
                )
            if c.use_s2s and c.use_r2s:
                self.search_alignment = TransitionAlignmentLoss(
                    d, c.alignment_temperature, name="search_alignment"
                )
        if c.use_history and c.use_relevance_loss and c.alpha_relevance > 0:
            self.relevance = QueryItemRelevanceLoss(d, c.relevance_temperature, name="relevance")

        self.cooccurrence = self.transitions = self.cooccurrence_logit = None
        if c.use_cooccurrence:
            self.cooccurrence = ItemCooccurrence(
                data.num_items, data.cooccurrence_pairs, name="item_cooccurrence"
            )
            if c.cooccurrence_transitions:
                self.transitions = ItemCooccurrence(
                    data.num_items, data.transition_pairs, symmetric=False, name="item_transitions"
                )
            # The wide part: a linear term of the co-occurrence scores added to each logit.
            # Starts at +1 for the co-occurrence and query-match scores and 0 for popularity:
            # ranking by them from the first step (all log-scaled to O(1),
            # _match_features).
            if c.cooccurrence_wide_term:
                self.cooccurrence_logit = {
                    task: tf.keras.layers.Dense(
                        1,
                        kernel_initializer=tf.keras.initializers.Constant(match_feature_prior(c)),
                        name=f"{task}_cooccurrence_logit",
                    )
                    for task in c.tasks
                }

        self.experts = (
            MultiTaskExperts(
                c.tasks,
                c.num_shared_experts,
                c.num_specific_experts,
                c.expert_units,
                c.tower_units,
                c.dropout,
                name="experts",
            )
            if c.use_mmoe
            else None
        )
        self.heads = {
            task: MultiLayerPerceptron(c.head_units, c.dropout, output_units=1, name=f"{task}_head")
            for task in c.tasks
        }
        # Per-list losses, averaged here: Keras refuses its own batch averaging under a
        # tf.distribute strategy (each replica averages its rows; train/distribution.py).
        self.ranking_tasks = {
            task: tfrs.tasks.Ranking(
                loss=tf.keras.losses.BinaryCrossentropy(
                    from_logits=True, reduction=tf.keras.losses.Reduction.NONE
                ),
                name=f"{task}_ranking",
            )
            for task in c.tasks
        }
        self.loss_trackers = {
            name: tf.keras.metrics.Mean(name=name)
            for name in [
                f"{t}_{part}" for t in c.tasks for part in ("bce", "relevance", "alignment")
            ]
        }

    def build(self, input_shape):
        if "rec" in self.config.tasks:
            # q_phi, the learned query vector that stands in for e_q in recommendation.
            self.rec_query_vector = self.add_weight(
                name="rec_query_vector",
                shape=(1, self.config.embedding_dim),
                initializer=tf.keras.initializers.GlorotNormal(),
            )
        # The loss layers own trainable W and tau but are not on the scoring path: create
        # their variables here so checkpoints and parameter counts are complete from the start.
        for loss_layer in (self.rec_alignment, self.search_alignment, self.relevance):
            if loss_layer is not None and not loss_layer.built:
                with tf.name_scope(loss_layer.name):
                    loss_layer.build(None)
        super().build(input_shape)

    # ----------------------------------------------------------------------------- encoding
    def _run_encoder(self, layers: Sequence[tf.keras.layers.Layer], x, mask, valid, training):
        if not self.config.pack_history:
            valid = None  # compute padded positions too (benchmark baseline)
        for layer in layers:
            x = layer(x, mask, training=training, valid=valid)
        return x

    def _run_fusion(self, layers, target, memory, valid, training):
        # Without packing, every target position is computed (keys are still masked).
        positions = None if self.config.pack_history else tf.ones_like(valid)
        for layer in layers:
            target = layer(target, memory, valid, valid, training=training, positions=positions)
        return target

    def embed_items(self, ids: tf.Tensor) -> tf.Tensor:
        """(...) item ids -> (..., d): id embedding plus side features, projected (spec 2)."""
        side = []
        if self.item_categories is not None:
            side.append(self.item_categories(ids))
        if self.item_captions is not None:  # caption words through the query encoder's table
            side.append(self.query_encoder.mean_word_embedding(self.item_captions(ids)))
        return self.item_embedding(ids, tf.concat(side, axis=-1) if side else None)

    def embed_users(self, ids: tf.Tensor) -> tf.Tensor:
        """(...) user ids -> (..., d)."""
        side = self.user_side_features(ids) if self.user_side_features is not None else None
        return self.user_embedding(ids, side)

    def set_cooccurrence(self, table, transitions) -> None:
        """Fills the co-occurrence and transition layers from two
        unisar_tf.data.cooccurrence.CooccurrenceTable (symmetric, directed)."""
        self.cooccurrence.set_table(table.pair_keys, table.pair_counts, table.item_totals)
        if self.transitions is not None:  # cooccurrence_transitions
            self.transitions.set_table(
                transitions.pair_keys, transitions.pair_counts, transitions.item_totals
            )

    def set_side_features(self, side_features) -> None:
        """Fills the side-feature tables from a unisar_tf.data.side_features.SideFeatures."""
        if self.item_categories is not None:
            self.item_categories.attributes.set_table(side_features.item_categories)
        if self.item_captions is not None:
            self.item_captions.set_table(side_features.item_captions)
        if self.user_side_features is not None:
            self.user_side_features.attributes.set_table(side_features.user_features)

    def encode_history(self, features: Features, training: bool = False) -> HistoryEncoding:
        """One pass of the three encoders and both fusions over a batch of histories."""
        c, data = self.config, self.data
        types = tf.cast(features[HISTORY_TYPES], tf.int32)
        rec_valid = _valid_prefix(types, TYPE_REC, data.rec_len)
        search_valid = _valid_prefix(types, TYPE_SEARCH, data.search_len)

        rec_behaviours = self.embed_items(features[REC_HISTORY_ITEMS])  # (B, R, d)
        clicked = features[SEARCH_HISTORY_CLICKED_ITEMS]
        history_queries = self.query_encoder(features[SEARCH_HISTORY_QUERY_TOKENS])  # (B, S, d)
        history_clicks = self.embed_items(clicked)  # (B, S, K, d)
        search_behaviours = search_behaviour_embedding(
            history_queries, history_clicks, clicked, search_valid
        )

        views: Dict[str, tf.Tensor] = {}
        if self.mixed_encoder is not None:
            mixed = self.mixed_positions(merge_histories(rec_behaviours, search_behaviours, types))
            mask = transition_attention_mask(types, c.use_transition_mask)
            mixed = self._run_encoder(
                self.mixed_encoder, mixed, mask, tf.not_equal(types, 0), training
            )
            if c.use_s2r:
                views["s2r"] = gather_by_type(mixed, types, TYPE_REC, data.rec_len)[0]
            if c.use_r2s:
                views["r2s"] = gather_by_type(mixed, types, TYPE_SEARCH, data.search_len)[0]
        if self.rec_encoder is not None:
            views["r2r"] = self._run_encoder(
                self.rec_encoder,
                self.rec_positions(rec_behaviours),
                padding_attention_mask(rec_valid),
                rec_valid,
                training,
            )
        if self.search_encoder is not None:
            views["s2s"] = self._run_encoder(
                self.search_encoder,
                self.search_positions(search_behaviours),
                padding_attention_mask(search_valid),
                search_valid,
                training,
            )

        # A removed transition is replaced by its partner on the same list (spec 12).
        rec_target = views.get("r2r", views.get("s2r"))
        rec_memory = views.get("s2r", views.get("r2r"))
        search_target = views.get("s2s", views.get("r2s"))
        search_memory = views.get("r2s", views.get("s2s"))
        if self.rec_fusion is not None:
            rec_interests = self._run_fusion(
                self.rec_fusion, rec_target, rec_memory, rec_valid, training
            )
        else:
            rec_interests = rec_target + rec_memory
        if self.search_fusion is not None:
            search_interests = self._run_fusion(
                self.search_fusion, search_target, search_memory, search_valid, training
            )
        else:
            search_interests = search_target + search_memory

        return HistoryEncoding(
            rec_interests=rec_interests,
            rec_valid=rec_valid,
            search_interests=search_interests,
            search_valid=search_valid,
            views=views,
            history_query_embeddings=history_queries,
            history_click_embeddings=history_clicks,
            history_click_valid=tf.logical_and(
                tf.not_equal(clicked, 0), search_valid[..., tf.newaxis]
            ),
        )

    # ------------------------------------------------------------------------------ scoring
    def score_logits(
        self,
        features: Features,
        encoding: HistoryEncoding,
        tasks: Sequence[str],
        training: bool = False,
    ) -> Dict[str, tf.Tensor]:
        """Logits (B, C) per task for candidate_items (B, C), from one history encoding.

        encoding None (the no-history baseline): the interests are left out of the input.
        """
        candidates = self.embed_items(features[CANDIDATE_ITEMS])  # (B, C, d)
        num_candidates = tf.shape(candidates)[1]
        interests = []
        if encoding is not None:
            interests = [
                self.rec_pooling(encoding.rec_interests, candidates, encoding.rec_valid),
                self.search_pooling(encoding.search_interests, candidates, encoding.search_valid),
            ]
        user = self.embed_users(features[USER_ID])  # (B, d)
        user = tf.tile(user[:, tf.newaxis, :], [1, num_candidates, 1])

        cooccurrence = None
        if self.cooccurrence is not None:
            cooccurrence = self._cooccurrence_features(features, training)  # (B, C, 5 or 6)

        def broadcast(query):  # (B or 1, d) -> (B, C, d)
            return tf.broadcast_to(query[:, tf.newaxis, :], tf.shape(candidates))

        logits = {}
        for task in tasks:
            if task == "rec":
                query = broadcast(self.rec_query_vector)
            else:
                query = broadcast(self.query_encoder(features[QUERY_TOKENS]))
            parts = interests + [candidates, user, query]
            if self.config.interaction_features:
                # Same width for both tasks (the shared experts): rec's query is q_phi.
                parts += [interest * candidates for interest in interests] + [query * candidates]
            match = None
            if cooccurrence is not None:
                match = cooccurrence
                if self.config.cooccurrence_query_overlap:
                    match = tf.concat(
                        [match, self._query_match_features(features, task)], axis=-1
                    )  # (B, C, 8) with every part
                parts.append(match)
            x = tf.concat(parts, axis=-1)
            if self.experts is not None:
                x = self.experts(x, tasks=[task], training=training)[task]
            logits[task] = tf.squeeze(self.heads[task](x, training=training), axis=-1)
            if match is not None and self.cooccurrence_logit is not None:
                logits[task] += tf.squeeze(self.cooccurrence_logit[task](match), axis=-1)
        return logits

    def _cooccurrence_features(self, features: Features, training: bool) -> tf.Tensor:
        """(B, C, 6): co-occurrence of candidate_items with the history's items (sum, max,
        last rec item, last search click), the candidate's total, and the directed
        transition from the most recent behaviour's item, all log-scaled. (B, C, 5), without
        the transition, when cooccurrence_transitions is off.

        In training, candidate 0 is the example's positive, whose own pairs are in the
        training counts: the layer takes them out (ItemCooccurrence, exclude_own_pair).
        """
        types = tf.cast(features[HISTORY_TYPES], tf.int32)
        rec_items = tf.cast(features[REC_HISTORY_ITEMS], tf.int64)  # (B, R)
        first_clicks = tf.cast(features[SEARCH_HISTORY_CLICKED_ITEMS][:, :, 0], tf.int64)
        clicked = tf.reshape(
            tf.cast(features[SEARCH_HISTORY_CLICKED_ITEMS], tf.int64), [tf.shape(rec_items)[0], -1]
        )

        def last_of(items, type_id):  # the newest real slot of one list (lists are oldest first)
            count = tf.reduce_sum(tf.cast(tf.equal(types, type_id), tf.int32), axis=1)
            return tf.gather(items, tf.maximum(count - 1, 0), batch_dims=1) * tf.cast(
                count > 0, tf.int64
            )

        last_rec, last_click = last_of(rec_items, TYPE_REC), last_of(first_clicks, TYPE_SEARCH)
        scores = self.cooccurrence(
            tf.concat([rec_items, clicked], axis=1),
            last_rec,
            last_click,
            features[CANDIDATE_ITEMS],
            exclude_own_pair=training,
        )
        # Cosine-normalised counts are mostly 0.001-0.3: log(1 + 100 s) spreads them over 0-3.5.
        parts = [tf.math.log1p(100.0 * scores[..., :4]), tf.math.log1p(scores[..., 4:])]
        if self.transitions is None:
            return tf.concat(parts, axis=-1)
        # The most recent behaviour's item, whichever scenario (history_types' last slot).
        length = tf.reduce_sum(tf.cast(types > 0, tf.int32), axis=1)
        last_type = tf.gather(types, tf.maximum(length - 1, 0), batch_dims=1)
        last = tf.where(tf.equal(last_type, TYPE_REC), last_rec, last_click)
        transition = self.transitions(
            last[:, tf.newaxis], last, last, features[CANDIDATE_ITEMS], exclude_own_pair=training
        )[..., :1]
        return tf.concat(parts + [tf.math.log1p(100.0 * transition)], axis=-1)

    def _query_match_features(self, features: Features, task: str) -> tf.Tensor:
        """(B, C, 2): how many of the query's distinct words are among the candidate's words
        (side-feature text), and that count over the query's length. 0 for rec, and without
        item text."""
        candidates = features[CANDIDATE_ITEMS]
        zeros = tf.zeros(tf.concat([tf.shape(candidates), [2]], axis=0))
        if task != "search" or self.item_captions is None:
            return zeros
        words = self.item_captions(candidates)  # (B, C, L) int32, 0 = padding
        query = tf.cast(features[QUERY_TOKENS], tf.int32)  # (B, Q)
        hit = tf.reduce_any(
            tf.logical_and(
                tf.equal(words[..., tf.newaxis], query[:, tf.newaxis, tf.newaxis, :]),
                (words > 0)[..., tf.newaxis],
            ),
            axis=-1,
        )  # (B, C, L): caption word is in the query
        overlap = tf.reduce_sum(tf.cast(hit, tf.float32), axis=-1)
        query_words = tf.reduce_sum(tf.cast(query > 0, tf.float32), axis=1)[:, tf.newaxis]
        return tf.stack([overlap, tf.math.divide_no_nan(overlap, query_words)], axis=-1)

    def _scored_tasks(self, features: Features):
        return [t for t in self.config.tasks if t == "rec" or QUERY_TOKENS in features]

    def _encode(self, features: Features, training: bool):
        return self.encode_history(features, training=training) if self.config.use_history else None

    def task_logits(self, features: Features, training: bool = False) -> Dict[str, tf.Tensor]:
        """{task: (B, C) logits}: call() before the sigmoid. Ranking a whole catalogue needs
        them: the probabilities of the best items saturate to ties in float32."""
        encoding = self._encode(features, training)
        return self.score_logits(
            features, encoding, self._scored_tasks(features), training=training
        )

    def call(self, features: Features, training: bool = False) -> Dict[str, tf.Tensor]:
        logits = self.task_logits(features, training=training)
        return {task: tf.sigmoid(value) for task, value in logits.items()}

    # --------------------------------------------------------------------------------- loss
    def _alignment_loss(self, encoding: HistoryEncoding) -> tf.Tensor:
        loss = tf.constant(0.0)
        if self.rec_alignment is not None:
            loss += self.rec_alignment(
                encoding.views["r2r"], encoding.views["s2r"], encoding.rec_valid
            )
        if self.search_alignment is not None:
            loss += self.search_alignment(
                encoding.views["s2s"], encoding.views["r2s"], encoding.search_valid
            )
        return loss

    def _relevance_loss(self, encoding: HistoryEncoding, rel_negatives: Features) -> tf.Tensor:
        if self.relevance is None:
            return tf.constant(0.0)
        for key in (REL_NEGATIVE_ITEMS, REL_NEGATIVE_QUERY_TOKENS):
            if key not in rel_negatives:
                raise ValueError(
                    f"compute_loss needs inputs['rel_negatives'][{key!r}] for the "
                    "query-item relevance loss (or set use_relevance_loss=False)"
                )
        click_valid = encoding.history_click_valid  # (B, S, K)
        queries = tf.broadcast_to(
            encoding.history_query_embeddings[:, :, tf.newaxis, :],
            tf.shape(encoding.history_click_embeddings),
        )
        return self.relevance(
            tf.boolean_mask(queries, click_valid),
            tf.boolean_mask(encoding.history_click_embeddings, click_valid),
            self.embed_items(rel_negatives[REL_NEGATIVE_ITEMS]),
            self.query_encoder(rel_negatives[REL_NEGATIVE_QUERY_TOKENS]),
        )

    def task_loss(
        self, task: str, features: Features, rel_negatives: Features, training: bool = False
    ) -> tf.Tensor:
        """BCE + alpha * L_rel + beta * L_align on one task's batch (spec 10)."""
        c = self.config
        encoding = self._encode(features, training)
        logits = self.score_logits(features, encoding, [task], training=training)[task]
        labels = tf.one_hot(tf.zeros(tf.shape(logits)[:1], tf.int32), tf.shape(logits)[1])
        if c.ranking_loss == "softmax":  # the positive (column 0) against its negatives
            bce = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels, logits))
        else:
            bce = tf.reduce_mean(
                self.ranking_tasks[task](labels=labels, predictions=logits, training=training)
            )
        relevance = self._relevance_loss(encoding, rel_negatives)
        alignment = self._alignment_loss(encoding)
        self.loss_trackers[f"{task}_bce"].update_state(bce)
        self.loss_trackers[f"{task}_relevance"].update_state(relevance)
        self.loss_trackers[f"{task}_alignment"].update_state(alignment)
        return bce + c.alpha_relevance * relevance + c.beta_alignment * alignment

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        c = self.config
        rel_negatives = inputs.get("rel_negatives", {})
        task_weights = {"rec": 1.0, "search": c.gamma_search if len(c.tasks) > 1 else 1.0}
        loss = tf.constant(0.0)
        for task in c.tasks:
            if task not in inputs:
                raise ValueError(f"compute_loss needs a {task!r} batch; got keys {sorted(inputs)}")
            loss += task_weights[task] * self.task_loss(
                task, inputs[task], rel_negatives, training=training
            )
        if c.l2_weight > 0:
            loss += c.l2_weight * self.l2_penalty(inputs)
        return loss

    # ----------------------------------------------------------------------- regularisation
    def _embedding_tables(self):
        return {
            id(self.user_embedding.embeddings): (self.user_embedding.embeddings, "users"),
            id(self.item_embedding.embeddings): (self.item_embedding.embeddings, "items"),
            id(self.query_encoder.embeddings): (self.query_encoder.embeddings, "words"),
        }

    @staticmethod
    def _decayed(variable: tf.Variable) -> bool:
        # The reference decays every parameter except biases (LayerNorm beta is a bias there).
        name = variable.name.split("/")[-1]
        return not (name.startswith("bias") or name.startswith("beta"))

    def l2_penalty(self, inputs) -> tf.Tensor:
        """0.5 * sum(w^2): its gradient lambda*w is the reference's coupled Adam weight decay.

        In "batch_rows" mode the embedding tables contribute only the rows this step looked up.
        """
        tables = self._embedding_tables()
        sparse = self.config.embedding_l2_mode == "batch_rows"
        penalty = tf.constant(0.0)
        for variable in self.trainable_variables:
            if not self._decayed(variable) or (sparse and id(variable) in tables):
                continue
            penalty += tf.reduce_sum(tf.square(variable))
        if sparse:
            touched = _touched_ids(inputs, self.config.tasks)
            for table, kind in tables.values():
                rows = tf.gather(table, touched[kind])
                penalty += tf.reduce_sum(tf.square(rows))
        return 0.5 * penalty


def _touched_ids(inputs, tasks) -> Dict[str, tf.Tensor]:
    """Unique ids per table that one training step reads: {"users"|"items"|"words": (n,)}."""
    ids = {"users": [], "items": [], "words": []}
    for task in tasks:
        features = inputs[task]
        ids["users"].append(features[USER_ID])
        for key in (REC_HISTORY_ITEMS, SEARCH_HISTORY_CLICKED_ITEMS, CANDIDATE_ITEMS):
            ids["items"].append(features[key])
        ids["words"].append(features[SEARCH_HISTORY_QUERY_TOKENS])
        if QUERY_TOKENS in features:
            ids["words"].append(features[QUERY_TOKENS])
    rel = inputs.get("rel_negatives", {})
    if REL_NEGATIVE_ITEMS in rel:
        ids["items"].append(rel[REL_NEGATIVE_ITEMS])
        ids["words"].append(rel[REL_NEGATIVE_QUERY_TOKENS])
    touched = {}
    for kind, tensors in ids.items():
        unique = tf.unique(
            tf.concat([tf.reshape(tf.cast(t, tf.int64), [-1]) for t in tensors], axis=0)
        )[0]
        # Item and word row 0 is padding (never a real embedding); user 0 may be a real id.
        touched[kind] = unique if kind == "users" else tf.boolean_mask(unique, unique > 0)
    return touched


def build_model(
    config: ModelConfig | SASRecConfig | UniSARConfig,
    data: DataFacts,
    batch_size: int = 2,
    num_candidates: int = 2,
    side_features=None,
    cooccurrence=None,
    tables_from_checkpoint: bool = False,
) -> UniSARModel:
    """A UniSARModel (or the SASRec baseline, architecture="sasrec") with every variable
    created (by scoring one all-padding batch) and its data tables filled: a model built
    without them would score with all-zero tables.

    config: the model's config (a run's UniSARConfig: its `model`).
    data: the facts of the data it trains on (DataFacts.from_spec), which size its tables and
        inputs.
    side_features: a unisar_tf.data.side_features.SideFeatures, required when the data has
        side features (data.uses_side_features; stored in the model as non-trainable
        variables).
    cooccurrence: (table, transitions), two unisar_tf.data.cooccurrence.CooccurrenceTable
        (symmetric pairs, directed transitions) counted on the training split; required when
        config.use_cooccurrence.
    tables_from_checkpoint: the caller restores a checkpoint next, which holds the
        co-occurrence tables (they are model variables); cooccurrence is then not needed.
    """
    if isinstance(config, UniSARConfig):
        config = config.model
    uses_side_features = data.uses_side_features
    if uses_side_features and not config.reads_side_features:
        raise ValueError(
            "the data facts hold side features, which this config does not read "
            f"(use_side_features={getattr(config, 'use_side_features', False)}, architecture="
            f"{config.architecture!r}): build them without (DataFacts.from_spec(spec))"
        )
    if uses_side_features and side_features is None:
        raise ValueError(
            "the data has side features: pass side_features "
            "(unisar_tf.data.side_features.load_side_features)"
        )
    uses_cooccurrence = config.reads_cooccurrence
    if uses_cooccurrence and cooccurrence is None and not tables_from_checkpoint:
        raise ValueError(
            "the config uses co-occurrence features: pass cooccurrence=(table, transitions) "
            "counted on the training split (unisar_tf.data.cooccurrence.training_tables), or "
            "tables_from_checkpoint=True when a checkpoint restore fills them"
        )
    if cooccurrence is not None and not uses_cooccurrence:
        raise ValueError(
            "cooccurrence tables given, but the config does not use them (use_cooccurrence "
            "is False)"
        )
    if cooccurrence is not None:
        given = (cooccurrence[0].num_pairs, cooccurrence[1].num_pairs)
        if given != (data.cooccurrence_pairs, data.transition_pairs):
            raise ValueError(
                f"the co-occurrence tables hold {given[0]} pairs and {given[1]} transitions, "
                f"the data facts say {data.cooccurrence_pairs} and {data.transition_pairs}: "
                "build the facts with DataFacts.from_spec(spec, cooccurrence=tables)"
            )
    if config.architecture == "sasrec":
        model = SASRecModel(config, data)
    else:
        model = UniSARModel(config, data)
    model(dummy_features(data, batch_size, num_candidates, with_query=True))
    if uses_side_features:
        model.set_side_features(side_features)
    if cooccurrence is not None:
        model.set_cooccurrence(*cooccurrence)
    return model


def dummy_features(
    data: DataFacts, batch_size: int, num_candidates: int, with_query: bool
) -> Dict[str, tf.Tensor]:
    """An all-padding batch of the model's input shapes (used to create variables)."""

    shapes = model_feature_shapes(data.sequence_shapes, num_candidates, with_query)
    return {name: tf.zeros((batch_size,) + shape, tf.int64) for name, shape in shapes.items()}


def count_parameters(model: tf.keras.Model) -> int:
    return int(sum(tf.size(v).numpy() for v in model.trainable_variables))
