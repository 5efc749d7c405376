"""serving/retrieval.py: a user's stored events -> retrieved raw item ids, from an export's
index."""

import os

import numpy as np
import pytest

from feature_specs.event_schema import Event
from serving.retrieval import Retriever, recent_items
from unisar_tf.data.retrieval_index import RETRIEVAL_DIR, RetrievalParams, Sequences, build_index

CATALOGUE = np.array(["", "a", "b", "c", "d", "e"], dtype=object)
A, B, C, D, E = 1, 2, 3, 4, 5
# Training: a -> b twice, b -> c, c -> d; e never a positive.
TRAIN = Sequences(
    recent=np.array([[A], [A], [B], [C]]),
    positives=np.array([B, B, C, D]),
    tasks=np.array(["rec"] * 4),
    clicks_per_session=2,
)
PARAMS = RetrievalParams(
    neighbours=3, transition_window=1, recent_items=3, recency_decay=0.5, transition_weight=1.0
)  # transitions only: easy to reason about


def rec(user, t, item, click=1, line=0):
    return Event(user, t, "rec", item, click, source="online", line=line)


def search(user, t, session, item, click, line=0):
    return Event(user, t, "search", item, click, session, ("w",), source="online", line=line)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("version")
    build_index(TRAIN, CATALOGUE, PARAMS).write(str(root / RETRIEVAL_DIR))
    return str(root)


@pytest.fixture(scope="module")
def retriever(export_dir):
    return Retriever.load(export_dir)


def test_users_items_follow_the_data_jobs_rules():
    events = [
        rec("u", 5, "c"),
        rec("u", 1, "a"),
        rec("u", 6, "e", click=0),  # impression
        search("u", 3, "s1", "d", 0, 1),
        search("u", 3, "s1", "b", 1, 2),
        search("u", 3, "s1", "e", 1, 3),
        search("u", 3, "s1", "a", 1, 4),
        rec("u", 3, "d", line=9),
    ]  # same time as the search: rec first
    # Time order: a (1), rec d (3), search s1 clicks b, e (a cut: 2 clicks), c (5).
    assert recent_items(events, clicks_per_session=2) == ["c", "b", "e", "d", "a"]
    assert recent_items(events, clicks_per_session=1) == ["c", "b", "d", "a"]
    assert recent_items([], 2) == []


def test_retrieve_excludes_history_and_backfills_by_popularity(retriever):
    assert retriever.num_items == 5 and retriever.clicks_per_session == 2
    # Latest a: b (a -> b); b is ... c by b -> c would come from b, not in history. Then
    # popularity b 2, c 1, d 1 (d after c: id order), then a and e (0).
    assert retriever.retrieve([rec("u", 1, "a")], 3) == ["b", "c", "d"]
    events = [rec("u", 1, "a"), rec("u", 2, "b")]
    # b (weight 1) -> c; a (0.5) -> b is history. Then popularity: d, then e.
    assert retriever.retrieve(events, 5) == ["c", "d", "e"]
    assert retriever.retrieve(events, 2, exclude={"c"}) == ["d", "e"]
    assert retriever.retrieve(events, 0) == []


def test_cold_start_is_popularity(retriever):
    popular = ["b", "c", "d", "a", "e"]
    assert retriever.retrieve([], 5) == popular
    assert retriever.retrieve([rec("u", 1, "unknown")], 5) == popular
    assert retriever.retrieve([rec("u", 1, "a", click=0)], 2) == ["b", "c"]  # impression only


def test_a_reload_retrieves_the_same(export_dir, retriever):
    again = Retriever.load(export_dir)
    for events in ([], [rec("u", 1, "c")], [rec("u", 1, "a"), search("u", 2, "s", "c", 1)]):
        assert again.retrieve(events, 4) == retriever.retrieve(events, 4)


def test_a_version_without_an_index_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match=os.path.join("assets.extra", "retrieval")):
        Retriever.load(str(tmp_path))
