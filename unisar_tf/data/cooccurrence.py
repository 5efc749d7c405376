"""The training split's item co-occurrence table, for the model's ItemCooccurrence layer.

Counted exactly as the ItemKNN baseline counts (`item_cooccurrence`, also what
unisar_tf.train.baselines ranks with):
every training example (rec and search) adds 1 to cooc(h, p) and to cooc(p, h) for each
distinct history item h and its positive p. Only the training split is read, so validation
and test positives never leak into the table.

The transition table is directed and first-order: each training example adds 1 to
trans(last, p), `last` being its most recent history behaviour's item (a rec item, or a
search session's first click) and p its positive.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable

import numpy as np
import scipy.sparse as sp

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    TYPE_REC,
)
from feature_specs.data_spec import DataSpec
from unisar_tf.data import reader


# ------------------------------------------------------------------------------ building blocks
def history_items(features: Dict[str, np.ndarray]) -> np.ndarray:
    """(N, rec_len + search_len * clicks) item ids of each example's history, 0 = padding:
    `rec_history_items` followed by the flattened `search_history_clicked_items`."""
    rec = np.asarray(features[REC_HISTORY_ITEMS]).reshape(len(features[REC_HISTORY_ITEMS]), -1)
    clicked = np.asarray(features[SEARCH_HISTORY_CLICKED_ITEMS]).reshape(len(rec), -1)
    return np.concatenate([rec, clicked], axis=1)


def id_sets(ids: np.ndarray, size: int) -> sp.csr_matrix:
    """(N, L) ids (0 = padding) -> (N, size) binary CSR: row i has a 1 at each distinct
    nonzero id of ids[i]."""
    ids = np.asarray(ids, np.int64)
    ids = ids.reshape(len(ids), -1)
    if ids.size and (ids.min() < 0 or ids.max() >= size):
        raise ValueError(f"ids must lie in 0..{size - 1}, got {ids.min()}..{ids.max()}")
    rows = np.repeat(np.arange(len(ids)), ids.shape[1])
    cols = ids.reshape(-1)
    keep = cols != 0
    matrix = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float64), (rows[keep], cols[keep])), shape=(len(ids), size)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # distinct: an id repeated in a row counts once
    return matrix


def item_cooccurrence(
    histories: np.ndarray, positives: np.ndarray, num_items: int
) -> sp.csr_matrix:
    """Symmetric (num_items, num_items) co-occurrence counts of training examples: each
    example adds 1 to [h, p] and 1 to [p, h] for each distinct history item h (nonzero) of
    `histories` (N, L) and its positive p (`positives` (N,))."""
    positives = np.asarray(positives, np.int64).reshape(-1)
    history = id_sets(histories, num_items)
    positive = id_sets(positives[:, None], num_items)
    counts = (history.T @ positive).tocsr()
    return (counts + counts.T).tocsr()


# ---------------------------------------------------------------------------------- reading
def read_split(
    data_dir: str, split: str, task: str, manifest: dict | DataSpec, features: Iterable[str]
) -> Dict[str, np.ndarray]:
    """Some features of a whole split, rows in `reader.read_examples(..., shuffle=False)` order
    (the order the model's scores come in); raw-id examples are mapped through the manifest's
    Transform graph there."""
    features = tuple(features)
    parts: Dict[str, list] = {name: [] for name in features}
    for batch in reader.read_examples(
        data_dir, split, task, batch_size=4096, manifest=manifest, shuffle=False
    ):
        for name in features:
            parts[name].append(batch[name].numpy())
    if not parts[features[0]]:
        raise ValueError(f"{data_dir}: split {split}/{task} has no examples")
    return {name: np.concatenate(values) for name, values in parts.items()}


@dataclasses.dataclass
class CooccurrenceTable:
    """pair_keys (P,) int64 sorted (left * num_items + right), pair_counts (P,) float32,
    item_totals (num_items,) float32."""

    pair_keys: np.ndarray
    pair_counts: np.ndarray
    item_totals: np.ndarray

    @property
    def num_pairs(self) -> int:
        return int(len(self.pair_keys))


def table_from_counts(counts, num_items: int) -> CooccurrenceTable:
    """A (num_items, num_items) scipy sparse count matrix -> the layer's sorted arrays."""
    coo = counts.tocoo()
    keys = coo.row.astype(np.int64) * num_items + coo.col.astype(np.int64)
    order = np.argsort(keys)
    totals = np.asarray(counts.sum(axis=1)).reshape(-1).astype(np.float32)
    return CooccurrenceTable(keys[order], coo.data[order].astype(np.float32), totals)


def _empty_table(num_items: int) -> CooccurrenceTable:
    return table_from_counts(sp.csr_matrix((num_items, num_items)), num_items)


def _training_splits(data_dir: str, manifest: dict | DataSpec, tasks) -> list:
    """The history and candidate features of each task's training split that has examples."""
    return [
        read_split(
            data_dir,
            "train",
            task,
            manifest,
            (HISTORY_TYPES, REC_HISTORY_ITEMS, SEARCH_HISTORY_CLICKED_ITEMS, CANDIDATE_ITEMS),
        )
        for task in reader.tasks_with_examples(manifest, "train", tasks)
    ]


def training_cooccurrence(
    data_dir: str, manifest: dict | DataSpec, num_items: int, tasks=("rec", "search")
) -> CooccurrenceTable:
    """The table of the training split's examples of `tasks` (ids as the model reads them);
    a task without training examples (a single-scenario log) adds nothing."""
    return _cooccurrence_of(_training_splits(data_dir, manifest, tasks), num_items)


def _cooccurrence_of(splits: list, num_items: int) -> CooccurrenceTable:
    if not splits:
        return _empty_table(num_items)
    histories = [history_items(train) for train in splits]
    positives = [train[CANDIDATE_ITEMS][:, 0] for train in splits]
    width = max(h.shape[1] for h in histories)
    histories = np.concatenate([np.pad(h, ((0, 0), (0, width - h.shape[1]))) for h in histories])
    return table_from_counts(
        item_cooccurrence(histories, np.concatenate(positives), num_items), num_items
    )


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


def training_transitions(
    data_dir: str, manifest: dict | DataSpec, num_items: int, tasks=("rec", "search")
) -> CooccurrenceTable:
    """Directed (last history item -> positive) counts of the training split's examples."""
    return _transitions_of(_training_splits(data_dir, manifest, tasks), num_items)


def _transitions_of(splits: list, num_items: int) -> CooccurrenceTable:
    if not splits:
        return _empty_table(num_items)
    lasts = [last_history_items(train) for train in splits]
    positives = [train[CANDIDATE_ITEMS][:, 0] for train in splits]
    last, positive = np.concatenate(lasts), np.concatenate(positives)
    keep = last > 0
    counts = sp.csr_matrix(
        (np.ones(int(keep.sum())), (last[keep], positive[keep])), shape=(num_items, num_items)
    )
    counts.sum_duplicates()
    return table_from_counts(counts, num_items)


def training_tables(
    data_dir: str, manifest: dict | DataSpec, num_items: int, tasks=("rec", "search")
):
    """(co-occurrence, transitions) tables from one read of the training split."""
    splits = _training_splits(data_dir, manifest, tasks)
    return _cooccurrence_of(splits, num_items), _transitions_of(splits, num_items)
