"""A TFRecord sink whose files are a function of the records alone.

beam.io.WriteToTFRecord writes records in the order the runner happens to deliver them, and
with num_shards=0 the runner also picks the file count, so two runs of the data job on the
same input write the same records in a different order. The trainer's seeded shuffle then
sees other batches and a re-run of the pipeline trains another model.

WriteOrderedTFRecords fixes both: the shard count comes from the record count (or is given),
each record goes to the shard named by a hash of its bytes, and each shard is written sorted
by (hash, bytes). Hash order is pseudo-random, so a file does not cluster one user's examples.
It costs one more shuffle of the examples; a shard is sorted in one worker's memory, which
`records_per_shard` bounds. On the local DirectRunner that shuffle is held in memory: on
Beauty (260 MB of examples) the job's peak grows from ~1.05 to ~3 GB and its wall time by
~8 s (docs/benchmarks.md). Dataflow, Flink and Spark shuffle outside the workers' heaps.
"""

import hashlib
import uuid

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

# Beam's own record framing (length, masked CRC32C), the bytes WriteToTFRecord writes; this
# keeps Beam workers free of TensorFlow.
from apache_beam.io.tfrecordio import _TFRecordUtil

# About 20 MB of id examples per shard on Beauty; also the unit of read parallelism for
# StatisticsGen and evaluation on a local runner, so small splits still get 2 files.
DEFAULT_RECORDS_PER_SHARD = 10_000


def record_hash(record: bytes) -> int:
    """A stable 64-bit hash of a record (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(record, digest_size=8).digest(), "little")


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
