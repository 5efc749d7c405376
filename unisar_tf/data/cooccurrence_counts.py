"""Co-occurrence counting rules in NumPy alone, shared by the Trainer and the data job.

The data job's Beam workers import this module (pipeline/cooccurrence_tables.py) without
TensorFlow; unisar_tf.data.cooccurrence (the Trainer's side) re-exports the history helpers.
The rules are that module's: symmetric pairs (1 to (h, p) and to (p, h) per distinct history
item h and positive p of a training example) and directed transitions (last history item ->
positive).
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from feature_specs import (
    HISTORY_TYPES,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    TYPE_REC,
)


def history_items(features: Dict[str, np.ndarray]) -> np.ndarray:
    """(N, rec_len + search_len * clicks) item ids of each example's history, 0 = padding:
    `rec_history_items` followed by the flattened `search_history_clicked_items`."""
    rec = np.asarray(features[REC_HISTORY_ITEMS]).reshape(len(features[REC_HISTORY_ITEMS]), -1)
    clicked = np.asarray(features[SEARCH_HISTORY_CLICKED_ITEMS]).reshape(len(rec), -1)
    return np.concatenate([rec, clicked], axis=1)


def last_history_items(features) -> np.ndarray:
    """(N,) the item of each example's most recent behaviour (0 without history): the last
    real slot of history_types, a rec item or a search session's first click."""
    types = np.asarray(features[HISTORY_TYPES])
    rec = np.asarray(features[REC_HISTORY_ITEMS])
    clicks = np.asarray(features[SEARCH_HISTORY_CLICKED_ITEMS])
    clicks = clicks.reshape(len(clicks), -1, clicks.shape[-1] if clicks.ndim == 3 else 1)[..., 0]
    length = np.count_nonzero(types, axis=1)
    rows = np.arange(len(types))
    last_type = types[rows, np.maximum(length - 1, 0)]
    rec_count = np.count_nonzero(types == TYPE_REC, axis=1)
    search_count = length - rec_count
    last = np.where(
        last_type == TYPE_REC,
        rec[rows, np.maximum(rec_count - 1, 0)],
        clicks[rows, np.maximum(search_count - 1, 0)],
    )
    return np.where(length > 0, last, 0)


# ------------------------------------------------------- counted in batches (the data job)
def _unique_pairs(left: np.ndarray, right: np.ndarray):
    """(left, right, count) (P,) int64 each, sorted by (left, right): how often each
    (left[i], right[i]) occurs."""
    left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
    if not len(left):
        return left, right, np.zeros(0, np.int64)
    width = int(max(left.max(), right.max())) + 1
    keys, counts = np.unique(left * width + right, return_counts=True)
    return keys // width, keys % width, counts.astype(np.int64)


def pair_counts(histories: np.ndarray, positives: np.ndarray):
    """item_cooccurrence's counts of one batch as (left, right, count), (P,) int64 each,
    sorted by (left, right): 1 to (h, p) and 1 to (p, h) per distinct nonzero h of
    histories[i] (N, L) and positives[i] (N,) (an item that is its own positive adds 2)."""
    positives = np.asarray(positives, np.int64).reshape(-1)
    history = np.sort(np.asarray(histories, np.int64).reshape(len(positives), -1), axis=1)
    distinct = np.ones(history.shape, bool)
    distinct[:, 1:] = history[:, 1:] != history[:, :-1]
    keep = distinct & (history != 0) & (positives[:, None] != 0)
    h = history[keep]
    p = np.broadcast_to(positives[:, None], history.shape)[keep]
    return _unique_pairs(np.concatenate([h, p]), np.concatenate([p, h]))


def transition_counts(lasts: np.ndarray, positives: np.ndarray):
    """_transitions_of's counts of one batch as (left, right, count): 1 to (last, p) per
    example whose last history item (N,) is not 0."""
    lasts = np.asarray(lasts, np.int64).reshape(-1)
    positives = np.asarray(positives, np.int64).reshape(-1)
    keep = lasts > 0
    return _unique_pairs(lasts[keep], positives[keep])


def top_k_pairs(left: np.ndarray, right: np.ndarray, count: np.ndarray, top_k: int):
    """The pairs (P,) whose count is among the `top_k` largest of their left item (ties: the
    smaller right id first); top_k 0 keeps all. Returned sorted by (left, right)."""
    left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
    count = np.asarray(count, np.int64)
    if top_k > 0 and len(left):
        order = np.lexsort((right, -count, left))  # by left, then count down, then right
        left, right, count = left[order], right[order], count[order]
        starts = np.flatnonzero(np.r_[True, left[1:] != left[:-1]])
        rank = np.arange(len(left)) - np.repeat(starts, np.diff(np.r_[starts, len(left)]))
        keep = rank < top_k
        left, right, count = left[keep], right[keep], count[keep]
    order = np.lexsort((right, left))
    return left[order], right[order], count[order]


# ------------------------------------------------------------------- the data job's artifact
# The data job writes both tables beside the splits (pipeline/cooccurrence_tables.py), named
# in the manifest's `cooccurrence` block (feature_specs.data_spec.CooccurrenceTables):
#   <name>.npy         (P, 3) int64 rows (left, right, count), sorted, the top K per left item
#   <name>_totals.npy  (job items + 1,) int64: each item's full row sum (before pruning)
# Ids are the data job's (vocab/items.txt) in both id formats; raw-id data is mapped to
# Transform's ids when loaded (load_artifact_tables).
TABLES_DIR = "cooccurrence"
PAIRS = "pairs"
TRANSITIONS = "transitions"
TABLE_NAMES = (PAIRS, TRANSITIONS)


def artifact_files() -> Dict[str, str]:
    """{file key: path relative to the data folder} of the artifact."""
    files = {}
    for name in TABLE_NAMES:
        files[name] = f"{TABLES_DIR}/{name}.npy"
        files[f"{name}_totals"] = f"{TABLES_DIR}/{name}_totals.npy"
    return files
