"""The SavedModel's signatures: `recommend`, `search` (raw requests) and `serving_default`.

The request contract (names, dtypes, shapes) is feature_specs.serving's. `recommend` and
`search` map raw inputs with unisar_tf.export.requests.RawFeatureMapper and return
{"scores": (B, C) float32}, click probabilities; an unknown candidate item scores 0.

`serving_default` takes {"examples": (B,) string}, serialized tf.Examples in the format the
model trained on (feature_specs: raw string ids through Transform for the pipeline's models,
the data job's ids otherwise), for batch inference and evaluation, and returns the search
score for examples that carry `query_tokens` and the rec score otherwise.
"""

from __future__ import annotations

from typing import Dict

import tensorflow as tf

from feature_specs import (
    CANDIDATE_ITEMS,
    ID_FEATURE_VOCABULARIES,
    QUERY_TOKENS,
    model_feature_shapes,
)
from feature_specs.serving import EXAMPLES_INPUT, EXAMPLES_SIGNATURE, SCORES_OUTPUT, SIGNATURE_NAMES
from unisar_tf.export.requests import RawFeatureMapper, raw_input_signature
from unisar_tf.model import UniSARModel


def _example_parse_spec(shapes, id_dtype: tf.DType) -> Dict[str, object]:
    """serving_default's parse spec: id features as `id_dtype` (int64 ids or raw strings)."""
    fixed = model_feature_shapes(shapes, num_candidates=1, with_query=False)
    spec = {
        name: tf.io.FixedLenFeature(
            shape, id_dtype if name in ID_FEATURE_VOCABULARIES else tf.int64
        )
        for name, shape in fixed.items()
        if name != CANDIDATE_ITEMS
    }
    spec[CANDIDATE_ITEMS] = tf.io.VarLenFeature(id_dtype)
    spec[QUERY_TOKENS] = tf.io.VarLenFeature(id_dtype)
    return spec


def known_candidates_only(scores: tf.Tensor, candidate_ids: tf.Tensor) -> tf.Tensor:
    """(B, C) scores with 0 for candidates outside the item vocabulary (id 0).

    The model has no embedding for such an item: id 0 is the padding row, which training
    never fits, and its score is arbitrary (it can rank first). 0 ranks it last instead.
    """
    return tf.where(candidate_ids > 0, scores, tf.zeros_like(scores))


class ServingFunctions(tf.Module):
    """The signature functions and what they need (the model and its id source)."""

    def __init__(self, model: UniSARModel, ids):
        super().__init__(name="serving")
        self.model = model
        self.ids = ids
        self.mapper = RawFeatureMapper(ids, model.data.sequence_shapes)

    def score_raw(self, inputs: Dict[str, tf.Tensor], task: str) -> Dict[str, tf.Tensor]:
        features = self.mapper(inputs)
        scores = self.model(features, training=False)[task]
        return {SCORES_OUTPUT: known_candidates_only(scores, features[CANDIDATE_ITEMS])}

    def score_examples(self, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        """(B,) serialized tf.Examples -> {"scores": (B, C)}; C = the most candidates sent.

        The examples are in the format the model was trained on: the data job's ids, or raw
        string ids that the Transform graph maps (the TFX pipeline's models).
        """
        shapes = self.model.data.sequence_shapes
        id_dtype = self.ids.example_dtype
        padding = tf.constant(0 if id_dtype == tf.int64 else "", id_dtype)
        parsed = tf.io.parse_example(examples, _example_parse_spec(shapes, id_dtype))
        features = {
            name: value
            for name, value in parsed.items()
            if not isinstance(value, tf.sparse.SparseTensor)
        }
        features[CANDIDATE_ITEMS] = tf.sparse.to_dense(parsed[CANDIDATE_ITEMS], padding)
        tasks = self.model.config.tasks
        if "search" in tasks:
            query = tf.sparse.to_dense(parsed[QUERY_TOKENS], padding)[:, : shapes.query_len]
            features[QUERY_TOKENS] = tf.pad(
                query, [[0, 0], [0, shapes.query_len - tf.shape(query)[1]]], constant_values=padding
            )
        features = self.ids.example_ids(features)
        candidates = features[CANDIDATE_ITEMS]
        scores = self.model(features, training=False)
        if "search" not in tasks:
            return {SCORES_OUTPUT: known_candidates_only(scores["rec"], candidates)}
        if "rec" not in tasks:
            return {SCORES_OUTPUT: known_candidates_only(scores["search"], candidates)}
        # Search examples are the ones that carry query_tokens at all (the data job writes
        # them padded, so even a query of unknown words has entries).
        rows_with_query = parsed[QUERY_TOKENS].indices[:, 0]
        is_search = (
            tf.scatter_nd(
                rows_with_query[:, tf.newaxis],
                tf.ones_like(rows_with_query, tf.int32),
                tf.shape(examples, out_type=tf.int64),
            )
            > 0
        )
        return {
            SCORES_OUTPUT: known_candidates_only(
                tf.where(is_search[:, tf.newaxis], scores["search"], scores["rec"]), candidates
            )
        }

    def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
        functions = {}
        for task in self.model.config.tasks:
            function = tf.function(lambda inputs, task=task: self.score_raw(inputs, task))
            functions[SIGNATURE_NAMES[task]] = function.get_concrete_function(
                raw_input_signature(task)
            )
        examples = tf.function(lambda examples: self.score_examples(examples))
        functions[EXAMPLES_SIGNATURE] = examples.get_concrete_function(
            tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)
        )
        return functions
