"""The training split's item co-occurrence table, for the model's ItemCooccurrence layer.

Counted exactly as the ItemKNN baseline counts (`item_cooccurrence`, also what
unisar_tf.train.baselines ranks with):
every training example (rec and search) adds 1 to cooc(h, p) and to cooc(p, h) for each
distinct history item h and its positive p. Only the training split is read, so validation
and test positives never leak into the table.

The transition table is directed and first-order: each training example adds 1 to
trans(last, p), `last` being its most recent history behaviour's item (a rec item, or a
search session's first click) and p its positive.

Where the Trainer gets them (tables_for_training): from the data job's artifact when the data
has one (pipeline/cooccurrence_tables.py counts them in Beam and keeps each item's top K
neighbours, `load_artifact_tables`, O(items x K)); for an older build without it, from
training_tables, which reads the whole training split into memory. The rules themselves
(NumPy only, shared with the job's workers) are in unisar_tf.data.cooccurrence_counts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Dict, Iterable, Optional, Tuple

import numpy as np
import scipy.sparse as sp

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
)
from feature_specs.data_spec import DataSpec
from feature_specs.layout import VOCAB_DIR
from unisar_tf.data import reader
from unisar_tf.data.cooccurrence_counts import (  # noqa: F401 (callers import them here)
    PAIRS,
    TABLE_NAMES,
    TABLES_DIR,
    TRANSITIONS,
    artifact_files,
    history_items,
    last_history_items,
    pair_counts,
    top_k_pairs,
    transition_counts,
)

LOG = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ building blocks
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


def _read_npy(path: str, ndim: int) -> np.ndarray:
    import io

    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path, "rb") as handle:
            array = np.load(io.BytesIO(handle.read()), allow_pickle=False)
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise ValueError(f"{path}: cannot read the co-occurrence table: {error}") from None
    if array.dtype != np.int64 or array.ndim != ndim or (ndim == 2 and array.shape[1] != 3):
        want = "(P, 3)" if ndim == 2 else "(items + 1,)"
        raise ValueError(f"{path}: expected {want} int64, got {array.shape} {array.dtype}")
    return array


def _artifact_table(
    data_dir: str, files, name: str, num_items: int, id_map: Optional[np.ndarray]
) -> CooccurrenceTable:
    rows_path = os.path.join(data_dir, files[name])
    totals_path = os.path.join(data_dir, files[f"{name}_totals"])
    rows, totals = _read_npy(rows_path, 2), _read_npy(totals_path, 1)
    left, right, count = rows[:, 0], rows[:, 1], rows[:, 2]
    ids = rows[:, :2]
    if len(rows) and (ids.min() < 1 or ids.max() >= len(totals)):
        raise ValueError(f"{rows_path}: item ids outside 1..{len(totals) - 1} ({totals_path})")
    if id_map is not None:  # data job ids -> Transform ids (0: Transform lacks the item)
        if len(id_map) < len(totals):
            raise ValueError(
                f"{totals_path}: {len(totals) - 1} items, the vocabulary maps {len(id_map) - 1}"
            )
        lacking = int(np.count_nonzero((id_map[: len(totals)] == 0)[1:] & (totals[1:] > 0)))
        if lacking:
            LOG.warning(
                "%s: %d counted items are not in the Transform vocabulary; their pairs are "
                "left out",
                totals_path,
                lacking,
            )
        left, right = id_map[left], id_map[right]
        keep = (left > 0) & (right > 0)
        left, right, count = left[keep], right[keep], count[keep]
        mapped = np.zeros(num_items, np.int64)
        known = id_map[: len(totals)] > 0
        np.add.at(mapped, id_map[: len(totals)][known], totals[known])
        totals = mapped
    if len(totals) != num_items or (len(left) and max(left.max(), right.max()) >= num_items):
        raise ValueError(
            f"{totals_path}: {len(totals)} item rows, the model has {num_items} "
            "(is the manifest from the same build?)"
        )
    keys = left * num_items + right
    order = np.argsort(keys, kind="stable")
    return CooccurrenceTable(
        keys[order], count[order].astype(np.float32), totals.astype(np.float32)
    )


def load_artifact_tables(
    data_dir: str, spec: DataSpec, num_items: int, id_map: Optional[np.ndarray] = None
):
    """(co-occurrence, transitions) CooccurrenceTable from the data job's artifact, in the
    model's ids: the job's, or with `id_map` ((job items + 1,) int64, job id -> Transform
    id, unisar_tf.data.transform.data_job_id_maps) Transform's. O(pairs + items)."""
    if spec.cooccurrence is None:
        raise ValueError(f"{data_dir}: the manifest names no co-occurrence tables")
    files = spec.cooccurrence.files
    for key in artifact_files():
        if key not in files:
            raise ValueError(f"{data_dir}: the manifest's cooccurrence.files has no {key!r}")
    return tuple(_artifact_table(data_dir, files, name, num_items, id_map) for name in TABLE_NAMES)


def tables_for_training(
    data_dir: str, spec: DataSpec, num_items: int, tasks=("rec", "search")
) -> Tuple[CooccurrenceTable, CooccurrenceTable, Optional[str]]:
    """(co-occurrence, transitions, note): the data job's artifact when the data has one and
    it counts what `tasks` would (it counts every scenario's training examples); otherwise
    training_tables (the whole training split read into memory) and a note saying why."""
    if spec.cooccurrence is None:
        note = (
            f"{data_dir} has no co-occurrence artifact (built before the data job counted "
            "it): counting the tables on the whole training split in memory"
        )
    elif set(spec.tasks_with_examples("train", tasks)) != set(
        spec.tasks_with_examples("train", ("rec", "search"))
    ):
        note = (
            f"the data job's co-occurrence tables count every scenario, this run trains "
            f"{', '.join(tasks)}: counting the tables on its training split in memory"
        )
    else:
        id_map = None
        if spec.transform_dir:  # raw-id examples: the model reads Transform's ids
            from unisar_tf.data.transform import data_job_id_maps

            id_map = data_job_id_maps(os.path.join(data_dir, VOCAB_DIR), spec.transform_dir)[
                "items"
            ]
        return (*load_artifact_tables(data_dir, spec, num_items, id_map), None)
    return (*training_tables(data_dir, spec, num_items, tasks), note)
