"""pipeline.ordered_write: TFRecord files that depend on the records, not on their order."""

import collections
import gzip
import hashlib
import os
import random

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to

from pipeline import ordered_write

IN_MEMORY = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]


def expected_files(records, prefix, num_shards):
    """[(path, record count)] the sink must report, worked out from the hash rule."""
    counts = [0] * num_shards
    for record in records:
        counts[ordered_write.record_hash(record) % num_shards] += 1
    return [
        (f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord.gz", count)
        for i, count in enumerate(counts)
    ]


def write(
    records,
    prefix,
    expected_shards,
    num_shards=0,
    records_per_shard=ordered_write.DEFAULT_RECORDS_PER_SHARD,
):
    """Runs the sink on `records` in the given order and checks what it reports."""
    with beam.Pipeline(argv=IN_MEMORY) as pipeline:
        reported = (
            pipeline
            | beam.Create(records, reshuffle=False)
            | ordered_write.WriteOrderedTFRecords(
                prefix, ".tfrecord.gz", num_shards, records_per_shard
            )
        )
        assert_that(reported, equal_to(expected_files(records, prefix, expected_shards)))


def read(path):
    return [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]


def test_shard_count():
    assert ordered_write.shard_count(0) == 1  # an empty split still gets one file
    assert ordered_write.shard_count(10_000) == 1
    assert ordered_write.shard_count(10_001) == 2
    assert ordered_write.shard_count(33_815) == 4  # Beauty's rec training split
    assert ordered_write.shard_count(5, records_per_shard=2) == 3
    assert ordered_write.shard_count(10**6, num_shards=3) == 3
    with pytest.raises(ValueError, match="num_shards=-1"):
        ordered_write.shard_count(1, num_shards=-1)
    with pytest.raises(ValueError, match="records_per_shard=0"):
        ordered_write.WriteOrderedTFRecords("p", ".gz", records_per_shard=0)


def test_files_are_the_same_whatever_the_input_order(tmp_path):
    records = [f"record {i}".encode() for i in range(50)] + [b"twice", b"twice", b""]
    shuffled = list(records)
    random.Random(7).shuffle(shuffled)
    # 53 records at 20 per shard: 3 files, named like WriteToTFRecord's default template.
    write(records, str(tmp_path / "a" / "part"), 3, records_per_shard=20)
    write(shuffled, str(tmp_path / "b" / "part"), 3, records_per_shard=20)
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == [f"part-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
    for name in names:
        a, b = read(str(tmp_path / "a" / name)), read(str(tmp_path / "b" / name))
        assert a == b
        # Each file is ordered by the record hash and holds only its shard's records.
        hashes = [ordered_write.record_hash(r) for r in a]
        assert hashes == sorted(hashes)
        shard = int(name.split("-")[1])
        assert all(h % 3 == shard for h in hashes)
    # Nothing lost, nothing added: duplicates and the empty record survive.
    everything = [r for name in names for r in read(str(tmp_path / "a" / name))]
    assert sorted(everything) == sorted(records)
    # Gzip members carry no timestamp or name, so even the compressed bytes agree.
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        gzip.decompress((tmp_path / "a" / name).read_bytes())  # a valid gzip file


def test_empty_input_writes_every_requested_shard(tmp_path):
    write([], str(tmp_path / "part"), 2, num_shards=2)
    assert sorted(os.listdir(tmp_path)) == [
        "part-00000-of-00002.tfrecord.gz",
        "part-00001-of-00002.tfrecord.gz",
    ]
    assert read(str(tmp_path / "part-00001-of-00002.tfrecord.gz")) == []


def test_rewriting_a_shard_replaces_it(tmp_path):
    path = str(tmp_path / "part-00000-of-00001.tfrecord.gz")
    assert ordered_write.write_shard(path, [b"old", b"older"]) == 2
    assert ordered_write.write_shard(path, [b"new"]) == 1
    assert read(path) == [b"new"]
    assert os.listdir(tmp_path) == ["part-00000-of-00001.tfrecord.gz"]


# --- user shards: the data job's files --------------------------------------------------------


def test_user_shard_is_stable_and_spreads_users():
    digest = hashlib.blake2b("user 7".encode("utf-8"), digest_size=8).digest()
    assert ordered_write.user_hash("user 7") == int.from_bytes(digest, "little")
    counts = collections.Counter(ordered_write.user_shard(f"u{i}", 4) for i in range(4000))
    assert sorted(counts) == [0, 1, 2, 3]
    assert all(900 <= n <= 1100 for n in counts.values()), counts


def test_user_shard_files_write_one_file_per_key_even_empty(tmp_path):
    prefixes = {("train", "rec"): str(tmp_path / "train" / "rec"), "other": str(tmp_path / "o")}
    with ordered_write.UserShardFiles(prefixes, 1, 3, ".tfrecord.gz") as files:
        files.write(("train", "rec"), b"a")
        files.write(("train", "rec"), b"b")
    assert files.counts == {("train", "rec"): 2, "other": 0}
    assert read(str(tmp_path / "train" / "rec-00001-of-00003.tfrecord.gz")) == [b"a", b"b"]
    assert read(str(tmp_path / "o-00001-of-00003.tfrecord.gz")) == []
    assert sorted(os.listdir(tmp_path)) == ["o-00001-of-00003.tfrecord.gz", "train"]


def test_a_failed_user_shard_leaves_no_file_and_the_previous_one_intact(tmp_path):
    prefix = str(tmp_path / "part")
    path = str(tmp_path / "part-00000-of-00001.tfrecord.gz")
    ordered_write.write_shard(path, [b"previous"])
    with pytest.raises(RuntimeError, match="boom"):
        with ordered_write.UserShardFiles({"k": prefix}, 0, 1, ".tfrecord.gz") as files:
            files.write("k", b"half")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == ["part-00000-of-00001.tfrecord.gz"]
    assert read(path) == [b"previous"]


def test_user_shard_files_refuse_a_bad_shard_or_key(tmp_path):
    with pytest.raises(ValueError, match="shard 3 of 3"):
        ordered_write.UserShardFiles({"k": str(tmp_path / "p")}, 3, 3, ".gz")
    with pytest.raises(KeyError, match="'nope': no file for it"):
        with ordered_write.UserShardFiles({"k": str(tmp_path / "p")}, 0, 1, ".gz") as files:
            files.write("nope", b"x")
    assert os.listdir(tmp_path) == []


def test_count_records_reads_back_what_was_written_and_names_a_damaged_file(tmp_path):
    path = str(tmp_path / "rec-00000-of-00001.tfrecord.gz")
    records = [b"a", b"bb" * 50, b""]
    assert ordered_write.write_shard(path, records) == 3
    assert ordered_write.count_records(path) == 3

    with gzip.open(path, "rb") as handle:
        raw = bytearray(handle.read())
    flipped = bytearray(raw)
    flipped[12] ^= 0xFF  # the first record's payload byte: its CRC no longer matches
    with gzip.open(path, "wb") as handle:
        handle.write(bytes(flipped))
    with pytest.raises(ValueError, match=r"rec-00000-of-00001\.tfrecord\.gz: record 1 is corrupt"):
        ordered_write.count_records(path)

    with gzip.open(path, "wb") as handle:  # cut in the middle of the second record
        handle.write(bytes(raw[: 12 + 1 + 4 + 30]))
    with pytest.raises(ValueError, match="record 2 is corrupt"):
        ordered_write.count_records(path)
