"""The "raw" id format: id features carry the raw id strings (b"" = padding) instead of ids.

Checks the bytes_list encoder against TensorFlow, the raw renderer against the array path,
and the whole job on the KuaiSAR fixture (tests/fixtures/README.md) built in both formats
with the same seed: every raw example, mapped through the written vocab files, is the "ids"
example; the raw schema.pbtxt validates the raw files (TFDV) and parses them (TF Transform's
feature spec).
"""

import collections
import copy
import dataclasses
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from helpers.data_job import KUAISAR_EXAMPLES, SCENARIOS, SPLITS, read_vocab
from helpers.event_logs import mixed_log, small_options, wide_vocab
from tensorflow_metadata.proto.v0 import schema_pb2

from feature_specs import example_schema as fs
from feature_specs import tfmd_schema
from pipeline import beam_job, build_examples
from pipeline import sequence_builder as sb
from pipeline.tf_example import (
    bytes_entry,
    encode_bytes_list,
    encode_example,
    encode_int64_example,
    encode_mixed_example,
)

STRINGS = [
    b"",
    b"a",
    b"item-42",
    "caf\u00e9 \u4e2d\u6587".encode("utf-8"),
    b"x" * 127,
    b"y" * 128,
    b"z" * 20_000,
    b"\x00\xff\n",
    b" spaced ",
]


def tf_example(features):
    """TensorFlow's own proto of {name: ints or bytes}, features added in sorted-name order."""

    def feature(values):
        values = np.asarray(values, dtype=object).reshape(-1).tolist()
        if values and isinstance(values[0], bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    return tf.train.Example(
        features=tf.train.Features(
            feature={name: feature(features[name]) for name in sorted(features)}
        )
    )


# --- the bytes_list encoder against TensorFlow ------------------------------------------------


def test_bytes_entry_wire_format():
    assert bytes_entry(b"") == b"\x0a\x00"
    assert bytes_entry(b"ab") == b"\x0a\x02ab"
    assert bytes_entry("\u00e9") == b"\x0a\x02\xc3\xa9"  # str as UTF-8
    assert bytes_entry(b"y" * 128) == b"\x0a\x80\x01" + b"y" * 128  # two-byte length
    assert encode_bytes_list([b"a", "", b"bc"]) == b"\x0a\x01a\x0a\x00\x0a\x02bc"


def test_bytes_lists_match_tf_bytes_and_parse():
    features = {
        "strings": np.array(STRINGS, dtype=object),
        "matrix": np.array([[b"a", b""], [b"bb", b"c" * 300]], dtype=object),
        "scalar": np.array(b"u1", dtype=object),
        "ints": np.array([0, 1, 128, 2**40, -3], np.int64),
    }
    data = encode_example(features)
    proto = tf.train.Example.FromString(data)
    assert list(proto.features.feature["strings"].bytes_list.value) == STRINGS
    assert list(proto.features.feature["ints"].int64_list.value) == [0, 1, 128, 2**40, -3]
    reference = tf_example(features)
    assert proto == reference
    assert data == reference.SerializeToString(deterministic=True)
    # The same bytes from pre-encoded payloads, whatever the dict order.
    packed = {
        "ints": bytes.fromhex("00018001")
        + b"\x80\x80\x80\x80\x80\x20"
        + b"\xfd"
        + b"\xff" * 8
        + b"\x01"
    }
    lists = {
        name: b"".join(bytes_entry(v) for v in np.asarray(features[name]).reshape(-1))
        for name in ("strings", "matrix", "scalar")
    }
    assert encode_mixed_example(packed, lists) == data
    assert encode_mixed_example(packed, dict(reversed(list(lists.items())))) == data
    # Batch parsing with fixed shapes, as a tf.data input pipeline would.
    other = dict(
        features, strings=np.array(STRINGS[::-1], dtype=object), scalar=np.array(b"", dtype=object)
    )
    parsed = tf.io.parse_example(
        tf.constant([data, encode_example(other)]),
        {
            "strings": tf.io.FixedLenFeature([len(STRINGS)], tf.string),
            "matrix": tf.io.FixedLenFeature([2, 2], tf.string),
            "scalar": tf.io.FixedLenFeature([], tf.string),
            "ints": tf.io.FixedLenFeature([5], tf.int64),
        },
    )
    assert parsed["strings"].numpy().tolist() == [STRINGS, STRINGS[::-1]]
    assert parsed["matrix"].numpy().tolist() == [[[b"a", b""], [b"bb", b"c" * 300]]] * 2
    assert parsed["scalar"].numpy().tolist() == [b"u1", b""]
    np.testing.assert_array_equal(parsed["ints"].numpy()[1], features["ints"])


def test_str_arrays_and_empty_lists():
    data = encode_example({"s": np.array(["a", "\u00e9"]), "none": np.array([], dtype=object)})
    proto = tf.train.Example.FromString(data)
    assert list(proto.features.feature["s"].bytes_list.value) == [b"a", "\u00e9".encode()]
    assert proto.features.feature["none"].WhichOneof("kind") == "bytes_list"
    assert list(proto.features.feature["none"].bytes_list.value) == []
    assert encode_example({"i": np.array([1, 2])}) == encode_int64_example({"i": [1, 2]})


def test_mixed_encoder_rejects_a_name_in_both_and_float_arrays():
    with pytest.raises(ValueError, match=r"\['a'\] given both as int64 and as bytes"):
        encode_mixed_example({"a": b"\x01"}, {"a": b"\x0a\x00", "b": b""})
    with pytest.raises(TypeError, match="'f': dtype float64"):
        encode_example({"f": np.array([1.5])})
    with pytest.raises(TypeError, match="bytes or str, got int 5"):
        encode_example({"o": np.array([b"a", 5], dtype=object)})


# --- the raw renderer against the array path --------------------------------------------------


def raw_vocab():
    """wide_vocab (ids of one to three varint bytes) with raw ids of varied byte lengths:
    unicode, and lengths that need two-byte varints."""
    vocab = wide_vocab()

    def rename(mapping, prefix):
        return {
            (
                raw
                if not raw.startswith(("filler", "other", "user"))
                else f"{prefix}\u00e9{dense}" + ("-" * 130 if dense % 3 == 0 else "")
            ): dense
            for raw, dense in mapping.items()
        }

    return sb.Vocabularies(
        users=vocab.users,
        items=rename(vocab.items, "it"),
        words=rename(vocab.words, "w\u4e2d"),
        item_clicks=vocab.item_clicks,
    )


def to_ids(features, vocab):
    """A raw example's features -> the "ids" features, through the vocabularies (b"" -> 0)."""
    lookup = {
        name: {
            b"": 0,
            **{raw.encode("utf-8"): dense for raw, dense in getattr(vocab, name).items()},
        }
        for name in ("users", "items", "words")
    }
    out = {}
    for name, values in features.items():
        if name in fs.ID_FEATURE_VOCABULARIES:
            table = lookup[fs.ID_FEATURE_VOCABULARIES[name]]
            values = np.vectorize(table.__getitem__, otypes=[np.int64])(values)
        out[name] = np.asarray(values, np.int64)
    return out


@pytest.mark.parametrize(
    "options",
    [
        small_options(),
        small_options(strict_holdout=True, num_eval_negatives=5, train_negative_pool=6, seed=3),
    ],
    ids=["small", "pool"],
)
def test_raw_renderer_bytes_equal_the_raw_arrays_and_map_back_to_ids(options):
    vocab = raw_vocab()
    raw_options = dataclasses.replace(options, id_format="raw")
    tables = sb.build_raw_id_tables(vocab)
    assert tables.items[0] == tables.words[0] == tables.users[0] == b"\x0a\x00"
    for user in ("user1", "user16384"):
        log = mixed_log(user)
        sampler = sb.NegativeSampler(vocab.item_clicks, options.negative_sampler)
        ids = list(
            sb.build_user_examples(user, log.events, vocab, sampler, options, collections.Counter())
        )
        raw_stats = collections.Counter()
        raw = list(sb.build_user_examples(user, log.events, vocab, sampler, raw_options, raw_stats))
        serialized_stats = collections.Counter()
        serialized = list(
            sb.build_user_tf_examples(
                user, log.events, vocab, sampler, raw_options, serialized_stats, raw_tables=tables
            )
        )
        assert raw_stats == serialized_stats
        assert len(ids) == len(raw) == len(serialized) >= 7
        for (split, scenario, id_features), (r_split, r_scenario, raw_features), (
            b_split,
            b_scenario,
            data,
        ) in zip(ids, raw, serialized):
            assert (split, scenario) == (r_split, r_scenario) == (b_split, b_scenario)
            assert set(raw_features) == set(id_features)
            assert (fs.NEGATIVE_POOL in raw_features) == bool(
                split == "train" and options.train_negative_pool
            )
            for name, values in raw_features.items():
                assert values.shape == id_features[name].shape, name
                if name in fs.ID_FEATURE_VOCABULARIES:
                    assert values.dtype == object, name
                    np.testing.assert_array_equal(values == b"", id_features[name] == 0)
            assert raw_features[fs.USER_ID] == user.encode()
            mapped = to_ids(raw_features, vocab)
            for name, values in id_features.items():
                np.testing.assert_array_equal(mapped[name], values, err_msg=name)
            assert data == encode_example(raw_features)
            assert data == tf_example(raw_features).SerializeToString(deterministic=True)
        # Multi-byte raw ids really went through (the "-" * 130 suffix, unicode).
        assert any(len(f[fs.CANDIDATE_ITEMS][1]) > 128 for _, _, f in raw)
    # Without tables given, build_user_tf_examples builds them.
    log = mixed_log("user1")
    sampler = sb.NegativeSampler(vocab.item_clicks, options.negative_sampler)
    assert list(
        sb.build_user_tf_examples(
            "user1", log.events, vocab, sampler, raw_options, collections.Counter()
        )
    ) == list(
        sb.build_user_tf_examples(
            "user1",
            log.events,
            vocab,
            sampler,
            raw_options,
            collections.Counter(),
            raw_tables=tables,
        )
    )


# --- the job in both formats on the KuaiSAR fixture -------------------------------------------


@pytest.fixture(scope="module")
def both_formats(kuaisar_builds):
    """{id_format: (output_dir, manifest)}: the KuaiSAR fixture built by the CLI in both
    formats with the same options (the "ids" run without --id_format: the default). The
    session's shared build (helpers/datasets.py); the manifests are this module's copies,
    since a test edits them."""
    return {
        id_format: (output_dir, copy.deepcopy(manifest))
        for id_format, (output_dir, manifest) in kuaisar_builds.items()
    }


def read_in_file_order(output_dir, split, scenario):
    files = sorted(glob.glob(beam_job.example_pattern(output_dir, split, scenario)))
    assert files, (output_dir, split, scenario)
    return [record.numpy() for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def example_features(record):
    """Serialized tf.Example -> {name: ("int64_list", [...]) or ("bytes_list", [...])}, in
    name order (which is also the record's wire order: it is TF's deterministic bytes)."""
    proto = tf.train.Example.FromString(record)
    assert record == proto.SerializeToString(deterministic=True)
    features = {}
    for name, feature in sorted(proto.features.feature.items()):
        kind = feature.WhichOneof("kind")
        assert kind in ("int64_list", "bytes_list"), (name, kind)
        features[name] = (kind, list(getattr(feature, kind).value))
    return features


@pytest.mark.slow
def test_manifests_differ_only_in_the_id_format(both_formats):
    (_, ids), (_, raw) = both_formats["ids"], both_formats["raw"]
    assert ids["id_format"] == ids["build_options"]["id_format"] == "ids"
    assert raw["id_format"] == raw["build_options"]["id_format"] == "raw"
    assert raw["examples"] == ids["examples"] == KUAISAR_EXAMPLES
    for manifest in (ids, raw):
        manifest.pop("wall_seconds")
        manifest.pop("id_format")
        manifest["build_options"].pop("id_format")
    assert raw == ids


@pytest.mark.slow
def test_vocab_and_side_files_are_identical(both_formats):
    ids_dir, raw_dir = both_formats["ids"][0], both_formats["raw"][0]
    patterns = ["vocab/*", "side_features/*.jsonl", "rejected/*.jsonl"]
    names = {
        pattern: sorted(
            os.path.relpath(p, ids_dir) for p in glob.glob(os.path.join(ids_dir, pattern))
        )
        for pattern in patterns
    }
    assert len(names["vocab/*"]) == 4 and names["side_features/*.jsonl"]
    for relative in sum(names.values(), []):
        with (
            open(os.path.join(ids_dir, relative), "rb") as a,
            open(os.path.join(raw_dir, relative), "rb") as b,
        ):
            assert a.read() == b.read(), relative


def canonical(features):
    """{name: (kind, values)} -> the bytes the job's "ids" encoder writes for these ints."""
    return encode_int64_example(
        {name: np.array(values, np.int64) for name, (_, values) in features.items()}
    )


@pytest.mark.slow
def test_raw_examples_map_through_the_vocab_files_to_the_ids_examples(both_formats):
    ids_dir, raw_dir = both_formats["ids"][0], both_formats["raw"][0]
    lookup = {
        name: {
            raw.encode("utf-8"): line for line, raw in enumerate(read_vocab(raw_dir, name), start=1)
        }
        for name in ("users", "items", "words")
    }
    for table in lookup.values():
        assert b"" not in table
        table[b""] = 0
    seen = collections.Counter()
    for split in SPLITS:
        for scenario in SCENARIOS:
            ids_records = read_in_file_order(ids_dir, split, scenario)
            raw_records = read_in_file_order(raw_dir, split, scenario)
            assert len(raw_records) == len(ids_records) == KUAISAR_EXAMPLES[split][scenario]
            mapped_records = []
            for raw_record in raw_records:
                raw = example_features(raw_record)
                mapped = {}
                for name, (kind, values) in raw.items():
                    if name in fs.ID_FEATURE_VOCABULARIES:
                        assert kind == "bytes_list", name
                        vocab = lookup[fs.ID_FEATURE_VOCABULARIES[name]]
                        values = [vocab[value] for value in values]
                        seen[name] += sum(value == 0 for value in values)
                    else:
                        assert (name, kind) == (fs.HISTORY_TYPES, "int64_list")
                    mapped[name] = ("int64_list", values)
                assert (fs.QUERY_TOKENS in raw) == (scenario == "search")
                assert (fs.NEGATIVE_POOL in raw) == (split == "train")
                assert len(raw[fs.CANDIDATE_ITEMS][1]) == (3 if split == "train" else 4)
                assert len(raw.get(fs.NEGATIVE_POOL, (0, [0] * 5))[1]) == 5
                mapped_records.append(mapped)
            # Beam does not keep the order of records between runs: pair the examples by
            # their content (the bytes of the "ids" encoding), then compare feature by feature.
            ids_examples = sorted(map(example_features, ids_records), key=canonical)
            mapped_records.sort(key=canonical)
            for mapped, ids in zip(mapped_records, ids_examples):
                assert list(mapped) == list(ids)  # same features (both in sorted order)
                for name, value in mapped.items():
                    assert value == ids[name], (split, scenario, name)
            assert sorted(map(canonical, mapped_records)) == sorted(ids_records)
    # Padding really was checked as b"" <-> 0 in the padded features.
    assert (
        seen[fs.REC_HISTORY_ITEMS]
        and seen[fs.SEARCH_HISTORY_QUERY_TOKENS]
        and seen[fs.SEARCH_HISTORY_CLICKED_ITEMS]
    )


def load_schema(output_dir):
    with open(os.path.join(output_dir, "schema.pbtxt"), encoding="utf-8") as handle:
        return text_format.Parse(handle.read(), schema_pb2.Schema())


@pytest.mark.slow
def test_raw_schema_types_the_id_features_as_bytes(both_formats):
    ids_schema, raw_schema = (load_schema(both_formats[f][0]) for f in ("ids", "raw"))
    options = sb.BuildOptions(
        split="time",
        clicks_per_session=5,
        num_train_negatives=2,
        num_eval_negatives=3,
        rec_len=3,
        search_len=4,
        query_len=3,
        train_negative_pool=5,
        seed=3,
        id_format="raw",
    )
    assert raw_schema == beam_job.example_schema(options)
    assert ids_schema == beam_job.example_schema(dataclasses.replace(options, id_format="ids"))
    assert len(raw_schema.feature) == len(ids_schema.feature) == 8
    for raw, ids in zip(raw_schema.feature, ids_schema.feature):
        assert raw.name == ids.name
        if raw.name in fs.ID_FEATURE_VOCABULARIES:
            assert (raw.type, ids.type) == (schema_pb2.BYTES, schema_pb2.INT)
            assert not raw.HasField("int_domain") and ids.HasField("int_domain")
            ids.ClearField("int_domain")
            ids.type = schema_pb2.BYTES
        assert raw == ids  # shapes, value counts, presence, environments


def environment_schema(schema, environment):
    """The schema's features expected in one environment (REC files lack query_tokens)."""
    kept = schema_pb2.Schema()
    kept.CopyFrom(schema)
    del kept.feature[:]
    kept.feature.extend(f for f in schema.feature if environment not in f.not_in_environment)
    return kept


@pytest.mark.slow
def test_raw_schema_parses_the_raw_files_with_tft_feature_spec(both_formats):
    from tensorflow_transform.tf_metadata import schema_utils

    raw_dir = both_formats["raw"][0]
    schema = load_schema(raw_dir)
    for scenario, environment in (("rec", tfmd_schema.ENV_REC), ("search", tfmd_schema.ENV_SEARCH)):
        spec = schema_utils.schema_as_feature_spec(
            environment_schema(schema, environment)
        ).feature_spec
        # (user_id has no shape in the schema, in either format: a VarLenFeature for TFT.)
        assert spec[fs.USER_ID].dtype == tf.string
        assert spec[fs.SEARCH_HISTORY_QUERY_TOKENS] == tf.io.FixedLenFeature([4, 3], tf.string)
        assert spec[fs.HISTORY_TYPES] == tf.io.FixedLenFeature([7], tf.int64)
        assert (fs.QUERY_TOKENS in spec) == (scenario == "search")
        for split in SPLITS:
            records = read_in_file_order(raw_dir, split, scenario)
            parsed = tf.io.parse_example(tf.constant(records), spec)
            users = parsed[fs.USER_ID]
            if isinstance(users, tf.SparseTensor):
                users = tf.sparse.to_dense(users)
            assert users.dtype == tf.string and users.shape[0] == len(records)
            assert users.shape.num_elements() == len(records)
            assert parsed[fs.REC_HISTORY_ITEMS].shape == (len(records), 3)
            candidates = tf.sparse.to_dense(parsed[fs.CANDIDATE_ITEMS])
            assert candidates.shape == (len(records), 3 if split == "train" else 4)
            assert candidates.dtype == tf.string


@pytest.mark.slow
def test_raw_schema_validates_the_raw_files_with_tfdv(both_formats):
    import tensorflow_data_validation as tfdv

    ids_dir, raw_dir = both_formats["ids"][0], both_formats["raw"][0]
    schema = load_schema(raw_dir)
    for scenario, environment in (("rec", tfmd_schema.ENV_REC), ("search", tfmd_schema.ENV_SEARCH)):
        pattern = os.path.join(raw_dir, "*", f"{scenario}-*.tfrecord.gz")
        stats = tfdv.generate_statistics_from_tfrecord(pattern)
        assert stats.datasets[0].num_examples == sum(
            KUAISAR_EXAMPLES[split][scenario] for split in SPLITS
        )
        anomalies = tfdv.validate_statistics(stats, schema, environment=environment)
        assert not anomalies.anomaly_info, (scenario, anomalies)
    # The check has teeth: the "ids" files are not valid under the raw schema.
    stats = tfdv.generate_statistics_from_tfrecord(
        os.path.join(ids_dir, "*", "search-*.tfrecord.gz")
    )
    anomalies = tfdv.validate_statistics(stats, schema, environment=tfmd_schema.ENV_SEARCH)
    assert fs.CANDIDATE_ITEMS in anomalies.anomaly_info


# --- the option -------------------------------------------------------------------------------


def test_bad_id_format_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exited:
        build_examples.parse_args(
            ["--dataset", "kuaisar", "--output", "x", "--id_format", "strings"]
        )
    assert exited.value.code == 2
    assert (
        "argument --id_format: invalid choice: 'strings' (choose from 'ids', 'raw')"
        in capsys.readouterr().err
    )
    assert (
        build_examples.parse_args(["--dataset", "kuaisar", "--output", "x"])[0].id_format == "ids"
    )
    with pytest.raises(ValueError, match=r"id_format='int': expected one of 'ids', 'raw'"):
        sb.BuildOptions(id_format="int")
    with pytest.raises(ValueError, match=r"id_format='RAW'"):
        tfmd_schema.build_schema(fs.SequenceShapes(), id_format="RAW")
    assert sb.BuildOptions().id_format == fs.ID_FORMAT_IDS == "ids"
    assert fs.ID_FORMATS == ("ids", "raw")
