"""The hand-written tf.Example encoder against TensorFlow, and raw-row parsing of event cells."""

import numpy as np
import pytest
import tensorflow as tf

from feature_specs import event_schema as es
from feature_specs.event_schema import (
    RowError,
    make_event,
    parse_click,
    parse_timestamp,
    parse_token_list,
)
from pipeline.tf_example import encode_int64_example, encode_packed_example, encode_varints, varint

EDGE_VALUES = [0, 1, 127, 128, 16383, 16384, 2**35, 2**63 - 1, -1, -(2**63)]


def tf_example(features):
    """TensorFlow's own proto, features added in sorted-name order."""
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                name: tf.train.Feature(
                    int64_list=tf.train.Int64List(
                        value=np.asarray(features[name]).reshape(-1).tolist()
                    )
                )
                for name in sorted(features)
            }
        )
    )


def check_against_tf(features, same_bytes=True):
    data = encode_int64_example(features)
    proto = tf.train.Example.FromString(data)
    assert set(proto.features.feature) == set(features)
    for name, value in features.items():
        assert list(proto.features.feature[name].int64_list.value) == [
            int(v) for v in np.asarray(value).reshape(-1)
        ], name
    reference = tf_example(features)
    assert proto == reference
    if same_bytes:
        # TF's default map serialization is in hash order; the deterministic one sorts keys,
        # which is exactly the order encode_packed_example writes.
        assert data == reference.SerializeToString(deterministic=True)
    return data


# --- varints --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (16383, "ff7f"),
        (16384, "808001"),
        (2**35, "8080808080" + "01"),
        (2**63 - 1, "ff" * 8 + "7f"),
        (-1, "ff" * 9 + "01"),
        (-(2**63), "80" * 9 + "01"),
        (-2, "fe" + "ff" * 8 + "01"),
    ],
)
def test_encode_varints_single_values_protobuf_wire_bytes(value, expected):
    assert encode_varints(np.array([value], np.int64)).hex() == expected
    if value >= 0:
        assert varint(value).hex() == expected


def test_encode_varints_concatenates_each_branch():
    assert encode_varints(np.array([], np.int64)) == b""
    assert encode_varints(np.array([1, 2, 127])).hex() == "01027f"  # one-byte branch
    assert encode_varints(np.array([0, 128, 5, 16383])).hex() == "00" "8001" "05" "ff7f"
    assert encode_varints(np.array([16384, 0, 1])).hex() == "808001" "00" "01"
    assert (
        encode_varints(np.array([-1, 0, 2**35])).hex() == "ff" * 9 + "01" + "00" + "8080808080" "01"
    )
    assert encode_varints(np.array([[1, 128], [2, 3]])) == encode_varints(np.array([1, 128, 2, 3]))
    assert encode_varints(np.int64(300)).hex() == "ac02"


def test_varint_cached_and_computed_agree_with_packed_encoder():
    for value in [0, 5, 127, 128, 255, 16383, 16384, 16385, 2**21, 2**40, 2**63 - 1]:
        assert varint(value) == encode_varints(np.array([value]))


# --- whole examples against TensorFlow ------------------------------------------------------


def test_edge_values_round_trip_and_match_tf_bytes():
    check_against_tf({"edges": np.array(EDGE_VALUES, np.int64)})
    for value in EDGE_VALUES:
        check_against_tf({"one": np.array([value], np.int64)})


def test_several_features_written_in_sorted_order_match_tf_deterministic_bytes():
    features = {
        "zeta": np.array([3, 1]),
        "alpha": np.array([128, -5]),
        "mid": np.array([[1, 2, 3], [4, 5, 16384]]),
        "b": np.array(7),
    }
    data = check_against_tf(features)
    # Same bytes whatever the dict order.
    assert data == encode_int64_example(dict(reversed(list(features.items()))))


def test_scalars_and_two_d_arrays_are_flattened():
    features = {
        "scalar": np.array(5),
        "python_int": 2**40,
        "negative": np.int64(-7),
        "matrix": np.arange(12, dtype=np.int64).reshape(3, 4) * 1000,
        "int32": np.array([[1, -2], [3, 4]], np.int32),
    }
    check_against_tf(features)
    data = encode_int64_example(features)
    parsed = tf.io.parse_single_example(
        data,
        {
            "scalar": tf.io.FixedLenFeature([], tf.int64),
            "python_int": tf.io.FixedLenFeature([], tf.int64),
            "negative": tf.io.FixedLenFeature([], tf.int64),
            "matrix": tf.io.FixedLenFeature([3, 4], tf.int64),
            "int32": tf.io.FixedLenFeature([2, 2], tf.int64),
        },
    )
    assert parsed["scalar"].numpy() == 5
    assert parsed["python_int"].numpy() == 2**40
    assert parsed["negative"].numpy() == -7
    np.testing.assert_array_equal(parsed["matrix"].numpy(), features["matrix"])
    np.testing.assert_array_equal(parsed["int32"].numpy(), [[1, -2], [3, 4]])


def test_empty_arrays_parse_as_empty_lists():
    # The encoder writes an empty packed field (0a 00) that protobuf itself would omit, so the
    # bytes differ from TF's while the parsed protos are equal.
    features = {"empty": np.array([], np.int64), "a": np.array([1])}
    data = check_against_tf(features, same_bytes=False)
    assert data == bytes.fromhex(
        "0a1b" "0a0a" "0a0161" "1205" "1a03" "0a0101" "0a0d" "0a05656d707479" "1204" "1a02" "0a00"
    )
    parsed = tf.io.parse_single_example(
        data,
        {"empty": tf.io.FixedLenFeature([0], tf.int64), "a": tf.io.FixedLenFeature([1], tf.int64)},
    )
    assert parsed["empty"].shape == (0,)
    assert encode_int64_example({}) == tf.train.Example().SerializeToString() + b"\n\x00"
    assert tf.train.Example.FromString(encode_int64_example({})) == tf.train.Example(
        features=tf.train.Features()
    )


@pytest.mark.parametrize(
    "low, high",
    [(0, 128), (0, 16384), (0, 2**20), (0, 2**63 - 1), (-(2**63), 2**63 - 1), (-300, 300)],
)
def test_large_random_arrays_match_tf(low, high):
    rng = np.random.default_rng(abs(low) + high % 1000)
    values = rng.integers(low, high, size=20_000, dtype=np.int64, endpoint=True)
    values[:3] = [low, high, 0]
    features = {"values": values, "matrix": values[:3000].reshape(30, 100)}
    data = check_against_tf(features)
    parsed = tf.io.parse_single_example(
        data,
        {
            "values": tf.io.FixedLenFeature([20_000], tf.int64),
            "matrix": tf.io.FixedLenFeature([30, 100], tf.int64),
        },
    )
    np.testing.assert_array_equal(parsed["values"].numpy(), values)
    np.testing.assert_array_equal(parsed["matrix"].numpy(), features["matrix"])


def test_batch_parse_example_and_long_keys():
    name = "k" * 200  # the key's length itself needs a two-byte varint
    rows = [{name: np.array([i, 2**33 + i]), "c": np.arange(1500) * i} for i in range(4)]
    serialized = [encode_int64_example(row) for row in rows]
    for row in rows:
        check_against_tf(row)
    parsed = tf.io.parse_example(
        tf.constant(serialized),
        {name: tf.io.FixedLenFeature([2], tf.int64), "c": tf.io.FixedLenFeature([1500], tf.int64)},
    )
    np.testing.assert_array_equal(parsed[name].numpy(), [[i, 2**33 + i] for i in range(4)])
    np.testing.assert_array_equal(parsed["c"].numpy(), [np.arange(1500) * i for i in range(4)])


def test_encode_packed_example_takes_payloads_as_given():
    data = encode_packed_example({"b": bytes.fromhex("8001"), "a": b"\x01\x02"})
    assert data == tf_example({"a": [1, 2], "b": [128]}).SerializeToString(deterministic=True)


# --- raw cells ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[20, 34, 3]", ("20", "34", "3")),
        ("20 34 3", ("20", "34", "3")),
        ("20,34,3", ("20", "34", "3")),
        ("  [ 20 ,34\t3 ]  ", ("20", "34", "3")),
        ("[20]", ("20",)),
        ("hello world-1 a_b c.d e:f", ("hello", "world-1", "a_b", "c.d", "e:f")),
        ("", ()),
        ("   ", ()),
        ("[]", ()),
        ("[ ]", ()),
        (None, ()),
        # Issue 23 item 7: words of any script (they were dead letters), punctuation inside a
        # word, NFC: "e" + U+0301 is "é", the composed form.
        ("éclair crème", ("éclair", "crème")),
        ("e\u0301clair", ("\u00e9clair",)),
        ("[قهوة, 咖啡]", ("قهوة", "咖啡")),
        ("\U0001f469\u200d\U0001f373 \u00a0 ok", ("\U0001f469\u200d\U0001f373", "ok")),
        ("men's a;b {1 (2)", ("men's", "a;b", "{1", "(2)")),
        ("a\u3000b\u2028c", ("a", "b", "c")),  # ideographic space, line separator: separators
    ],
)
def test_parse_token_list_accepts_flat_lists(text, expected):
    assert parse_token_list(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "[1, [2]]",
        "[1, 2",
        "1, 2]",
        "[[1]]",
        "]1 2[",
        "['a', 'b']",
        '["a"]',
        "'a'",
        "[1] [2]",
        "a\x00b",
        "caf\x7f",
        "x\x9by",
        "a\udcff",
    ],
)
def test_parse_token_list_rejects_malformed(text):
    with pytest.raises(RowError) as caught:
        parse_token_list(text)
    assert caught.value.reason == es.REJECT_BAD_QUERY == "malformed_query_tokens"
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith("malformed_query_tokens: query_tokens=")


def test_parse_token_list_names_the_field():
    with pytest.raises(RowError, match="caption_tokens="):
        parse_token_list("[1", field="caption_tokens")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1652371200000", 1652371200000),
        (" 1652371200000 ", 1652371200000),
        ("1652371200000.0", 1652371200000),
        ("12.9", 12),
        ("-5", -5),
        ("0", 0),
        (7, 7),
    ],
)
def test_parse_timestamp_accepts_integers_and_floats(text, expected):
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text", [None, "", "   ", "abc", "12:30", "nan", "inf", "-inf", "1e400", "2022-05-12"]
)
def test_parse_timestamp_rejects(text):
    with pytest.raises(RowError) as caught:
        parse_timestamp(text)
    assert caught.value.reason == es.REJECT_BAD_TIMESTAMP == "unparseable_timestamp"


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, 1),
        ("", 1),
        ("  ", 1),
        ("0", 0),
        ("1", 1),
        ("3", 3),
        ("2.0", 2),
        (" 4 ", 4),
    ],
)
def test_parse_click_values(text, expected):
    assert parse_click(text) == expected


@pytest.mark.parametrize("text", ["-1", "-0.5e1", "x", "nan", "1 2"])
def test_parse_click_rejects(text):
    with pytest.raises(RowError) as caught:
        parse_click(text)
    assert caught.value.reason == es.REJECT_BAD_CLICK == "unparseable_click"


@pytest.mark.parametrize("text", ["inf", "-inf", "1e400"])
def test_parse_click_rejects_infinity_as_row_error(text):
    with pytest.raises(RowError) as caught:
        parse_click(text)
    assert caught.value.reason == es.REJECT_BAD_CLICK


def test_make_event_valid_rows():
    event = make_event(" u1 ", "1000", " REC ", " i9 ", "", source="f.csv", line=3)
    assert event == es.Event(
        user_id="u1", timestamp=1000, scenario="rec", item_id="i9", click=1, source="f.csv", line=3
    )
    impression = make_event("u1", "1000.0", "rec", "i9", "0")
    assert impression.click == 0
    search = make_event("u1", "2000", "Search", "i3", "2", "sess", "[4, 5]")
    assert (search.scenario, search.click, search.search_session_id, search.query_tokens) == (
        "search",
        2,
        "sess",
        ("4", "5"),
    )
    no_results = make_event("u1", "2000", "search", "", "0", "sess", "4 5")
    assert (no_results.item_id, no_results.click) == ("", 0)
    # A rec row's query column is ignored, even if it would not parse.
    assert make_event("u1", "1", "rec", "i1", "1", "", "[1, [2]]").query_tokens == ()


@pytest.mark.parametrize(
    "cells, reason",
    [
        (dict(user_id="", timestamp="1", scenario="rec", item_id="i"), es.REJECT_MISSING_USER),
        (dict(user_id=None, timestamp="1", scenario="rec", item_id="i"), es.REJECT_MISSING_USER),
        (dict(user_id="  ", timestamp="1", scenario="rec", item_id="i"), es.REJECT_MISSING_USER),
        (dict(user_id="u", timestamp="", scenario="rec", item_id="i"), es.REJECT_BAD_TIMESTAMP),
        (dict(user_id="u", timestamp="soon", scenario="rec", item_id="i"), es.REJECT_BAD_TIMESTAMP),
        (dict(user_id="u", timestamp="1", scenario="ads", item_id="i"), es.REJECT_BAD_SCENARIO),
        (dict(user_id="u", timestamp="1", scenario=None, item_id="i"), es.REJECT_BAD_SCENARIO),
        (dict(user_id="u", timestamp="1", scenario="rec", item_id=""), es.REJECT_MISSING_ITEM),
        (dict(user_id="u", timestamp="1", scenario="rec", item_id=None), es.REJECT_MISSING_ITEM),
        (
            dict(user_id="u", timestamp="1", scenario="rec", item_id="i", click="-2"),
            es.REJECT_BAD_CLICK,
        ),
        (
            dict(user_id="u", timestamp="1", scenario="rec", item_id="i", click="yes"),
            es.REJECT_BAD_CLICK,
        ),
        (
            dict(user_id="u", timestamp="1", scenario="search", item_id="i", search_session_id=""),
            es.REJECT_MISSING_SESSION,
        ),
        (
            dict(
                user_id="u",
                timestamp="1",
                scenario="search",
                item_id="i",
                search_session_id="s",
                query_tokens="[1, 2",
            ),
            es.REJECT_BAD_QUERY,
        ),
        (
            dict(
                user_id="u",
                timestamp="1",
                scenario="search",
                item_id="",
                click="1",
                search_session_id="s",
                query_tokens="1 2",
            ),
            es.REJECT_MISSING_ITEM,
        ),
        (
            dict(
                user_id="u",
                timestamp="1",
                scenario="search",
                item_id="",
                search_session_id="s",
                query_tokens="1 2",
            ),
            es.REJECT_MISSING_ITEM,
        ),  # click "" = 1
    ],
)
def test_make_event_rejections(cells, reason):
    with pytest.raises(RowError) as caught:
        make_event(**cells)
    assert caught.value.reason == reason
    assert str(caught.value).startswith(reason + ": ")


def test_reject_reason_names():
    assert (
        es.REJECT_MISSING_USER,
        es.REJECT_BAD_TIMESTAMP,
        es.REJECT_BAD_SCENARIO,
        es.REJECT_MISSING_ITEM,
        es.REJECT_BAD_CLICK,
        es.REJECT_MISSING_SESSION,
        es.REJECT_BAD_QUERY,
    ) == (
        "missing_user_id",
        "unparseable_timestamp",
        "unknown_scenario",
        "missing_item_id",
        "unparseable_click",
        "missing_search_session_id",
        "malformed_query_tokens",
    )


def test_varint_rejects_negative_values():
    from pipeline.tf_example import varint

    with pytest.raises(ValueError, match="non-negative"):
        varint(-1)


def test_parse_timestamp_rejects_values_outside_int64():
    with pytest.raises(RowError) as caught:
        parse_timestamp("1e30")
    assert caught.value.reason == es.REJECT_BAD_TIMESTAMP
