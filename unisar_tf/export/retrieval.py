"""The retrieval index in an export: `<export>/assets.extra/retrieval/` (RETRIEVAL_DIR).

    export_serving_model(model, ..., extra_writers=[retrieval_writer(data_dir)])

The index (unisar_tf.data.retrieval_index) is counted from data_dir's training split, in
either id format (the data job's ids or the pipeline's raw strings), over the export's own
item catalogue (`assets.extra/online/items.txt`, the items the ranker knows), so retrieval
never proposes an item the ranker cannot score. It holds raw item ids: the service needs no
id mapping. Building it reads the training split once (Beauty: about 10 s on 2 cores).
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import tensorflow as tf

from unisar_tf.data.retrieval_index import (RETRIEVAL_DIR, RetrievalParams, build_index,
                                            catalogue_from_vocab, read_sequences)
from unisar_tf.export.push import ONLINE_DIR, ONLINE_ITEMS_FILE


def export_catalogue(export_dir: str, data_dir: str) -> np.ndarray:
    """(N + 1,) object array, [0] = "": the export's item vocabulary, or (an export without
    assets.extra/online) the data job's vocab/."""
    path = os.path.join(export_dir, ONLINE_DIR, ONLINE_ITEMS_FILE)
    if not tf.io.gfile.exists(path):
        return catalogue_from_vocab(data_dir)
    with tf.io.gfile.GFile(path) as handle:
        return np.array([""] + [line.rstrip("\n") for line in handle], dtype=object)


def write_retrieval_index(export_dir: str, data_dir: str,
                          params: RetrievalParams = RetrievalParams()) -> str:
    """Build the index of data_dir's training split into export_dir; returns its folder."""
    catalogue = export_catalogue(export_dir, data_dir)
    index = build_index(read_sequences(data_dir, "train", catalogue), catalogue, params)
    directory = os.path.join(export_dir, RETRIEVAL_DIR)
    index.write(directory)
    return directory


def retrieval_writer(data_dir: str, params: RetrievalParams = RetrievalParams()
                     ) -> Callable[[str], None]:
    """An `extra_writers` entry of export_serving_model / push."""
    def write(export_dir: str) -> None:
        write_retrieval_index(export_dir, data_dir, params)
    return write
