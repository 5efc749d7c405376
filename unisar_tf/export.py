"""SavedModel export: the serving contract of UniSAR (`recommend`, `search`, `serving_default`).

`recommend` and `search` take raw inputs, dense and padded with explicit lengths (TF Serving
batches dense tensors only). B = requests in the batch, C = candidates, R / S = history slots
sent, K = clicks per search session sent; the sizes are free, the model keeps what it was
trained with (the last rec_len rec and search_len search behaviours, the first query_len words
and clicks_per_session clicks, as the data job does):

| input                           | dtype  | shape     |                                   |
|---------------------------------|--------|-----------|-----------------------------------|
| user_id                         | string | (B,)      |                                   |
| candidate_item_ids              | string | (B, C)    | every entry is scored             |
| rec_history_item_ids            | string | (B, R)    | padded past rec_history_length    |
| rec_history_timestamps          | int64  | (B, R)    | any monotone clock                |
| rec_history_length              | int64  | (B,)      | 0 <= length <= R                  |
| search_history_queries          | string | (B, S)    | query text, words split on spaces |
| search_history_clicked_item_ids | string | (B, S, K) | "" pads a session's clicks        |
| search_history_timestamps       | int64  | (B, S)    |                                   |
| search_history_length           | int64  | (B,)      | 0 <= length <= S                  |
| query (`search` only)           | string | (B,)      | the query text                    |

Output: {"scores": (B, C) float32}, click probabilities. Ids are mapped inside the graph with
the vocabularies the model was trained with: for the TFX pipeline's models the Transform
graph itself (pipeline/transform_module.py, unisar_tf/transform.py), for `unisar_tf.train`
runs the data job's `vocab/{users,items,words}.txt` (line k = id k + 1). Anything not in them
(and "") becomes id 0, padding/out-of-vocabulary. Unknown users
and words still score; an unknown candidate item gets score 0 (the model knows nothing of it)
and a rec behaviour on an unknown item is left out of the history.
Timestamps only order the two histories into the mixed sequence; ties put rec first, as the
data job does.

`serving_default` takes {"examples": (B,) string}, serialized tf.Examples in the format the
model trained on (feature_specs: raw string ids through Transform for the pipeline's models,
the data job's ids otherwise), for batch inference and evaluation, and returns the search score
for examples that carry `query_tokens` and the rec score otherwise.

The export also writes `assets.extra/tf_serving_warmup_requests` (one request per signature),
which TF Serving replays when it loads a version, so the first user request is not slow.
"""
from __future__ import annotations

import argparse
import os
import shutil
from typing import Dict, Optional, Tuple

import tensorflow as tf

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    ID_FEATURE_VOCABULARIES,
    QUERY_TOKENS,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    SEARCH_HISTORY_QUERY_TOKENS,
    TYPE_REC,
    TYPE_SEARCH,
    USER_ID,
    model_feature_shapes,
)
from unisar_tf.model import UniSARModel

MODEL_NAME = "unisar"
SIGNATURE_NAMES = {"rec": "recommend", "search": "search"}
EXAMPLES_SIGNATURE = "serving_default"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
VOCAB_FILES = {"users": "users.txt", "items": "items.txt", "words": "words.txt"}

# Raw signature inputs: name -> (dtype, rank including the batch dim).
RAW_INPUTS: Dict[str, Tuple[tf.DType, int]] = {
    "user_id": (tf.string, 1),
    "candidate_item_ids": (tf.string, 2),
    "rec_history_item_ids": (tf.string, 2),
    "rec_history_timestamps": (tf.int64, 2),
    "rec_history_length": (tf.int64, 1),
    "search_history_queries": (tf.string, 2),
    "search_history_clicked_item_ids": (tf.string, 3),
    "search_history_timestamps": (tf.int64, 2),
    "search_history_length": (tf.int64, 1),
}
QUERY_INPUT = "query"
_LATEST = tf.int64.max  # padding sorts after every real behaviour


def raw_input_signature(task: str) -> Dict[str, tf.TensorSpec]:
    specs = {name: tf.TensorSpec([None] * rank, dtype, name=name)
             for name, (dtype, rank) in RAW_INPUTS.items()}
    if task == "search":
        specs[QUERY_INPUT] = tf.TensorSpec([None], tf.string, name=QUERY_INPUT)
    return specs


def vocabulary_table(path: str) -> tf.lookup.StaticHashTable:
    """string -> line number (the data job's id - 1); unknown -> -1. The file is an asset."""
    initializer = tf.lookup.TextFileInitializer(
        path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
    return tf.lookup.StaticHashTable(initializer, default_value=-1)


class DataJobVocabularies(tf.Module):
    """Raw strings -> ids with the data job's vocabulary files (vocab/, line k = id k + 1).

    The id source of models trained on the data job's id examples (`unisar_tf.train`);
    the TFX pipeline's models use the Transform graph instead (unisar_tf.transform).
    """

    example_dtype = tf.int64  # what serving_default's examples carry in id features

    def __init__(self, vocab_dir: str, name: str = "data_job_vocabularies"):
        super().__init__(name=name)
        for kind, filename in VOCAB_FILES.items():
            path = os.path.join(vocab_dir, filename)
            if not tf.io.gfile.exists(path):
                raise FileNotFoundError(f"vocabulary {path} not found (written by the data job)")
        self.tables = {kind: vocabulary_table(os.path.join(vocab_dir, filename))
                       for kind, filename in VOCAB_FILES.items()}

    def lookup(self, kind: str, strings: tf.Tensor) -> tf.Tensor:
        """Strings of any shape -> int64 ids of the same shape (0 = unknown or "")."""
        return self.tables[kind].lookup(strings) + 1

    @staticmethod
    def example_ids(features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        return features  # the data job's examples already hold ids


def id_source(vocab_dir: Optional[str] = None, transform_dir: Optional[str] = None):
    """The mapping from raw ids to model ids: the data job's vocabularies or a Transform
    output (exactly one of the two)."""
    if bool(vocab_dir) == bool(transform_dir):
        raise ValueError("give exactly one of vocab_dir (the data job's vocab/) and "
                         "transform_dir (a Transform output)")
    if transform_dir:
        from unisar_tf.transform import TransformIds

        return TransformIds(transform_dir)
    return DataJobVocabularies(vocab_dir)


class RawFeatureMapper(tf.Module):
    """Raw request tensors (RAW_INPUTS) -> the model's id features (feature_specs names).

    `ids` maps strings to ids (DataJobVocabularies or unisar_tf.transform.TransformIds).
    """

    def __init__(self, ids, shapes, name: str = "raw_feature_mapper"):
        super().__init__(name=name)
        self.ids = ids
        self.shapes = shapes

    def _tokens(self, text: tf.Tensor) -> tf.Tensor:
        """(...,) query text -> (..., query_len) word ids: the first query_len words, 0-padded."""
        words = tf.strings.split(text)  # ragged (..., None)
        shape = [None] * (len(text.shape)) + [self.shapes.query_len]
        return self.ids.lookup("words", words.to_tensor(default_value="", shape=shape))

    @staticmethod
    def _real_slots(length: tf.Tensor, width: tf.Tensor, name: str) -> tf.Tensor:
        """(B,) lengths -> (B, N) bool, after checking 0 <= length <= N (named errors)."""
        checks = [
            tf.debugging.assert_non_negative(length, message=f"{name}_length must be >= 0"),
            tf.debugging.assert_less_equal(
                length, width, message=f"{name}_length exceeds the width of {name}_timestamps"),
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

        rec_ids_raw = at_least_one(inputs["rec_history_item_ids"])
        rec_time_raw = at_least_one(inputs["rec_history_timestamps"])
        search_text_raw = at_least_one(inputs["search_history_queries"])
        search_clicks_raw = at_least_one(at_least_one(inputs["search_history_clicked_item_ids"]),
                                         axis=2)
        search_time_raw = at_least_one(inputs["search_history_timestamps"])

        def width(tensor):
            return tf.shape(tensor, out_type=tf.int64)[1]

        # A rec behaviour whose item the vocabulary does not know is left out: the model has
        # nothing for it (id 0 is padding). Search sessions stay; unknown words and clicked
        # items inside them become padding.
        rec_ids_all = self.ids.lookup("items", rec_ids_raw)
        rec_real = tf.logical_and(
            self._real_slots(inputs["rec_history_length"], width(rec_time_raw), "rec_history"),
            rec_ids_all > 0)
        search_real = self._real_slots(inputs["search_history_length"], width(search_time_raw),
                                       "search_history")
        rec_index, rec_valid = self._latest(rec_time_raw, rec_real, shapes.rec_len)
        search_index, search_valid = self._latest(search_time_raw, search_real,
                                                  shapes.search_len)

        rec_items = tf.where(rec_valid, tf.gather(rec_ids_all, rec_index, batch_dims=1), 0)
        queries = self._tokens(tf.gather(search_text_raw, search_index, batch_dims=1))
        queries = queries * tf.cast(search_valid, tf.int64)[..., tf.newaxis]
        clicks_raw = tf.gather(search_clicks_raw, search_index, batch_dims=1)[
            ..., :shapes.clicks_per_session]
        clicks_raw = tf.pad(clicks_raw, [[0, 0], [0, 0],
                                         [0, shapes.clicks_per_session - tf.shape(clicks_raw)[2]]])
        clicks = self.ids.lookup("items", clicks_raw) * tf.cast(search_valid, tf.int64)[..., None]

        # The mixed sequence: both kept lists merged by time, rec first on ties (it comes
        # first in the concatenation and the sort is stable), padding last.
        rec_time = tf.where(rec_valid, tf.gather(rec_time_raw, rec_index, batch_dims=1), _LATEST)
        search_time = tf.where(search_valid,
                               tf.gather(search_time_raw, search_index, batch_dims=1), _LATEST)
        types = tf.concat([tf.where(rec_valid, tf.constant(TYPE_REC, tf.int64), 0),
                           tf.where(search_valid, tf.constant(TYPE_SEARCH, tf.int64), 0)], axis=1)
        merged = tf.argsort(tf.concat([rec_time, search_time], axis=1), axis=1, stable=True)

        features = {
            USER_ID: self.ids.lookup("users", inputs["user_id"]),
            HISTORY_TYPES: tf.gather(types, merged, batch_dims=1),
            REC_HISTORY_ITEMS: rec_items,
            SEARCH_HISTORY_QUERY_TOKENS: queries,
            SEARCH_HISTORY_CLICKED_ITEMS: clicks,
            CANDIDATE_ITEMS: self.ids.lookup("items", inputs["candidate_item_ids"]),
        }
        if QUERY_INPUT in inputs:
            features[QUERY_TOKENS] = self._tokens(inputs[QUERY_INPUT])
        return features


def _example_parse_spec(shapes, id_dtype: tf.DType) -> Dict[str, object]:
    """serving_default's parse spec: id features as `id_dtype` (int64 ids or raw strings)."""
    fixed = model_feature_shapes(shapes, num_candidates=1, with_query=False)
    spec = {name: tf.io.FixedLenFeature(shape, id_dtype if name in ID_FEATURE_VOCABULARIES
                                        else tf.int64)
            for name, shape in fixed.items() if name != CANDIDATE_ITEMS}
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
        self.mapper = RawFeatureMapper(ids, model.config.sequence_shapes)

    def score_raw(self, inputs: Dict[str, tf.Tensor], task: str) -> Dict[str, tf.Tensor]:
        features = self.mapper(inputs)
        scores = self.model(features, training=False)[task]
        return {"scores": known_candidates_only(scores, features[CANDIDATE_ITEMS])}

    def score_examples(self, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        """(B,) serialized tf.Examples -> {"scores": (B, C)}; C = the most candidates sent.

        The examples are in the format the model was trained on: the data job's ids, or raw
        string ids that the Transform graph maps (the TFX pipeline's models).
        """
        shapes = self.model.config.sequence_shapes
        id_dtype = self.ids.example_dtype
        padding = tf.constant(0 if id_dtype == tf.int64 else "", id_dtype)
        parsed = tf.io.parse_example(examples, _example_parse_spec(shapes, id_dtype))
        features = {name: value for name, value in parsed.items()
                    if not isinstance(value, tf.sparse.SparseTensor)}
        features[CANDIDATE_ITEMS] = tf.sparse.to_dense(parsed[CANDIDATE_ITEMS], padding)
        tasks = self.model.config.tasks
        if "search" in tasks:
            query = tf.sparse.to_dense(parsed[QUERY_TOKENS], padding)[:, :shapes.query_len]
            features[QUERY_TOKENS] = tf.pad(
                query, [[0, 0], [0, shapes.query_len - tf.shape(query)[1]]],
                constant_values=padding)
        features = self.ids.example_ids(features)
        candidates = features[CANDIDATE_ITEMS]
        scores = self.model(features, training=False)
        if "search" not in tasks:
            return {"scores": known_candidates_only(scores["rec"], candidates)}
        if "rec" not in tasks:
            return {"scores": known_candidates_only(scores["search"], candidates)}
        # Search examples are the ones that carry query_tokens at all (the data job writes
        # them padded, so even a query of unknown words has entries).
        rows_with_query = parsed[QUERY_TOKENS].indices[:, 0]
        is_search = tf.scatter_nd(rows_with_query[:, tf.newaxis],
                                  tf.ones_like(rows_with_query, tf.int32),
                                  tf.shape(examples, out_type=tf.int64)) > 0
        return {"scores": known_candidates_only(
            tf.where(is_search[:, tf.newaxis], scores["search"], scores["rec"]), candidates)}

    def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
        functions = {}
        for task in self.model.config.tasks:
            function = tf.function(lambda inputs, task=task: self.score_raw(inputs, task))
            functions[SIGNATURE_NAMES[task]] = function.get_concrete_function(
                raw_input_signature(task))
        examples = tf.function(lambda examples: self.score_examples(examples))
        functions[EXAMPLES_SIGNATURE] = examples.get_concrete_function(
            tf.TensorSpec([None], tf.string, name="examples"))
        return functions


def read_vocabularies(vocab_dir: str) -> Dict[str, "np.ndarray"]:
    """kind -> (vocab size + 1,) object array of strings; index = id, index 0 is ""."""
    import numpy as np

    vocabularies = {}
    for kind, filename in VOCAB_FILES.items():
        with tf.io.gfile.GFile(os.path.join(vocab_dir, filename)) as handle:
            words = [line.rstrip("\n") for line in handle]
        vocabularies[kind] = np.array([""] + words, dtype=object)
    return vocabularies


UNKNOWN_WORD = "[UNK]"  # stands for a 0 inside a query, which no vocabulary word maps to


def raw_request_from_features(features: Dict[str, "np.ndarray"],
                              vocabularies: Dict[str, "np.ndarray"]) -> Dict[str, "np.ndarray"]:
    """Model id features (feature_specs, numpy, batch first) -> the raw inputs that map to them.

    Inverse of RawFeatureMapper: used to replay data-job examples (e.g. the test split)
    against the serving signatures, and by the latency benchmark. Timestamps are the slots
    of the mixed sequence, so the merge reproduces history_types exactly.
    """
    import numpy as np

    items, words = vocabularies["items"], vocabularies["words"]
    types = np.asarray(features[HISTORY_TYPES])
    batch, mixed = types.shape
    clock = np.broadcast_to(np.arange(mixed, dtype=np.int64), types.shape)

    def times(kind: int, width: int) -> Tuple["np.ndarray", "np.ndarray"]:
        stamps = np.zeros((batch, width), np.int64)
        lengths = (types == kind).sum(axis=1)
        for row in range(batch):
            stamps[row, :lengths[row]] = clock[row][types[row] == kind][:width]
        return stamps, lengths.astype(np.int64)

    def text(tokens: "np.ndarray") -> str:
        used = np.flatnonzero(tokens)
        kept = tokens[:used[-1] + 1] if used.size else tokens[:0]
        return " ".join(words[t] if t else UNKNOWN_WORD for t in kept)

    rec_items = np.asarray(features[REC_HISTORY_ITEMS])
    queries = np.asarray(features[SEARCH_HISTORY_QUERY_TOKENS])
    rec_time, rec_length = times(TYPE_REC, rec_items.shape[1])
    search_time, search_length = times(TYPE_SEARCH, queries.shape[1])
    raw = {
        "user_id": vocabularies["users"][np.asarray(features[USER_ID])].astype(bytes),
        "candidate_item_ids": items[np.asarray(features[CANDIDATE_ITEMS])].astype(bytes),
        "rec_history_item_ids": items[rec_items].astype(bytes),
        "rec_history_timestamps": rec_time,
        "rec_history_length": rec_length,
        "search_history_queries": np.array([[text(q) for q in row] for row in queries],
                                           dtype=object).astype(bytes),
        "search_history_clicked_item_ids":
            items[np.asarray(features[SEARCH_HISTORY_CLICKED_ITEMS])].astype(bytes),
        "search_history_timestamps": search_time,
        "search_history_length": search_length,
    }
    if QUERY_TOKENS in features:
        raw[QUERY_INPUT] = np.array([text(q) for q in np.asarray(features[QUERY_TOKENS])],
                                    dtype=object).astype(bytes)
    return raw


def next_version(base_path: str) -> int:
    """1 + the highest numeric version under base_path (1 if none)."""
    if not tf.io.gfile.isdir(base_path):
        return 1
    versions = [int(name.rstrip("/")) for name in tf.io.gfile.listdir(base_path)
                if name.rstrip("/").isdigit()]
    return max(versions, default=0) + 1


def warmup_requests(tasks, num_candidates: int = 100):
    """PredictionLogs TF Serving replays at load: one realistic-size request per signature."""
    import numpy as np
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    history = 5
    arrays = {
        "user_id": np.array([b""]),
        "candidate_item_ids": np.array([[b""] * num_candidates]),
        "rec_history_item_ids": np.array([[b""] * history]),
        "rec_history_timestamps": np.arange(history, dtype=np.int64)[np.newaxis],
        "rec_history_length": np.array([history], np.int64),
        "search_history_queries": np.array([[b""] * history]),
        "search_history_clicked_item_ids": np.array([[[b""]] * history]),
        "search_history_timestamps": np.arange(history, dtype=np.int64)[np.newaxis] + 1,
        "search_history_length": np.array([history], np.int64),
    }
    logs = []
    for task in tasks:
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=MODEL_NAME, signature_name=SIGNATURE_NAMES[task]))
        inputs = dict(arrays)
        if task == "search":
            inputs[QUERY_INPUT] = np.array([b""])
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def export_serving_model(model: UniSARModel, vocab_dir: Optional[str], export_dir: str,
                         warmup: bool = True, transform_dir: Optional[str] = None) -> str:
    """Write a SavedModel (tag "serve") with the three signatures into export_dir.

    Ids are mapped with the data job's vocabularies (`vocab_dir`) or, for a model trained on
    Transform's ids, with the Transform graph (`transform_dir`, vocab_dir None).

    The directory appears complete or not at all: it is written next to export_dir and
    renamed, so a server watching the parent never loads half a model.
    """
    if tf.io.gfile.exists(export_dir):
        raise FileExistsError(f"{export_dir} exists; versions are immutable, pick a new one")
    parent, leaf = os.path.split(os.path.normpath(export_dir))
    staging = os.path.join(parent, f".tmp-{leaf}")
    if tf.io.gfile.exists(staging):
        tf.io.gfile.rmtree(staging)
    serving = ServingFunctions(model, id_source(vocab_dir, transform_dir))
    # The id mapping rides on the model so model.save tracks it (and its vocabulary assets).
    model.serving_functions = serving
    # save_traces=False: the signatures are all a server needs; tracing every Keras layer's
    # call for Python-free reloading costs tens of seconds and adds nothing here.
    model.save(staging, save_format="tf", save_traces=False, signatures=serving.signatures())
    if warmup:
        tf.io.gfile.makedirs(os.path.join(staging, "assets.extra"))
        with tf.io.TFRecordWriter(os.path.join(staging, WARMUP_FILE)) as writer:
            for log in warmup_requests(model.config.tasks):
                writer.write(log.SerializeToString())
    tf.io.gfile.rename(staging, export_dir)
    return export_dir


def push(model: UniSARModel, vocab_dir: Optional[str], serving_dir: str,
         version: Optional[int] = None, transform_dir: Optional[str] = None) -> str:
    """Export as `<serving_dir>/unisar/<version>` (next free number by default)."""
    base_path = os.path.join(serving_dir, MODEL_NAME)
    tf.io.gfile.makedirs(base_path)
    version = next_version(base_path) if version is None else version
    return export_serving_model(model, vocab_dir, os.path.join(base_path, str(version)),
                                transform_dir=transform_dir)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Export a trained run's best checkpoint as a versioned serving SavedModel.")
    parser.add_argument("--model_dir", required=True, help="the trainer's --model_dir")
    parser.add_argument("--data_dir", required=True, help="the data job's output (vocab/)")
    parser.add_argument("--serving_dir", default="out/serving",
                        help="writes <serving_dir>/unisar/<version>")
    parser.add_argument("--version", type=int, default=None)
    args = parser.parse_args(argv)
    from unisar_tf.trainer import load_trained_model, run_transform_dir

    model = load_trained_model(args.model_dir, args.data_dir)
    # A run trained through a Transform graph (options.json) serves with that graph.
    transform_dir = run_transform_dir(args.model_dir)
    vocab_dir = None if transform_dir else os.path.join(args.data_dir, "vocab")
    path = push(model, vocab_dir, args.serving_dir, args.version, transform_dir)
    print(f"exported {path}")


if __name__ == "__main__":
    main()
