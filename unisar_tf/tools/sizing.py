"""Sizing on paper (issue 25 item 5): the data job, the co-occurrence tables, training and
serving at 1M-100M users and 100k-10M items, from per-unit constants measured here.

    python -m unisar_tf.tools.sizing [--users 1e6,1e7,1e8] [--items 1e5,1e6,1e7] \
        [--qps 1000,10000,100000] [--gpus 1,8,64] [--top_k 500] [--gpu_speedup 10]
    python -m unisar_tf.tools.sizing --calibrate DATA_DIR [--sequences F --attributes F]
    python -m unisar_tf.tools.sizing --check DATA_DIR [--from_build DATA_DIR]

Every constant is either measured on the project's machine and cited (docs/results.md, with
its date), or derived from the data format of a build (bytes per example from its TFRecord
files, rows from its co-occurrence .npy files, bytes per row from the arrays' dtypes);
everything else is an ASSUMPTION, printed with its value and set by a flag. The formulas are
in docs/benchmarks.md ("Sizing"). `--check` predicts a real build's figures from its user and
item counts with another build's constants (default: Beauty's) and prints both.

The model itself is standard library and NumPy only (no TensorFlow, no Beam); only
`--calibrate` with `--sequences` imports Beam, to measure its coder's bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import gzip
import json
import math
import os
import struct
import sys
import tracemalloc
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from feature_specs.data_spec import DataSpec

MB = 1e6
GB = 1e9
TB = 1e12
SHAPE_BINS = 100


@dataclasses.dataclass(frozen=True)
class Cited:
    """A constant and where it comes from."""

    value: float
    source: str


# ---------------------------------------------------------------------------------------------
# Per-unit figures of one data job output (derived from the build by `calibrate`).


@dataclasses.dataclass(frozen=True)
class BuildConstants:
    name: str
    source: str
    users: int
    items: int
    words: int
    events: int
    train_examples: int  # rec + search
    eval_examples: int  # validation + test, rec + search
    train_example_bytes: float  # mean serialized tf.Example, training split
    eval_example_bytes: float  # mean serialized tf.Example, validation and test
    gzip_ratio: float  # bytes of the .tfrecord.gz files / serialized record bytes
    train_id_slots: int  # candidate ids in a training example (candidates + negative pool)
    eval_id_slots: int  # candidate ids in an evaluation example
    top_k: int  # the build's --cooccurrence_top_k (the constants below need 0, all pairs)
    pairs_all: int  # distinct pair rows
    pair_increments: int  # sum of the pair totals: every +1 of the counting
    transitions_all: int  # distinct transition rows
    items_with_pairs: int  # items with at least one pair (left side)
    items_with_transitions: int
    # Each item's distinct neighbours over their mean, as the means of SHAPE_BINS equal-count
    # bins, smallest first: the shape of the neighbour-count distribution.
    pair_shape: Tuple[float, ...]
    transition_shape: Tuple[float, ...]
    id_format: str = "ids"

    def per_user(self, count: float) -> float:
        return count / self.users

    @property
    def pairs_per_train_example(self) -> float:
        return self.pairs_all / self.train_examples

    @property
    def increments_per_train_example(self) -> float:
        return self.pair_increments / self.train_examples

    @property
    def transitions_per_train_example(self) -> float:
        return self.transitions_all / self.train_examples


def varint_bytes(value: int) -> int:
    """Bytes of an unsigned protobuf varint (what an int64 id takes in a tf.Example)."""
    return max(1, math.ceil(max(int(value), 1).bit_length() / 7))


def distribution_shape(counts: np.ndarray, bins: int = SHAPE_BINS) -> Tuple[float, ...]:
    """Positive counts -> their values over the mean, as the means of `bins` equal-count bins
    (smallest first); empty for no counts."""
    counts = np.sort(np.asarray(counts, np.float64)[np.asarray(counts) > 0])
    if not len(counts):
        return ()
    ratios = counts / counts.mean()
    return tuple(round(float(part.mean()), 4) for part in np.array_split(ratios, bins) if len(part))


def kept_rows(all_rows: float, items_with_rows: float, top_k: int, shape: Sequence[float]) -> float:
    """Rows left when each item keeps its top_k neighbours: items x mean(min(K, m x shape)),
    m = all_rows / items_with_rows the mean neighbours per item; top_k 0 keeps all."""
    if top_k <= 0 or all_rows <= 0 or items_with_rows <= 0:
        return float(all_rows)
    if not shape:
        return float(min(all_rows, items_with_rows * top_k))
    mean = all_rows / items_with_rows
    kept = items_with_rows * np.mean(np.minimum(top_k, mean * np.asarray(shape)))
    return float(min(kept, all_rows, items_with_rows * top_k))


# Beauty, id examples, all pairs: the build of docs/results.md 2026-12-03 "Co-occurrence top
# K, Beauty validation and Sports (held out)" (build_examples --dataset amazon_beauty --seed 0
# --train_negative_pool 20 --query_len 8 --cooccurrence_top_k 0), read on 2026-12-03 by
# `python -m unisar_tf.tools.sizing --calibrate /tmp/cooc/beauty_k0`.
BEAUTY = BuildConstants(
    name="Beauty",
    source='build of results.md 2026-12-03 "Co-occurrence top K", --calibrate 2026-12-03',
    users=22363,
    items=12101,
    words=73,
    events=198502,
    train_examples=67663,
    eval_examples=64780,
    train_example_bytes=632.7271477764805,
    eval_example_bytes=751.5492590305649,
    gzip_ratio=0.2644727054960952,
    train_id_slots=25,
    eval_id_slots=100,
    top_k=0,
    pairs_all=1213192,
    pair_increments=1758024,
    transitions_all=58171,
    items_with_pairs=11849,
    items_with_transitions=11022,
    pair_shape=(
        0.0098,
        0.0191,
        0.0274,
        0.037,
        0.0448,
        0.0529,
        0.0616,
        0.0686,
        0.0781,
        0.0868,
        0.0936,
        0.0991,
        0.1088,
        0.1173,
        0.127,
        0.1354,
        0.1422,
        0.1511,
        0.16,
        0.1679,
        0.176,
        0.1856,
        0.1945,
        0.2043,
        0.2136,
        0.2229,
        0.2315,
        0.2417,
        0.2526,
        0.2621,
        0.2749,
        0.2851,
        0.2954,
        0.3066,
        0.3198,
        0.3316,
        0.3453,
        0.3575,
        0.3681,
        0.3818,
        0.3948,
        0.408,
        0.4222,
        0.435,
        0.4498,
        0.4649,
        0.4808,
        0.4947,
        0.5119,
        0.5259,
        0.5424,
        0.5604,
        0.5762,
        0.5922,
        0.6109,
        0.63,
        0.6523,
        0.6747,
        0.6921,
        0.7099,
        0.7288,
        0.7502,
        0.777,
        0.802,
        0.8249,
        0.8503,
        0.8753,
        0.8991,
        0.9245,
        0.9513,
        0.9797,
        1.0104,
        1.0433,
        1.0827,
        1.1184,
        1.1537,
        1.1917,
        1.2386,
        1.2865,
        1.3333,
        1.3784,
        1.4422,
        1.5098,
        1.5792,
        1.6514,
        1.7455,
        1.8449,
        1.9472,
        2.0529,
        2.1894,
        2.3651,
        2.5816,
        2.8304,
        3.146,
        3.5694,
        4.0382,
        4.7259,
        5.6846,
        6.8402,
        9.3064,
    ),
    transition_shape=(
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.1895,
        0.3414,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.379,
        0.5185,
        0.5684,
        0.5684,
        0.5684,
        0.5684,
        0.5684,
        0.5684,
        0.5684,
        0.5684,
        0.5684,
        0.5684,
        0.5684,
        0.5684,
        0.5684,
        0.5684,
        0.5684,
        0.5684,
        0.7183,
        0.7579,
        0.7579,
        0.7579,
        0.7579,
        0.7579,
        0.7579,
        0.7579,
        0.7579,
        0.7579,
        0.7613,
        0.9474,
        0.9474,
        0.9474,
        0.9474,
        0.9474,
        0.9474,
        1.0249,
        1.1369,
        1.1369,
        1.1369,
        1.161,
        1.3263,
        1.3263,
        1.3263,
        1.5124,
        1.5158,
        1.6519,
        1.7173,
        1.8948,
        2.055,
        2.2031,
        2.3874,
        2.6527,
        2.961,
        3.3572,
        3.8843,
        4.5474,
        5.4569,
        6.6885,
        10.4108,
    ),
    id_format="ids",
)

# ---------------------------------------------------------------------------------------------
# Constants measured here (cited) and constants of the job's and the model's code.

# Bytes through the job's shuffles with Beam's default coder (FastPrimitivesCoder), measured
# by measure_coder_bytes on Beauty (198,502 events, 17,082 training records), 2026-12-03.
EVENT_SHUFFLE_BYTES = Cited(90.3, "Beauty's events, --calibrate --sequences, 2026-12-03")
# One CombinePerKey element of the co-occurrence count ((table, item), (ids, counts)) with
# Beam's coder: 272 bytes (key 12, two pickled arrays 260) plus 16 per neighbour; measured
# by measure_coder_bytes, 2026-12-03.
COMBINE_ELEMENT_BYTES = Cited(
    272.0, "Beam's coder on a count element, --calibrate --sequences, 2026-12-03"
)
# A vocabulary entry (raw id -> int, the string included) in a Python dict, tracemalloc on
# Beauty's vocab/users.txt (ids of 4.5 characters on average), 2026-12-03.
VOCAB_ENTRY_BYTES = Cited(148.5, "tracemalloc, Beauty's vocab/users.txt as a dict, 2026-12-03")
VOCAB_ID_CHARS = 4.5
# The one worker that writes the tables (WriteTables after CoocGather): its peak per row,
# the gathered rows included (16 B of arrays + per-item objects, then the stacked,
# concatenated and converted (P, 3) int64 copies); tracemalloc on Beauty's 1,271,363 rows
# (all pairs and transitions; a 12,100-entry vocabulary stand-in adds ~1 B) by
# measure_writer_bytes, 2026-12-03. The code's arrays alone give 64 (16 + 24 + 24).
WRITER_BYTES_PER_ROW = Cited(74.8, "tracemalloc, WriteTable on Beauty's rows, 2026-12-03")

# From the code (docs/data.md "Co-occurrence tables"; unisar_tf/layers/cooccurrence.py;
# pipeline/cooccurrence_tables.py; pipeline/sequence_builder.NegativeSampler;
# pipeline/ordered_write.py: a user shard streams its examples to its files, one at a time),
# bytes:
ARTIFACT_BYTES_PER_ROW = 24  # (P, 3) int64 rows of cooccurrence/{pairs,transitions}.npy
ARTIFACT_BYTES_PER_ITEM = 8  # (items + 1,) int64 totals, one file per table
MODEL_BYTES_PER_ROW = 12  # the layer's pair_keys int64 + pair_counts float32
MODEL_BYTES_PER_ITEM = 4  # the layer's item_totals float32, one per table
COMBINE_BYTES_PER_NEIGHBOUR = 16  # MergeNeighbours' arrays: int64 right id + int64 count
SAMPLER_BYTES_PER_ITEM = 25  # float64 weights + cdf (16), bool mask (1), int64 item_clicks (8)

# Training: positives (training examples, rec and search) per second on the project machine
# (2 vCPU, no GPU), docs/results.md.
TRAIN_RATES: Dict[str, Cited] = {
    "default": Cited(
        67663 / 181.0,
        "results.md 2026-11-30 'make run from a fresh clone, idle machine': the default "
        "preset's 1 epoch of 67,663 positives in 181 s of training and full validation "
        "(a lower bound on the rate: validation is inside the 181 s)",
    ),
    "paper": Cited(
        900.0,
        "results.md 2026-11-27 'Training throughput': benchmark_train, paper preset, packed, "
        "batch 1,024, idle machine (1,115/s with --inter_op_threads 2 --intra_op_threads 1)",
    ),
}

# Serving: requests/s one 2-vCPU box sustained, and the p99 (ms) it had at that load.
SERVING_POINTS: Dict[str, Tuple[Cited, float]] = {
    "model server, 8 clients": (
        Cited(
            228.0,
            "results.md 2026-11-27 'Serving latency': serving.benchmark, gRPC to the stand-in, "
            "8 clients x 60 s, 100 candidates, paper preset",
        ),
        50.89,
    ),
    "online path, 1 client": (
        Cited(
            76.0,
            "results.md 2026-12-02 'Online load benchmark, Beauty': serving.benchmark_online "
            "http:given, 1 client x 30 s (service + model server on the same 2 vCPU)",
        ),
        20.54,
    ),
    "online path, 8 clients": (
        Cited(
            115.0,
            "results.md 2026-12-02 'Online load benchmark, Beauty': http:given, 8 clients x "
            "600 s",
        ),
        120.57,
    ),
}


@dataclasses.dataclass(frozen=True)
class Assumptions:
    """What the model cannot measure here; every field is printed and has a flag."""

    top_k: int = 500  # --cooccurrence_top_k, the data job's default
    events_per_user: Optional[float] = None  # None: the calibration build's
    pair_growth_exponent: float = 1.0  # distinct pairs ~ training examples ** exponent
    id_chars: Optional[float] = None  # raw id length; None: the calibration build's
    gpu_speedup: float = 10.0  # one GPU worker's positives/s over the 2-vCPU machine's
    scaling_efficiency: float = 1.0  # N GPUs give N x efficiency x one GPU's rate
    headroom: float = 1.0  # a replica is loaded to headroom x its measured requests/s
    widest_ids: bool = False  # every candidate id at the catalogue's widest varint (a bound)


# ---------------------------------------------------------------------------------------------
# Reading a build.


def tfrecord_sizes(paths: Sequence[str]) -> Tuple[int, int, int]:
    """(records, serialized record bytes, file bytes) of GZIP TFRecord files: the framing is
    8 bytes length, 4 bytes CRC, the record, 4 bytes CRC."""
    records = record_bytes = file_bytes = 0
    for path in paths:
        file_bytes += os.path.getsize(path)
        with gzip.open(path, "rb") as handle:
            while True:
                header = handle.read(12)
                if len(header) < 12:
                    break
                (length,) = struct.unpack("<Q", header[:8])
                handle.seek(length + 4, os.SEEK_CUR)
                records += 1
                record_bytes += length
    return records, record_bytes, file_bytes


def _example_paths(data_dir: str, spec: DataSpec, split: str) -> List[str]:
    paths: List[str] = []
    for key, pattern in sorted((spec.files or {}).items()):
        if key.split("/")[0] == split:
            paths += sorted(glob.glob(os.path.join(data_dir, pattern)))
    return paths


def _table_files(data_dir: str) -> Dict[str, str]:
    """The build's co-occurrence files (key -> path relative to data_dir)."""
    spec = DataSpec.load(data_dir)
    if spec.cooccurrence is None:
        raise ValueError(
            f"{data_dir}/manifest.json names no co-occurrence tables: build it with this "
            "project's data job (pipeline.build_examples), --cooccurrence_top_k 0 for all pairs"
        )
    return dict(spec.cooccurrence.files)


def calibrate(data_dir: str, name: str = "") -> BuildConstants:
    """A build's per-unit figures: its manifest, its TFRecord files, its co-occurrence .npy
    files (all pairs only when it was built with --cooccurrence_top_k 0)."""
    spec = DataSpec.load(data_dir)
    examples = spec.examples.by_split if spec.examples else {}
    sizes = {}
    for split in ("train", "valid", "test"):
        sizes[split] = tfrecord_sizes(_example_paths(data_dir, spec, split))
    train_n, train_bytes, train_file = sizes["train"]
    eval_n = sizes["valid"][0] + sizes["test"][0]
    eval_bytes = sizes["valid"][1] + sizes["test"][1]
    file_bytes = train_file + sizes["valid"][2] + sizes["test"][2]
    files = spec.cooccurrence.files if spec.cooccurrence else {}

    def load(key):
        return np.load(os.path.join(data_dir, files[key]), allow_pickle=False)

    pairs, transitions = load("pairs"), load("transitions")
    pair_neighbours = np.bincount(pairs[:, 0]) if len(pairs) else np.zeros(0)
    transition_neighbours = np.bincount(transitions[:, 0]) if len(transitions) else np.zeros(0)
    return BuildConstants(
        name=name or os.path.basename(os.path.normpath(data_dir)),
        source=f"--calibrate {data_dir}",
        users=spec.vocab_sizes.users,
        items=spec.vocab_sizes.items,
        words=spec.vocab_sizes.words,
        events=spec.counters_get("events"),
        train_examples=int(sum(examples.get("train", {}).values())),
        eval_examples=int(
            sum(examples.get("valid", {}).values()) + sum(examples.get("test", {}).values())
        ),
        train_example_bytes=train_bytes / max(train_n, 1),
        eval_example_bytes=eval_bytes / max(eval_n, 1),
        gzip_ratio=file_bytes / max(train_bytes + eval_bytes, 1),
        train_id_slots=spec.candidates.train + spec.candidates.train_negative_pool,
        eval_id_slots=spec.candidates.eval,
        top_k=spec.cooccurrence.top_k if spec.cooccurrence else 0,
        pairs_all=int(len(pairs)),
        pair_increments=int(load("pairs_totals").sum()),
        transitions_all=int(len(transitions)),
        items_with_pairs=int(np.count_nonzero(pair_neighbours)),
        items_with_transitions=int(np.count_nonzero(transition_neighbours)),
        pair_shape=distribution_shape(pair_neighbours),
        transition_shape=distribution_shape(transition_neighbours),
        id_format=spec.id_format,
    )


def pruned_rows(data_dir: str, table: str, top_k: int) -> int:
    """Rows of a K = 0 build's table once each item keeps its top_k: sum of min(K, n_i)."""
    files = _table_files(data_dir)
    rows = np.load(os.path.join(data_dir, files[table]), allow_pickle=False)
    neighbours = np.bincount(rows[:, 0]) if len(rows) else np.zeros(0, np.int64)
    return int(np.minimum(neighbours, top_k).sum()) if top_k > 0 else int(len(rows))


def measure_writer_bytes(data_dir: str) -> float:
    """Peak bytes per row of the table writer (WriteTable, one table at a time as the job
    gathers them) on a K = 0 build's rows, the gathered rows included, with tracemalloc
    (imports Beam). The larger of the two tables' figures."""
    import tempfile
    import types

    from pipeline import cooccurrence_tables as tables
    from unisar_tf.data import cooccurrence_counts as cc

    files = _table_files(data_dir)
    per_row = 0.0
    with tempfile.TemporaryDirectory() as out:
        os.makedirs(os.path.join(out, cc.TABLES_DIR))
        for name in cc.TABLE_NAMES:
            table = np.load(os.path.join(data_dir, files[name]), allow_pickle=False)
            if not len(table):
                continue
            tracemalloc.start()
            # As the job gathers them: (left, row sum, the item's rows as int64 bytes).
            starts = np.flatnonzero(np.r_[True, table[1:, 0] != table[:-1, 0]])
            values = [
                (int(table[start, 0]), int(table[start:end, 2].sum()), table[start:end].tobytes())
                for start, end in zip(starts, np.r_[starts[1:], len(table)])
            ]
            vocab = types.SimpleNamespace(items=dict.fromkeys(range(int(table[:, 0].max()))))
            rows = len(table)
            del table
            list(tables.WriteTable(out).process((name, values + [None]), vocab))
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            per_row = max(per_row, peak / rows)
    return per_row


def measure_combine_bytes(data_dir: str, batch_sizes: Sequence[int] = (256, 4096)) -> dict:
    """What the job's CountBatch emits into the co-occurrence CombinePerKey for a build's
    training records at each batch size (BatchElements' bounds are 256 and 4096; 0 = all
    records in one batch): elements and coded bytes per training example, before the
    runner's own combining (imports Beam)."""
    import types

    from apache_beam.coders.coders import FastPrimitivesCoder

    from pipeline import cooccurrence_tables as tables

    spec = DataSpec.load(data_dir)
    records: List[bytes] = []
    for path in _example_paths(data_dir, spec, "train"):
        with gzip.open(path, "rb") as handle:
            while len(header := handle.read(12)) == 12:
                records.append(handle.read(struct.unpack("<Q", header[:8])[0]))
                handle.read(4)
    with open(os.path.join(data_dir, "vocab", "items.txt")) as handle:
        vocab = types.SimpleNamespace(
            items={line.rstrip("\n"): index for index, line in enumerate(handle)}
        )
    shapes = spec.shapes
    coder = FastPrimitivesCoder()
    result = {}
    for batch in batch_sizes:
        count = tables.CountBatch(spec.id_format, shapes.search_len, shapes.clicks_per_session)
        count.setup()
        elements = coded = 0
        size = batch or len(records)
        for start in range(0, len(records), size):
            for key, value in count.process(records[start : start + size], vocab):
                elements += 1
                coded += len(coder.encode(key)) + len(coder.encode(value))
        result[f"batch {batch or 'all'}"] = {
            "elements_per_example": elements / len(records),
            "bytes_per_example": coded / len(records),
            "bytes": coded,
        }
    return result


def measure_coder_bytes(sequences: str, attributes: str, data_dir: str) -> Dict[str, float]:
    """Bytes per event through GroupByUser with Beam's default coder, and bytes per
    vocabulary entry in a dict (imports Beam). (Examples cross no shuffle: each user shard
    writes its own files.)"""
    from apache_beam.coders.coders import FastPrimitivesCoder

    from feature_specs import event_schema as es
    from pipeline.adapters import amazon, common

    queries = amazon.category_queries(amazon.load_attributes(attributes), 100)
    coder = FastPrimitivesCoder()
    events = event_bytes = 0
    with open(sequences) as handle:
        for line_number, line in enumerate(handle, 1):
            fields = line.split()
            user, items = fields[0], fields[1:]
            for position, item in enumerate(items):
                query = queries.get(item)
                if amazon.is_search_draw(0, user, position, 0.5) and query:
                    event = es.Event(
                        user, position, es.SCENARIO_SEARCH, item, 1, f"{user}:{position}",
                        query, sequences, line_number,
                    )  # fmt: skip
                else:
                    event = es.Event(
                        user, position, es.SCENARIO_REC, item, 1, "", (), sequences, line_number
                    )
                event_bytes += len(coder.encode(user))
                event_bytes += len(coder.encode(common.event_to_tuple(event)))
                events += 1
    with open(os.path.join(data_dir, "vocab", "users.txt")) as handle:
        text = handle.read()
    tracemalloc.start()
    ids = text.splitlines()
    vocabulary = {raw_id: index for index, raw_id in enumerate(ids)}
    vocab_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del vocabulary
    chunk = (np.arange(1, dtype=np.int64), np.ones(1, np.int64))
    element = len(coder.encode(("pairs", 12345))) + len(coder.encode(chunk)) - 16
    return {
        "combine_element_bytes": element,
        "events": events,
        "event_shuffle_bytes": event_bytes / events,
        "vocab_entry_bytes": vocab_bytes / len(ids),
        "vocab_id_chars": sum(map(len, ids)) / len(ids),
    }


# ---------------------------------------------------------------------------------------------
# The cost model.


@dataclasses.dataclass(frozen=True)
class Prediction:
    users: float
    items: float
    events: float
    train_examples: float
    eval_examples: float
    example_bytes: float  # serialized records, all splits
    file_bytes: float  # the .tfrecord.gz files
    shuffle_events: float  # GroupByUser
    shuffle_cooc_low: float  # CombinePerKey: distinct pairs (perfect combining)
    shuffle_cooc_high: float  # CombinePerKey: every increment (no combining across batches)
    shuffle_gather: float  # the kept rows to the one writer
    memory_process: float  # per SDK process: vocabulary side input + sampler
    memory_vocab: float
    memory_writer: float  # the one worker that writes the tables
    pairs_all: float
    pairs_kept: float
    transitions_kept: float
    pairs_bound: float  # items x K
    artifact_bytes: float
    model_bytes: float

    @property
    def shuffle_total(self) -> float:
        return self.shuffle_events + self.shuffle_cooc_high + self.shuffle_gather


def predict(
    users: float, items: float, c: BuildConstants, a: Optional[Assumptions] = None
) -> Prediction:
    """The data job's and the tables' figures for `users` and `items`, from a build's
    per-unit constants `c` (per user: events, examples; per example: bytes, pairs)."""
    a = a or Assumptions()
    events_per_user = a.events_per_user or c.events / c.users
    scale = events_per_user / (c.events / c.users)  # examples follow events per user
    train = users * c.per_user(c.train_examples) * scale
    evals = users * c.per_user(c.eval_examples) * scale
    return predict_examples(users, items, users * events_per_user, train, evals, c, a)


def predict_examples(
    users: float,
    items: float,
    events: float,
    train: float,
    evals: float,
    c: BuildConstants,
    a: Optional[Assumptions] = None,
) -> Prediction:
    """`predict` once the example counts are known: the per-example constants alone."""
    a = a or Assumptions()
    wider = 0
    if a.widest_ids and c.id_format == "ids":
        wider = max(0, varint_bytes(items) - varint_bytes(c.items))
    train_bytes = c.train_example_bytes + c.train_id_slots * wider
    eval_bytes = c.eval_example_bytes + c.eval_id_slots * wider
    example_bytes = train * train_bytes + evals * eval_bytes
    id_chars = a.id_chars if a.id_chars is not None else VOCAB_ID_CHARS
    longer = id_chars - VOCAB_ID_CHARS  # raw ids longer than the calibration's
    event_bytes = EVENT_SHUFFLE_BYTES.value + 2 * longer  # the user id twice (key, event)

    growth = (train / c.train_examples) ** a.pair_growth_exponent
    pairs_all = min(c.pairs_all * growth, items * (items - 1))
    transitions_all = min(c.transitions_all * growth, items * (items - 1))
    increments = train * c.increments_per_train_example
    # Items with neighbours: the build's share of the catalogue, but never more than there
    # are events or rows (1M users' 8.9M events cannot touch all of 10M items).
    with_pairs = min(items * c.items_with_pairs / c.items, events, pairs_all)
    with_transitions = min(items * c.items_with_transitions / c.items, events, transitions_all)
    keyed = with_pairs + with_transitions  # one combine key per (table, item)
    # No combining across examples: per example one element per distinct history item and
    # one for its positive (pairs), one for its last item (transitions).
    elements_high = train * (c.increments_per_train_example / 2 + 2)
    pairs_kept = kept_rows(pairs_all, with_pairs, a.top_k, c.pair_shape)
    transitions_kept = kept_rows(transitions_all, with_transitions, a.top_k, c.transition_shape)
    rows = pairs_kept + transitions_kept

    vocab = (users + items + c.words) * (VOCAB_ENTRY_BYTES.value + longer)
    return Prediction(
        users=users,
        items=items,
        events=events,
        train_examples=train,
        eval_examples=evals,
        example_bytes=example_bytes,
        file_bytes=example_bytes * c.gzip_ratio,
        shuffle_events=events * event_bytes,
        shuffle_cooc_low=min(keyed, elements_high) * COMBINE_ELEMENT_BYTES.value
        + (pairs_all + transitions_all) * COMBINE_BYTES_PER_NEIGHBOUR,
        shuffle_cooc_high=elements_high * COMBINE_ELEMENT_BYTES.value
        + (increments + train) * COMBINE_BYTES_PER_NEIGHBOUR,
        shuffle_gather=keyed * COMBINE_ELEMENT_BYTES.value + rows * COMBINE_BYTES_PER_NEIGHBOUR,
        memory_process=vocab + items * SAMPLER_BYTES_PER_ITEM,
        memory_vocab=vocab,
        memory_writer=rows * WRITER_BYTES_PER_ROW.value,
        pairs_all=pairs_all,
        pairs_kept=pairs_kept,
        transitions_kept=transitions_kept,
        pairs_bound=items * a.top_k if a.top_k > 0 else pairs_all,
        artifact_bytes=rows * ARTIFACT_BYTES_PER_ROW + 2 * (items + 1) * ARTIFACT_BYTES_PER_ITEM,
        model_bytes=rows * MODEL_BYTES_PER_ROW + 2 * (items + 1) * MODEL_BYTES_PER_ITEM,
    )


def epoch_hours(train_examples: float, rate: float, gpus: int, a: Assumptions) -> float:
    """Hours of one epoch (training only) on `gpus` GPU workers at `rate` positives/s of the
    2-vCPU machine; gpus 0 = the 2-vCPU machine itself."""
    speed = rate if gpus == 0 else rate * a.gpu_speedup * gpus * a.scaling_efficiency
    return train_examples / speed / 3600.0


def replicas(qps: float, requests_per_s: float, a: Assumptions) -> int:
    """2-vCPU serving replicas for `qps` at a measured operating point."""
    return max(1, math.ceil(qps / (requests_per_s * a.headroom)))


# ---------------------------------------------------------------------------------------------
# Printing.


def human(value: float, unit: str = "") -> str:
    """1234 -> '1.2k', bytes with unit 'B' -> '1.2 GB'."""
    if unit == "B":
        for size, name in ((TB, "TB"), (GB, "GB"), (MB, "MB"), (1e3, "kB")):
            if abs(value) >= size:
                return f"{value / size:.3g} {name}"
        return f"{value:.0f} B"
    for size, name in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{name}"
    return f"{value:.3g}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def report(
    users: Sequence[float],
    items: Sequence[float],
    qps: Sequence[float],
    gpus: Sequence[int],
    c: BuildConstants,
    a: Assumptions,
    train_rates: Optional[Dict[str, Cited]] = None,
    serving_points: Optional[Dict[str, Tuple[Cited, float]]] = None,
) -> str:
    train_rates = train_rates or TRAIN_RATES
    serving_points = serving_points or SERVING_POINTS
    grid = [predict(u, i, c, a) for u in users for i in items]
    out = [f"## Sizing from {c.name} ({c.source})", ""]
    out.append("### Data job (Dataflow): volume, shuffle, worker memory")
    out.append("")
    out.append(
        table(
            [
                "users",
                "items",
                "events",
                "examples",
                "example bytes",
                "on disk (gz)",
                "shuffle: by user",
                "shuffle: co-occurrence",
                "shuffle total (co-occurrence high)",
                "memory per SDK process",
                "of it vocabulary",
                "table writer (1 worker)",
            ],
            [
                [
                    human(p.users),
                    human(p.items),
                    human(p.events),
                    human(p.train_examples + p.eval_examples),
                    human(p.example_bytes, "B"),
                    human(p.file_bytes, "B"),
                    human(p.shuffle_events, "B"),
                    f"{human(p.shuffle_cooc_low, 'B')}-{human(p.shuffle_cooc_high, 'B')}",
                    human(p.shuffle_total, "B"),
                    human(p.memory_process, "B"),
                    human(p.memory_vocab, "B"),
                    human(p.memory_writer, "B"),
                ]
                for p in grid
            ],
        )  # fmt: skip
    )
    out.append("")
    out.append(f"### Co-occurrence tables at K = {a.top_k}")
    out.append("")
    out.append(
        table(
            [
                "users",
                "items",
                "pairs, all",
                "pairs kept",
                "bound items x K",
                "transitions kept",
                "artifact (.npy)",
                "in the model (Trainer, each replica)",
            ],
            [
                [
                    human(p.users),
                    human(p.items),
                    human(p.pairs_all),
                    human(p.pairs_kept),
                    human(p.pairs_bound),
                    human(p.transitions_kept),
                    human(p.artifact_bytes, "B"),
                    human(p.model_bytes, "B"),
                ]
                for p in grid
            ],
        )  # fmt: skip
    )
    out.append("")
    out.append("### Training: hours per epoch (training only, no validation)")
    out.append("")
    rows = []
    for name, rate in train_rates.items():
        for u in users:
            train = predict(u, items[0], c, a).train_examples
            rows.append(
                [name, human(u), human(train), f"{rate.value:,.0f}"]
                + [f"{epoch_hours(train, rate.value, n, a):,.3g}" for n in [0, *gpus]]
            )
    out.append(
        table(
            ["preset", "users", "positives / epoch", "measured positives/s (2 vCPU)", "2 vCPU h"]
            + [f"{n} GPU h" for n in gpus],
            rows,
        )  # fmt: skip
    )
    out.append("")
    out.append("### Serving: 2-vCPU replicas for a QPS, at a measured operating point")
    out.append("")
    rows = []
    for name, (rate, p99) in serving_points.items():
        rows.append(
            [name, f"{rate.value:,.0f}", f"{p99:.1f}"]
            + [f"{replicas(q, rate.value, a):,}" for q in qps]
        )
    out.append(
        table(
            ["operating point", "requests/s per replica", "p99 ms there"]
            + [f"{human(q)} QPS" for q in qps],
            rows,
        )
    )
    out.append("")
    out.append(
        "Each replica also holds the co-occurrence tables in memory (the last column of the "
        "tables above: it grows with items, not with QPS)."
    )
    out.append("")
    out.append("### Constants and assumptions")
    out.append("")
    out.append(constants_text(c, a, train_rates, serving_points))
    return "\n".join(out)


def constants_text(
    c: BuildConstants,
    a: Assumptions,
    train_rates: Optional[Dict[str, Cited]] = None,
    serving_points: Optional[Dict[str, Tuple[Cited, float]]] = None,
) -> str:
    """Every constant with its value and source, every assumption with its value."""
    train_rates = train_rates or TRAIN_RATES
    serving_points = serving_points or SERVING_POINTS
    lines = [
        f"Derived from the build ({c.name}, {c.id_format} examples; {c.source}):",
        "",
        f"- events per user {c.events / c.users:.3f}; examples per user: training "
        f"{c.per_user(c.train_examples):.3f}, evaluation {c.per_user(c.eval_examples):.3f}",
        f"- bytes per serialized example: training {c.train_example_bytes:.1f}, evaluation "
        f"{c.eval_example_bytes:.1f}; gzip files / records {c.gzip_ratio:.3f}",
        f"- co-occurrence per training example (all pairs): distinct pairs "
        f"{c.pairs_per_train_example:.2f}, increments {c.increments_per_train_example:.2f}, "
        f"distinct transitions {c.transitions_per_train_example:.3f}; items with pairs "
        f"{c.items_with_pairs / c.items:.3f} of the catalogue (at most one per event or row)",
        f"- id slots whose varint widens with the catalogue (ids format): training "
        f"{c.train_id_slots}, evaluation {c.eval_id_slots}",
        "",
        "Measured (cited):",
        "",
        f"- {EVENT_SHUFFLE_BYTES.value:.1f} B per event through GroupByUser "
        f"({EVENT_SHUFFLE_BYTES.source})",
        f"- {COMBINE_ELEMENT_BYTES.value:.0f} B per co-occurrence combine element + 16 B per "
        f"neighbour ({COMBINE_ELEMENT_BYTES.source})",
        f"- {WRITER_BYTES_PER_ROW.value:.0f} B per kept row at the table writer's peak "
        f"({WRITER_BYTES_PER_ROW.source})",
        f"- {VOCAB_ENTRY_BYTES.value:.1f} B per vocabulary entry in a worker "
        f"({VOCAB_ENTRY_BYTES.source}; ids of {VOCAB_ID_CHARS:.1f} characters)",
    ]
    for name, rate in train_rates.items():
        lines.append(f"- training, {name} preset: {rate.value:,.0f} positives/s ({rate.source})")
    for name, (rate, p99) in serving_points.items():
        lines.append(
            f"- serving, {name}: {rate.value:,.0f} requests/s at p99 {p99} ms ({rate.source})"
        )
    lines += [
        "",
        "From the code (bytes): artifact row 24 (3 x int64), total 8 per item and table; model "
        "row 12 (int64 key + float32 count), total 4 per item and table; combine 16 per "
        "neighbour (int64 id + count); sampler 25 per item; "
        "examples cross no shuffle (each user shard streams its own files).",
        "",
        "ASSUMPTIONS (not measured; flags):",
        "",
        f"- --events_per_user {a.events_per_user or c.events / c.users:.3f}: a user's log "
        "looks like the build's (examples per user scale with it)",
        f"- --pair_growth_exponent {a.pair_growth_exponent}: distinct pairs and transitions "
        "grow as training examples ** exponent (1 = no repeats, an upper bound), capped at "
        "items x (items - 1); the neighbour counts keep the build's distribution shape",
        f"- --id_chars {a.id_chars if a.id_chars is not None else VOCAB_ID_CHARS:.1f}: raw id "
        "length (memory and event bytes grow 1 B per character)",
        f"- --top_k {a.top_k}; --gpu_speedup {a.gpu_speedup}: one GPU worker's positives/s over "
        "the 2-vCPU machine's (NOT measured: no GPU here); --scaling_efficiency "
        f"{a.scaling_efficiency} (1 = linear in GPUs, a lower bound on time; each worker also "
        "parses the whole global batch, docs/training.md, which this ignores)",
        f"- --headroom {a.headroom}: replicas run at headroom x the measured requests/s",
        f"- --widest_ids {a.widest_ids}: ids keep the build's varint width (popular items have "
        "the small ids); with the flag every candidate id takes the catalogue's widest varint "
        f"(+{c.eval_id_slots} B an evaluation example per extra byte: an upper bound)",
        "- Dataflow shuffles outside the workers' heaps (Shuffle service); in a Python job each "
        "SDK process holds its own copy of a side input (Dataflow's 'Troubleshoot out of "
        "memory errors' guide), typically one process per vCPU: multiply the per-process "
        "memory by the worker's vCPUs",
    ]
    return "\n".join(lines)


def check(data_dir: str, c: BuildConstants, a: Assumptions) -> str:
    """Predicts a real build (all pairs, --cooccurrence_top_k 0) from its user and item counts
    with the constants `c`, and prints predicted against measured."""
    real = calibrate(data_dir)
    if real.top_k != 0:
        raise SystemExit(f"{data_dir}: built with --cooccurrence_top_k {real.top_k}; need 0")
    a = dataclasses.replace(a, events_per_user=None)
    p = predict(real.users, real.items, c, a)
    q = predict_examples(
        real.users, real.items, real.events, real.train_examples, real.eval_examples, c, a
    )
    k = a.top_k
    kept_pairs = pruned_rows(data_dir, "pairs", k)
    kept_transitions = pruned_rows(data_dir, "transitions", k)
    real_bytes = (
        real.train_examples * real.train_example_bytes
        + real.eval_examples * real.eval_example_bytes
    )
    measured = {
        "training examples": real.train_examples,
        "evaluation examples": real.eval_examples,
        "example bytes (serialized)": real_bytes,
        "example files (gz)": real_bytes * real.gzip_ratio,
        "pairs, all": real.pairs_all,
        f"pairs at K = {k}": kept_pairs,
        f"transitions at K = {k}": kept_transitions,
        "pair increments (count)": real.pair_increments,
        f"artifact at K = {k}": (kept_pairs + kept_transitions) * ARTIFACT_BYTES_PER_ROW
        + 2 * (real.items + 1) * ARTIFACT_BYTES_PER_ITEM,
    }
    given = {
        "example bytes (serialized)": q.example_bytes,
        "example files (gz)": q.file_bytes,
        "pairs, all": q.pairs_all,
        f"pairs at K = {k}": q.pairs_kept,
        f"transitions at K = {k}": q.transitions_kept,
        "pair increments (count)": real.train_examples * c.increments_per_train_example,
        f"artifact at K = {k}": q.artifact_bytes,
    }
    predicted = {
        "training examples": p.train_examples,
        "evaluation examples": p.eval_examples,
        "example bytes (serialized)": p.example_bytes,
        "example files (gz)": p.file_bytes,
        "pairs, all": p.pairs_all,
        f"pairs at K = {k}": p.pairs_kept,
        f"transitions at K = {k}": p.transitions_kept,
        "pair increments (count)": p.train_examples * c.increments_per_train_example,
        f"artifact at K = {k}": p.artifact_bytes,
    }
    rows = []
    for name, value in measured.items():
        unit = "B" if any(w in name for w in ("bytes", "files", "shuffle", "artifact")) else ""
        guess = predicted[name]
        row = [name, human(value, unit), human(guess, unit), f"{(guess / value - 1) * 100:+.1f}%"]
        if name in given:
            row += [human(given[name], unit), f"{(given[name] / value - 1) * 100:+.1f}%"]
        else:
            row += ["", ""]
        rows.append(row)
    header = (
        f"## {real.name} ({real.users:,} users, {real.items:,} items) predicted from "
        f"{c.name}'s constants"
    )
    return "\n".join(
        [
            header,
            "",
            table(
                [
                    "figure",
                    "measured",
                    "predicted from users, items",
                    "error",
                    "predicted from the real example counts",
                    "error",
                ],
                rows,
            ),
        ]
    )


def _numbers(text: str) -> List[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def as_python(c: BuildConstants) -> str:
    """The constants as a Python expression (to paste as a default)."""
    fields = ",\n    ".join(
        f"{f.name}={getattr(c, f.name)!r}" for f in dataclasses.fields(BuildConstants)
    )
    return f"BuildConstants(\n    {fields},\n)"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=_numbers, default=[1e6, 1e7, 1e8])
    parser.add_argument("--items", type=_numbers, default=[1e5, 1e6, 1e7])
    parser.add_argument("--qps", type=_numbers, default=[1e3, 1e4, 1e5])
    parser.add_argument("--gpus", type=lambda t: [int(n) for n in _numbers(t)], default=[1, 8, 64])
    parser.add_argument("--from_build", help="a build's folder: its constants instead of Beauty's")
    parser.add_argument("--calibrate", metavar="DATA_DIR", help="print a build's constants")
    parser.add_argument("--as_python", action="store_true", help="--calibrate as Python")
    parser.add_argument("--sequences", help="--calibrate: the Amazon sequences file (Beam coder)")
    parser.add_argument("--attributes", help="--calibrate: the Amazon attributes file")
    parser.add_argument("--check", metavar="DATA_DIR", action="append", default=[])
    parser.add_argument(
        "--positives_per_s", type=float, help="add a training row at this measured rate"
    )
    parser.add_argument("--rate_source", default="given on the command line")
    parser.add_argument(
        "--requests_per_s", type=float, help="add a serving row: a replica's measured requests/s"
    )
    parser.add_argument("--p99_ms", type=float, default=float("nan"), help="its measured p99")
    defaults = Assumptions()
    for field in dataclasses.fields(Assumptions):
        if field.name == "widest_ids":
            parser.add_argument("--widest_ids", action="store_true")
            continue
        kind = int if field.name == "top_k" else float
        parser.add_argument(f"--{field.name}", type=kind, default=field.default)
    args = parser.parse_args(argv)
    assumptions = Assumptions(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(defaults)}
    )

    if args.calibrate:
        constants = calibrate(args.calibrate)
        print(as_python(constants) if args.as_python else json.dumps(
            {k: v for k, v in dataclasses.asdict(constants).items() if "shape" not in k}, indent=1
        ))  # fmt: skip
        if args.sequences:
            coder = measure_coder_bytes(args.sequences, args.attributes, args.calibrate)
            coder["writer_bytes_per_row"] = measure_writer_bytes(args.calibrate)
            coder["combine_output"] = measure_combine_bytes(args.calibrate, (256, 4096, 0))
            print(json.dumps(coder, indent=1))
        return 0
    constants = calibrate(args.from_build) if args.from_build else BEAUTY
    if args.check:
        for data_dir in args.check:
            print(check(data_dir, constants, assumptions))
            print()
        return 0
    train_rates = dict(TRAIN_RATES)
    if args.positives_per_s:
        train_rates["given"] = Cited(args.positives_per_s, args.rate_source)
    serving_points = dict(SERVING_POINTS)
    if args.requests_per_s:
        serving_points["given"] = (Cited(args.requests_per_s, args.rate_source), args.p99_ms)
    print(
        report(
            args.users,
            args.items,
            args.qps,
            args.gpus,
            constants,
            assumptions,
            train_rates,
            serving_points,
        )  # fmt: skip
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
