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

from unisar_tf.data.retrieval_index import (
    METHOD_COOCCURRENCE,
    METHOD_TWO_TOWER,
    RETRIEVAL_DIR,
    RetrievalParams,
    TwoTowerParams,
    build_index,
    catalogue_from_vocab,
    read_sequences,
)
from unisar_tf.export.push import ONLINE_DIR, ONLINE_ITEMS_FILE

METHODS = (METHOD_COOCCURRENCE, METHOD_TWO_TOWER)
# What ships: the method with the higher validation Recall@100 (docs/online.md#retrieval).
DEFAULT_METHOD = METHOD_TWO_TOWER


def export_catalogue(export_dir: str, data_dir: str) -> np.ndarray:
    """(N + 1,) object array, [0] = "": the export's item vocabulary, or (an export without
    assets.extra/online) the data job's vocab/."""
    path = os.path.join(export_dir, ONLINE_DIR, ONLINE_ITEMS_FILE)
    if not tf.io.gfile.exists(path):
        return catalogue_from_vocab(data_dir)
    with tf.io.gfile.GFile(path) as handle:
        return np.array([""] + [line.rstrip("\n") for line in handle], dtype=object)


def write_retrieval_index(
    export_dir: str, data_dir: str, method: str = DEFAULT_METHOD, params=None, seed: int = 0
) -> str:
    """Build the index of data_dir's training split into export_dir; returns its folder.

    method: "cooccurrence" (params: RetrievalParams) or "two_tower" (TwoTowerParams; trains
    the model, about a minute on Beauty on 2 cores)."""
    if method not in METHODS:
        raise ValueError(f"retrieval method must be one of {METHODS}, got {method!r}")
    catalogue = export_catalogue(export_dir, data_dir)
    sequences = read_sequences(data_dir, "train", catalogue)
    if method == METHOD_TWO_TOWER:
        from unisar_tf.train.two_tower import train_two_tower  # TFRS only when it trains

        index = train_two_tower(sequences, catalogue, params or TwoTowerParams(), seed)
    else:
        index = build_index(sequences, catalogue, params or RetrievalParams())
    directory = os.path.join(export_dir, RETRIEVAL_DIR)
    index.write(directory)
    return directory


def retrieval_writer(
    data_dir: str, method: str = DEFAULT_METHOD, params=None, seed: int = 0
) -> Callable[[str], None]:
    """An `extra_writers` entry of export_serving_model / push."""

    def write(export_dir: str) -> None:
        write_retrieval_index(export_dir, data_dir, method, params, seed)

    return write
