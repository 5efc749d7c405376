"""The history store: one suite, run on the embedded SQLite store and on a real redis-server.

    python -m pytest tests/serving/test_history_store.py -q

Expected contents are written out by hand (which events the caps keep, in which order); the
concurrency tests check invariants (every event present once, the store's order, each
writer's own order) rather than one interleaving.
"""

import multiprocessing
import socket
import threading
import time
import uuid

import pytest
from helpers.redis_server import start_redis_server, stop_redis_server

from feature_specs.event_schema import Event
from serving.history_store import (
    ONLINE_SOURCE,
    HistoryCaps,
    StoreUnavailable,
    capped_events,
    open_store,
)

ROOMY = HistoryCaps(rec=10_000, search_sessions=10_000, impressions=10_000)


def rec(user, ts, item, source="log.csv", line=0, click=1):
    return Event(user, ts, "rec", item, click, "", (), source, line)


def search(user, ts, session, item="", click=0, query=("q",), source="log.csv", line=0):
    return Event(user, ts, "search", item, click, session, tuple(query), source, line)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    """A fresh, empty store location of each backend (a new file; a new Redis key prefix)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/history.db"
    redis_url = request.getfixturevalue("redis_url")
    return f"{redis_url}?prefix=test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_store(store_url):
    """make_store(caps) -> a store at store_url; all closed after the test."""
    opened = []

    def make(caps=ROOMY):
        store = open_store(store_url, caps)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def test_events_come_back_in_sort_key_order_with_the_tie_rule(make_store):
    store = make_store()
    expected = [
        rec("u", -5, "early"),  # negative time sorts first
        rec("u", 7, "a3", source="a.csv", line=3),  # same time: rec before search,
        rec("u", 7, "a9", source="a.csv", line=9),  # then source, then line
        rec("u", 7, "a10", source="a.csv", line=10),  # (as a number: 9 < 10)
        rec("u", 7, "a20", source="a.csv.gz", line=1),  # a prefix source comes first
        rec("u", 7, "b1", source="b.csv", line=1),
        search("u", 7, "s1", "a1", 1, source="a.csv", line=1),  # search after every rec
        search("u", 7, "s1", "a2", 0, source="a.csv", line=2),
        rec("u", 8, "late", source="a.csv", line=0),
    ]
    shuffled = [expected[i] for i in (5, 2, 8, 0, 6, 3, 1, 7, 4)]
    for event in shuffled[:4]:
        assert store.append(event) == event  # a source of its own: stored as given
    assert store.append_many(shuffled[4:]) == 5
    assert store.events("u") == expected
    assert store.has_user("u")


def test_caps_keep_the_newest_of_each_kind_and_whole_search_sessions(make_store):
    caps = HistoryCaps(rec=2, search_sessions=2, impressions=1)
    r1, r2, r3 = rec("u", 1, "r1"), rec("u", 2, "r2"), rec("u", 3, "r3")
    m1, m4 = rec("u", 1, "m1", click=0), rec("u", 4, "m4", click=0)
    # s1 starts first (t=1) though its click comes last (t=6): a session is dated by its
    # first row, so s1 is the oldest of the three and goes, both rows.
    s1_query, s1_click = search("u", 1, "s1", "x", 0), search("u", 6, "s1", "x", 1)
    s2 = search("u", 2, "s2", "y", 1)
    s3_a, s3_b = search("u", 3, "s3", "z", 0), search("u", 4, "s3", "w", 2)
    everything = [r1, r2, r3, m1, m4, s1_query, s1_click, s2, s3_a, s3_b]
    # Kept: r2, r3; m4; s2, s3 (both rows). By time, r2 ties s2 at t=2: rec first.
    kept = [r2, s2, r3, s3_a, m4, s3_b]

    bulk = make_store(caps)  # one call, any order
    assert bulk.append_many(reversed(everything)) == len(kept)
    assert bulk.events("u") == kept
    assert capped_events(everything, caps) == kept  # the reference agrees

    # One at a time in time order, as online: s1 is trimmed when s3 starts (t=3), and its
    # click arriving at t=6 goes with it instead of coming back as a new session.
    online = make_store(caps)
    for event in sorted(everything, key=Event.sort_key):
        online.append(_as_user(event, "u2"))
    assert online.events("u2") == [_as_user(event, "u2") for event in kept]


def _as_user(event, user):
    return Event(
        user,
        *[
            getattr(event, name)
            for name in (
                "timestamp",
                "scenario",
                "item_id",
                "click",
                "search_session_id",
                "query_tokens",
                "source",
                "line",
            )
        ],
    )


def test_a_late_row_of_a_kept_session_joins_it(make_store):
    store = make_store(HistoryCaps(rec=0, search_sessions=1, impressions=0))
    store.append_many([search("u", 5, "old"), search("u", 9, "new")])
    late = search("u", 12, "new", "i", 1, line=1)
    store.append(late)
    assert store.events("u") == [search("u", 9, "new"), late]
    assert store.append(rec("u", 20, "dropped")) == rec("u", 20, "dropped")
    assert store.events("u") == [search("u", 9, "new"), late]  # rec cap 0 keeps none


def test_bulk_loads_are_idempotent_and_a_crashed_load_can_be_rerun(make_store):
    caps = HistoryCaps(rec=3, search_sessions=2, impressions=1)
    events = [rec(f"u{u}", t, f"i{t}", line=t) for u in range(3) for t in range(6)]
    events += [search("u1", t, f"s{t}", f"q{t}", 1, line=100 + t) for t in range(4)]
    events += [rec("u2", t, "imp", click=0, line=200 + t) for t in range(3)]
    expected = {
        user: capped_events([e for e in events if e.user_id == user], caps)
        for user in ("u0", "u1", "u2")
    }
    # Hand count: 3 rec per user (9), u1's 2 newest sessions (2), u2's newest impression (1).
    assert sum(len(v) for v in expected.values()) == 12

    once = make_store(caps)
    assert once.append_many(events) == 12
    assert once.append_many(events) == 0  # the re-run stores nothing
    assert {user: once.events(user) for user in expected} == expected


def test_a_prefix_then_everything_equals_one_load(make_store):
    caps = HistoryCaps(rec=4, search_sessions=2, impressions=2)
    events = (
        [rec("u", t, f"i{t}", line=t) for t in range(8)]
        + [search("u", t, f"s{t}", f"q{t}", 1, line=50 + t) for t in range(5)]
        + [rec("v", t, "m", click=0, line=70 + t) for t in range(3)]
    )
    store = make_store(caps)
    first = store.append_many(events[:7])  # "crash" after 7 rows, then the whole load again
    second = store.append_many(events)
    assert store.events("u") == capped_events([e for e in events if e.user_id == "u"], caps)
    assert store.events("v") == capped_events([e for e in events if e.user_id == "v"], caps)
    # u: rows 0-6 stored (4 kept of 7 rec: 7 counted as they arrived, 3 trimmed at once
    # do not count), then i7 and 2 sessions and v's 2 impressions.
    assert (first, second) == (4, 1 + 2 + 2)
    assert store.append_many(events) == 0


def test_an_unknown_user_has_no_events(make_store):
    store = make_store()
    store.append(rec("known", 1, "i"))
    assert store.events("nobody") == []
    assert not store.has_user("nobody")


def test_online_appends_are_numbered_per_user(make_store):
    store = make_store()
    first = store.append(Event("u", 100, "rec", "a"))
    second = store.append(Event("u", 100, "rec", "b"))  # same millisecond: arrival order
    other = store.append(Event("v", 100, "search", "", 0, "sess", ("7", "8")))
    bulk = rec("u", 100, "c", source="bulk.csv", line=1)
    store.append_many([bulk])  # a bulk row leaves the counter alone
    third = store.append(Event("u", 100, "rec", "d"))
    assert [(e.source, e.line) for e in (first, second, other, third)] == [
        (ONLINE_SOURCE, 1),
        (ONLINE_SOURCE, 2),
        (ONLINE_SOURCE, 1),
        (ONLINE_SOURCE, 3),
    ]
    # "bulk.csv" < "online": at equal time and scenario, source decides, then the number.
    assert [e.item_id for e in store.events("u")] == ["c", "a", "b", "d"]
    assert store.events("v") == [
        Event("v", 100, "search", "", 0, "sess", ("7", "8"), ONLINE_SOURCE, 1)
    ]


def test_events_round_trip_exactly(make_store):
    store = make_store()
    events = [
        Event("用户-é", -(2**62), "rec", "ítem☃", 7, "", (), "logs/été.csv", 2**40),
        Event(
            "用户-é",
            1_700_000_000_123,
            "search",
            "",
            0,
            "sess:ü 1",
            ("20", "34", "3", "20"),
            "logs/été.csv",
            0,
        ),
        Event(
            "用户-é",
            1_700_000_000_123,
            "search",
            "ítem☃",
            3,
            "sess:ü 1",
            ("20", "34", "3", "20"),
            "logs/été.csv",
            1,
        ),
        Event("用户-é", 2**62, "rec", 'x"y\\z', 0, "", (), "", 5),
    ]
    assert store.append_many(events) == 4
    back = store.events("用户-é")
    assert back == events
    assert all(type(e.query_tokens) is tuple for e in back)


def test_unstorable_events_are_refused_naming_the_field(make_store):
    store = make_store()
    with pytest.raises(ValueError, match="item_id"):
        store.append(rec("u", 1, "bad\nitem"))
    with pytest.raises(ValueError, match="timestamp"):
        store.append(rec("u", 1.5, "i"))
    with pytest.raises(ValueError, match="search_session_id"):
        store.append(Event("u", 1, "search", "i", 1))
    with pytest.raises(ValueError, match="source"):  # a file name that was not UTF-8
        store.append_many([rec("u", 1, "i", source="logs/\udcff.csv")])
    assert store.events("u") == []


def test_concurrent_online_writers_lose_nothing_and_keep_order(make_store):
    threads, per_thread = 4, 200
    stores = [make_store() for _ in range(threads)]  # a client each, as separate workers
    returned = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def write(index):
        start.wait()
        for k in range(per_thread):
            # Every event at the same millisecond: only the sequence number orders them.
            returned[index].append(stores[index].append(Event("hot", 1000, "rec", f"t{index}-{k}")))

    workers = [threading.Thread(target=write, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    stored = stores[0].events("hot")
    assert len(stored) == threads * per_thread
    assert [e.line for e in stored] == list(range(1, threads * per_thread + 1))
    assert sorted((e for batch in returned for e in batch), key=Event.sort_key) == stored
    assert {e.item_id for e in stored} == {
        f"t{i}-{k}" for i in range(threads) for k in range(per_thread)
    }
    for index in range(threads):  # each writer's events in the order it wrote them
        mine = [e.item_id for e in stored if e.item_id.startswith(f"t{index}-")]
        assert mine == [f"t{index}-{k}" for k in range(per_thread)]
        assert [e.line for e in returned[index]] == sorted(e.line for e in returned[index])


def test_concurrent_bulk_writers_keep_exactly_what_the_caps_keep(make_store):
    caps = HistoryCaps(rec=50, search_sessions=20, impressions=10)
    threads = 4
    per_thread = [
        [rec("hot", 10 * k + i, f"r{i}-{k}", f"w{i}", k) for k in range(60)]
        + [
            search("hot", 10 * k + i, f"s{i}-{k}", f"q{i}", 1, source=f"w{i}", line=100 + k)
            for k in range(20)
        ]
        + [rec("hot", 10 * k + i, f"m{i}-{k}", f"w{i}", 200 + k, click=0) for k in range(20)]
        for i in range(threads)
    ]
    stores = [make_store(caps) for _ in range(threads)]
    start = threading.Barrier(threads)

    def write(index):
        start.wait()
        for k in range(0, len(per_thread[index]), 10):  # small batches, interleaving
            stores[index].append_many(per_thread[index][k : k + 10])

    workers = [threading.Thread(target=write, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    everything = [e for batch in per_thread for e in batch]
    assert stores[0].events("hot") == capped_events(everything, caps)
    assert len(stores[0].events("hot")) == 50 + 20 + 10


def _write_from_a_process(url, name, count, go):
    store = open_store(url, ROOMY)
    go.wait(30)
    for k in range(count):
        store.append(Event("hot", 1000, "rec", f"{name}-{k}"))
    store.close()


def test_two_processes_writing_one_user(make_store, store_url):
    count = 150
    # Forked: the children start without importing anything again (fast), then write at once.
    context = multiprocessing.get_context("fork")
    go = context.Event()
    processes = [
        context.Process(target=_write_from_a_process, args=(store_url, name, count, go))
        for name in ("p", "q")
    ]
    for process in processes:
        process.start()
    go.set()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    stored = make_store().events("hot")
    assert [e.line for e in stored] == list(range(1, 2 * count + 1))
    for name in ("p", "q"):
        assert [e.item_id for e in stored if e.item_id.startswith(f"{name}-")] == [
            f"{name}-{k}" for k in range(count)
        ]


def test_a_dead_redis_port_raises_store_unavailable_naming_the_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"  # nothing listens there now
    began = time.monotonic()
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}"):
        open_store(url)
    assert time.monotonic() - began < 5


def test_a_redis_that_goes_down_raises_store_unavailable(tmp_path):
    process, url = start_redis_server(tmp_path)
    try:
        store = open_store(url)
        store.append(rec("u", 1, "i"))
    finally:
        stop_redis_server(process)
    began = time.monotonic()
    for call in (
        lambda: store.events("u"),
        lambda: store.append(rec("u", 2, "j")),
        lambda: store.append_many([rec("v", 1, "k")]),
        lambda: store.has_user("u"),
        store.ping,
    ):
        with pytest.raises(StoreUnavailable, match=url.split("//")[1].split("/")[0]):
            call()
    assert time.monotonic() - began < 5
    store.close()


def test_a_redis_that_never_answers_times_out_instead_of_hanging():
    with socket.socket() as silent:  # the kernel accepts the connection; nobody replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0?socket_timeout=0.3"
        began = time.monotonic()
        with pytest.raises(StoreUnavailable, match="socket_timeout"):
            open_store(url)
        assert time.monotonic() - began < 5


def test_an_unopenable_sqlite_path_raises_store_unavailable(tmp_path):
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    url = f"sqlite:///{not_a_folder}/history.db"
    with pytest.raises(StoreUnavailable, match="file.txt/history.db"):
        open_store(url)
    with pytest.raises(ValueError, match="unknown history store"):
        open_store("memcached://127.0.0.1:11211")
