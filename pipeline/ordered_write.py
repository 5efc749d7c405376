"""TFRecord files that are a function of the data alone, whatever order the runner delivers.

beam.io.WriteToTFRecord writes records in the order the runner happens to deliver them, and
with num_shards=0 the runner also picks the file count, so two runs of the data job on the
same input write the same records in a different order. The trainer's seeded shuffle then
sees other batches and a re-run of the pipeline trains another model.

Two ways out, both writing `prefix-SSSSS-of-NNNNN suffix` files:

- UserShardFiles (what the data job uses): users, not examples, are sharded. Each user goes
  to the shard named by a hash of the user id (user_shard); a shard's users are built in
  hash order and their examples streamed into the shard's files, one per split and scenario.
  Only events cross a shuffle (grouped by shard), and a worker holds one shard's events, not
  its examples: the examples never go through a shuffle, so no runner holds them.
- WriteOrderedTFRecords: a sink for any PCollection of records. Each record goes to the shard
  named by a hash of its bytes and each shard is written sorted by (hash, bytes). It costs a
  shuffle of every record, which the local DirectRunner holds in memory (Sports, raw ids:
  4.3 GB peak over the process tree; docs/benchmarks.md).
"""

import hashlib
import uuid
from typing import Dict, Hashable

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

# Beam's own record framing (length, masked CRC32C), the bytes WriteToTFRecord writes; this
# keeps Beam workers free of TensorFlow.
from apache_beam.io.tfrecordio import _TFRecordUtil

# About 20 MB of id examples per shard on Beauty; also the unit of read parallelism for
# StatisticsGen and evaluation on a local runner, so small splits still get 2 files.
DEFAULT_RECORDS_PER_SHARD = 10_000
# Users per shard of UserShardFiles: about 5,000 training examples per file on Beauty and
# Sports, and enough shards (Beauty 6, Sports 9) to keep 2 local workers evenly busy.
DEFAULT_USERS_PER_SHARD = 4_000


def record_hash(record: bytes) -> int:
    """A stable 64-bit hash of a record (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(record, digest_size=8).digest(), "little")


def user_hash(user_id: str) -> int:
    """A stable 64-bit hash of a user id: its shard and its place in the shard's files."""
    return int.from_bytes(
        hashlib.blake2b(user_id.encode("utf-8"), digest_size=8).digest(), "little"
    )


def user_shard(user_id: str, num_shards: int) -> int:
    return user_hash(user_id) % num_shards


def shard_count(
    num_records: int, num_shards: int = 0, records_per_shard: int = DEFAULT_RECORDS_PER_SHARD
) -> int:
    """num_shards if given, else one shard per `records_per_shard` records; at least 1, so an
    empty split still has a (empty) file for readers' globs."""
    if num_shards < 0 or records_per_shard < 1:
        raise ValueError(
            f"num_shards={num_shards}, records_per_shard={records_per_shard}: "
            "expected num_shards >= 0 and records_per_shard >= 1"
        )
    if num_shards:
        return num_shards
    return max(1, -(-num_records // records_per_shard))


def shard_path(prefix: str, shard: int, num_shards: int, suffix: str) -> str:
    """The file name WriteToTFRecord's default template gives: prefix-SSSSS-of-NNNNN suffix."""
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}{suffix}"


class UserShardFiles:
    """The files of one user shard, one per key (e.g. (split, scenario)), written as the
    records come; with-block. Records go to temporary files renamed into place only when
    the block ends without an error, so a retried or failed shard never leaves a half file;
    every key gets its file, empty or not, so readers' globs match every shard.

        with UserShardFiles(prefixes, shard, num_shards, suffix) as files:
            files.write(key, record)
    """

    def __init__(
        self, prefixes: Dict[Hashable, str], shard: int, num_shards: int, suffix: str
    ) -> None:
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard {shard} of {num_shards}: expected 0 <= shard < num_shards")
        self.paths = {key: shard_path(p, shard, num_shards, suffix) for key, p in prefixes.items()}
        self.counts = {key: 0 for key in prefixes}
        self._temporary = {}
        self._handles = {}

    def __enter__(self) -> "UserShardFiles":
        token = uuid.uuid4().hex
        for key, path in self.paths.items():
            self._temporary[key] = f"{path}.tmp-{token}"
            self._handles[key] = FileSystems.create(
                self._temporary[key], compression_type=CompressionTypes.GZIP
            )
        return self

    def write(self, key: Hashable, record: bytes) -> None:
        if key not in self._handles:
            raise KeyError(f"{key!r}: no file for it (files for {sorted(self.paths)})")
        _TFRecordUtil.write_record(self._handles[key], record)
        self.counts[key] += 1

    def __exit__(self, error_type, error, traceback) -> None:
        for handle in self._handles.values():
            handle.close()
        if error_type is not None:
            FileSystems.delete([t for t in self._temporary.values() if FileSystems.exists(t)])
            return
        for key, path in self.paths.items():
            if FileSystems.exists(path):
                FileSystems.delete([path])
            FileSystems.rename([self._temporary[key]], [path])


def count_records(path: str) -> int:
    """The records of a GZIP TFRecord file, every record's framing and CRCs checked;
    ValueError naming the file and the record when one is corrupt or cut short."""
    found = 0
    with FileSystems.open(path, compression_type=CompressionTypes.GZIP) as handle:
        while True:
            try:
                record = _TFRecordUtil.read_record(handle)
            except ValueError as error:
                raise ValueError(f"{path}: record {found + 1} is corrupt: {error}") from None
            if record is None:
                return found
            found += 1


def write_shard(path: str, records) -> int:
    """Writes `records` (already ordered) as one GZIP TFRecord file; returns the count.

    Writes a temporary file and renames it, so a retried bundle never leaves a half file."""
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    count = 0
    with FileSystems.create(temporary, compression_type=CompressionTypes.GZIP) as handle:
        for record in records:
            _TFRecordUtil.write_record(handle, record)
            count += 1
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temporary], [path])
    return count


def _key_by_shard(record: bytes, num_shards: int):
    digest = record_hash(record)
    return digest % num_shards, (digest, record)


class WriteOrderedTFRecords(beam.PTransform):
    """PCollection[bytes] -> GZIP TFRecord files `prefix-SSSSS-of-NNNNN suffix`, deterministic.

    Outputs PCollection[(path, record count)], one element per file written.
    """

    def __init__(
        self,
        prefix: str,
        suffix: str,
        num_shards: int = 0,
        records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
    ):
        super().__init__()
        shard_count(0, num_shards, records_per_shard)  # validates the arguments early
        self._prefix = prefix
        self._suffix = suffix
        self._num_shards = num_shards
        self._records_per_shard = records_per_shard

    def expand(self, records):
        num_shards, per_shard, prefix, suffix = (
            self._num_shards,
            self._records_per_shard,
            self._prefix,
            self._suffix,
        )
        if num_shards:
            # A given count needs no counting pass, which would hold every record in a
            # local runner's memory until the count is known (~0.5 GB on Beauty).
            every_shard = records.pipeline | "EveryShard" >> beam.Create(
                [(i, None) for i in range(num_shards)]
            )
            shards = num_shards
        else:
            total = records | "Count" >> beam.combiners.Count.Globally()
            every_shard = total | "EveryShard" >> beam.FlatMap(
                lambda count: [(i, None) for i in range(shard_count(count, 0, per_shard))]
            )
            shards = beam.pvalue.AsSingleton(
                total | "ShardCount" >> beam.Map(shard_count, 0, per_shard)
            )
        keyed = records | "KeyByHash" >> beam.Map(_key_by_shard, shards)

        def write(element, n):
            shard, values = element
            ordered = sorted(value for value in values if value is not None)
            path = shard_path(prefix, shard, n, suffix)
            yield path, write_shard(path, (record for _, record in ordered))

        # The (shard, None) markers make every file exist, empty or not.
        return (
            (every_shard, keyed)
            | "WithEveryShard" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.FlatMap(write, shards)
        )
