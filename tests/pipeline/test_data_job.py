"""The Beam data job end to end on small hand-made logs (tests/fixtures/README.md).

Pipelines run on the in-memory DirectRunner; one test runs the real local configuration
(2 worker processes) and checks it writes the same examples. Expected numbers are worked out
by hand from the fixtures (see the README there), not read back from the code under test.
"""

import base64
import collections
import contextlib
import csv
import dataclasses
import glob
import io
import json
import logging
import os
import re
import shutil

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from google.protobuf import text_format
from helpers import FIXTURES
from helpers.data_job import IN_MEMORY, KUAISAR_DIR, KUAISAR_EXAMPLES, SCENARIOS, SPLITS, read_vocab
from tensorflow_metadata.proto.v0 import schema_pb2

from feature_specs import event_schema as es
from feature_specs import example_schema as fs
from feature_specs.data_spec import Candidates, DataSpec, ExampleCounts, VocabSizes
from pipeline import beam_job, build_examples, ordered_write
from pipeline import sequence_builder as sb
from pipeline.adapters import amazon, event_log, kuaisar

EVENTS_CSV = os.path.join(FIXTURES, "event_log", "events.csv")

MULTI_PROCESSING = [
    "--runner=DirectRunner",
    "--direct_num_workers=2",
    "--direct_running_mode=multi_processing",
]


# --- helpers ----------------------------------------------------------------------------------


def read_records(output_dir):
    """{(split, scenario): sorted serialized tf.Examples} of one job output."""
    records = {}
    for split in SPLITS:
        for scenario in SCENARIOS:
            files = sorted(glob.glob(beam_job.example_pattern(str(output_dir), split, scenario)))
            assert files, f"no {split}/{scenario} file in {output_dir}"
            dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
            records[(split, scenario)] = sorted(record.numpy() for record in dataset)
    return records


def example_file_contents(output_dir):
    """{file path relative to output_dir: its records in file order} of one job output."""
    contents = {}
    for split in SPLITS:
        for scenario in SCENARIOS:
            for path in glob.glob(beam_job.example_pattern(str(output_dir), split, scenario)):
                dataset = tf.data.TFRecordDataset(path, compression_type="GZIP")
                contents[os.path.relpath(path, output_dir)] = [r.numpy() for r in dataset]
    return contents


def decode(record):
    """Serialized tf.Example -> {feature: [int, ...]}."""
    example = tf.train.Example.FromString(record)
    return {
        name: list(feature.int64_list.value) for name, feature in example.features.feature.items()
    }


def read_jsonl(pattern):
    rows = []
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle if line.strip())
    return rows


def rows_of(values, width):
    return [values[i : i + width] for i in range(0, len(values), width)]


def examples_dict(counts):
    """{(split, scenario): n} -> the manifest's {split: {scenario: n}} shape (zeros included)."""
    return {
        split: {scenario: counts.get((split, scenario), 0) for scenario in SCENARIOS}
        for split in SPLITS
    }


# --- KuaiSAR ----------------------------------------------------------------------------------

# Spec section 14, in the spec's order.
SPEC14_COLUMNS = {
    "rec_inter.csv": [
        "user_id",
        "item_id",
        "timestamp",
        "time",
        "click",
        "playing_time",
        "duration_ms",
        "like",
        "follow",
        "forward",
        "search",
        "search_item_related",
    ],
    "src_inter.csv": [
        "user_id",
        "search_session_id",
        "search_session_timestamp",
        "search_session_time",
        "keyword",
        "search_source",
        "item_id",
        "click_cnt",
        "item_type",
    ],
    "user_features.csv": [
        "user_id",
        "search_active_level",
        "rec_active_level",
        "onehot_feat1",
        "onehot_feat2",
    ],
    "item_features.csv": [
        "item_id",
        "caption",
        "author_id",
        "item_type",
        "upload_time",
        "upload_type",
        "music_id",
    ]
    + [
        f"{level}_level_category_{part}"
        for level in ("first", "second", "third", "fourth")
        for part in ("id", "name", "name_en")
    ],
}

KUAISAR_OPTIONS = sb.BuildOptions(
    split="time",
    clicks_per_session=5,
    num_train_negatives=2,
    num_eval_negatives=3,
    rec_len=3,
    search_len=4,
    query_len=3,
)

KUAISAR_COUNTERS = {
    "users": 4,
    "events": 45,  # 18 rec rows + 27 search rows
    "rec_impressions_without_click": 3,  # 7/502, 12/525, 3/532
    "search_sessions": 12,
    "search_sessions_without_click": 2,  # sessions 3 and 20
    "search_sessions_clicks_truncated": 1,  # session 2: 6 clicks > 5
    "queries_truncated_to_query_len": 1,  # session 2: 4 tokens > 3
    # first rec of every user (no prior rec), and 7/session 1, 12/session 10, 25/session 30
    # (no prior search)
    "rec_targets_below_min_history": 4,
    "search_targets_below_min_history": 3,
    "item_features_unused_items": 1,  # item 999
    "user_features_unused_users": 1,  # user 40
    "input_rows": 56,  # 18 rec + 27 search + 5 user + 6 item feature rows
}
KUAISAR_USERS = ["7", "12", "3", "25"]  # 19, 12, 8, 6 events
# Rows holding the item: 503 x4, 501 x3, 505 x3, 520 x2, 533 x2, then ties by raw id.
KUAISAR_ITEMS = ["503", "501", "505", "520", "533"] + [
    "502",
    "504",
    "506",
    "507",
    "508",
    "509",
    "510",
    "511",
    "512",
    "513",
    "514",
    "515",
    "516",
    "521",
    "522",
    "523",
    "524",
    "525",
    "526",
    "527",
    "528",
    "529",
    "530",
    "531",
    "532",
    "534",
    "535",
    "536",
    "537",
    "538",
    "539",
]
# Query tokens counted once per search row, plus caption words once per item_features row:
# 34: 15+1, 20: 13+1, 9: 5+7, 7: 9+1, 3: 7+1, 8: 5, 40: 3 captions, 41/42/77: 1 caption.
# Only the first query_len (3) words of a query count: session 2's "[34, 7, 9, 8]" adds no
# "8" (its 7 rows made 8 tie with 9 at 12 before issue 23).
KUAISAR_WORDS = ["34", "20", "9", "7", "3", "8", "40", "41", "42", "77"]


def run_kuaisar(input_dir, output_dir, beam_args=IN_MEMORY):
    inputs = kuaisar.KuaiSARInputs.from_dir(str(input_dir))
    return beam_job.run(
        lambda pipeline: kuaisar.read(pipeline, inputs),
        KUAISAR_OPTIONS,
        str(output_dir),
        dataset="kuaisar",
        inputs={"input_dir": str(input_dir)},
        beam_args=beam_args,
    )


@pytest.fixture(scope="module")
def kuaisar_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("kuaisar") / "out"
    manifest = run_kuaisar(KUAISAR_DIR, output_dir)
    return str(output_dir), manifest


def test_kuaisar_fixture_has_all_spec14_columns_in_shuffled_order():
    for name, spec_columns in SPEC14_COLUMNS.items():
        with open(os.path.join(KUAISAR_DIR, name), newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle))
        assert sorted(header) == sorted(spec_columns), name
        assert header != spec_columns, f"{name}: columns are in the spec's order"
        assert header[0] != spec_columns[0], name


@pytest.mark.slow
def test_kuaisar_manifest_counts_match_hand_computed(kuaisar_run):
    output_dir, manifest = kuaisar_run
    assert manifest["dataset"] == "kuaisar"
    assert manifest["examples"] == KUAISAR_EXAMPLES
    assert manifest["examples_total"] == 20
    assert manifest["vocab_sizes"] == {"users": 4, "items": 36, "words": 10}
    assert manifest["rejected"] == {} and manifest["rejected_total"] == 0
    assert manifest["counters"] == KUAISAR_COUNTERS
    assert manifest["build_options"]["split"] == "time"
    assert manifest["shapes"]["clicks_per_session"] == 5
    assert manifest["shapes"]["train_candidates"] == 3
    assert manifest["shapes"]["eval_candidates"] == 4
    assert beam_job.load_manifest(output_dir) == manifest
    records = read_records(output_dir)
    assert {key: len(value) for key, value in records.items()} == {
        (split, scenario): KUAISAR_EXAMPLES[split][scenario]
        for split in SPLITS
        for scenario in SCENARIOS
    }


@pytest.mark.slow
def test_kuaisar_vocab_files_are_frequency_ordered(kuaisar_run):
    output_dir, _ = kuaisar_run
    assert read_vocab(output_dir, "users") == KUAISAR_USERS
    assert read_vocab(output_dir, "items") == KUAISAR_ITEMS
    assert read_vocab(output_dir, "words") == KUAISAR_WORDS
    with open(os.path.join(output_dir, "vocab", "item_clicks.tsv"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert lines[0] == "item_id\tid\tclicks"
    clicks = {}
    for k, line in enumerate(lines[1:], start=1):
        raw, dense, count = line.split("\t")
        assert (raw, int(dense)) == (KUAISAR_ITEMS[k - 1], k)
        clicks[raw] = int(count)
    # Rows with click > 0 (a click_cnt of 2 or 3 still counts once); impressions count 0.
    assert {
        raw: clicks[raw]
        for raw in ("503", "501", "505", "520", "533", "502", "509", "531", "523", "513")
    } == {
        "503": 3,
        "501": 3,
        "505": 2,
        "520": 2,
        "533": 1,
        "502": 0,
        "509": 0,
        "531": 1,
        "523": 1,
        "513": 0,
    }
    assert sum(clicks.values()) == 34  # 15 clicked rec rows + 19 clicked search rows


def _user_example(records, split, scenario, user_dense_id):
    found = [
        decode(r) for r in records[(split, scenario)] if decode(r)[fs.USER_ID] == [user_dense_id]
    ]
    assert len(found) == 1, (split, scenario, user_dense_id, len(found))
    return found[0]


@pytest.mark.slow
def test_kuaisar_search_example_history(kuaisar_run):
    """User 7's test search target, session 5 (2022-05-12 10:00, after rec 516 at the same
    time): every behaviour before it, capped to rec_len 3 / search_len 4, clicks capped at 5."""
    output_dir, _ = kuaisar_run
    items = read_vocab(output_dir, "items")
    words = read_vocab(output_dir, "words")
    user = read_vocab(output_dir, "users").index("7") + 1
    example = _user_example(read_records(output_dir), "test", "search", user)
    assert sorted(example) == sorted(
        [
            fs.USER_ID,
            fs.HISTORY_TYPES,
            fs.REC_HISTORY_ITEMS,
            fs.SEARCH_HISTORY_QUERY_TOKENS,
            fs.SEARCH_HISTORY_CLICKED_ITEMS,
            fs.CANDIDATE_ITEMS,
            fs.QUERY_TOKENS,
        ]
    )
    assert example[fs.USER_ID] == [1]
    # Behaviours of user 7 in order: r501 S1 r506 S2 r503 S3 S4 r516 | target S5.
    # rec_len 3 drops r501: kept S1 r506 S2 r503 S3 S4 r516.
    assert example[fs.HISTORY_TYPES] == [2, 1, 2, 1, 2, 2, 1]
    assert example[fs.REC_HISTORY_ITEMS] == [8, 1, 18]  # hand-computed ids of 506, 503, 516
    assert [items[i - 1] for i in example[fs.REC_HISTORY_ITEMS]] == ["506", "503", "516"]
    queries = rows_of(example[fs.SEARCH_HISTORY_QUERY_TOKENS], 3)
    assert queries == [[2, 1, 5], [1, 4, 3], [2, 0, 0], [6, 2, 0]]
    # Through vocab/words.txt (line k = id k): the keyword lists of sessions 1-4, session 2's
    # "[34, 7, 9, 8]" truncated to query_len 3.
    assert [[words[t - 1] for t in row if t] for row in queries] == [
        ["20", "34", "3"],
        ["34", "7", "9"],
        ["20"],
        ["8", "20"],
    ]
    clicks = rows_of(example[fs.SEARCH_HISTORY_CLICKED_ITEMS], 5)
    assert [[items[i - 1] for i in row if i] for row in clicks] == [
        ["503", "505"],  # 504 returned but not clicked; 505 had click_cnt 2
        ["507", "508", "510", "511", "512"],  # 6 clicks, the 6th (501) dropped
        [],  # session 3: no click
        ["515"],
    ]
    assert clicks[0] == [1, 3, 0, 0, 0]
    assert example[fs.QUERY_TOKENS] == [5, 0, 0]  # "[3]"
    assert [words[t - 1] for t in example[fs.QUERY_TOKENS] if t] == ["3"]
    candidates = example[fs.CANDIDATE_ITEMS]
    assert len(candidates) == 1 + KUAISAR_OPTIONS.num_eval_negatives
    assert items[candidates[0] - 1] == "505"
    user_items = {
        "501",
        "502",
        "503",
        "504",
        "505",
        "506",
        "507",
        "508",
        "509",
        "510",
        "511",
        "512",
        "513",
        "514",
        "515",
        "516",
    }
    negatives = [items[i - 1] for i in candidates[1:]]
    assert len(set(negatives)) == len(negatives) and not set(negatives) & user_items


@pytest.mark.slow
def test_kuaisar_rec_example_tie_puts_rec_before_search(kuaisar_run):
    """User 7's rec 516 shares its timestamp with session 5: the session is not history."""
    output_dir, _ = kuaisar_run
    items = read_vocab(output_dir, "items")
    example = _user_example(read_records(output_dir), "test", "rec", 1)
    assert fs.QUERY_TOKENS not in example
    assert example[fs.HISTORY_TYPES] == [1, 2, 1, 2, 1, 2, 2]
    assert [items[i - 1] for i in example[fs.REC_HISTORY_ITEMS]] == ["501", "506", "503"]
    assert items[example[fs.CANDIDATE_ITEMS][0] - 1] == "516"
    assert len(example[fs.CANDIDATE_ITEMS]) == 4


@pytest.mark.slow
def test_kuaisar_time_split_uses_utc_days_up_to_the_last_millisecond(kuaisar_run):
    """User 25's only test target is session 32 at 2022-05-12 23:59:59.999 UTC; user 3's valid
    targets are on 2022-05-11 and its last rec (2022-05-12 20:00) is its one test example."""
    output_dir, _ = kuaisar_run
    records = read_records(output_dir)
    items = read_vocab(output_dir, "items")
    positives = collections.defaultdict(set)
    for (split, scenario), serialized in records.items():
        for record in serialized:
            example = decode(record)
            user = KUAISAR_USERS[example[fs.USER_ID][0] - 1]
            positives[(user, split, scenario)].add(items[example[fs.CANDIDATE_ITEMS][0] - 1])
    assert dict(positives) == {
        ("7", "train", "rec"): {"506"},
        ("7", "train", "search"): {"507"},
        ("7", "valid", "rec"): {"503"},
        ("7", "valid", "search"): {"515"},
        ("7", "test", "rec"): {"516"},
        ("7", "test", "search"): {"505"},
        ("12", "train", "rec"): {"522", "538"},
        ("12", "train", "search"): {"529"},
        ("12", "valid", "rec"): {"524"},
        ("12", "valid", "search"): {"523"},
        ("12", "test", "rec"): {"526"},
        ("12", "test", "search"): {"527"},
        ("3", "train", "rec"): {"530"},
        ("3", "valid", "rec"): {"539"},
        ("3", "valid", "search"): {"503"},
        ("3", "test", "rec"): {"531"},
        ("25", "train", "search"): {"535"},
        ("25", "valid", "rec"): {"536"},
        ("25", "test", "search"): {"537"},
    }


@pytest.mark.slow
def test_kuaisar_manifest_says_where_the_time_cut_falls(kuaisar_run):
    """Rows per day (README): rec 9 / 4 / 5 and search 17 / 5 / 5 on 05-10 / 11 / 12; the
    latest event is session 32's second row (23:59:59.999), the latest before the test day
    rec 524 of user 12 at 05-11 15:00."""
    _, manifest = kuaisar_run
    src, rec = (os.path.join(KUAISAR_DIR, name) for name in ("src_inter.csv", "rec_inter.csv"))
    assert manifest["time_split"] == {
        "test_day": "2022-05-12",
        "valid_day": "2022-05-11",
        "latest_event": {"timestamp": 1652399999999, "source": src, "line": 28},
        "latest_event_before_test_day": {"timestamp": 1652281200000, "source": rec, "line": 14},
        "events": {"train_days": 26, "valid_day": 9, "test_day": 10},
    }
    assert not any(key.startswith("time_split") for key in manifest["counters"])


@pytest.mark.slow
def test_kuaisar_side_features_have_dense_ids(kuaisar_run):
    output_dir, _ = kuaisar_run
    item_rows = {
        row["item_id"]: row
        for row in read_jsonl(os.path.join(output_dir, "side_features", "items-*.jsonl"))
    }
    assert sorted(item_rows) == ["501", "503", "505", "507", "516"]  # 999 has no event
    assert {raw: row["id"] for raw, row in item_rows.items()} == {
        "501": 2,
        "503": 1,
        "505": 3,
        "507": 9,
        "516": 18,
    }
    assert {raw: row["caption_word_ids"] for raw, row in item_rows.items()} == {
        "501": [2, 7, 8],
        "503": [1, 9],
        "505": [5, 7],
        "507": [4],
        "516": [],
    }
    assert item_rows["501"]["caption_tokens"] == ["20", "40", "41"]
    # "Esports, pro" (a quoted comma) in second_level_category_name_en did not shift columns.
    assert item_rows["507"]["categories"] == ["2", "22"]
    assert item_rows["516"]["categories"] == ["3", "31"]

    user_rows = {
        row["user_id"]: row
        for row in read_jsonl(os.path.join(output_dir, "side_features", "users-*.jsonl"))
    }
    assert {raw: row["id"] for raw, row in user_rows.items()} == {
        "7": 1,
        "12": 2,
        "3": 3,
        "25": 4,
    }  # 40 has no event
    assert user_rows["7"]["features"] == {
        "search_active_level": "high",
        "rec_active_level": "full_active",
        "onehot_feat1": "3",
        "onehot_feat2": "121",
    }
    assert user_rows["25"]["features"] == {
        "search_active_level": "middle",
        "rec_active_level": "low_active",
        "onehot_feat1": "2",
        "onehot_feat2": "0",
    }


def test_kuaisar_missing_required_column_fails_before_running(tmp_path):
    input_dir = tmp_path / "kuaisar"
    shutil.copytree(KUAISAR_DIR, input_dir)
    src = input_dir / "src_inter.csv"
    with open(src, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = [c for c in SPEC14_COLUMNS["src_inter.csv"] if c != "keyword"]
    with open(src, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError) as raised:
        run_kuaisar(input_dir, output_dir)
    message = str(raised.value)
    assert str(src) in message and "keyword" in message
    assert not output_dir.exists()  # failed while building the graph, before any worker ran


@pytest.mark.slow
def test_schema_pbtxt_lists_every_feature(kuaisar_run):
    output_dir, _ = kuaisar_run
    with open(os.path.join(output_dir, "schema.pbtxt"), encoding="utf-8") as handle:
        schema = text_format.Parse(handle.read(), schema_pb2.Schema())
    features = {feature.name: feature for feature in schema.feature}
    assert sorted(features) == sorted(
        [
            fs.USER_ID,
            fs.HISTORY_TYPES,
            fs.REC_HISTORY_ITEMS,
            fs.SEARCH_HISTORY_QUERY_TOKENS,
            fs.SEARCH_HISTORY_CLICKED_ITEMS,
            fs.CANDIDATE_ITEMS,
            fs.QUERY_TOKENS,
        ]
    )
    assert all(feature.type == schema_pb2.INT for feature in schema.feature)
    shape = {name: [d.size for d in f.shape.dim] for name, f in features.items()}
    assert shape[fs.HISTORY_TYPES] == [7]  # rec_len 3 + search_len 4
    assert shape[fs.REC_HISTORY_ITEMS] == [3]
    assert shape[fs.SEARCH_HISTORY_QUERY_TOKENS] == [4, 3]
    assert shape[fs.SEARCH_HISTORY_CLICKED_ITEMS] == [4, 5]
    assert shape[fs.QUERY_TOKENS] == [3]
    assert shape[fs.USER_ID] == []
    candidates = features[fs.CANDIDATE_ITEMS]
    assert (candidates.value_count.min, candidates.value_count.max) == (3, 4)
    assert list(features[fs.QUERY_TOKENS].not_in_environment) == ["REC"]
    # Every example written matches the schema's shapes.
    records = read_records(output_dir)
    for (split, scenario), serialized in records.items():
        for record in serialized:
            example = decode(record)
            for name, values in example.items():
                if name == fs.CANDIDATE_ITEMS:
                    assert len(values) == (3 if split == "train" else 4)
                else:
                    size = 1
                    for dim in shape[name]:
                        size *= dim
                    assert len(values) == size, (name, split, scenario)
            assert (fs.QUERY_TOKENS in example) == (scenario == "search")


@pytest.mark.slow
def test_multi_processing_runner_writes_the_same_output(kuaisar_run, tmp_path):
    output_dir, manifest = kuaisar_run
    other_dir = tmp_path / "multi"
    other = run_kuaisar(KUAISAR_DIR, other_dir, beam_args=MULTI_PROCESSING)
    assert other["beam_args"] == MULTI_PROCESSING
    assert other["examples"] == manifest["examples"]
    assert other["counters"] == manifest["counters"]
    assert read_records(other_dir) == read_records(output_dir)
    # Same files, same record order (pipeline.ordered_write), though two worker processes
    # deliver the records in another order than the in-memory runner.
    assert example_file_contents(other_dir) == example_file_contents(output_dir)
    for name in ("users", "items", "words", "item_clicks"):
        suffix = "tsv" if name == "item_clicks" else "txt"
        with (
            open(os.path.join(output_dir, "vocab", f"{name}.{suffix}")) as a,
            open(os.path.join(other_dir, "vocab", f"{name}.{suffix}")) as b,
        ):
            assert a.read() == b.read(), name
    for kind in ("items", "users"):
        pattern = os.path.join("side_features", f"{kind}-*.jsonl")
        key = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
        assert sorted(map(key, read_jsonl(os.path.join(output_dir, pattern)))) == sorted(
            map(key, read_jsonl(os.path.join(str(other_dir), pattern)))
        )


# --- event log (dead letters, CSV vs Parquet, CLI) -------------------------------------------

# Line number (1-based, header = 1) -> the reason planted there (tests/fixtures/README.md).
EVENT_LOG_REJECTS = {
    6: es.REJECT_MISSING_USER,
    10: es.REJECT_BAD_TIMESTAMP,
    15: es.REJECT_BAD_SCENARIO,
    18: es.REJECT_BAD_QUERY,
    20: es.REJECT_MISSING_ITEM,
    22: es.REJECT_BAD_CLICK,
    25: es.REJECT_MISSING_SESSION,
    28: es.REJECT_BAD_ROW,
}
EVENT_LOG_DATA_ROWS = 29  # 30 physical lines after the header; lines 12-13 are one row
EVENT_LOG_OPTIONS = sb.BuildOptions(
    split="loo",
    clicks_per_session=5,
    num_train_negatives=2,
    num_eval_negatives=3,
    rec_len=4,
    search_len=4,
    query_len=3,
)
EVENT_LOG_CLI_FLAGS = [
    "--num_train_negatives",
    "2",
    "--num_eval_negatives",
    "3",
    "--rec_len",
    "4",
    "--search_len",
    "4",
    "--query_len",
    "3",
]
# alice: rec targets i4 i6 i8, search a2 a3 a4; bob: rec i3 i1, search b2 b4;
# carol: rec i13, search c2 (leave-one-out per scenario).
EVENT_LOG_EXAMPLES = {
    "train": {"rec": 1, "search": 1},
    "valid": {"rec": 2, "search": 2},
    "test": {"rec": 3, "search": 3},
}
EVENT_LOG_COUNTERS = {
    "users": 3,
    "events": 21,
    "rec_impressions_without_click": 1,  # line 16
    "search_sessions": 9,
    "search_sessions_without_click": 1,  # b3, line 19
    "rec_targets_below_min_history": 3,  # alice i1, bob i2, carol i11
    "search_targets_below_min_history": 3,  # a1, b1, c1
    "input_rows": 29,  # = events 21 + rejected 8
    "csv_rows_spanning_several_lines": 1,  # lines 12-13
}
# i1 on 3 rows; i2 i3 i4 i9 on 2; the rest on 1, ties by raw id ("i10" < "i5").
EVENT_LOG_ITEMS = [
    "i1",
    "i2",
    "i3",
    "i4",
    "i9",
    "i10",
    "i11",
    "i12",
    "i13",
    "i14",
    "i5",
    "i6",
    "i7",
    "i8",
]
EVENT_LOG_ITEM_CLICKS = {
    "i1": 3,
    "i2": 2,
    "i3": 1,
    "i4": 2,
    "i9": 2,
    "i10": 1,
    "i11": 1,
    "i12": 1,
    "i13": 1,
    "i14": 1,
    "i5": 1,
    "i6": 1,
    "i7": 0,
    "i8": 1,
}
EVENT_LOG_WORDS = ["w1", "w2", "w3", "w4", "w5"]  # 6, 5, 2, 2, 2 rows


def run_event_log(paths, output_dir, beam_args=IN_MEMORY, options=EVENT_LOG_OPTIONS, **run_args):
    inputs = event_log.EventLogInputs(events=tuple(str(p) for p in paths))
    return beam_job.run(
        lambda pipeline: event_log.read(pipeline, inputs),
        options,
        str(output_dir),
        dataset="event_log",
        inputs={"events": [str(p) for p in paths]},
        beam_args=beam_args,
        **run_args,
    )


@pytest.fixture(scope="module")
def event_log_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("event_log") / "out"
    manifest = run_event_log([EVENTS_CSV], output_dir)
    return str(output_dir), manifest


def good_event_rows():
    """The fixture's rows minus the planted bad ones, as {column: cell}, in file order."""
    rows = []
    with open(EVENTS_CSV, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        next_line = reader.line_num + 1
        for cells in reader:
            line, next_line = next_line, reader.line_num + 1
            if line not in EVENT_LOG_REJECTS:
                rows.append(dict(zip(header, cells)))
    return rows


@pytest.mark.slow
def test_event_log_dead_letters_one_per_planted_reason(event_log_run):
    output_dir, manifest = event_log_run
    assert manifest["rejected"] == {reason: 1 for reason in EVENT_LOG_REJECTS.values()}
    assert manifest["rejected_total"] == 8
    rejected = read_jsonl(os.path.join(output_dir, "rejected", "rejected-*.jsonl"))
    assert {(row["line"], row["reason"]) for row in rejected} == set(EVENT_LOG_REJECTS.items())
    assert len(rejected) == 8
    for row in rejected:
        assert row["source"] == EVENTS_CSV
        assert row["detail"]
    by_line = {row["line"]: row for row in rejected}
    assert "yesterday" in by_line[10]["raw"]
    assert "ads" in by_line[15]["raw"]
    assert "lots" in by_line[22]["raw"]
    assert by_line[28]["raw"] == "rec,1,carol,i13"
    assert "4 cells" in by_line[28]["detail"]
    # The row as it is in the file, CSV quoting included (it used to be the cells re-joined).
    assert by_line[18]["raw"] == 'search,1,alice,"[1, [2]",i8,6500,a9'
    assert all("raw_base64" not in row for row in rejected)  # all of them are UTF-8


@pytest.mark.slow
def test_event_log_good_rows_still_make_examples(event_log_run):
    output_dir, manifest = event_log_run
    assert manifest["examples"] == EVENT_LOG_EXAMPLES
    assert manifest["counters"] == EVENT_LOG_COUNTERS
    assert len(good_event_rows()) == 21
    # Nothing silently dropped: every data row is an event or a dead letter.
    assert manifest["counters"]["events"] + manifest["rejected_total"] == EVENT_LOG_DATA_ROWS
    records = read_records(output_dir)
    assert sum(len(v) for v in records.values()) == 12


@pytest.mark.slow
def test_event_log_vocab_files_line_k_is_id_k(event_log_run):
    output_dir, manifest = event_log_run
    items = read_vocab(output_dir, "items")
    assert items == EVENT_LOG_ITEMS
    assert read_vocab(output_dir, "users") == ["alice", "bob", "carol"]  # 10, 7, 4 rows
    assert read_vocab(output_dir, "words") == EVENT_LOG_WORDS
    assert manifest["vocab_sizes"] == {"users": 3, "items": 14, "words": 5}
    with open(os.path.join(output_dir, "vocab", "item_clicks.tsv"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert lines[0] == "item_id\tid\tclicks"
    assert lines[1:] == [
        f"{raw}\t{k}\t{EVENT_LOG_ITEM_CLICKS[raw]}"
        for k, raw in enumerate(EVENT_LOG_ITEMS, start=1)
    ]
    # alice's test rec target i8 (line 26, empty click = 1) after r i1, S a1, r i4, S a2, r i6,
    # S a3 (the impression i7 is not history): ids through items.txt / words.txt.
    alice = _user_example(read_records(output_dir), "test", "rec", 1)
    assert alice[fs.CANDIDATE_ITEMS][0] == 14 and items[14 - 1] == "i8"
    assert alice[fs.REC_HISTORY_ITEMS] == [1, 4, 12, 0]  # i1, i4, i6
    assert [items[i - 1] for i in alice[fs.REC_HISTORY_ITEMS] if i] == ["i1", "i4", "i6"]
    assert alice[fs.HISTORY_TYPES] == [1, 2, 1, 2, 1, 2, 0, 0]
    assert rows_of(alice[fs.SEARCH_HISTORY_QUERY_TOKENS], 3) == [
        [1, 2, 0],
        [2, 3, 0],
        [3, 0, 0],
        [0, 0, 0],
    ]  # [w1, w2], "w2 w3", [w3]
    assert rows_of(alice[fs.SEARCH_HISTORY_CLICKED_ITEMS], 5) == [
        [2, 0, 0, 0, 0],
        [11, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [0] * 5,
    ]  # i2 (not i3), i5, i1
    # bob's valid search b2: its query cell "[w4,\nw1]" spans two physical lines.
    bob = _user_example(read_records(output_dir), "valid", "search", 2)
    assert bob[fs.QUERY_TOKENS] == [4, 1, 0]
    assert items[bob[fs.CANDIDATE_ITEMS][0] - 1] == "i4"


@pytest.mark.slow
def test_event_log_parquet_gives_the_same_examples_as_csv(event_log_run, tmp_path):
    output_dir, manifest = event_log_run
    rows = good_event_rows()

    def optional(cell):
        return cell if cell else None

    # Columns in yet another order; query_tokens as a list column, empty cells as nulls.
    table = pa.table(
        {
            "query_tokens": pa.array(
                [
                    re.findall(r"[A-Za-z0-9_]+", r["query_tokens"])
                    if r["scenario"] == "search"
                    else None
                    for r in rows
                ],
                pa.list_(pa.string()),
            ),
            "timestamp": pa.array([int(r["timestamp"]) for r in rows], pa.int64()),
            "user_id": [r["user_id"] for r in rows],
            "item_id": [optional(r["item_id"]) for r in rows],
            "search_session_id": [optional(r["search_session_id"]) for r in rows],
            "click": pa.array([int(r["click"]) if r["click"] else None for r in rows], pa.int64()),
            "scenario": [r["scenario"] for r in rows],
        }
    )
    parquet_path = tmp_path / "events.parquet"
    pq.write_table(table, parquet_path)
    parquet_out = tmp_path / "out"
    parquet_manifest = run_event_log([parquet_path], parquet_out)
    assert parquet_manifest["rejected"] == {}
    assert parquet_manifest["examples"] == manifest["examples"] == EVENT_LOG_EXAMPLES
    # The same counters but for the rows read: the Parquet file holds only the 21 good rows.
    csv_only = ("input_rows", "csv_rows_spanning_several_lines")
    assert parquet_manifest["counters"] == dict(
        {k: v for k, v in manifest["counters"].items() if k not in csv_only}, input_rows=21
    )
    assert read_records(parquet_out) == read_records(output_dir)
    for name in ("users", "items", "words"):
        assert read_vocab(str(parquet_out), name) == read_vocab(output_dir, name)


def test_event_log_missing_required_csv_column_fails_before_running(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,timestamp,item_id\nalice,1,i1\n")
    with pytest.raises(ValueError, match=r"scenario") as raised:
        event_log.read(beam.Pipeline(), event_log.EventLogInputs(events=(str(path),)))
    assert str(path) in str(raised.value)


def test_event_log_missing_required_parquet_column_fails_before_running(tmp_path):
    path = tmp_path / "events.parquet"
    pq.write_table(pa.table({"user_id": ["alice"], "timestamp": [1], "item_id": ["i1"]}), path)
    with pytest.raises(ValueError, match=r"scenario") as raised:
        event_log.read(beam.Pipeline(), event_log.EventLogInputs(events=(str(path),)))
    assert str(path) in str(raised.value)


# Issue 23 items 7 and 9 (query_len): query words in any script, one of them written
# decomposed ("e" + U+0301), and a 6-word query cut to query_len 3.
EMOJI = "\U0001f469\u200d\U0001f373"  # woman cook: a ZWJ sequence, one word
UNICODE_ROWS = [
    ("ana", 1, "rec", "i1", "", ""),
    ("ana", 2, "search", "i2", "s1", "éclair crème"),
    ("ana", 3, "search", "i3", "s2", f"e\u0301clair 咖啡 قهوة {EMOJI}x cut2 cut3"),
    ("ana", 4, "rec", "i4", "", ""),
    ("bo", 1, "rec", "i5", "", ""),
    ("bo", 2, "search", "i6", "s3", f"[{EMOJI}, 咖啡]"),
    ("bo", 3, "rec", "i7", "", ""),
]
UNICODE_OPTIONS = sb.BuildOptions(
    split="loo",
    clicks_per_session=1,
    num_train_negatives=1,
    num_eval_negatives=1,
    rec_len=2,
    search_len=2,
    query_len=3,
    min_rec_history=0,
    min_search_history=0,
)


def test_only_the_first_query_len_words_of_a_query_are_counted_for_the_vocabulary():
    """Issue 23: one 15,000-word query added 15,000 words to vocab/words.txt, though an
    example holds only its first query_len words."""
    event = es.Event(
        "u", 1, es.SCENARIO_SEARCH, "i1", 1, "s1", tuple(f"w{k}" for k in range(15_000))
    )
    keys = list(beam_job._vocab_keys(event, query_len=50))
    assert [raw for kind, raw in keys if kind == "word"] == [f"w{k}" for k in range(50)]
    assert [key for key in keys if key[0] != "word"] == [
        ("user", "u"),
        ("item", "i1"),
        ("click", "i1"),
    ]


@pytest.mark.slow  # one Beam run (~10 s on the shared 2-core machine)
def test_query_words_of_any_script_round_trip_through_the_vocabulary_into_the_examples(tmp_path):
    """Before: every search row above was dead-lettered as malformed_query_tokens (only
    [A-Za-z0-9_-.:] was a word), and a query's words past query_len entered the vocabulary.
    Now: words of any script, NFC-normalised (both spellings of éclair are one word), in
    vocab/words.txt one per line and in the examples; the cut words nowhere."""
    path = tmp_path / "events.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["user_id", "timestamp", "scenario", "item_id", "search_session_id", "query_tokens"]
        )
        writer.writerows(UNICODE_ROWS)
    output_dir = tmp_path / "out"
    inputs = event_log.EventLogInputs(events=(str(path),))
    manifest = beam_job.run(
        lambda p: event_log.read(p, inputs),
        UNICODE_OPTIONS,
        str(output_dir),
        dataset="event_log",
        inputs={},
        beam_args=IN_MEMORY,
    )
    assert manifest["rejected"] == {}
    assert manifest["counters"]["queries_truncated_to_query_len"] == 1  # s2
    # Rows per word: éclair 2 (s1, s2: composed and decomposed), 咖啡 2 (s2, s3), the rest 1;
    # ties by code point. "<emoji>x", cut2 and cut3 are s2's words 4-6: not words.
    words = read_vocab(output_dir, "words")
    assert words == ["\u00e9clair", "咖啡", "crème", "قهوة", EMOJI]
    assert manifest["vocab_sizes"]["words"] == 5
    with open(output_dir / "vocab" / "words.txt", "rb") as handle:
        assert handle.read() == "".join(f"{w}\n" for w in words).encode("utf-8")
    records = read_records(output_dir)
    users = read_vocab(output_dir, "users")

    def query(example, feature=fs.QUERY_TOKENS):
        return [words[t - 1] for t in example[feature] if t]

    # Leave-one-out per scenario: ana's s2 and bo's s3 are test, ana's s1 validation.
    test = {users[decode(r)[fs.USER_ID][0] - 1]: decode(r) for r in records[("test", "search")]}
    [valid] = [decode(r) for r in records[("valid", "search")]]
    assert query(test["ana"]) == ["\u00e9clair", "咖啡", "قهوة"]
    assert query(test["bo"]) == [EMOJI, "咖啡"]
    assert query(valid) == ["\u00e9clair", "crème"]
    assert query(test["ana"], fs.SEARCH_HISTORY_QUERY_TOKENS) == ["\u00e9clair", "crème"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """build_examples.main on the event-log fixture: (output_dir, returned manifest, stdout)."""
    output_dir = tmp_path_factory.mktemp("cli") / "out"
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # main() reconfigures the root logger
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            manifest = build_examples.main(
                ["--dataset", "event_log", "--events", EVENTS_CSV, "--output", str(output_dir)]
                + EVENT_LOG_CLI_FLAGS
                + IN_MEMORY
            )
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return str(output_dir), manifest, stdout.getvalue()


@pytest.mark.slow
def test_cli_main_prints_and_returns_the_manifest(cli_run, event_log_run):
    output_dir, returned, printed = cli_run
    written = beam_job.load_manifest(output_dir)
    assert json.loads(printed) == written
    assert json.loads(json.dumps(returned)) == written
    assert written["dataset"] == "event_log"
    assert written["inputs"] == {"events": [EVENTS_CSV], "max_rows_per_file": 0}
    assert written["beam_args"] == IN_MEMORY
    assert written["build_options"]["split"] == "loo"  # the event_log defaults
    assert written["build_options"]["clicks_per_session"] == 5
    assert written["shapes"]["train_candidates"] == 3
    assert written["shapes"]["eval_candidates"] == 4
    assert written["examples"] == EVENT_LOG_EXAMPLES
    assert written["rejected"] == {reason: 1 for reason in EVENT_LOG_REJECTS.values()}
    assert written["counters"] == EVENT_LOG_COUNTERS
    # Same options as the in-process run: the same examples.
    assert read_records(output_dir) == read_records(event_log_run[0])


@pytest.mark.slow
def test_cli_main_returns_what_it_writes(cli_run):
    output_dir, returned, _ = cli_run
    assert returned == beam_job.load_manifest(output_dir)


# --- Amazon (semi-synthetic search) -----------------------------------------------------------

AMAZON_SEQUENCES = (
    "u1 A B C D E F\n"
    "u2 B C G H\n"
    "\n"
    "u6\n"  # line 4: a user without items -> malformed_row
    "u3 A C E G H I J\n"
    "u4 D E F K N\n"
    "u5 L A B\n"
)
AMAZON_USERS = {"u1": "ABCDEF", "u2": "BCGH", "u3": "ACEGHIJ", "u4": "DEFKN", "u5": "LAB"}
# c1 and c2 are on 6 items each, c3 on exactly 3 (the threshold); b1 on 2 (just under it),
# b2..b10 on 1.
AMAZON_ATTRIBUTES = {
    "A": ["b1", "c1", "c2"],
    "B": ["b2", "c1", "c2"],
    "C": ["b3", "c1", "c3"],
    "D": ["b1", "c1"],
    "E": ["b4", "c2"],
    "F": ["b5"],
    "G": ["c3", "b6", "c1"],
    "H": ["b7", "c3"],
    "I": ["b8"],
    "J": ["c1", "c1", "c2"],
    "K": [],
    "L": ["c2", "b9"],
    "M": ["b10", "c2"],
}
# Frequent attributes in the item's file order, without repeats; F, I, K and N (no
# attributes entry) have no query, so a search draw on them stays a rec behaviour.
AMAZON_QUERIES = {
    "A": ["c1", "c2"],
    "B": ["c1", "c2"],
    "C": ["c1", "c3"],
    "D": ["c1"],
    "E": ["c2"],
    "G": ["c3", "c1"],
    "H": ["c3"],
    "J": ["c1", "c2"],
    "L": ["c2"],
    "M": ["c2"],
}
AMAZON_MIN_FREQUENCY = 3


def amazon_options(seed, max_users=0):
    return sb.BuildOptions(
        seed=seed,
        split="loo",
        clicks_per_session=1,
        num_train_negatives=1,
        num_eval_negatives=2,
        rec_len=5,
        search_len=5,
        query_len=3,
        max_users=max_users,
    )


def amazon_reference(seed, users=AMAZON_USERS):
    """(examples per (split, scenario), demoted search draws, {(user, position) searched}) by
    the documented rule: a search iff the seeded draw says so and the item has a query;
    targets need one prior rec and one prior search; leave-one-out per scenario."""
    counts, demoted, searched = collections.Counter(), 0, set()
    for user in users:
        scenarios = []
        for position, item in enumerate(AMAZON_USERS[user]):
            draw = amazon.is_search_draw(seed, user, position, 0.5)
            if draw and item in AMAZON_QUERIES:
                scenarios.append("search")
                searched.add((user, position))
            else:
                demoted += draw
                scenarios.append("rec")
        targets = collections.defaultdict(list)
        for position, scenario in enumerate(scenarios):
            if "rec" in scenarios[:position] and "search" in scenarios[:position]:
                targets[scenario].append(position)
        for scenario, positions in targets.items():
            for rank in range(len(positions)):
                counts[("test" if rank == 0 else "valid" if rank == 1 else "train", scenario)] += 1
    return counts, demoted, searched


@pytest.fixture(scope="module")
def amazon_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("amazon")
    sequences, attributes = root / "sequences.txt", root / "attributes.json"
    sequences.write_text(AMAZON_SEQUENCES)
    attributes.write_text(json.dumps(AMAZON_ATTRIBUTES))
    return str(sequences), str(attributes)


def run_amazon(files, output_dir, seed, max_users=0):
    inputs = amazon.AmazonInputs(
        sequences=files[0],
        attributes=files[1],
        search_fraction=0.5,
        query_min_item_frequency=AMAZON_MIN_FREQUENCY,
        seed=seed,
    )
    return beam_job.run(
        lambda pipeline: amazon.read(pipeline, inputs),
        amazon_options(seed, max_users),
        str(output_dir),
        dataset="amazon",
        inputs={"sequences": files[0]},
        beam_args=IN_MEMORY,
    )


@pytest.fixture(scope="module")
def amazon_runs(amazon_files, tmp_path_factory):
    """seed 0 twice and seed 1 once: {name: (output_dir, manifest)}."""
    runs = {}
    for name, seed in (("seed0", 0), ("seed0_again", 0), ("seed1", 1)):
        output_dir = tmp_path_factory.mktemp(f"amazon_{name}") / "out"
        runs[name] = (str(output_dir), run_amazon(amazon_files, output_dir, seed))
    return runs


def test_amazon_category_queries_keep_frequent_attributes(amazon_files):
    attributes = amazon.load_attributes(amazon_files[1])
    queries = amazon.category_queries(attributes, AMAZON_MIN_FREQUENCY)
    assert {item: list(query) for item, query in queries.items()} == AMAZON_QUERIES


@pytest.mark.slow
@pytest.mark.parametrize("name,seed", [("seed0", 0), ("seed1", 1)])
def test_amazon_counts_match_the_documented_rule(amazon_runs, name, seed):
    output_dir, manifest = amazon_runs[name]
    counts, demoted, _ = amazon_reference(seed)
    assert manifest["examples"] == examples_dict(counts)
    assert manifest["counters"]["events"] == 25
    assert manifest["counters"]["users"] == 5
    assert manifest["counters"].get("amazon_search_draws_kept_as_rec_no_query", 0) == demoted
    assert manifest["rejected"] == {es.REJECT_BAD_ROW: 1}
    rejected = read_jsonl(os.path.join(output_dir, "rejected", "rejected-*.jsonl"))
    assert [(row["line"], row["raw"]) for row in rejected] == [(4, "u6")]


@pytest.mark.slow
def test_amazon_search_queries_are_the_clicked_items_categories(amazon_runs):
    output_dir, manifest = amazon_runs["seed0"]
    items = read_vocab(output_dir, "items")
    words = read_vocab(output_dir, "words")
    frequent = {"c1", "c2", "c3"}
    assert set(words) <= frequent  # never a brand (b*), not even b1 on 2 items
    records = read_records(output_dir)
    searches = 0
    for (_split, scenario), serialized in records.items():
        for record in serialized:
            example = decode(record)
            # History rows: each session's query is its clicked item's categories.
            queries = rows_of(example[fs.SEARCH_HISTORY_QUERY_TOKENS], 3)
            clicks = example[fs.SEARCH_HISTORY_CLICKED_ITEMS]  # clicks_per_session 1
            for query, clicked in zip(queries, clicks):
                if clicked:
                    assert [words[t - 1] for t in query if t] == AMAZON_QUERIES[items[clicked - 1]]
            if scenario == "search":
                searches += 1
                positive = items[example[fs.CANDIDATE_ITEMS][0] - 1]
                query = [words[t - 1] for t in example[fs.QUERY_TOKENS] if t]
                assert query == AMAZON_QUERIES[positive]
            else:
                assert fs.QUERY_TOKENS not in example
    assert searches == sum(manifest["examples"][split]["search"] for split in SPLITS) > 0


@pytest.mark.slow
def test_amazon_is_deterministic_given_the_seed(amazon_runs):
    first, again, other = (amazon_runs[name] for name in ("seed0", "seed0_again", "seed1"))
    assert read_records(first[0]) == read_records(again[0])
    assert example_file_contents(first[0]) == example_file_contents(again[0])
    for name in ("users", "items", "words"):
        assert read_vocab(first[0], name) == read_vocab(again[0], name)
    assert first[1]["examples"] == again[1]["examples"]
    # Another seed draws other searches, hence other examples.
    assert amazon_reference(0)[2] != amazon_reference(1)[2]
    assert read_records(first[0]) != read_records(other[0])


@pytest.mark.slow
def test_amazon_files_do_not_depend_on_the_input_line_order(amazon_runs, amazon_files, tmp_path):
    # Users in reverse order (and the malformed line moved) reach the workers in another
    # order; the example files must still be the same, record for record.
    lines = [line for line in AMAZON_SEQUENCES.splitlines(keepends=True) if line.strip()]
    reversed_sequences = tmp_path / "sequences.txt"
    reversed_sequences.write_text("".join(reversed(lines)))
    output_dir = tmp_path / "out"
    run_amazon((str(reversed_sequences), amazon_files[1]), output_dir, seed=0)
    first_dir, first_manifest = amazon_runs["seed0"]
    assert example_file_contents(output_dir) == example_file_contents(first_dir)
    for name in ("users", "items", "words"):
        assert read_vocab(str(output_dir), name) == read_vocab(first_dir, name)


@pytest.mark.slow
def test_each_user_shard_holds_its_users_examples_in_hash_order(amazon_files, tmp_path):
    """The files are per shard of the users (pipeline.ordered_write.UserShardFiles): every
    example of a user is in the files of the user's shard, users in hash order, each user's
    examples together; every shard has its file for each split and scenario."""
    inputs = amazon.AmazonInputs(
        sequences=amazon_files[0],
        attributes=amazon_files[1],
        search_fraction=0.5,
        query_min_item_frequency=AMAZON_MIN_FREQUENCY,
        seed=0,
    )
    output_dir = str(tmp_path / "out")
    manifest = beam_job.run(
        lambda pipeline: amazon.read(pipeline, inputs),
        amazon_options(0),
        output_dir,
        dataset="amazon",
        inputs={},
        beam_args=IN_MEMORY,
        num_shards=3,
    )
    users = read_vocab(output_dir, "users")
    contents = example_file_contents(output_dir)
    assert len(contents) == 6 * 3 and all("-of-00003" in path for path in contents)
    seen = collections.Counter()
    for path, records in contents.items():
        shard = int(path.rsplit("-of-", 1)[0][-5:])
        order = [users[decode(record)[fs.USER_ID][0] - 1] for record in records]
        assert all(ordered_write.user_shard(user, 3) == shard for user in order), path
        keys = [(ordered_write.user_hash(user), user) for user in order]
        assert keys == sorted(keys), path
        seen.update(order)
    assert sum(seen.values()) == manifest["examples_total"]
    assert len(seen) == manifest["counters"]["users"]


@pytest.mark.slow  # runs the Beam job several times
def test_max_users_keeps_exactly_n_users_deterministically(amazon_files, tmp_path):
    chosen = sorted(AMAZON_USERS, key=lambda user: sb.stable_hash(0, "user", user))[:2]
    outputs = []
    for name in ("a", "b"):
        output_dir = tmp_path / name
        manifest = run_amazon(amazon_files, output_dir, seed=0, max_users=2)
        outputs.append((str(output_dir), manifest))
    (dir_a, manifest_a), (dir_b, manifest_b) = outputs
    users = read_vocab(dir_a, "users")
    assert sorted(users) == sorted(chosen) and len(users) == 2
    assert manifest_a["vocab_sizes"]["users"] == 2
    assert manifest_a["counters"]["users"] == 2
    kept_events = sum(len(AMAZON_USERS[user]) for user in chosen)
    assert manifest_a["counters"]["events"] == kept_events
    assert manifest_a["counters"]["events_of_users_not_selected_by_max_users"] == 25 - kept_events
    assert manifest_a["examples"] == examples_dict(amazon_reference(0, users=chosen)[0])
    records = read_records(dir_a)
    seen = {users[decode(r)[fs.USER_ID][0] - 1] for rs in records.values() for r in rs}
    assert seen <= set(chosen)
    # Deterministic: a second run keeps the same users and writes the same examples.
    assert read_vocab(dir_b, "users") == users
    assert read_records(dir_b) == records
    assert manifest_b["examples"] == manifest_a["examples"]


# --- bad input (issue 15): bytes, ids, quotes, heavy users, failed re-runs -------------------


def _tree(root):
    """{relative path: bytes} of every file under root."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, root)] = handle.read()
    return files


def _leftovers(output_dir):
    """Staging / set-aside folders next to output_dir and beam-temp folders inside it."""
    parent, name = os.path.split(str(output_dir).rstrip("/"))
    beside = [
        entry
        for entry in os.listdir(parent)
        if entry.startswith(name + beam_job.STAGING_INFIX)
        or entry.startswith(name + beam_job.PREVIOUS_INFIX)
    ]
    inside = [
        os.path.join(folder, entry)
        for folder, entries, _ in os.walk(output_dir)
        for entry in entries
        if entry.startswith("beam-temp")
    ]
    return beside + inside


# The event-log fixture (31 lines) behind a UTF-8 byte-order mark, then, from line 32:
BAD_ROWS = (
    [
        (32, b"rec,1,bo\xffb,,i1,100,\n", es.REJECT_NOT_UTF8),  # not UTF-8
        (33, b"rec,1,bob,,i\x001,100,\n", es.REJECT_UNSAFE_ID),  # NUL in an id
        (34, b'rec,1,alice,,"i\n', es.REJECT_UNSAFE_ID),  # quoted newline in an id:
        (35, b'2",9100,\n', es.REJECT_BAD_ROW),  # ... its 2nd line re-read
        (36, b"rec,1,alice,,i\t2,9200,\n", es.REJECT_UNSAFE_ID),  # tab in an id
        (37, b"rec,1,dave,,i1,100,\n", None),
        (38, b"search,1,dave,[w1],i2,200,d1\n", None),
        (39, b"rec,1,dave,,i3,300,\n", None),
        (40, b"rec,1,dave,,i3,300,\n", None),  # duplicate of line 39
        (41, b"search,1,hank,[w1],i1,50,h1\n", None),  # hank: every item
    ]
    + [
        (42 + k, f"rec,1,hank,,i{k + 2},{60 + k},\n".encode(), None)  # but i14 -> skipped
        for k in range(12)
    ]
    + [
        (54, b'rec,1,erin,,i5,500,"oops\n', es.REJECT_BAD_ROW),  # quote never closed
        (55, b"rec,1,erin,,i6,600,\n", None),  # ... rows after it
        (56, b"search,1,erin,[w2],i7,700,e1\n", None),  # are read again
        (57, b"rec,1,erin,,i8,800,\n", None),
    ]
)
HANK_FIRST_LINE = 41


@pytest.fixture(scope="module")
def bad_input_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    with open(EVENTS_CSV, "rb") as handle:
        fixture = handle.read()
    assert fixture.count(b"\n") == 31
    path = root / "events.csv"
    path.write_bytes(b"\xef\xbb\xbf" + fixture + b"".join(row for _, row, _ in BAD_ROWS))
    output_dir = root / "out"
    manifest = run_event_log([path], output_dir)
    return str(path), str(output_dir), manifest


@pytest.mark.slow
def test_bad_bytes_ids_and_quotes_become_dead_letters_and_the_job_goes_on(bad_input_run):
    """Issue 15 items 2 and 3 and the smaller ones: a BOM, a non-UTF-8 byte, a NUL, ids with
    a newline or a tab, an unterminated quote: each bad row is one dead letter with file and
    line, the rows after the quote are read again, nothing aborts the job."""
    path, output_dir, manifest = bad_input_run
    expected = dict(EVENT_LOG_REJECTS)
    expected.update({line: reason for line, _, reason in BAD_ROWS if reason})
    expected[HANK_FIRST_LINE] = es.REJECT_TOO_FEW_NEGATIVES
    rejected = read_jsonl(os.path.join(output_dir, "rejected", "rejected-*.jsonl"))
    assert sorted((row["line"], row["reason"]) for row in rejected) == sorted(expected.items())
    assert manifest["rejected"] == dict(collections.Counter(expected.values()))
    assert all(row["source"] == path for row in rejected)
    by_line = {row["line"]: row for row in rejected}
    # Dead letters keep the row exactly: bytes that are not UTF-8 in raw_base64.
    not_utf8 = by_line[32]
    assert not_utf8["raw"] == "rec,1,bo\\xffb,,i1,100,"
    assert base64.b64decode(not_utf8["raw_base64"]) == b"rec,1,bo\xffb,,i1,100,"
    assert "byte 9" in not_utf8["detail"] and "line 32" in not_utf8["detail"]
    assert by_line[33]["raw"] == "rec,1,bob,,i\x001,100,"
    assert by_line[34]["raw"] == 'rec,1,alice,,"i' and "'\\n'" in by_line[34]["detail"]
    assert by_line[36]["raw"] == "rec,1,alice,,i\t2,9200,"
    assert by_line[54]["raw"] == 'rec,1,erin,,i5,500,"oops'
    assert "lines 55-57 are read again" in by_line[54]["detail"]
    # The rows after the unterminated quote are events, not part of a cell.
    assert "erin" in read_vocab(output_dir, "users")
    counters = manifest["counters"]
    assert counters["duplicate_events"] == 1  # line 40, kept and counted
    # Every data row is an event, a dead letter, or an event of the skipped user.
    rows = 29 + len(BAD_ROWS)
    assert counters["input_rows"] == rows
    assert (
        counters["events"] + counters["events_of_skipped_users"] + manifest["rejected_total"] - 1
    ) == rows


@pytest.mark.slow
def test_ids_round_trip_through_the_vocabulary_files(bad_input_run):
    """Issue 15 item 3: line k of vocab/*.txt is id k, however the lines are split."""
    _, output_dir, manifest = bad_input_run
    for name in ("users", "items", "words"):
        with open(os.path.join(output_dir, "vocab", f"{name}.txt"), "rb") as handle:
            data = handle.read()
        assert (
            data.count(b"\n")
            == len(data.decode("utf-8").splitlines())
            == manifest["vocab_sizes"][name]
        ), name
        assert b"\t" not in data and b"\r" not in data and b"\x00" not in data
    with open(os.path.join(output_dir, "vocab", "item_clicks.tsv"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert len(lines) == 1 + manifest["vocab_sizes"]["items"]
    assert all(len(line.split("\t")) == 3 for line in lines)


@pytest.mark.slow
def test_a_user_without_enough_negatives_is_skipped_not_fatal(bad_input_run):
    """Issue 15 item 6: hank touched 13 of the 14 items; an evaluation example needs 3
    negatives: hank is dead-lettered by id, his events counted, everyone else built."""
    _, output_dir, manifest = bad_input_run
    rejected = read_jsonl(os.path.join(output_dir, "rejected", "rejected-*.jsonl"))
    [hank] = [row for row in rejected if row["reason"] == es.REJECT_TOO_FEW_NEGATIVES]
    assert hank["raw"] == "hank" and "'hank'" in hank["detail"]
    assert "needs 3 negatives, but only 1 of the 14 items" in hank["detail"]
    assert manifest["counters"]["events_of_skipped_users"] == 13
    assert manifest["counters"]["users"] == 5  # alice, bob, carol, dave, erin
    hank_id = read_vocab(output_dir, "users").index("hank") + 1
    records = read_records(output_dir)
    assert all(decode(r)[fs.USER_ID] != [hank_id] for rs in records.values() for r in rs)
    assert manifest["examples_total"] > 12  # the fixture's 12 and dave's and erin's


@pytest.fixture()
def previous_output(event_log_run, tmp_path):
    """A copy of a good run's output, plus a file of the user's own in that folder."""
    output_dir = tmp_path / "out"
    shutil.copytree(event_log_run[0], output_dir)
    (output_dir / "NOTES.txt").write_text("mine")
    return output_dir, _tree(output_dir)


@pytest.mark.slow
def test_a_failed_rerun_keeps_the_previous_output(previous_output):
    """Issue 15 item 1: a mistyped --events path used to delete the earlier run's files
    before the inputs were checked."""
    output_dir, before = previous_output
    with pytest.raises(FileNotFoundError, match="no input file matches"):
        build_examples.run_job(
            build_examples.parse_args(
                [
                    "--dataset",
                    "event_log",
                    "--events",
                    str(output_dir / "nope-*.csv"),
                    "--output",
                    str(output_dir),
                ]
            )[0],
            IN_MEMORY,
        )
    assert _tree(output_dir) == before
    assert not _leftovers(output_dir)


class _FailOnBob(beam.DoFn):
    def process(self, event):
        if event.user_id == "bob":
            raise RuntimeError("worker failure on bob")
        yield event


@pytest.mark.slow
def test_a_job_failing_while_it_runs_keeps_the_previous_output_and_leaves_no_litter(
    previous_output,
):
    """Issue 15 item 1 and the beam-temp litter: the run fails inside the pipeline, after
    every writer has started; the previous files are intact and nothing else is left."""
    output_dir, before = previous_output
    inputs = event_log.EventLogInputs(events=(EVENTS_CSV,))

    def failing(pipeline):
        output = event_log.read(pipeline, inputs)
        output.events = output.events | "Fail" >> beam.ParDo(_FailOnBob())
        return output

    with pytest.raises(Exception, match="worker failure on bob"):
        beam_job.run(
            failing,
            EVENT_LOG_OPTIONS,
            str(output_dir),
            dataset="event_log",
            inputs={},
            beam_args=IN_MEMORY,
        )
    assert _tree(output_dir) == before
    assert not _leftovers(output_dir)


@pytest.mark.slow
def test_a_successful_rerun_replaces_the_previous_files_only(previous_output):
    """The staged run's files replace the old run's (no stale shard survives a new shard
    count); a file the job does not write stays."""
    output_dir, before = previous_output
    inputs = event_log.EventLogInputs(events=(EVENTS_CSV,))
    manifest = beam_job.run(
        lambda p: event_log.read(p, inputs),
        EVENT_LOG_OPTIONS,
        str(output_dir),
        dataset="event_log",
        inputs={},
        beam_args=IN_MEMORY,
        num_shards=3,
    )
    after = _tree(output_dir)
    assert after["NOTES.txt"] == b"mine"
    shards = sorted(p for p in after if p.endswith(beam_job.EXAMPLE_FILE_SUFFIX))
    assert len(shards) == 6 * 3 and all("-of-00003" in p for p in shards)
    assert json.loads(after[beam_job.MANIFEST_FILE]) == manifest
    assert manifest["examples"] == EVENT_LOG_EXAMPLES
    assert not _leftovers(output_dir)


@pytest.mark.slow
def test_a_header_only_input_fails_clearly_and_keeps_the_previous_output(previous_output, tmp_path):
    """A header-only CSV used to exit 0 with an empty vocabulary and no warning."""
    output_dir, before = previous_output
    empty = tmp_path / "empty.csv"
    empty.write_text("user_id,timestamp,scenario,item_id\n")
    with pytest.raises(
        ValueError,
        match=r"no usable event: 0 data rows read.*1 input "
        r"file\(s\) with a header and no rows.*as it was",
    ):
        run_event_log([empty], output_dir)
    assert _tree(output_dir) == before
    assert not _leftovers(output_dir)


# --- a re-run that builds less must not replace a good output (issue 23 item 2) -----------------


def _spec(examples, counters=None, rejected=None):
    """The data spec check_outputs reads: {(split, scenario): n} examples, counters."""
    shapes = sb.BuildOptions().shapes
    return DataSpec(
        vocab_sizes=VocabSizes(users=3, items=9, words=4),
        shapes=shapes,
        candidates=Candidates(train=2, eval=3),
        examples=ExampleCounts(examples_dict(examples)),
        examples_total=sum(examples.values()),
        counters=counters or {},
        rejected=rejected or {},
    )


ALL_SIX = {(split, scenario): 2 for split in SPLITS for scenario in SCENARIOS}
REC_ONLY = {(split, "rec"): 2 for split in SPLITS}


def test_check_outputs_refuses_a_run_without_examples_counting_every_event_read():
    """The one-user build used to warn "no example was built from 0 events" after reading
    182: the user was skipped for too few negatives, and only built users' events counted."""
    manifest = _spec({}, {"events_of_skipped_users": 182}, {es.REJECT_TOO_FEW_NEGATIVES: 1})
    with pytest.raises(
        beam_job.NotPublished,
        match=r"no example was built \(182 events of 1 "
        r"user\(s\) read; 1 user\(s\) skipped for too few negatives \(182 "
        r"events; see rejected/\).*Nothing was written: out/x is as it was",
    ):
        beam_job.check_outputs(manifest, EVENT_LOG_OPTIONS, None, "out/x")


def test_check_outputs_refuses_a_rec_only_rerun_with_default_flags():
    """The issue's reproduction: a rec-only log and the default minimum histories build no
    example at all; the message says why and what to set."""
    manifest = _spec({}, {"events": 40, "users": 4, "rec_targets_below_min_history": 36})
    with pytest.raises(beam_job.NotPublished) as raised:
        beam_job.check_outputs(manifest, sb.BuildOptions(), examples_dict(ALL_SIX), "out/x")
    message = str(raised.value)
    assert "40 events of 4 user(s) read" in message
    assert "0 search session(s) with a click" in message
    assert (
        "36 rec target(s) below the minimum history (--min_rec_history 1, "
        "--min_search_history 1; a log with one scenario builds with "
        "--min_search_history 0" in message
    )


def test_check_outputs_refuses_losing_a_split_the_previous_output_has_unless_allowed():
    previous = examples_dict(ALL_SIX)
    manifest = _spec(REC_ONLY, {"events": 40, "users": 4})
    with pytest.raises(beam_job.NotPublished) as raised:
        beam_job.check_outputs(manifest, EVENT_LOG_OPTIONS, previous, "out/x")
    assert (
        "no example for train/search, valid/search, test/search, which the output in "
        "out/x has (train/search: 2, valid/search: 2, test/search: 2)"
    ) in str(raised.value)
    assert "--allow_fewer_outputs" in str(raised.value)
    assert beam_job.check_outputs(
        manifest, EVENT_LOG_OPTIONS, previous, "out/x", allow_fewer_outputs=True
    ) == {"train/search": 2, "valid/search": 2, "test/search": 2}
    # Fewer examples, but none of the six missing, a first run, or a previous output that
    # had no search either: published.
    assert (
        beam_job.check_outputs(
            _spec({**ALL_SIX, ("test", "rec"): 1}), EVENT_LOG_OPTIONS, previous, "out/x"
        )
        == {}
    )
    assert beam_job.check_outputs(manifest, EVENT_LOG_OPTIONS, None, "out/x") == {}
    assert (
        beam_job.check_outputs(manifest, EVENT_LOG_OPTIONS, examples_dict(REC_ONLY), "out/x") == {}
    )


def _write_events(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["user_id", "timestamp", "scenario", "item_id", "search_session_id", "query_tokens"]
        )
        writer.writerows(rows)
    return path


@pytest.mark.slow  # two Beam runs
def test_a_rerun_without_search_keeps_the_previous_output_unless_allowed(previous_output, tmp_path):
    """Issue 23 item 2: a rec-only log re-run into a good output (here with
    --min_search_history 0, so it builds rec examples) exited 0 and left 0-example search
    files. Now it fails and the old output stays; --allow_fewer_outputs replaces it and the
    manifest says what the old one had."""
    output_dir, before = previous_output
    events = _write_events(
        tmp_path / "rec_only.csv",
        [
            (user, ts, "rec", f"i{k}", "", "")
            for k, (user, ts) in enumerate(
                [("ana", 1), ("ana", 2), ("ana", 3), ("ana", 4), ("bo", 1), ("bo", 2), ("bo", 3)]
            )
        ],
    )
    options = dataclasses.replace(EVENT_LOG_OPTIONS, min_search_history=0)
    with pytest.raises(
        beam_job.NotPublished,
        match=r"no example for train/search, "
        r"valid/search, test/search, which the output in .* has \(train/search: "
        r"1, valid/search: 2, test/search: 3\)",
    ):
        run_event_log([events], output_dir, options=options)
    assert _tree(output_dir) == before
    assert not _leftovers(output_dir)
    manifest = run_event_log([events], output_dir, options=options, allow_fewer_outputs=True)
    # Rec targets after the first (--min_rec_history 1): ana 3 -> train, valid, test;
    # bo 2 -> valid, test.
    assert manifest["examples"] == examples_dict(
        {("train", "rec"): 1, ("valid", "rec"): 2, ("test", "rec"): 2}
    )
    assert manifest["fewer_outputs_than_previous"] == {
        "train/search": 1,
        "valid/search": 2,
        "test/search": 3,
    }
    after = _tree(output_dir)
    assert json.loads(after[beam_job.MANIFEST_FILE]) == manifest
    assert after["NOTES.txt"] == b"mine"
    assert not _leftovers(output_dir)


@pytest.mark.slow  # one Beam run
def test_a_one_user_log_fails_counting_its_events_and_keeps_the_previous_output(
    previous_output, tmp_path
):
    """Issue 23: a log of one user (every item is the user's, so no negative exists and the
    user is skipped) replaced a good output with 0-example files, warning "no example was
    built from 0 events"."""
    output_dir, before = previous_output
    rows = [
        ("ana", 1, "rec", "i1", "", ""),
        ("ana", 2, "search", "i2", "s1", "w1"),
        ("ana", 3, "rec", "i3", "", ""),
        ("ana", 4, "search", "i4", "s2", "w2"),
        ("ana", 5, "rec", "i5", "", ""),
    ]
    events = _write_events(tmp_path / "one_user.csv", rows)
    with pytest.raises(
        beam_job.NotPublished,
        match=r"no example was built \(5 events of 1 "
        r"user\(s\) read; 1 user\(s\) skipped for too few negatives",
    ):
        run_event_log([events], output_dir)
    assert _tree(output_dir) == before
    assert not _leftovers(output_dir)


# --- one far-future timestamp under --split time (issue 23) --------------------------------------

DAY_0 = 19122 * sb.DAY_MS  # 2022-05-10 00:00 UTC
HOUR = 3_600_000
FAR_FUTURE = 10**17  # ms: day 1,157,407,407 (86,400,000 x 1,157,407,407 <= 1e17 < next day)


def test_time_split_report_names_the_timestamp_that_emptied_a_split():
    stats = {"time_split/train_days": 7, "time_split/test_day": 1}
    latest = {
        "latest": [FAR_FUTURE, "events.csv", 9],
        "latest_before_test_day": [DAY_0 + 2 * sb.DAY_MS + 3 * HOUR, "events.csv", 8],
    }
    report = beam_job.time_split_report(
        stats, latest, examples_dict({("train", "rec"): 3, ("test", "rec"): 1})
    )
    assert report["test_day"] == "day 1,157,407,407 after 1970-01-01"
    assert report["events"] == {"train_days": 7, "valid_day": 0, "test_day": 1}
    assert report["warning"] == (
        "--split time: the valid split(s) have no example. The cut lands after all but 1 of 8 "
        "events because of timestamp 100000000000000000 in events.csv, line 9: the test day "
        "is the day of the latest timestamp, day 1,157,407,407 after 1970-01-01, the "
        "validation day the one before (1 and 0 events). The latest timestamp before that day "
        "is 1652324400000 (2022-05-12, events.csv, line 8), 1,157,388,283 day(s) earlier. If "
        "that timestamp is wrong (far in the future, or not in milliseconds), fix or drop that "
        "row; otherwise the log needs events on its last two days, or build with --split loo."
    )
    healthy = beam_job.time_split_report(stats, latest, examples_dict(ALL_SIX))
    assert "warning" not in healthy


@pytest.mark.slow  # one Beam run
def test_a_far_future_timestamp_under_the_time_split_is_warned_about_and_recorded(tmp_path, caplog):
    """Before: one row at 1e17 ms made its day the test day, so every real event fell before
    the validation day; the job wrote an empty validation split and said nothing."""
    rows = [
        ("ana", DAY_0 + HOUR, "rec", "i1", "", ""),
        ("ana", DAY_0 + 2 * HOUR, "search", "i2", "s1", "w1"),
        ("ana", DAY_0 + sb.DAY_MS + HOUR, "rec", "i3", "", ""),
        ("ana", DAY_0 + 2 * sb.DAY_MS + HOUR, "rec", "i4", "", ""),
        ("bo", DAY_0 + HOUR, "rec", "i5", "", ""),
        ("bo", DAY_0 + sb.DAY_MS + 2 * HOUR, "rec", "i6", "", ""),
        ("bo", DAY_0 + 2 * sb.DAY_MS + 3 * HOUR, "search", "i7", "s2", "w2"),
        ("ana", FAR_FUTURE, "rec", "i8", "", ""),
    ]  # line 9
    events = str(_write_events(tmp_path / "events.csv", rows))
    options = dataclasses.replace(
        EVENT_LOG_OPTIONS,
        split="time",
        min_rec_history=0,
        min_search_history=0,
        num_eval_negatives=1,
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.beam_job"):
        manifest = run_event_log([events], tmp_path / "out", options=options)
    # Every real event is a training target; the far-future rec is the one test example.
    assert manifest["examples"] == examples_dict(
        {("train", "rec"): 5, ("train", "search"): 2, ("test", "rec"): 1}
    )
    report = manifest["time_split"]
    assert report["latest_event"] == {"timestamp": FAR_FUTURE, "source": events, "line": 9}
    assert report["latest_event_before_test_day"] == {
        "timestamp": DAY_0 + 2 * sb.DAY_MS + 3 * HOUR,
        "source": events,
        "line": 8,
    }
    assert report["events"] == {"train_days": 7, "valid_day": 0, "test_day": 1}
    assert report["warning"].startswith(
        "--split time: the valid split(s) have no example. The cut lands after all but 1 of 8 "
        f"events because of timestamp {FAR_FUTURE} in {events}, line 9"
    )
    assert report["warning"] in [record.getMessage() for record in caplog.records]


def test_the_malloc_arena_cap_reaches_the_local_workers_and_is_undone(monkeypatch):
    """The local runner's workers inherit MALLOC_ARENA_MAX while the job runs; a value the
    user set stays, and the environment is as before afterwards."""
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    with beam_job._capped_malloc_arenas():
        assert os.environ["MALLOC_ARENA_MAX"] == str(beam_job.MALLOC_ARENAS)
    assert "MALLOC_ARENA_MAX" not in os.environ
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    with beam_job._capped_malloc_arenas():
        assert os.environ["MALLOC_ARENA_MAX"] == "4"
    assert os.environ["MALLOC_ARENA_MAX"] == "4"


@pytest.mark.slow
def test_published_files_agree_with_the_counters_and_a_missing_or_short_file_is_named(
    kuaisar_run, tmp_path
):
    """The job reads every example file back before publishing (a Sports build once held
    137,515 training records under a manifest counting 189,543, and nothing said so)."""
    output_dir, manifest = kuaisar_run
    with open(os.path.join(output_dir, beam_job.STATS_FILE)) as handle:
        stats = json.load(handle)
    for split in SPLITS:
        for scenario in SCENARIOS:
            key = f"{split}/{scenario}"
            assert (
                stats[f"{beam_job.READ_BACK_PREFIX}{key}"] == manifest["examples"][split][scenario]
            )
            assert stats[f"{beam_job.FILES_PREFIX}{key}"] == len(
                glob.glob(os.path.join(output_dir, manifest["files"][key]))
            )
    beam_job.check_files_against_counters(stats, output_dir, "out/x")  # a good run passes

    short = {**stats, "examples/train/rec": stats["examples/train/rec"] + 1}
    with pytest.raises(beam_job.NotPublished) as raised:
        beam_job.check_files_against_counters(short, output_dir, "out/x")
    expected = stats["examples/train/rec"]
    assert f"train/rec: {expected + 1} examples built, {expected} in the files" in str(raised.value)
    assert "out/x is as it was" in str(raised.value)

    copy = str(tmp_path / "copy")
    shutil.copytree(output_dir, copy)
    os.remove(sorted(glob.glob(os.path.join(copy, manifest["files"]["valid/search"])))[0])
    with pytest.raises(beam_job.NotPublished, match=r"valid/search: \d+ files written, \d+ match"):
        beam_job.check_files_against_counters(stats, copy, "out/x")


def test_a_shard_file_holding_other_records_than_its_writer_wrote_fails_the_job(tmp_path):
    path = str(tmp_path / "rec-00000-of-00001.tfrecord.gz")
    ordered_write.write_shard(path, [b"x", b"y"])
    assert list(beam_job.read_back_shard_file((path, "train", "rec", 2))) == [
        (f"{beam_job.READ_BACK_PREFIX}train/rec", 2),
        (f"{beam_job.FILES_PREFIX}train/rec", 1),
    ]
    with pytest.raises(
        ValueError, match=r"rec-00000-of-00001\.tfrecord\.gz: 2 records read back, 3"
    ):
        list(beam_job.read_back_shard_file((path, "train", "rec", 3)))
