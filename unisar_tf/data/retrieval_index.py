"""Retrieval indexes: candidates from the whole catalogue when a request brings none.

Two methods, both from the **training split only** (rec and search examples), so validation
and test positives never reach them; both rank a user's catalogue by (score desc, popularity
desc, catalogue row asc), the user's items and `exclude` left out, and rank a user without a
known item by popularity alone (cold start):

- `TwoTowerIndex` (method "two_tower", what ships): the weights of the TFRS two-tower model
  trained by unisar_tf.train.two_tower, scored with numpy (class docstring);
- `RetrievalIndex` (method "cooccurrence"): neighbour tables, counted as below.

A user's **recent items**: the items of the history behaviours in time order, most recent
first, distinct (a repeat keeps its latest place): a rec behaviour's item, a search session's
clicked items (up to `clicks_per_session`, in click order). Offline they come from an
example's features (`recent_items`), online from the history store's events
(serving/retrieval.py, the data job's rules in unisar_tf.data.example_rules).

The co-occurrence index counts, as the ItemKNN baseline does
(unisar_tf/data/cooccurrence.py):

- **transitions** (directed): each training example adds `transition_decay ** d` to
  trans(h_d, p) for its recent items h_0 (the latest), ..., h_{W-1} (W =
  `transition_window`) and its positive p; rows are normalised to sum to 1
  (P(next = c | h));
- **co-occurrence** (symmetric, ItemKNN's counts): each training example adds 1 to
  cooc(h, p) and cooc(p, h) for every distinct history item h; the weight is
  cooc(h, c) / sqrt(n(h) n(c)), n(x) = sum over y of cooc(x, y);
- **popularity** (both methods): how often an item is a training positive; it orders items
  without a score (cold start, back-fill) and breaks ties.

Each table keeps its top `neighbours` items per item (the item itself left out). A user's
items are scored by

    score(c) = sum over j < recent_items of recency_decay ** j
               * (transition_weight * T[h_j, c] + (1 - transition_weight) * C[h_j, c]).

On disk (`write` / `read_index`, numpy .npy and JSON, no pickle), under the export's
`assets.extra/retrieval/` (RETRIEVAL_DIR): `index.json` (format, method, parameters,
counts), `items.json` (the catalogue's raw item ids; row r of every array is items[r]),
`popularity.npy` (N,) float32, then per method: `{transition,cooccurrence}_neighbours.npy`
(N, K) int32 (rows, -1 = none) and `{transition,cooccurrence}_weights.npy` (N, K) float32,
or `{item,history}_vectors.npy` (N, dim), `kernel.npy`, `bias.npy` float32. In memory ids
are 1-based (0 = padding), as the data job's: row r on disk is id r + 1.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    TYPE_REC,
    TYPE_SEARCH,
)
from feature_specs.data_spec import DataSpec
from feature_specs.layout import MANIFEST_FILE, VOCAB_DIR, VOCAB_FILES
from feature_specs.serving import RETRIEVAL_DIR  # noqa: E402,F401 (where exports keep it)

FORMAT_VERSION = 1
METHOD_COOCCURRENCE = "cooccurrence"
METHOD_TWO_TOWER = "two_tower"
INDEX_FILE = "index.json"
ITEMS_FILE = "items.json"
POPULARITY_FILE = "popularity.npy"
TABLES = ("transition", "cooccurrence")


@dataclasses.dataclass(frozen=True)
class RetrievalParams:
    """How the index is built (neighbours, transition_*) and how it scores (the rest).

    The defaults are the values chosen on Beauty's and Sports' validation splits
    (docs/online.md#retrieval)."""

    neighbours: int = 100  # K kept per item and table
    transition_window: int = 5  # W: recent items counted as predecessors of a positive
    transition_decay: float = 0.75  # weight of the d-th latest predecessor: decay ** d
    recent_items: int = 10  # history items a user is scored from
    recency_decay: float = 0.7  # weight of the j-th latest of them: decay ** j
    transition_weight: float = 0.75  # mix of the two tables (1 - it for co-occurrence)

    def replace(self, **changes) -> "RetrievalParams":
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------ the training split
@dataclasses.dataclass
class Sequences:
    """Examples as retrieval sees them: recent (N, L) int64 ids, most recent first, distinct,
    0-padded; positives (N,) int64 (0 = not in the catalogue); tasks (N,) "rec"/"search";
    clicks_per_session: the search clicks per session the histories keep (the data's)."""

    recent: np.ndarray
    positives: np.ndarray
    tasks: np.ndarray
    clicks_per_session: int = 1


def recent_items(
    types: np.ndarray, rec_items: np.ndarray, clicked: np.ndarray, max_items: Optional[int] = None
) -> np.ndarray:
    """(N, L) int64: the history's items, most recent first, distinct, 0-padded; L =
    max_items, or (rec_len + search_len) * clicks_per_session (every slot's room) if None.

    types (N, rec_len + search_len) history_types; rec_items (N, rec_len); clicked
    (N, search_len, clicks_per_session) (or (N, search_len)). The i-th TYPE_REC slot is
    rec_items[i], the j-th TYPE_SEARCH slot session j (feature_specs.example_schema)."""
    types = np.asarray(types)
    rows = len(types)
    rec_items = np.asarray(rec_items, np.int64).reshape(rows, -1)
    clicked = np.asarray(clicked, np.int64).reshape(rows, types.shape[1] - rec_items.shape[1], -1)
    width = clicked.shape[2]
    # Slot k of the merged sequence as `width` items: a rec item then zeros, or the clicks.
    rec_index = np.clip(np.cumsum(types == TYPE_REC, axis=1) - 1, 0, None)
    search_index = np.clip(np.cumsum(types == TYPE_SEARCH, axis=1) - 1, 0, None)
    row = np.arange(rows)[:, None]
    merged = np.zeros(types.shape + (width,), np.int64)
    merged[..., 0] = np.where(types == TYPE_REC, rec_items[row, rec_index], 0)
    merged = np.where((types == TYPE_SEARCH)[..., None], clicked[row, search_index], merged)
    # Latest first: reverse the slots, keep each session's clicks in click order.
    flat = merged[:, ::-1, :].reshape(rows, -1)
    # Distinct, first (latest) occurrence kept: sort each row by (item, position), zero the
    # repeats, then move the nonzero items to the front in their order.
    order = np.lexsort((np.broadcast_to(np.arange(flat.shape[1]), flat.shape), flat), axis=1)
    by_item = np.take_along_axis(flat, order, axis=1)
    repeat = np.zeros_like(by_item, dtype=bool)
    repeat[:, 1:] = by_item[:, 1:] == by_item[:, :-1]
    np.put_along_axis(flat, order, np.where(repeat, 0, by_item), axis=1)
    front = np.argsort(flat == 0, axis=1, kind="stable")
    flat = np.take_along_axis(flat, front, axis=1)
    if max_items is None:
        return flat
    out = np.zeros((rows, max_items), np.int64)
    out[:, : min(max_items, flat.shape[1])] = flat[:, :max_items]
    return out


def catalogue_from_vocab(data_dir: str) -> np.ndarray:
    """(V + 1,) object array of the data job's item ids, index = id, [0] = ""."""
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(data_dir, VOCAB_DIR, VOCAB_FILES["items"])) as handle:
        return np.array([""] + [line.rstrip("\n") for line in handle], dtype=object)


def _data_spec(data_dir: str) -> DataSpec:
    import tensorflow as tf

    path = os.path.join(data_dir, MANIFEST_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} not found: build the examples first " "(python -m pipeline.build_examples ...)"
        )
    with tf.io.gfile.GFile(path) as handle:
        return DataSpec.from_manifest(json.load(handle), path)


def read_sequences(
    data_dir: str,
    split: str,
    catalogue: np.ndarray,
    max_items: Optional[int] = None,
    tasks: Sequence[str] = ("rec", "search"),
) -> Sequences:
    """A split's examples (both scenarios, rec first, file order) with ids of `catalogue`
    ((V + 1,) strings, [0] = ""; strings it lacks become 0).

    Reads the data job's files in either id format: ids go through the data's vocab/ to
    strings, raw-id examples are strings already; so the index needs neither the model nor
    a Transform graph."""
    import tensorflow as tf

    from unisar_tf.data import reader

    data = _data_spec(data_dir)
    shapes = data.shapes
    raw = not data.id_format_is_ids
    dtype = tf.string if raw else tf.int64
    candidates = data.candidates.train if split == "train" else data.candidates.eval
    spec = {
        HISTORY_TYPES: tf.io.FixedLenFeature((shapes.mixed_len,), tf.int64),
        REC_HISTORY_ITEMS: tf.io.FixedLenFeature((shapes.rec_len,), dtype),
        SEARCH_HISTORY_CLICKED_ITEMS: tf.io.FixedLenFeature(
            (shapes.search_len, shapes.clicks_per_session), dtype
        ),
        CANDIDATE_ITEMS: tf.io.FixedLenFeature((candidates,), dtype),
    }
    lookup = {item: index for index, item in enumerate(catalogue) if index}
    if not raw:  # the data's id -> the catalogue's id, through the strings
        to_catalogue = np.array(
            [
                lookup.get(item, 0) if index else 0
                for index, item in enumerate(catalogue_from_vocab(data_dir))
            ],
            np.int64,
        )

    def ids(values: np.ndarray) -> np.ndarray:
        if not raw:
            return to_catalogue[values]
        unique, inverse = np.unique(values.reshape(-1), return_inverse=True)
        mapped = np.array([lookup.get(value.decode("utf-8"), 0) for value in unique], np.int64)
        return mapped[inverse].reshape(values.shape)

    parts: List[Sequences] = []
    for task in data.tasks_with_examples(split, tasks):
        dataset = (
            tf.data.TFRecordDataset(
                reader.example_files(data_dir, split, task), compression_type="GZIP"
            )
            .batch(8192)
            .map(
                lambda records: tf.io.parse_example(records, spec),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        )
        for batch in dataset:
            batch = {name: value.numpy() for name, value in batch.items()}
            recent = recent_items(
                batch[HISTORY_TYPES],
                ids(batch[REC_HISTORY_ITEMS]),
                ids(batch[SEARCH_HISTORY_CLICKED_ITEMS]),
                max_items,
            )
            positives = ids(batch[CANDIDATE_ITEMS][:, :1])[:, 0]
            parts.append(Sequences(recent, positives, np.full(len(recent), task)))
    if not parts:
        raise ValueError(f"{data_dir}: split {split} has no examples")
    return Sequences(
        np.concatenate([p.recent for p in parts]),
        np.concatenate([p.positives for p in parts]),
        np.concatenate([p.tasks for p in parts]),
        shapes.clicks_per_session,
    )


# ---------------------------------------------------------------------------------- counting
def transition_counts(
    recent: np.ndarray, positives: np.ndarray, num_ids: int, window: int, decay: float
) -> sp.csr_matrix:
    """(num_ids, num_ids): [h, p] = sum over examples of decay ** d where h is the example's
    d-th latest recent item (d < window) and p its positive (0 ids skipped)."""
    recent = np.asarray(recent, np.int64)[:, :window]
    positives = np.asarray(positives, np.int64)
    rows, cols, values = [], [], []
    for d in range(recent.shape[1]):
        keep = (recent[:, d] > 0) & (positives > 0)
        rows.append(recent[keep, d])
        cols.append(positives[keep])
        values.append(np.full(int(keep.sum()), decay**d))
    counts = sp.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
        shape=(num_ids, num_ids),
    )
    counts.sum_duplicates()
    return counts


def cooccurrence_counts(recent: np.ndarray, positives: np.ndarray, num_ids: int) -> sp.csr_matrix:
    """ItemKNN's symmetric counts (unisar_tf.data.cooccurrence.item_cooccurrence) over the
    examples' distinct history items; positives 0 (not in the catalogue) add nothing."""
    from unisar_tf.data.cooccurrence import item_cooccurrence

    positives = np.asarray(positives, np.int64)
    keep = positives > 0
    return item_cooccurrence(np.asarray(recent)[keep], positives[keep], num_ids)


def row_normalized(counts: sp.spmatrix) -> sp.csr_matrix:
    """Each row divided by its sum (rows summing to 0 stay 0)."""
    totals = np.asarray(counts.sum(axis=1)).reshape(-1)
    inverse = np.zeros_like(totals, dtype=np.float64)
    inverse[totals > 0] = 1.0 / totals[totals > 0]
    return (sp.diags(inverse) @ sp.csr_matrix(counts, dtype=np.float64)).tocsr()


def cosine_normalized(counts: sp.spmatrix) -> sp.csr_matrix:
    """cooc(x, y) / sqrt(n(x) n(y)), n(x) the row sums (0 where n is 0): ItemKNN's weights."""
    totals = np.asarray(counts.sum(axis=1)).reshape(-1)
    inverse_root = np.zeros_like(totals, dtype=np.float64)
    inverse_root[totals > 0] = 1.0 / np.sqrt(totals[totals > 0])
    scale = sp.diags(inverse_root)
    return (scale @ sp.csr_matrix(counts, dtype=np.float64) @ scale).tocsr()


def top_neighbours(weights: sp.spmatrix, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """((num_ids, k) int64 ids, 0 = none; (num_ids, k) float32): each row's k largest
    positive weights, the diagonal left out, ties by the smaller id."""
    weights = sp.csr_matrix(weights)
    weights = (weights - sp.diags(weights.diagonal())).tocsr()
    weights.eliminate_zeros()
    ids = np.zeros((weights.shape[0], k), np.int64)
    values = np.zeros((weights.shape[0], k), np.float32)
    for row in range(weights.shape[0]):
        start, end = weights.indptr[row], weights.indptr[row + 1]
        if start == end:
            continue
        cols, data = weights.indices[start:end], weights.data[start:end]
        order = np.lexsort((cols, -data))[:k]
        ids[row, : len(order)] = cols[order]
        values[row, : len(order)] = data[order]
    return ids, values


# ------------------------------------------------------------------------------- the index
class _Ranking:
    """What every index shares: the catalogue, popularity, and the order of the module
    docstring over its scores. Subclasses set items and popularity and define scores()."""

    items: np.ndarray
    popularity: np.ndarray

    def _prepare(self) -> None:
        self.items = np.asarray(self.items, dtype=object)
        self.popularity = np.asarray(self.popularity, np.float32)
        self._row = {item: index for index, item in enumerate(self.items) if index}
        # The order without any score: popularity desc, then id asc; id 0 never.
        order = np.lexsort((np.arange(len(self.items)), -self.popularity))
        self.popularity_order = order[order != 0]

    @property
    def num_items(self) -> int:
        return len(self.items) - 1

    def ids(self, items: Iterable[str]) -> List[int]:
        """Raw item ids -> ids (unknown items left out)."""
        return [self._row[item] for item in items if item in self._row]

    def scores(self, recent: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def top_ids(self, scores: np.ndarray, k: int, excluded: Iterable[int] = ()) -> List[int]:
        """The first k ids in the order (score desc, popularity desc, id asc) for one user's
        scores (N + 1,), `excluded` ids and id 0 left out."""
        excluded = set(int(i) for i in excluded) | {0}
        if np.any(scores < 0):  # learned scores: the k best of the whole catalogue
            masked = np.asarray(scores, np.float64).copy()
            masked[list(excluded)] = -np.inf
            allowed = len(masked) - len(excluded)
            if allowed <= 0 or k <= 0:
                return []
            # Everything that ties with or beats the k-th best score, then the exact order.
            place = len(masked) - min(k, allowed)
            kth = np.partition(masked, place)[place]
            ids = np.flatnonzero((masked >= kth) & np.isfinite(masked))
            return ids[np.lexsort((ids, -self.popularity[ids], -masked[ids]))][:k].tolist()
        # Scores >= 0: the scored items, then popularity for the rest (the same order).
        scored = np.flatnonzero(scores > 0)
        scored = scored[np.lexsort((scored, -self.popularity[scored], -scores[scored]))]
        result: List[int] = []
        for source in (scored, self.popularity_order):
            for item in source:
                item = int(item)
                if item not in excluded:
                    excluded.add(item)
                    result.append(item)
                    if len(result) == k:
                        return result
        return result

    def retrieve(self, recent_raw: Sequence[str], k: int, exclude: Iterable[str] = ()) -> List[str]:
        """Top-k raw item ids for a user's recent raw items (most recent first, any
        repeats; unknown ones ignored), history and `exclude` left out."""
        recent = list(dict.fromkeys(self.ids(recent_raw)))
        excluded = set(recent) | set(self.ids(exclude))
        if recent:
            scores = self.scores(np.array([recent], np.int64))[0]
        else:
            scores = np.zeros(len(self.items))
        return [self.items[i] for i in self.top_ids(scores, k, excluded)]


@dataclasses.dataclass
class RetrievalIndex(_Ranking):
    """The tables of the module docstring over ids 0..N (0 = padding, never retrieved).

    items (N + 1,) object strings, [0] = ""; popularity (N + 1,) float32; neighbours and
    weights {table: (N + 1, K)} (ids, 0 = none)."""

    items: np.ndarray
    popularity: np.ndarray
    neighbours: Dict[str, np.ndarray]
    weights: Dict[str, np.ndarray]
    params: RetrievalParams
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self._prepare()
        self._matrix: Optional[sp.csr_matrix] = None

    def neighbour_matrix(self) -> sp.csr_matrix:
        """(N + 1, N + 1) transition_weight * T + (1 - transition_weight) * C, top-K rows."""
        if self._matrix is None:
            size = len(self.items)
            mix = {
                "transition": self.params.transition_weight,
                "cooccurrence": 1.0 - self.params.transition_weight,
            }
            total = sp.csr_matrix((size, size), dtype=np.float64)
            for table in TABLES:
                ids, weights = self.neighbours[table], self.weights[table]
                rows = np.repeat(np.arange(size), ids.shape[1])
                keep = ids.reshape(-1) > 0
                total = total + sp.csr_matrix(
                    (
                        mix[table] * weights.reshape(-1)[keep].astype(np.float64),
                        (rows[keep], ids.reshape(-1)[keep]),
                    ),
                    shape=(size, size),
                )
            self._matrix = total.tocsr()
        return self._matrix

    def user_weights(self, recent: np.ndarray) -> sp.csr_matrix:
        """(B, N + 1): recency_decay ** j at each user's j-th latest item (j < recent_items)."""
        recent = np.asarray(recent, np.int64)[:, : self.params.recent_items]
        rows = np.repeat(np.arange(len(recent)), recent.shape[1])
        decay = np.tile(self.params.recency_decay ** np.arange(recent.shape[1]), len(recent))
        keep = recent.reshape(-1) > 0
        return sp.csr_matrix(
            (decay[keep], (rows[keep], recent.reshape(-1)[keep])),
            shape=(len(recent), len(self.items)),
        )

    def scores(self, recent: np.ndarray) -> np.ndarray:
        """(B, N + 1) float64 neighbour scores of every item for users' recent items
        (B, L) (most recent first, 0-padded)."""
        return np.asarray((self.user_weights(recent) @ self.neighbour_matrix()).todense())

    # ------------------------------------------------------------------------- files
    def write(self, directory: str) -> None:
        """The files of the module docstring into `directory` (created)."""
        _write_common(directory, self, METHOD_COOCCURRENCE)
        for table in TABLES:  # ids -> rows: id 0 (none) becomes -1
            _save_npy(
                directory,
                f"{table}_neighbours.npy",
                (self.neighbours[table][1:] - 1).astype(np.int32),
            )
            _save_npy(directory, f"{table}_weights.npy", self.weights[table][1:].astype(np.float32))

    @classmethod
    def read(cls, directory: str) -> "RetrievalIndex":
        """The index `write` wrote; ValueError naming the file when something is off."""
        meta, items, popularity = _read_common(directory, METHOD_COOCCURRENCE)
        size = len(items) - 1
        neighbours, weights = {}, {}
        for table in TABLES:
            rows = _load_npy(directory, f"{table}_neighbours.npy").astype(np.int64)
            values = _load_npy(directory, f"{table}_weights.npy")
            if rows.shape != values.shape or len(rows) != size or rows.max(initial=-1) >= size:
                raise ValueError(
                    f"{directory}: {table}_neighbours.npy {rows.shape} and "
                    f"{table}_weights.npy {values.shape} do not match the "
                    f"{size} items of {ITEMS_FILE}"
                )
            pad = np.zeros((1, rows.shape[1]))
            neighbours[table] = np.concatenate([pad.astype(np.int64), rows + 1])
            weights[table] = np.concatenate([pad.astype(np.float32), values])
        return cls(
            items,
            popularity,
            neighbours,
            weights,
            RetrievalParams(**meta["params"]),
            meta.get("info", {}),
        )


@dataclasses.dataclass(frozen=True)
class TwoTowerParams:
    """The two-tower model (unisar_tf.train.two_tower) and how its user tower reads a history.

    The defaults are the values chosen on Beauty's and Sports' validation splits
    (docs/online.md#retrieval)."""

    dim: int = 64  # embedding and user vector size
    history: int = 10  # recent items the user tower pools
    decay: float = 0.8  # weight of the j-th latest of them: decay ** j
    epochs: int = 2  # then it overfits (validation Recall@100 falls)
    batch_size: int = 512  # also the in-batch negatives: batch_size - 1 per example
    learning_rate: float = 2e-3
    temperature: float = 0.1
    logq: float = 1.0  # in-batch negatives' popularity correction (0 = off)
    l2: float = 1e-6

    def replace(self, **changes) -> "TwoTowerParams":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass
class TwoTowerIndex(_Ranking):
    """A trained two-tower model as numpy arrays: score(c) = user . item_vectors[c] with

        user = (sum_j w_j history_vectors[h_j] / sum_j w_j) @ kernel + bias,
        w_j = decay ** j over the `history` latest items h_j (0-padded slots weigh 0).

    items (N + 1,) object, [0] = ""; popularity (N + 1,) (ties, and users without a known
    item: popularity alone); item_vectors, history_vectors (N + 1, dim) float32; kernel
    (dim, dim), bias (dim,) float32. On disk: index.json (method "two_tower"), items.json,
    popularity.npy and {item_vectors, history_vectors, kernel, bias}.npy (rows without
    the padding row 0)."""

    items: np.ndarray
    popularity: np.ndarray
    item_vectors: np.ndarray
    history_vectors: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray
    params: TwoTowerParams
    info: dict = dataclasses.field(default_factory=dict)

    ARRAYS = ("item_vectors", "history_vectors", "kernel", "bias")

    def __post_init__(self):
        self._prepare()
        # float32 throughout: a mixed-dtype product would copy the item table per request.
        for name in self.ARRAYS:
            setattr(self, name, np.ascontiguousarray(getattr(self, name), np.float32))

    def user_vectors(self, recent: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """((B, dim) float32 user vectors, (B,) bool: the user has a known item)."""
        recent = np.asarray(recent, np.int64)[:, : self.params.history]
        weights = (self.params.decay ** np.arange(recent.shape[1], dtype=np.float32))[None, :]
        weights = weights * (recent > 0)
        total = weights.sum(axis=1)
        pooled = np.einsum("bl,bld->bd", weights, self.history_vectors[recent])
        pooled = pooled / np.maximum(total, np.float32(1e-9))[:, None]
        return (pooled @ self.kernel + self.bias).astype(np.float32), total > 0

    def scores(self, recent: np.ndarray) -> np.ndarray:
        """(B, N + 1) float: user . item for users with a known item, 0 (popularity) else."""
        users, known = self.user_vectors(recent)
        scores = (self.item_vectors @ users.T).T  # (N + 1, dim) x (dim, B): no transposed copy
        scores[~known] = 0.0
        scores[:, 0] = 0.0
        return scores

    def write(self, directory: str) -> None:
        _write_common(directory, self, METHOD_TWO_TOWER)
        for name in self.ARRAYS:
            array = getattr(self, name)
            _save_npy(directory, f"{name}.npy", array[1:] if name.endswith("vectors") else array)

    @classmethod
    def read(cls, directory: str) -> "TwoTowerIndex":
        meta, items, popularity = _read_common(directory, METHOD_TWO_TOWER)
        arrays = {}
        for name in cls.ARRAYS:
            array = _load_npy(directory, f"{name}.npy").astype(np.float32)
            if name.endswith("vectors"):
                if len(array) != len(items) - 1:
                    raise ValueError(
                        f"{os.path.join(directory, name + '.npy')}: {len(array)} "
                        f"rows for the {len(items) - 1} items of {ITEMS_FILE}"
                    )
                array = np.concatenate([np.zeros((1, array.shape[1]), np.float32), array])
            arrays[name] = array
        return cls(
            items,
            popularity,
            params=TwoTowerParams(**meta["params"]),
            info=meta.get("info", {}),
            **arrays,
        )


# ------------------------------------------------------------------------------ file helpers
def _save_npy(directory: str, name: str, array: np.ndarray) -> None:
    import tensorflow as tf  # gfile: local paths and gs:// alike

    with tf.io.gfile.GFile(os.path.join(directory, name), "wb") as out:
        np.save(out, np.asarray(array), allow_pickle=False)


def _save_json(directory: str, name: str, value) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(directory, name), "w") as out:
        out.write(json.dumps(value, indent=1, sort_keys=True) + "\n")


def _load_npy(directory: str, name: str) -> np.ndarray:
    import tensorflow as tf

    path = os.path.join(directory, name)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: the retrieval index is incomplete")
    with tf.io.gfile.GFile(path, "rb") as handle:
        return np.load(handle, allow_pickle=False)


def _load_json(directory: str, name: str):
    import tensorflow as tf

    path = os.path.join(directory, name)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} not found: the export has no retrieval index "
            "(unisar_tf.export.retrieval writes it)"
        )
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def _write_common(directory: str, index, method: str) -> None:
    """index.json, items.json and popularity.npy of any index."""
    import tensorflow as tf

    tf.io.gfile.makedirs(directory)
    _save_json(directory, ITEMS_FILE, [str(item) for item in index.items[1:]])
    _save_npy(directory, POPULARITY_FILE, index.popularity[1:].astype(np.float32))
    _save_json(
        directory,
        INDEX_FILE,
        {
            "format_version": FORMAT_VERSION,
            "method": method,
            "num_items": index.num_items,
            "params": dataclasses.asdict(index.params),
            "info": index.info,
        },
    )


def _read_common(directory: str, method: str):
    """(index.json, items (N + 1,) with [0] = "", popularity (N + 1,)), checked."""
    meta = _load_json(directory, INDEX_FILE)
    if meta.get("format_version") != FORMAT_VERSION or meta.get("method") != method:
        raise ValueError(
            f"{os.path.join(directory, INDEX_FILE)}: format "
            f"{meta.get('format_version')} / method {meta.get('method')!r}, "
            f"expected {FORMAT_VERSION} / {method!r}"
        )
    items = _load_json(directory, ITEMS_FILE)
    popularity = _load_npy(directory, POPULARITY_FILE)
    if popularity.shape != (len(items),):
        raise ValueError(
            f"{directory}: {POPULARITY_FILE} has shape {popularity.shape}, "
            f"expected ({len(items)},)"
        )
    return (
        meta,
        np.array([""] + items, dtype=object),
        np.concatenate([[0.0], popularity]).astype(np.float32),
    )


def read_index(directory: str):
    """The index in `directory`, whichever method wrote it (index.json's "method")."""
    method = _load_json(directory, INDEX_FILE).get("method")
    readers = {METHOD_COOCCURRENCE: RetrievalIndex.read, METHOD_TWO_TOWER: TwoTowerIndex.read}
    if method not in readers:
        raise ValueError(
            f"{os.path.join(directory, INDEX_FILE)}: unknown method {method!r}, "
            f"this reader knows {sorted(readers)}"
        )
    return readers[method](directory)


def build_index(
    sequences: Sequences, catalogue: np.ndarray, params: RetrievalParams = RetrievalParams()
) -> RetrievalIndex:
    """The index of training `sequences` (ids of `catalogue`, (N + 1,) strings, [0] = "")."""
    size = len(catalogue)
    positives = np.asarray(sequences.positives, np.int64)
    popularity = np.bincount(positives[positives > 0], minlength=size).astype(np.float32)
    transitions = row_normalized(
        transition_counts(
            sequences.recent, positives, size, params.transition_window, params.transition_decay
        )
    )
    cooccurrence = cosine_normalized(cooccurrence_counts(sequences.recent, positives, size))
    neighbours, weights = {}, {}
    for table, matrix in (("transition", transitions), ("cooccurrence", cooccurrence)):
        neighbours[table], weights[table] = top_neighbours(matrix, params.neighbours)
    info = {
        "training_examples": int(len(positives)),
        # Online histories keep as many clicks per search session (serving/retrieval.py).
        "clicks_per_session": int(sequences.clicks_per_session),
        "training_positives_in_catalogue": int((positives > 0).sum()),
        "items_with_neighbours": {
            table: int((neighbours[table][:, 0] > 0).sum()) for table in TABLES
        },
    }
    return RetrievalIndex(catalogue, popularity, neighbours, weights, params, info)


def training_index(
    data_dir: str,
    catalogue: Optional[np.ndarray] = None,
    params: RetrievalParams = RetrievalParams(),
) -> RetrievalIndex:
    """The index of data_dir's training split; catalogue defaults to the data's vocab/."""
    catalogue = catalogue_from_vocab(data_dir) if catalogue is None else catalogue
    sequences = read_sequences(data_dir, "train", catalogue)  # whole histories: ItemKNN's
    return build_index(sequences, catalogue, params)
