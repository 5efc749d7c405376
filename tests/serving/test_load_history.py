"""The bulk loader: a tiny Amazon-format log with bad lines, through the data job's adapter.

python -m pytest tests/serving/test_load_history.py -q
"""

import json
import os

import pytest
from helpers import FIXTURES

from feature_specs.event_schema import Event
from pipeline.adapters import amazon
from serving import load_history
from serving.history_store import open_store

# Line 3 has no item, line 4 is not UTF-8, line 5 is blank (skipped, as the data job does).
SEQUENCES = (
    b"u0 i1 i2 i3\n" b"u1 i4 i5\n" b"u_bad\n" b"u2 i1 \xff\n" b"\n" b"u3 i2 i2 \xc3\xaftem\n"
)
ATTRIBUTES = {
    "i1": ["b1", "c0"],
    "i2": ["b2", "c0"],
    "i3": ["b3", "c0"],
    "i4": ["b4", "c1"],
    "i5": ["b5", "c0"],
    "\u00eftem": ["b6", "c0"],
}


@pytest.fixture
def log(tmp_path):
    (tmp_path / "seq.txt").write_bytes(SEQUENCES)
    (tmp_path / "attrs.json").write_text(json.dumps(ATTRIBUTES))
    return tmp_path


def flags(log):
    # c0 is on 5 items: a query word at a minimum frequency of 2; brands (1 item) are not.
    return [
        "--sequences",
        str(log / "seq.txt"),
        "--attributes",
        str(log / "attrs.json"),
        "--query_min_item_frequency",
        "2",
        "--seed",
        "1",
    ]


def test_amazon_inputs_have_the_data_jobs_defaults(log):
    read, inputs = load_history.dataset_inputs(
        "amazon", ["--sequences", str(log / "seq.txt"), "--attributes", str(log / "attrs.json")]
    )
    assert read is amazon.read
    # pipeline.build_examples' defaults, which pipeline.main_job runs with (--seed 0).
    assert (
        inputs.search_fraction,
        inputs.query_min_item_frequency,
        inputs.seed,
        inputs.max_rows_per_file,
    ) == (0.5, 100, 0, 0)
    with pytest.raises(ValueError, match="--rec_len"):
        load_history.dataset_inputs("amazon", ["--rec_len", "5"])


def test_the_adapters_events_and_dead_letters(log):
    read, inputs = load_history.dataset_inputs("amazon", flags(log))
    rows = load_history.read_adapter(read, inputs)
    source = str(log / "seq.txt")
    # Each user's line: position = timestamp, the file's line = line.
    assert [(e.user_id, e.timestamp, e.item_id, e.line) for e in rows.events] == [
        ("u0", 0, "i1", 1),
        ("u0", 1, "i2", 1),
        ("u0", 2, "i3", 1),
        ("u1", 0, "i4", 2),
        ("u1", 1, "i5", 2),
        ("u3", 0, "i2", 6),
        ("u3", 1, "i2", 6),
        ("u3", 2, "\u00eftem", 6),
    ]
    assert {e.source for e in rows.events} == {source}
    for event in rows.events:  # the adapter's own rule decides search vs rec
        search = amazon.is_search_draw(1, event.user_id, event.timestamp, 0.5)
        has_query = event.item_id != "i4"  # i4's only shared attribute, c1, is on 1 item
        assert event.scenario == ("search" if search and has_query else "rec")
        assert event.query_tokens == (("c0",) if event.scenario == "search" else ())
    assert [(r.source, r.line, r.reason) for r in rows.rejected] == [
        (source, 3, "malformed_row"),
        (source, 4, "not_utf8"),
    ]
    assert rows.rejected[1].raw_bytes() == b"u2 i1 \xff"
    assert load_history.adapter_events(read, inputs) == rows.events


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_cli_stores_the_adapters_events_once(log, backend, request, capsys):
    url = (
        f"sqlite:///{log}/history.db"
        if backend == "sqlite"
        else f"{request.getfixturevalue('redis_url')}?prefix=load-{id(log)}"
    )
    dead = log / "out" / "rejected.jsonl"
    argv = ["--store", url, "--dead_letter", str(dead), "amazon", *flags(log)]
    report = load_history.main(argv)
    assert (report.events, report.stored, report.rejected, report.users) == (8, 8, 2, 3)
    assert "rows stored: 8" in capsys.readouterr().out
    lines = [json.loads(line) for line in dead.read_text().splitlines()]
    assert [(d["source"], d["line"], d["reason"]) for d in lines] == [
        (str(log / "seq.txt"), 3, "malformed_row"),
        (str(log / "seq.txt"), 4, "not_utf8"),
    ]

    expected = load_history.adapter_events(*load_history.dataset_inputs("amazon", flags(log)))
    with open_store(url) as store:
        for user in ("u0", "u1", "u3"):
            assert store.events(user) == sorted(
                (e for e in expected if e.user_id == user), key=Event.sort_key
            )
        assert store.events("u2") == [] and store.events("u_bad") == []

    again = load_history.main(argv)  # a re-run (or the rest of a crashed one) adds nothing
    assert (again.events, again.stored, again.rejected) == (8, 0, 2)
    with open_store(url) as store:
        assert [e.item_id for e in store.events("u3")] == ["i2", "i2", "\u00eftem"]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["amazon", "kuaisar"])  # (event_log: checked by hand, same)
def test_beam_runs_each_adapter_to_the_same_rows(log, dataset):
    """The in-process run of the adapter's graph against Beam's: Amazon (tagged outputs,
    dead letters) and KuaiSAR (several files and ParDos, a Flatten)."""
    dataset_flags = {
        "amazon": flags(log),
        "kuaisar": ["--input_dir", os.path.join(FIXTURES, "kuaisar")],
    }
    read, inputs = load_history.dataset_inputs(dataset, dataset_flags[dataset])
    direct = load_history.read_adapter(read, inputs, load_history.RUNNER_DIRECT)
    beam = load_history.read_adapter(read, inputs, load_history.RUNNER_BEAM)
    assert direct.events and (dataset == "kuaisar" or direct.rejected)
    order = lambda e: (e.user_id, e.sort_key())  # noqa: E731 (Beam's output order is its own)
    assert sorted(beam.events, key=order) == sorted(direct.events, key=order)
    by_line = lambda r: (r.source, r.line)  # noqa: E731
    assert sorted(beam.rejected, key=by_line) == sorted(direct.rejected, key=by_line)
    assert beam.stats == direct.stats
