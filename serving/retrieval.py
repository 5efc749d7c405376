"""Candidates for a request that brings none: a version's retrieval index, online.

    retriever = Retriever.load("<serving_dir>/unisar/<version>")
    items = retriever.retrieve(store.events(user_id), k=100)   # raw item ids, best first

The index (`<version>/assets.extra/retrieval/`, written with the ranker by
unisar_tf.export.retrieval, formats in unisar_tf.data.retrieval_index: the two-tower model's
weights, which ship, or co-occurrence neighbour tables) holds raw item ids, so nothing here
needs the model's id mapping. A user's items are those of the history store's events as the
data job reads them (unisar_tf.data.example_rules.behaviours): rec events with click > 0,
and each search session's clicked rows (the first `clicks_per_session` of them, the training
data's); most recent first, each item once. They are scored against the index, the history
and `exclude` are left out, and popularity breaks ties and fills the rest (a user without a
known item, cold start, gets popularity alone).

Search is brute force with numpy: for the two-tower, the user vector (a weighted mean of at
most `history` item vectors and a dense layer) times the (N, dim) item vectors, then a
partial sort; for the co-occurrence index, one sparse row times the neighbour matrix.

Large catalogues: past a few million items the dense product and the sort stop fitting a
request's budget. ScaNN (PyPI `scann`, which must match the installed TensorFlow, or
`tensorflow_recommenders.layers.factorized_top_k.ScaNN` over it) or FAISS (`faiss-cpu`)
give an approximate top-k over `item_vectors.npy` in well under a millisecond at a recall
cost of a few percent; only TwoTowerIndex.scores / top_ids would change. Neither is
installed or needed at this project's catalogue sizes (docs/online.md#retrieval).
"""

from __future__ import annotations

import os
from typing import Container, Iterable, List, Sequence

from feature_specs.event_schema import Event
from feature_specs.example_schema import TYPE_REC
from unisar_tf.data.example_rules import InternedIds, behaviours
from unisar_tf.data.retrieval_index import RETRIEVAL_DIR, read_index

# The rules' query truncation does not matter here (only items are used).
_ANY_QUERY_LENGTH = 1 << 30


def recent_items(events: Sequence[Event], clicks_per_session: int) -> List[str]:
    """A user's items, most recent first, each once: rec clicks and search clicks (a session's
    clicks in click order), by the data job's rules (order, tie rule, click cap)."""
    ids = InternedIds()
    history = behaviours(events, ids, _ANY_QUERY_LENGTH, clicks_per_session)
    strings = ids.items.strings
    result: dict = {}
    for behaviour in reversed(history):
        items = (behaviour.item,) if behaviour.kind == TYPE_REC else behaviour.clicks
        for item in items:
            if item:
                result.setdefault(strings[item], None)
    return list(result)


class Retriever:
    """A version's retrieval index; `retrieve` is thread-safe (it only reads the index)."""

    def __init__(self, index):
        """index: a RetrievalIndex (co-occurrence) or TwoTowerIndex."""
        self.index = index
        self.method = type(index).__name__
        self.clicks_per_session = int(index.info.get("clicks_per_session", 1))
        if hasattr(index, "neighbour_matrix"):
            index.neighbour_matrix()  # built now, not on the first request

    @classmethod
    def load(cls, export_dir: str) -> "Retriever":
        """From `<export_dir>/assets.extra/retrieval/`; FileNotFoundError / ValueError naming
        the file when it is missing or malformed."""
        return cls(read_index(os.path.join(export_dir, RETRIEVAL_DIR)))

    @property
    def num_items(self) -> int:
        return self.index.num_items

    def retrieve(self, events: Sequence[Event], k: int, exclude: Container[str] = ()) -> List[str]:
        """Top-k raw item ids for a user's events (any order; [] = cold start: popularity),
        the user's own items and `exclude` left out. Fewer than k only when the catalogue
        has fewer items left."""
        if k <= 0:
            return []
        excluded: Iterable[str] = (
            exclude
            if isinstance(exclude, (set, frozenset, list, tuple))
            else [item for item in self.index.items[1:] if item in exclude]
        )
        return self.index.retrieve(recent_items(events, self.clicks_per_session), k, excluded)
