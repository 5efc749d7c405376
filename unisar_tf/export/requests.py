"""Raw serving requests <-> the model's id features.

`RawFeatureMapper` turns the raw inputs of the `recommend` / `search` signatures
(feature_specs.serving: strings, timestamps and lengths, padded) into the id features the
model reads (feature_specs names), inside the graph; `raw_request_from_features` is its
inverse on numpy arrays (replaying data-job examples as requests: tests, the latency
benchmark). `id_source` picks the string -> id mapping a model was trained with.

The mapper keeps what the model was trained with: the last rec_len rec and search_len search
behaviours by timestamp, the first query_len words and clicks_per_session clicks, as the data
job does. Anything the vocabularies do not know (and "") becomes id 0; an unknown user or word
still scores, a rec behaviour on an unknown item is left out of the history. Timestamps only
order the two histories into the mixed sequence; ties put rec first, as the data job does.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    QUERY_TOKENS,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    SEARCH_HISTORY_QUERY_TOKENS,
    TYPE_REC,
    TYPE_SEARCH,
    USER_ID,
)
from feature_specs.serving import (
    CANDIDATES_INPUT,
    QUERY_INPUT,
    REC_ITEMS_INPUT,
    REC_LENGTH_INPUT,
    REC_TIMESTAMPS_INPUT,
    SEARCH_CLICKS_INPUT,
    SEARCH_LENGTH_INPUT,
    SEARCH_QUERIES_INPUT,
    SEARCH_TIMESTAMPS_INPUT,
    USER_ID_INPUT,
    signature_inputs,
)
from unisar_tf.data.transform import TransformIds
from unisar_tf.data.vocab import DataJobVocabularies

_LATEST = tf.int64.max  # padding sorts after every real behaviour


def raw_input_signature(task: str) -> Dict[str, tf.TensorSpec]:
    """The TensorSpecs of the signature that scores `task` (feature_specs.serving)."""
    return {
        name: tf.TensorSpec([None] * rank, tf.as_dtype(dtype), name=name)
        for name, (dtype, rank) in signature_inputs(task).items()
    }


def id_source(vocab_dir: Optional[str] = None, transform_dir: Optional[str] = None):
    """The mapping from raw ids to model ids: the data job's vocabularies or a Transform
    output (exactly one of the two)."""
    if bool(vocab_dir) == bool(transform_dir):
        raise ValueError(
            "give exactly one of vocab_dir (the data job's vocab/) and "
            "transform_dir (a Transform output)"
        )
    if transform_dir:
        return TransformIds(transform_dir)
    return DataJobVocabularies(vocab_dir)


class RawFeatureMapper(tf.Module):
    """Raw request tensors (feature_specs.serving) -> the model's id features (feature_specs
    names).

    `ids` maps strings to ids (DataJobVocabularies or TransformIds: `id_source`).
    """

    def __init__(self, ids, shapes, name: str = "raw_feature_mapper"):
        super().__init__(name=name)
        self.ids = ids
        self.shapes = shapes

    def _words(self, text: tf.Tensor) -> tf.Tensor:
        """(...,) query text -> (..., query_len) strings: the first query_len words,
        ""-padded."""
        words = tf.strings.split(text)  # ragged (..., None)
        shape = [None] * (len(text.shape)) + [self.shapes.query_len]
        return words.to_tensor(default_value="", shape=shape)

    @staticmethod
    def _real_slots(length: tf.Tensor, width: tf.Tensor, name: str) -> tf.Tensor:
        """(B,) lengths -> (B, N) bool, after checking 0 <= length <= N (named errors)."""
        checks = [
            tf.debugging.assert_non_negative(length, message=f"{name}_length must be >= 0"),
            tf.debugging.assert_less_equal(
                length, width, message=f"{name}_length exceeds the width of {name}_timestamps"
            ),
        ]
        with tf.control_dependencies(checks):
            return tf.range(width)[tf.newaxis, :] < length[:, tf.newaxis]

    @staticmethod
    def _latest(timestamps: tf.Tensor, real: tf.Tensor, keep: int):
        """Indices of the last `keep` real behaviours by time.

        timestamps (B, N), real (B, N) bool -> indices (B, keep) into N, oldest first, and
        valid (B, keep) bool (a prefix). The clock orders them, not the slot order the client
        sent; equal timestamps keep the slot order.
        """
        width = tf.shape(timestamps, out_type=tf.int64)[1]
        by_time = tf.argsort(tf.where(real, timestamps, _LATEST), axis=1, stable=True)
        count = tf.reduce_sum(tf.cast(real, tf.int64), axis=1)
        kept = tf.minimum(count, keep)  # (B,)
        start = count - kept
        offsets = tf.range(keep, dtype=tf.int64)[tf.newaxis, :]
        valid = offsets < kept[:, tf.newaxis]
        # Clipped so rows with fewer behaviours gather in range; masked by `valid` after.
        positions = tf.minimum(start[:, tf.newaxis] + offsets, tf.maximum(width - 1, 0))
        indices = tf.gather(by_time, positions, batch_dims=1)
        return indices, valid

    def __call__(self, inputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        shapes = self.shapes

        # A (B, 0) history has nowhere to gather from: give it one padding slot.
        def at_least_one(tensor, axis=1):
            missing = tf.maximum(1 - tf.shape(tensor)[axis], 0)
            paddings = [[0, 0]] * len(tensor.shape)
            paddings[axis] = [0, missing]
            return tf.pad(tensor, paddings)

        rec_ids_raw = at_least_one(inputs[REC_ITEMS_INPUT])
        rec_time_raw = at_least_one(inputs[REC_TIMESTAMPS_INPUT])
        search_text_raw = at_least_one(inputs[SEARCH_QUERIES_INPUT])
        search_clicks_raw = at_least_one(at_least_one(inputs[SEARCH_CLICKS_INPUT]), axis=2)
        search_time_raw = at_least_one(inputs[SEARCH_TIMESTAMPS_INPUT])

        def width(tensor):
            return tf.shape(tensor, out_type=tf.int64)[1]

        # Every string of the request mapped to ids in one go (one run of a Transform graph),
        # before the histories are cut: the mapping is value by value, so mapping first and
        # gathering after gives the ids that gathering first would.
        clicks_raw = search_clicks_raw[..., : shapes.clicks_per_session]
        words = [self._words(search_text_raw)]  # (B, S, query_len)
        if QUERY_INPUT in inputs:
            words.append(self._words(inputs[QUERY_INPUT]))  # (B, query_len)
        ids = self.ids.lookup_together(
            {
                "users": [inputs[USER_ID_INPUT]],
                "items": [rec_ids_raw, clicks_raw, inputs[CANDIDATES_INPUT]],
                "words": words,
            }
        )
        rec_ids_all, clicks_all, candidate_ids = ids["items"]

        # A rec behaviour whose item the vocabulary does not know is left out: the model has
        # nothing for it (id 0 is padding). Search sessions stay; unknown words and clicked
        # items inside them become padding.
        rec_real = tf.logical_and(
            self._real_slots(inputs[REC_LENGTH_INPUT], width(rec_time_raw), "rec_history"),
            rec_ids_all > 0,
        )
        search_real = self._real_slots(
            inputs[SEARCH_LENGTH_INPUT], width(search_time_raw), "search_history"
        )
        rec_index, rec_valid = self._latest(rec_time_raw, rec_real, shapes.rec_len)
        search_index, search_valid = self._latest(search_time_raw, search_real, shapes.search_len)
        search_kept = tf.cast(search_valid, tf.int64)[..., tf.newaxis]

        rec_items = tf.where(rec_valid, tf.gather(rec_ids_all, rec_index, batch_dims=1), 0)
        queries = tf.gather(ids["words"][0], search_index, batch_dims=1) * search_kept
        clicks = tf.gather(clicks_all, search_index, batch_dims=1)
        clicks = tf.pad(
            clicks, [[0, 0], [0, 0], [0, shapes.clicks_per_session - tf.shape(clicks)[2]]]
        )
        clicks = clicks * search_kept

        # The mixed sequence: both kept lists merged by time, rec first on ties (it comes
        # first in the concatenation and the sort is stable), padding last.
        rec_time = tf.where(rec_valid, tf.gather(rec_time_raw, rec_index, batch_dims=1), _LATEST)
        search_time = tf.where(
            search_valid, tf.gather(search_time_raw, search_index, batch_dims=1), _LATEST
        )
        types = tf.concat(
            [
                tf.where(rec_valid, tf.constant(TYPE_REC, tf.int64), 0),
                tf.where(search_valid, tf.constant(TYPE_SEARCH, tf.int64), 0),
            ],
            axis=1,
        )
        merged = tf.argsort(tf.concat([rec_time, search_time], axis=1), axis=1, stable=True)

        features = {
            USER_ID: ids["users"][0],
            HISTORY_TYPES: tf.gather(types, merged, batch_dims=1),
            REC_HISTORY_ITEMS: rec_items,
            SEARCH_HISTORY_QUERY_TOKENS: queries,
            SEARCH_HISTORY_CLICKED_ITEMS: clicks,
            CANDIDATE_ITEMS: candidate_ids,
        }
        if QUERY_INPUT in inputs:
            features[QUERY_TOKENS] = ids["words"][1]
        return features


UNKNOWN_WORD = "[UNK]"  # stands for a 0 inside a query, which no vocabulary word maps to


def raw_request_from_features(
    features: Dict[str, "np.ndarray"], vocabularies: Dict[str, "np.ndarray"]
) -> Dict[str, "np.ndarray"]:
    """Model id features (feature_specs, numpy, batch first) -> the raw inputs that map to them.

    Inverse of RawFeatureMapper: used to replay data-job examples (e.g. the test split)
    against the serving signatures, and by the latency benchmark. Timestamps are the slots
    of the mixed sequence, so the merge reproduces history_types exactly.
    """
    items, words = vocabularies["items"], vocabularies["words"]
    types = np.asarray(features[HISTORY_TYPES])
    batch, mixed = types.shape
    clock = np.broadcast_to(np.arange(mixed, dtype=np.int64), types.shape)

    def times(kind: int, width: int) -> Tuple["np.ndarray", "np.ndarray"]:
        stamps = np.zeros((batch, width), np.int64)
        lengths = (types == kind).sum(axis=1)
        for row in range(batch):
            stamps[row, : lengths[row]] = clock[row][types[row] == kind][:width]
        return stamps, lengths.astype(np.int64)

    def text(tokens: "np.ndarray") -> str:
        used = np.flatnonzero(tokens)
        kept = tokens[: used[-1] + 1] if used.size else tokens[:0]
        return " ".join(words[t] if t else UNKNOWN_WORD for t in kept)

    rec_items = np.asarray(features[REC_HISTORY_ITEMS])
    queries = np.asarray(features[SEARCH_HISTORY_QUERY_TOKENS])
    rec_time, rec_length = times(TYPE_REC, rec_items.shape[1])
    search_time, search_length = times(TYPE_SEARCH, queries.shape[1])
    raw = {
        USER_ID_INPUT: vocabularies["users"][np.asarray(features[USER_ID])].astype(bytes),
        CANDIDATES_INPUT: items[np.asarray(features[CANDIDATE_ITEMS])].astype(bytes),
        REC_ITEMS_INPUT: items[rec_items].astype(bytes),
        REC_TIMESTAMPS_INPUT: rec_time,
        REC_LENGTH_INPUT: rec_length,
        SEARCH_QUERIES_INPUT: np.array(
            [[text(q) for q in row] for row in queries], dtype=object
        ).astype(bytes),
        SEARCH_CLICKS_INPUT: items[np.asarray(features[SEARCH_HISTORY_CLICKED_ITEMS])].astype(
            bytes
        ),
        SEARCH_TIMESTAMPS_INPUT: search_time,
        SEARCH_LENGTH_INPUT: search_length,
    }
    if QUERY_TOKENS in features:
        raw[QUERY_INPUT] = np.array(
            [text(q) for q in np.asarray(features[QUERY_TOKENS])], dtype=object
        ).astype(bytes)
    return raw
