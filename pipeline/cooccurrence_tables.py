"""The co-occurrence tables in the data job: counted in Beam, top K per item, one artifact.

The Trainer's co-occurrence features (unisar_tf/layers/cooccurrence.py) read two tables
counted on the training examples (rules: unisar_tf/data/cooccurrence.py): symmetric pairs
and directed (last history item -> positive) transitions. Here the job counts them from the
training examples it builds, in the data job's item ids (vocab/items.txt; raw-id examples are
mapped through the same vocabulary), so the Trainer never reads the training split for them:

    train examples ─> BatchElements ─> count pairs per batch (NumPy) ─> (table, left item),
    (right ids, counts) ─> CombinePerKey (sums per left item) ─> top K per left item
    ─> GroupByKey(table) ─> <output>/cooccurrence/{pairs,transitions}{,_totals}.npy

Counting and pruning are distributed (keyed by left item); only the pruned table, O(items x
K), reaches its one writer, as bytes. Totals are each item's full row sum, before pruning. The files
are .npy (no pickle), rows sorted: the same bytes on every run whatever the batching.
"""

from __future__ import annotations

import io
import os
from typing import Iterable, List, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from feature_specs import example_schema as fs
from feature_specs.data_spec import CooccurrenceTables
from pipeline.adapters import common
from unisar_tf.data import cooccurrence_counts as cc

# The smallest K within 1% of all on Beauty validation (Sports held out: within 1% too);
# docs/results.md, 2026-12-03.
DEFAULT_TOP_K = 500
STATS_PREFIX = "cooccurrence/"
_FEATURES = (
    fs.HISTORY_TYPES,
    fs.REC_HISTORY_ITEMS,
    fs.SEARCH_HISTORY_CLICKED_ITEMS,
    fs.CANDIDATE_ITEMS,
)


def _example_class():
    """tf.train.Example's message class, built from its wire layout: the workers parse
    examples without importing TensorFlow (as pipeline/tf_example.py renders them)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    T = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="unisar_cooccurrence_example.proto", package="unisar_cooccurrence", syntax="proto3"
    )

    def message(name, *fields, parent=None):
        added = (parent.nested_type if parent else proto.message_type).add(name=name)
        for number, (field, kind, label, type_name) in enumerate(fields, 1):
            added.field.add(name=field, number=number, type=kind, label=label)
            if type_name:
                added.field[-1].type_name = type_name
        return added

    repeated, optional = T.LABEL_REPEATED, T.LABEL_OPTIONAL
    pkg = ".unisar_cooccurrence."
    message("BytesList", ("value", T.TYPE_BYTES, repeated, None))
    message("FloatList", ("value", T.TYPE_FLOAT, repeated, None))
    message("Int64List", ("value", T.TYPE_INT64, repeated, None))
    message(
        "Feature",
        ("bytes_list", T.TYPE_MESSAGE, optional, pkg + "BytesList"),
        ("float_list", T.TYPE_MESSAGE, optional, pkg + "FloatList"),
        ("int64_list", T.TYPE_MESSAGE, optional, pkg + "Int64List"),
    )
    features = message(
        "Features", ("feature", T.TYPE_MESSAGE, repeated, pkg + "Features.FeatureEntry")
    )
    entry = message(
        "FeatureEntry",
        ("key", T.TYPE_STRING, optional, None),
        ("value", T.TYPE_MESSAGE, optional, pkg + "Feature"),
        parent=features,
    )
    entry.options.map_entry = True
    message("Example", ("features", T.TYPE_MESSAGE, optional, pkg + "Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    descriptor = pool.FindMessageTypeByName("unisar_cooccurrence.Example")
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


class CountBatch(beam.DoFn):
    """A batch of serialized training examples -> ((table, left item), (right ids, counts))
    per left item of each table, in the data job's item ids."""

    def __init__(self, id_format: str, search_len: int, clicks_per_session: int):
        self._raw = id_format == fs.ID_FORMAT_RAW
        self._search_len = search_len
        self._clicks = clicks_per_session
        self._example = None

    def setup(self):
        self._example = _example_class()

    def _ids(self, feature, items) -> List[int]:
        if not self._raw:
            return list(feature.int64_list.value)
        return [
            items.get(value.decode("utf-8"), 0) if value else 0
            for value in feature.bytes_list.value
        ]

    def process(self, batch: List[bytes], vocab):
        columns = {name: [] for name in _FEATURES}
        for serialized in batch:
            feature = self._example.FromString(serialized).features.feature
            for name in _FEATURES:
                if name not in feature:
                    raise ValueError(f"a training example has no {name!r} feature")
                if name == fs.HISTORY_TYPES:
                    columns[name].append(list(feature[name].int64_list.value))
                else:
                    columns[name].append(self._ids(feature[name], vocab.items))
        n = len(batch)
        arrays = {
            name: np.asarray(values, np.int64).reshape(n, -1) for name, values in columns.items()
        }
        arrays[fs.SEARCH_HISTORY_CLICKED_ITEMS] = arrays[fs.SEARCH_HISTORY_CLICKED_ITEMS].reshape(
            n, self._search_len, self._clicks
        )
        positives = arrays[fs.CANDIDATE_ITEMS][:, 0]
        tables = (
            (cc.PAIRS, cc.pair_counts(cc.history_items(arrays), positives)),
            (cc.TRANSITIONS, cc.transition_counts(cc.last_history_items(arrays), positives)),
        )
        for name, (left, right, count) in tables:
            starts = np.flatnonzero(np.r_[True, left[1:] != left[:-1]]) if len(left) else []
            ends = np.r_[starts[1:], len(left)] if len(left) else []
            for start, end in zip(starts, ends):
                # Copies: a slice would keep the whole batch's arrays alive in the combiner.
                chunk = (right[start:end].copy(), count[start:end].copy())
                yield (name, int(left[start])), chunk


def _compact(chunks: Iterable[Tuple[np.ndarray, np.ndarray]]) -> Tuple[np.ndarray, np.ndarray]:
    """Chunks of (right ids, counts) -> one (sorted distinct right ids, summed counts)."""
    chunks = list(chunks)
    if not chunks:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    right = np.concatenate([c[0] for c in chunks])
    count = np.concatenate([c[1] for c in chunks])
    unique, inverse = np.unique(right, return_inverse=True)
    summed = np.zeros(len(unique), np.int64)
    np.add.at(summed, inverse, count)
    return unique, summed


class MergeNeighbours(beam.CombineFn):
    """(right ids, counts) chunks of one left item -> their sums, as NumPy arrays (16 bytes
    a neighbour, not a Python dict entry)."""

    def create_accumulator(self):
        return []

    def add_input(self, chunks, value):
        chunks.append(value)
        return [_compact(chunks)] if len(chunks) > 64 else chunks

    def merge_accumulators(self, accumulators):
        return [_compact(chunk for chunks in accumulators for chunk in chunks)]

    def compact(self, chunks):
        # Before the shuffle: one array pair per item instead of one per batch.
        return [_compact(chunks)] if len(chunks) > 1 else chunks

    def extract_output(self, chunks):
        return _compact(chunks)


def _prune(element, top_k: int):
    """((table, left), (rights, counts)) -> (table, (left, full row sum, kept rows)), the kept
    rows as the bytes of an int64 (n, 3) array of (left, right, count): all rows of a table
    meet in one worker, where bytes cost a fraction of arrays and their pickles."""
    (name, left), (right, count) = element
    _, kept_right, kept_count = cc.top_k_pairs(np.full(len(right), left), right, count, top_k)
    rows = np.stack([np.full(len(kept_right), left), kept_right, kept_count], axis=1)
    return name, (left, int(count.sum()), rows.astype(np.int64).tobytes())


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _npy_header(rows: int) -> bytes:
    """The header np.save writes for an int64 (rows, 3) array, so that the rows can follow
    it item by item instead of as one array."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.dtype(np.int64).str, "fortran_order": False, "shape": (rows, 3)}
    )
    return buffer.getvalue()


class WriteTable(beam.DoFn):
    """(table, its pruned rows and a None marker) -> the table's two .npy files, rows in item
    order and written item by item; yields the kept size on STATS."""

    def __init__(self, output_dir: str):
        self._output_dir = output_dir

    def process(self, element, vocab):
        name, values = element
        files = cc.artifact_files()
        mine = sorted((v for v in values if v is not None), key=lambda v: v[0])
        kept = sum(len(rows) for _, _, rows in mine) // (3 * 8)
        with FileSystems.create(os.path.join(self._output_dir, files[name])) as handle:
            handle.write(_npy_header(kept))
            for _, _, rows in mine:
                handle.write(rows)
        totals = np.zeros(len(vocab.items) + 1, np.int64)
        for left, total, _ in mine:
            totals[left] = total
        with FileSystems.create(os.path.join(self._output_dir, files[f"{name}_totals"])) as handle:
            handle.write(_npy_bytes(totals))
        yield beam.pvalue.TaggedOutput(common.STATS, (f"{STATS_PREFIX}{name}", kept))


def add_tables(examples, vocab, options, output_dir: str, top_k: int):
    """Adds the counting to the job: `examples` (split, scenario, serialized) as the builder
    yields them, `vocab` the Vocabularies PCollection. Returns the STATS PCollection
    (kept pairs per table, for spec_of)."""
    if top_k < 0:
        raise ValueError(f"cooccurrence_top_k={top_k}: expected 0 (keep all) or more")
    vocab_side = beam.pvalue.AsSingleton(vocab)
    written = (
        examples
        | "CoocTrainOnly" >> beam.Filter(lambda ex: ex[0] == "train")
        | "CoocBytes" >> beam.Map(lambda ex: ex[2])
        | "CoocBatches" >> beam.BatchElements(min_batch_size=256, max_batch_size=4096)
        | "CoocCountBatches"
        >> beam.ParDo(
            CountBatch(options.id_format, options.search_len, options.clicks_per_session),
            vocab_side,
        )
        | "CoocSumPerItem" >> beam.CombinePerKey(MergeNeighbours())
        | "CoocTopK" >> beam.Map(_prune, top_k=top_k)
    )
    # One group per table (a None marker each, so an empty table is written too): a
    # table's rows are held once, in the worker that writes it.
    markers = written.pipeline | "CoocTables" >> beam.Create([(n, None) for n in cc.TABLE_NAMES])
    written = (
        (written, markers)
        | "CoocWithEveryTable" >> beam.Flatten()
        | "CoocGather" >> beam.GroupByKey()
        | "CoocWrite"
        >> beam.ParDo(WriteTable(output_dir), vocab_side).with_outputs(common.STATS, main="unused")
    )
    return written[common.STATS]


def spec_of(stats, top_k: int) -> CooccurrenceTables:
    """The manifest's cooccurrence block from the job's STATS counters."""
    return CooccurrenceTables(
        top_k=top_k,
        pairs=int(stats.get(f"{STATS_PREFIX}{cc.PAIRS}", 0)),
        transitions=int(stats.get(f"{STATS_PREFIX}{cc.TRANSITIONS}", 0)),
        files=cc.artifact_files(),
    )


def output_patterns(root: str) -> List[str]:
    """The artifact's files under root, for the job's publish step."""
    return [os.path.join(root, cc.TABLES_DIR, "*.npy")]
