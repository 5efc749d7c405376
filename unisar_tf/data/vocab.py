"""The data job's vocabularies (vocab/{users,items,words}.txt; line k is the string of id k + 1).

- `read_vocabularies`: the files as numpy string arrays indexed by id (tools, the request
  replayer);
- `DataJobVocabularies`: strings -> ids inside a TensorFlow graph, the id source of models
  trained on the data job's id examples (the TFX pipeline's models use the Transform graph,
  unisar_tf.data.transform.TransformIds, which has the same interface).
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Sequence

import numpy as np
import tensorflow as tf

from feature_specs.layout import VOCAB_FILES


def vocabulary_table(path: str) -> tf.lookup.StaticHashTable:
    """string -> line number (the data job's id - 1); unknown -> -1. The file is an asset.

    An empty file (a single-scenario data set: a rec-only log has no query words) gives a
    table where every string is unknown: TensorFlow's text-file initializer cannot read an
    empty file (OutOfRangeError "Read less bytes than requested"), which made rec-only
    models impossible to export (issue 23), and a table cannot be built from no keys, so it
    holds "" -> -1, which every table answers anyway."""
    if tf.io.gfile.stat(path).length == 0:
        return tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant([""]), tf.constant([-1], tf.int64)),
            default_value=-1,
        )
    initializer = tf.lookup.TextFileInitializer(
        path,
        tf.string,
        tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64,
        tf.lookup.TextFileIndex.LINE_NUMBER,
    )
    return tf.lookup.StaticHashTable(initializer, default_value=-1)


class DataJobVocabularies(tf.Module):
    """Raw strings -> ids with the data job's vocabulary files (vocab/, line k = id k + 1).

    The id source of models trained on the data job's id examples (`unisar_tf.train`);
    the TFX pipeline's models use the Transform graph instead (unisar_tf.data.transform).
    """

    example_dtype = tf.int64  # what serving_default's examples carry in id features

    def __init__(self, vocab_dir: str, name: str = "data_job_vocabularies"):
        super().__init__(name=name)
        for filename in VOCAB_FILES.values():
            path = os.path.join(vocab_dir, filename)
            if not tf.io.gfile.exists(path):
                raise FileNotFoundError(f"vocabulary {path} not found (written by the data job)")
        self.vocab_dir = vocab_dir  # a plain string: not tracked, not needed by a SavedModel
        self.tables = {
            kind: vocabulary_table(os.path.join(vocab_dir, filename))
            for kind, filename in VOCAB_FILES.items()
        }

    def vocabularies(self) -> Dict[str, "np.ndarray"]:
        """kind -> (size + 1,) object array of strings, index = id; index 0 is ""."""
        return read_vocabularies(self.vocab_dir)

    def lookup(self, kind: str, strings: tf.Tensor) -> tf.Tensor:
        """Strings of any shape -> int64 ids of the same shape (0 = unknown or "")."""
        return self.tables[kind].lookup(strings) + 1

    def lookup_together(
        self, strings: Mapping[str, Sequence[tf.Tensor]]
    ) -> Dict[str, List[tf.Tensor]]:
        """{kind: [strings of any shape]} -> {kind: [int64 ids, same shapes]} (the interface
        of TransformIds.lookup_together; a hash table lookup per tensor costs little here)."""
        return {kind: [self.lookup(kind, t) for t in tensors] for kind, tensors in strings.items()}

    @staticmethod
    def example_ids(features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        return features  # the data job's examples already hold ids


def read_vocabularies(vocab_dir: str) -> Dict[str, "np.ndarray"]:
    """kind -> (vocab size + 1,) object array of strings; index = id, index 0 is ""."""
    vocabularies = {}
    for kind, filename in VOCAB_FILES.items():
        with tf.io.gfile.GFile(os.path.join(vocab_dir, filename)) as handle:
            words = [line.rstrip("\n") for line in handle]
        vocabularies[kind] = np.array([""] + words, dtype=object)
    return vocabularies
