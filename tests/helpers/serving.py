"""A toy SavedModel with UniSAR's serving contract, for the stand-in server and the client."""

import os
import shutil
import tempfile

import tensorflow as tf

VOCAB = ["item_a", "item_b", "item_c"]


def _spec(shape, dtype, name):
    return tf.TensorSpec(shape, dtype, name=name)


HISTORY_SPECS = [
    _spec([None, None], tf.string, "rec_history_item_ids"),
    _spec([None, None], tf.int64, "rec_history_timestamps"),
    _spec([None], tf.int64, "rec_history_length"),
    _spec([None, None], tf.string, "search_history_queries"),
    _spec([None, None, None], tf.string, "search_history_clicked_item_ids"),
    _spec([None, None], tf.int64, "search_history_timestamps"),
    _spec([None], tf.int64, "search_history_length"),
]

REC_SPECS = [
    _spec([None], tf.string, "user_id"),
    _spec([None, None], tf.string, "candidate_item_ids"),
] + HISTORY_SPECS

SEARCH_SPECS = REC_SPECS + [_spec([None], tf.string, "query")]


class ToyModel(tf.Module):
    def __init__(self, vocab_path, bias):
        super().__init__()
        self.vocab = tf.saved_model.Asset(vocab_path)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                self.vocab,
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            default_value=-1,
        )
        self.bias = bias

    def _base(
        self,
        candidate_item_ids,
        rec_history_item_ids,
        rec_history_timestamps,
        rec_history_length,
        search_history_queries,
        search_history_clicked_item_ids,
        search_history_timestamps,
        search_history_length,
    ):
        checks = [
            tf.debugging.assert_non_negative(
                rec_history_timestamps, message="rec_history_timestamps"
            ),
            tf.debugging.assert_non_negative(
                search_history_timestamps, message="search_history_timestamps"
            ),
        ]
        with tf.control_dependencies(checks):
            value = tf.cast(self.table.lookup(candidate_item_ids) + 1, tf.float32)

        def within(length, like):  # (B, N) mask of positions < length
            return tf.range(tf.shape(like)[1])[None, :] < tf.cast(length, tf.int32)[:, None]

        # Elementwise ops over ids and timestamps: their shapes must agree, as in UniSAR.
        rec = (
            within(rec_history_length, rec_history_item_ids)
            & (rec_history_timestamps >= 0)
            & (rec_history_item_ids != "")
        )
        search = within(search_history_length, search_history_queries) & (
            search_history_timestamps >= 0
        )
        clicked = (search_history_clicked_item_ids != "") & search[:, :, None]
        n_rec = tf.reduce_sum(tf.cast(rec, tf.float32), axis=1)
        n_search = tf.reduce_sum(tf.cast(search, tf.float32), axis=1)
        n_clicked = tf.reduce_sum(tf.cast(clicked, tf.float32), axis=[1, 2])
        return value + (n_rec + 10.0 * n_search + self.bias)[:, None], n_clicked

    @tf.function(input_signature=REC_SPECS)
    def recommend(self, user_id, candidate_item_ids, *history):
        scores, _ = self._base(candidate_item_ids, *history)
        return {"scores": scores}

    @tf.function(input_signature=SEARCH_SPECS)
    def search(self, user_id, candidate_item_ids, *history_and_query):
        *history, query = history_and_query
        scores, n_clicked = self._base(candidate_item_ids, *history)
        words = tf.cast(tf.strings.split(query).row_lengths(), tf.float32)
        return {"scores": scores + (100.0 * n_clicked + 1000.0 * words)[:, None]}

    @tf.function(input_signature=[_spec([None], tf.string, "examples")])
    def serving_default(self, examples):
        parsed = tf.io.parse_example(
            examples, {"candidate_item_ids": tf.io.VarLenFeature(tf.string)}
        )
        ids = tf.sparse.to_dense(parsed["candidate_item_ids"], default_value="")
        return {"scores": tf.cast(self.table.lookup(ids) + 1, tf.float32) + self.bias}


def save_toy_model(export_dir, bias=0.0, vocab=VOCAB):
    """Save the toy model to export_dir (e.g. <base>/<version>) and return export_dir.

    vocab: the item ids; the k-th (0-based) has value k + 1 in the scores.
    The vocabulary file is deleted after saving, so serving must use the asset copy inside
    the SavedModel, fed to the table initializer by the loader.
    """
    vocab_dir = tempfile.mkdtemp()
    vocab_path = os.path.join(vocab_dir, "items.txt")
    with open(vocab_path, "w") as f:
        f.write("\n".join(vocab) + "\n")
    module = ToyModel(vocab_path, bias)
    tf.saved_model.save(
        module,
        export_dir,
        signatures={
            "recommend": module.recommend,
            "search": module.search,
            "serving_default": module.serving_default,
        },
    )
    shutil.rmtree(vocab_dir)
    return export_dir
