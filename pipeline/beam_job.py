"""The Beam job: canonical events -> vocabularies, per-user sequence examples, TFRecords.

Graph (any runner; DirectRunner with 2 processes here, Dataflow/Flink/Spark by options):

    adapter ─> events ─┬─> vocab counts ─> Vocabularies (side input) ─> vocab files
                       ├─> [max_users filter] ─> GroupByKey(user shard) ─> per shard: its
                       │     users in hash order ─> build_user_examples, streamed into
                       │     {train,valid,test}/{rec,search}-SSSSS-of-NNNNN.tfrecord.gz
                       │     (ordered_write.UserShardFiles) ─> training examples ─> co-occurrence
                       └─> rejected rows ─> rejected/rejected-*.jsonl
    counters from every stage ─> _stats.json ─> manifest.json (written by the driver)

Everything is written into a staging folder next to the output and moved into it only when
the run has succeeded (run, publish): a failed run leaves the previous output as it was.
Bad rows and users who cannot get their negatives become dead letters; none stops the job
(docs/data.md, "What happens to bad input").

Output layout under `output_dir`:
    manifest.json, schema.pbtxt, vocab/{users,items,words}.txt (line k = id k),
    vocab/item_clicks.tsv, {train,valid,test}/{rec,search}-*.tfrecord.gz,
    rejected/rejected-*.jsonl, side_features/{items,users}-*.jsonl (when the adapter has them),
    cooccurrence/*.npy (the Trainer's co-occurrence tables, pipeline/cooccurrence_tables.py).
With `layout="tfx"` the examples go to Split-<split>_<scenario>/data-*.tfrecord.gz instead
(a TFX Examples artifact's layout, e.g. Split-train_rec/); everything else is the same, and
the manifest's `files` patterns say where the examples are.

Id format (build option `id_format`, manifest key "id_format"): "ids" writes the id features
as int64 ids of vocab/*.txt; "raw" writes them as bytes holding the raw ids (b"" = padding),
for TF Transform to build its own vocabularies (feature_specs/example_schema.py). Vocabularies,
splits, negatives and counts are the same in both; schema.pbtxt types the id features to match.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import datetime
import functools
import json
import logging
import os
import time
import uuid
from typing import Dict, Iterable, List, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from feature_specs import event_schema as es
from feature_specs import example_schema as fs
from feature_specs import tfmd_schema
from feature_specs.data_spec import VOCAB_KINDS, Candidates, DataSpec, ExampleCounts, VocabSizes
from feature_specs.layout import (  # noqa: F401 (the job's callers read them here too)
    EXAMPLE_FILE_SUFFIX,
    ITEM_CLICKS_FILE,
    LAYOUT_JOB,
    LAYOUT_TFX,
    LAYOUTS,
    MANIFEST_FILE,
    SIDE_FEATURES_DIR,
    VOCAB_DIR,
    VOCAB_FILES,
    example_pattern,
    example_prefix,
    tfx_split_name,
)
from pipeline import cooccurrence_tables, ordered_write, output_lock
from pipeline import sequence_builder as sb
from pipeline.adapters import common

LOG = logging.getLogger(__name__)
STATS_FILE = "_stats.json"
DEFAULT_LOCAL_BEAM_ARGS = (
    "--runner=DirectRunner",
    "--direct_num_workers=2",
    "--direct_running_mode=multi_processing",
)


# --- vocabularies -----------------------------------------------------------------------------


def _vocab_keys(event: es.Event, query_len: int):
    yield ("user", event.user_id)
    if event.item_id:
        yield ("item", event.item_id)
        if event.click > 0:
            yield ("click", event.item_id)
    # Only the words an example can hold: a query is cut to its first query_len words
    # (example_rules.behaviours, counted as queries_truncated_to_query_len), and the words
    # after them must not fill the vocabulary (one 15,000-word query added 15,000 words).
    for token in event.query_tokens[:query_len]:
        yield ("word", token)


class CountVocabKeys(beam.CombineFn):
    """Events (or side rows) -> one Counter of (kind, raw id); cheaper than an element per key."""

    def __init__(self, keys_fn):
        self._keys_fn = keys_fn

    def create_accumulator(self):
        return collections.Counter()

    def add_input(self, counter, element):
        counter.update(self._keys_fn(element))
        return counter

    def merge_accumulators(self, counters):
        return _merge_counters(counters)

    def extract_output(self, counter):
        return counter


def _merge_counters(counters: Iterable[collections.Counter]) -> collections.Counter:
    merged = collections.Counter()
    for counter in counters:
        merged.update(counter)
    return merged


def _make_vocabularies(counted: collections.Counter) -> sb.Vocabularies:
    by_kind: Dict[str, Dict[str, int]] = collections.defaultdict(dict)
    for (kind, raw), count in counted.items():
        by_kind[kind][raw] = count
    items = sb.frequency_vocabulary(by_kind["item"])
    clicks = np.zeros(len(items) + 1, np.int64)
    for raw, count in by_kind["click"].items():
        clicks[items[raw]] = count
    return sb.Vocabularies(
        users=sb.frequency_vocabulary(by_kind["user"]),
        items=items,
        words=sb.frequency_vocabulary(by_kind["word"]),
        item_clicks=clicks,
    )


class WriteVocabularies(beam.DoFn):
    def __init__(self, output_dir: str):
        self._dir = os.path.join(output_dir, VOCAB_DIR)

    def process(self, vocab: sb.Vocabularies):
        for name, mapping in (
            ("users", vocab.users),
            ("items", vocab.items),
            ("words", vocab.words),
        ):
            ordered = sb.id_strings(mapping)[1:]  # line k = id k; also the "raw" id strings
            # The adapters reject such ids (event_schema.check_id); one slipping through
            # would shift every later line's id, so it stops the job instead.
            unsafe = [raw for raw in ordered if es.unsafe_id_character(raw) is not None]
            if unsafe:
                raise ValueError(
                    f"{VOCAB_DIR}/{VOCAB_FILES[name]}: {len(unsafe)} id(s) cannot be written "
                    f"one per line, e.g. {unsafe[0]!r}"
                )
            with FileSystems.create(os.path.join(self._dir, VOCAB_FILES[name])) as handle:
                handle.write("".join(f"{raw}\n" for raw in ordered).encode("utf-8"))
            yield (f"vocab_{name}", len(ordered))
        ordered_items = sorted(vocab.items, key=vocab.items.get)
        with FileSystems.create(os.path.join(self._dir, ITEM_CLICKS_FILE)) as handle:
            lines = ["item_id\tid\tclicks\n"] + [
                f"{raw}\t{vocab.items[raw]}\t{vocab.item_clicks[vocab.items[raw]]}\n"
                for raw in ordered_items
            ]
            handle.write("".join(lines).encode("utf-8"))


# --- examples ---------------------------------------------------------------------------------


class BuildUserExamples(beam.DoFn):
    """(user_id, [event tuples]) -> (split, scenario, serialized tf.Example); stats on STATS."""

    def __init__(self, options: sb.BuildOptions):
        self._options = options
        self._sampler = None
        self._sampler_source = None
        self._raw_tables = None
        self._users = 0

    def process(self, element, vocab: sb.Vocabularies, last_day: Optional[int] = None):
        if self._sampler_source is not vocab:  # one sampler per side-input value per worker
            try:
                self._sampler = sb.NegativeSampler(
                    vocab.item_clicks, self._options.negative_sampler
                )
            except ValueError:  # no click at all: then no user has a target to sample for
                self._sampler = None
            if self._options.id_format == fs.ID_FORMAT_RAW:
                self._raw_tables = sb.build_raw_id_tables(vocab)
            self._sampler_source = vocab
        user_id, rows = element
        # No sort here: the builder orders behaviours (and session rows) itself.
        events = [common.event_from_tuple(row) for row in rows]
        stats = collections.Counter()
        try:
            examples = list(
                sb.build_user_tf_examples(
                    user_id,
                    events,
                    vocab,
                    self._sampler,
                    self._options,
                    stats,
                    last_day,
                    self._raw_tables,
                )
            )
        except sb.NotEnoughNegatives as error:
            # One heavy user must not stop the job: skipped, counted, dead-lettered by id.
            first = min(events, key=lambda e: (e.source, e.line))
            yield beam.pvalue.TaggedOutput(
                common.REJECTED,
                common.RejectedRow(
                    first.source, first.line, es.REJECT_TOO_FEW_NEGATIVES, str(error), user_id
                ),
            )
            yield beam.pvalue.TaggedOutput(common.STATS, ("events_of_skipped_users", len(events)))
            return
        yield from examples
        stats["users"] += 1
        stats["events"] += len(events)
        # Identical rows (all fields but file and line) are kept, as a log may hold two
        # identical clicks, but counted, so double-logged input shows in the manifest.
        duplicates = len(events) - len({common.event_to_tuple(e)[:7] for e in events})
        if duplicates:
            stats["duplicate_events"] += duplicates
        for name, count in stats.items():
            yield beam.pvalue.TaggedOutput(common.STATS, (name, count))
        self._users += 1
        if self._users % 5000 == 0:
            LOG.info("built examples for %d users in this worker", self._users)


MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def cap_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Caps glibc's malloc arenas in this process. Beam runs bundles and gRPC on many threads,
    each with an arena of its own by default (up to 8 per core), and freed example bytes stay
    behind in them: about 0.4 GB of the local job's peak on Sports (docs/benchmarks.md). Does
    nothing where glibc is not the allocator."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _capped_malloc_arenas(arenas: int = MALLOC_ARENAS):
    """cap_malloc_arenas here and, by MALLOC_ARENA_MAX (unless set), in the processes started
    meanwhile (the local runner's workers); the environment is restored afterwards."""
    cap_malloc_arenas(arenas)
    before = os.environ.get("MALLOC_ARENA_MAX")
    os.environ.setdefault("MALLOC_ARENA_MAX", str(arenas))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MALLOC_ARENA_MAX", None)


class BuildUserShard(beam.DoFn):
    """(shard, [event tuples of the shard's users, None markers]) -> the shard's example
    files, one per split and scenario (ordered_write.UserShardFiles); the training examples
    (split, scenario, serialized) on the main output, for the co-occurrence tables; STATS and
    REJECTED as BuildUserExamples; each file written (path, split, scenario, records) on
    WRITTEN_FILES, for read_back_shard_file.

    Users are built in the order of their hash and each user's examples in the builder's
    order, so the files depend on the events alone, not on the order the runner delivers
    them. A worker holds one shard's events and one user's examples at a time."""

    def __init__(self, options: sb.BuildOptions, prefixes: Dict, suffix: str):
        self._builder = BuildUserExamples(options)
        self._prefixes = prefixes
        self._suffix = suffix

    def setup(self):
        cap_malloc_arenas()  # the workers of any runner (the local one's have it already)

    def process(self, element, vocab: sb.Vocabularies, num_shards: int, last_day=None):
        shard, rows = element
        by_user: Dict[str, list] = collections.defaultdict(list)
        for row in rows:
            if row is not None:
                by_user[row[0]].append(row)
        order = sorted(by_user, key=lambda user: (ordered_write.user_hash(user), user))
        with ordered_write.UserShardFiles(self._prefixes, shard, num_shards, self._suffix) as files:
            for user in order:
                for out in self._builder.process((user, by_user.pop(user)), vocab, last_day):
                    if isinstance(out, beam.pvalue.TaggedOutput):
                        yield out
                        continue
                    split, scenario, record = out
                    files.write((split, scenario), record)
                    if split == sb.SPLIT_TRAIN:
                        yield out
        # After the block: the files are in place, ready to be read back (read_back_shard_file).
        for (split, scenario), path in files.paths.items():
            yield beam.pvalue.TaggedOutput(
                WRITTEN_FILES, (path, split, scenario, files.counts[(split, scenario)])
            )


WRITTEN_FILES = "written_files"
READ_BACK_PREFIX = "records_in_files/"
FILES_PREFIX = "example_files/"


def read_back_shard_file(written) -> Iterable:
    """(path, split, scenario, records written) -> STATS counts of the file as read back:
    its records (READ_BACK_PREFIX) and the file itself (FILES_PREFIX).

    Every record's framing and CRCs are checked; ValueError naming the file when one is
    corrupt or the file holds another number of records than its writer wrote."""
    path, split, scenario, expected = written
    found = ordered_write.count_records(path)
    if found != expected:
        raise ValueError(
            f"{path}: {found} records read back, {expected} written: the file was changed or "
            "cut short while the job ran"
        )
    yield (f"{READ_BACK_PREFIX}{split}/{scenario}", found)
    yield (f"{FILES_PREFIX}{split}/{scenario}", 1)


class MapSideRows(beam.DoFn):
    """Side-feature rows with raw ids -> dense ids; rows for ids the events never use counted."""

    def __init__(self, kind: str):
        self._kind = kind

    def process(self, row: dict, vocab: sb.Vocabularies):
        if self._kind == "item":
            dense = vocab.items.get(row["item_id"])
            if dense is None:
                yield beam.pvalue.TaggedOutput(common.STATS, ("item_features_unused_items", 1))
                return
            out = dict(
                row,
                id=dense,
                caption_word_ids=[
                    vocab.words.get(token, 0) for token in row.get("caption_tokens", [])
                ],
            )
        else:
            dense = vocab.users.get(row["user_id"])
            if dense is None:
                yield beam.pvalue.TaggedOutput(common.STATS, ("user_features_unused_users", 1))
                return
            out = dict(row, id=dense)
        yield json.dumps(out, sort_keys=True)


def _side_vocab_keys(row: dict):
    for token in row.get("caption_tokens", []):
        yield ("word", token)


def build_pipeline(
    pipeline: beam.Pipeline,
    adapter_output: common.AdapterOutput,
    options: sb.BuildOptions,
    output_dir: str,
    num_shards: int = 0,
    layout: str = LAYOUT_JOB,
    cooccurrence_top_k: int = cooccurrence_tables.DEFAULT_TOP_K,
    users_per_shard: int = ordered_write.DEFAULT_USERS_PER_SHARD,
) -> None:
    """Adds the whole job to `pipeline` (the caller runs it).

    num_shards: files per split and scenario, each holding the examples of one shard of the
    users (0 = one shard per `users_per_shard` users)."""
    events = adapter_output.events
    stats: List = list(adapter_output.stats)

    if options.max_users:
        chosen = (
            events
            | "UserIds" >> beam.Map(lambda e: e.user_id)
            | "DistinctUsers" >> beam.Distinct()
            | "HashUsers"
            >> beam.Map(lambda u, seed: (sb.stable_hash(seed, "user", u), u), seed=options.seed)
            | "PickUsers" >> beam.combiners.Top.Smallest(options.max_users)
            | "UserSet" >> beam.Map(lambda pairs: frozenset(u for _, u in pairs))
        )
        tagged = events | "KeepChosenUsers" >> beam.ParDo(
            _SplitChosen(), beam.pvalue.AsSingleton(chosen)
        ).with_outputs("skipped", main="kept")
        events = tagged.kept
        stats.append(
            tagged.skipped
            | "CountSkipped" >> beam.Map(lambda _: ("events_of_users_not_selected_by_max_users", 1))
        )

    counters = [
        events
        | "CountVocab"
        >> beam.CombineGlobally(
            CountVocabKeys(functools.partial(_vocab_keys, query_len=options.query_len))
        )
    ]
    if adapter_output.item_side is not None:
        counters.append(
            adapter_output.item_side
            | "CountCaptionWords" >> beam.CombineGlobally(CountVocabKeys(_side_vocab_keys))
        )
    vocab = (
        tuple(counters)
        | "AllVocabCounts" >> beam.Flatten()
        | "GatherVocab" >> beam.combiners.ToList()
        | "MakeVocab" >> beam.Map(lambda counters: _make_vocabularies(_merge_counters(counters)))
    )
    stats.append(vocab | "WriteVocab" >> beam.ParDo(WriteVocabularies(output_dir)))

    last_day = None
    if options.split == "time":
        last_day = beam.pvalue.AsSingleton(
            events
            | "Timestamps" >> beam.Map(lambda e: e.timestamp)
            | "LastTimestamp" >> beam.CombineGlobally(max).without_defaults()
            | "LastDay" >> beam.Map(lambda ts: ts // sb.DAY_MS)
        )
        _add_time_split_report(events, last_day, output_dir, stats)

    # Users, not examples, are sharded (ordered_write.UserShardFiles): only events cross a
    # shuffle, and each shard streams its examples into its own files, the same on every run.
    ordered_write.shard_count(0, num_shards, users_per_shard)  # bad values fail before running
    shard_total = vocab | "UserShardCount" >> beam.Map(
        lambda v: ordered_write.shard_count(len(v.users), num_shards, users_per_shard)
    )
    shards = beam.pvalue.AsSingleton(shard_total)
    # (shard, None) markers: every shard's files exist, even a shard without users.
    every_shard = shard_total | "EveryUserShard" >> beam.FlatMap(
        lambda n: [(i, None) for i in range(n)]
    )
    keyed = events | "KeyByUserShard" >> beam.Map(
        lambda e, n: (ordered_write.user_shard(e.user_id, n), common.event_to_tuple(e)), shards
    )
    prefixes = {
        (split, scenario): example_prefix(output_dir, split, scenario, layout)
        for split in sb.SPLITS
        for scenario in es.SCENARIOS
    }
    built = (
        (keyed, every_shard)
        | "WithEveryUserShard" >> beam.Flatten()
        | "GroupByUserShard" >> beam.GroupByKey()
        | "BuildAndWriteShards"
        >> beam.ParDo(
            BuildUserShard(options, prefixes, EXAMPLE_FILE_SUFFIX),
            beam.pvalue.AsSingleton(vocab),
            shards,
            **({"last_day": last_day} if last_day is not None else {}),
        ).with_outputs(common.STATS, common.REJECTED, WRITTEN_FILES, main="train_examples")
    )
    stats.append(built[common.STATS])
    stats.append(built[WRITTEN_FILES] | "ReadBackShardFiles" >> beam.FlatMap(read_back_shard_file))
    # The Trainer's co-occurrence tables, top K per item (pipeline/cooccurrence_tables.py).
    stats.append(
        cooccurrence_tables.add_tables(
            built.train_examples, vocab, options, output_dir, cooccurrence_top_k
        )
    )

    rejected = (*adapter_output.rejected, built[common.REJECTED]) | "AllRejected" >> beam.Flatten()
    (
        rejected
        | "RejectedJson" >> beam.Map(common.RejectedRow.to_json)
        | "WriteRejected"
        >> beam.io.WriteToText(
            os.path.join(output_dir, "rejected", "rejected"), file_name_suffix=".jsonl"
        )
    )
    stats.append(rejected | "CountRejected" >> beam.Map(lambda r: (f"rejected/{r.reason}", 1)))

    for kind, rows in (("item", adapter_output.item_side), ("user", adapter_output.user_side)):
        if rows is None:
            continue
        mapped = rows | f"MapSide_{kind}" >> beam.ParDo(
            MapSideRows(kind), beam.pvalue.AsSingleton(vocab)
        ).with_outputs(common.STATS, main="rows")
        stats.append(mapped[common.STATS])
        (
            mapped.rows
            | f"WriteSide_{kind}"
            >> beam.io.WriteToText(
                os.path.join(output_dir, SIDE_FEATURES_DIR, f"{kind}s"), file_name_suffix=".jsonl"
            )
        )

    (
        tuple(stats)
        | "AllStats" >> beam.Flatten()
        | "SumStats" >> beam.CombinePerKey(sum)
        | "GatherStats" >> beam.combiners.ToDict()
        | "StatsJson" >> beam.Map(lambda d: json.dumps(d, sort_keys=True))
        | "WriteStats"
        >> beam.io.WriteToText(
            os.path.join(output_dir, STATS_FILE), shard_name_template="", num_shards=1
        )
    )


# --- the time split's cut ------------------------------------------------------------------

TIME_SPLIT_FILE = "_time_split.json"  # staging only: its content goes into the manifest
_TIME_SPLIT_PREFIX = "time_split/"


class _CountSplitDays(beam.DoFn):
    """Events -> counts per side of the time cut (STATS); the (timestamp, source, line) of
    each event before the test day on the main output, for the latest of them."""

    def process(self, event: es.Event, last_day: int):
        day = event.timestamp // sb.DAY_MS
        where = (
            "test_day" if day >= last_day else "valid_day" if day == last_day - 1 else "train_days"
        )
        yield beam.pvalue.TaggedOutput(common.STATS, (f"{_TIME_SPLIT_PREFIX}{where}", 1))
        if day < last_day:
            yield (event.timestamp, event.source, event.line)


def _add_time_split_report(events, last_day, output_dir: str, stats: List) -> None:
    """Where the time cut falls (issue 23: one far-future timestamp emptied the validation
    split without a word): events per side of it in STATS, and the latest event and the
    latest before the test day, with file and line, in TIME_SPLIT_FILE."""
    counted = events | "CountSplitDays" >> beam.ParDo(_CountSplitDays(), last_day).with_outputs(
        common.STATS, main="before"
    )
    stats.append(counted[common.STATS])
    latest_before = (
        counted.before | "LatestBeforeTestDay" >> beam.CombineGlobally(max).without_defaults()
    )
    (
        events
        | "TimeKeys" >> beam.Map(lambda e: (e.timestamp, e.source, e.line))
        | "LatestEvent" >> beam.CombineGlobally(max).without_defaults()
        | "TimeSplitJson"
        >> beam.Map(
            lambda latest, before: json.dumps(
                {"latest": latest, "latest_before_test_day": (before or [None])[0]}
            ),
            before=beam.pvalue.AsList(latest_before),
        )
        | "WriteTimeSplit"
        >> beam.io.WriteToText(
            os.path.join(output_dir, TIME_SPLIT_FILE), shard_name_template="", num_shards=1
        )
    )


def _utc_day(day: int) -> str:
    try:
        return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat()
    except OverflowError:  # past year 9999 (or before year 1)
        return f"day {day:,} after 1970-01-01"


def time_split_report(
    stats: Dict[str, int], latest: Optional[dict], examples: Dict[str, Dict[str, int]]
) -> Optional[dict]:
    """The manifest's `time_split`: the test and validation days, the event that set them
    (the latest), events per side of the cut, and a `warning` naming the cause when the
    validation or test split got no example."""
    if not latest or not latest.get("latest"):
        return None
    timestamp, source, line = latest["latest"]
    last_day = timestamp // sb.DAY_MS
    counts = {
        where: stats.get(f"{_TIME_SPLIT_PREFIX}{where}", 0)
        for where in ("train_days", "valid_day", "test_day")
    }
    report = {
        "test_day": _utc_day(last_day),
        "valid_day": _utc_day(last_day - 1),
        "latest_event": {"timestamp": timestamp, "source": source, "line": line},
        "events": counts,
    }
    before = latest.get("latest_before_test_day")
    if before:
        report["latest_event_before_test_day"] = {
            "timestamp": before[0],
            "source": before[1],
            "line": before[2],
        }
    empty = [
        split for split in (sb.SPLIT_VALID, sb.SPLIT_TEST) if not sum(examples[split].values())
    ]
    if empty:
        held_out = counts["valid_day"] + counts["test_day"]
        message = (
            f"--split time: the {' and '.join(empty)} split(s) have no example. The cut lands "
            f"after all but {held_out} of {sum(counts.values())} events because of timestamp "
            f"{timestamp} in {_source_line(latest['latest'])}: the test day is the day of "
            f"the latest timestamp, {_utc_day(last_day)}, the validation day the one before "
            f"({counts['test_day']} and {counts['valid_day']} events)."
        )
        if before:
            gap = last_day - before[0] // sb.DAY_MS
            message += (
                f" The latest timestamp before that day is {before[0]} "
                f"({_utc_day(before[0] // sb.DAY_MS)}, {_source_line(before)}), "
                f"{gap:,} day(s) earlier."
            )
        message += (
            " If that timestamp is wrong (far in the future, or not in "
            "milliseconds), fix or drop that row; otherwise the log needs events on "
            "its last two days, or build with --split loo."
        )
        report["warning"] = message
    return report


def _source_line(key) -> str:
    return f"{key[1] or 'the input'}, line {key[2]}"


class _SplitChosen(beam.DoFn):
    def process(self, event, chosen):
        if event.user_id in chosen:
            yield event
        else:
            yield beam.pvalue.TaggedOutput("skipped", event)


# --- driver -----------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    with FileSystems.open(path) as handle:
        return handle.read().decode("utf-8")


def assemble_spec(
    output_dir: str,
    stats: Dict[str, int],
    options: sb.BuildOptions,
    dataset: str,
    inputs: dict,
    beam_args: Sequence[str],
    wall_seconds: float,
    layout: str = LAYOUT_JOB,
    cooccurrence_top_k: int = cooccurrence_tables.DEFAULT_TOP_K,
) -> DataSpec:
    """The manifest of a finished job (run adds `time_split` and
    `fewer_outputs_than_previous`); manifest.json is its to_json()."""
    examples = {
        split: {scenario: stats.get(f"examples/{split}/{scenario}", 0) for scenario in es.SCENARIOS}
        for split in sb.SPLITS
    }
    rejected = {
        key.split("/", 1)[1]: value for key, value in stats.items() if key.startswith("rejected/")
    }
    other = {
        key: value
        for key, value in stats.items()
        if not key.startswith(
            (
                "examples/",
                READ_BACK_PREFIX,
                FILES_PREFIX,
                "rejected/",
                "vocab_",
                _TIME_SPLIT_PREFIX,
                cooccurrence_tables.STATS_PREFIX,
            )
        )
    }
    return DataSpec(
        dataset=dataset,
        inputs=inputs,
        build_options=dataclasses.asdict(options),
        # "ids" (int64 ids of vocab/*.txt) or "raw" (the raw id strings): see the docstring.
        id_format=options.id_format,
        beam_args=tuple(beam_args),
        examples=ExampleCounts(examples),
        examples_total=sum(sum(v.values()) for v in examples.values()),
        # Ids run 1..n; model tables need n + 1 rows (0 = padding / unknown).
        vocab_sizes=VocabSizes(**{name: stats.get(f"vocab_{name}", 0) for name in VOCAB_KINDS}),
        rejected=rejected,
        rejected_total=sum(rejected.values()),
        counters=other,
        files={
            f"{split}/{scenario}": os.path.relpath(
                example_pattern(output_dir, split, scenario, layout), output_dir
            )
            for split in sb.SPLITS
            for scenario in es.SCENARIOS
        },
        shapes=options.shapes,
        candidates=Candidates(
            train=1 + options.num_train_negatives,
            eval=1 + options.num_eval_negatives,
            train_negative_pool=options.train_negative_pool,
        ),
        wall_seconds=round(wall_seconds, 1),
        cooccurrence=cooccurrence_tables.spec_of(stats, cooccurrence_top_k),
    )


def run(
    adapter_output_fn,
    options: sb.BuildOptions,
    output_dir: str,
    dataset: str,
    inputs: dict,
    beam_args: Sequence[str] = DEFAULT_LOCAL_BEAM_ARGS,
    num_shards: int = 0,
    layout: str = LAYOUT_JOB,
    allow_fewer_outputs: bool = False,
    cooccurrence_top_k: int = cooccurrence_tables.DEFAULT_TOP_K,
) -> dict:
    """Builds the examples; returns (and writes) the manifest.

    layout: where the example files go (LAYOUT_JOB or LAYOUT_TFX, see example_prefix).
    cooccurrence_top_k: neighbours kept per item in the co-occurrence tables (0 = all).

    adapter_output_fn(pipeline) -> AdapterOutput; it may raise before the pipeline starts
    (missing files or columns), which is the point: fail before any worker starts.

    One job at a time per `output_dir`: a second one fails at once (output_lock.OutputLocked,
    naming the holder). The job writes into a staging folder next to `output_dir` and moves
    its files into `output_dir` only when everything succeeded (replacing an earlier run's
    files there), so a failed run, whenever it fails, leaves the previous output as it was and
    no staging or beam-temp folders behind. A run fails too, saying why, instead of
    publishing (check_outputs): when it reads no event at all (e.g. header-only files, every
    row rejected), when it builds no example at all, and when it builds no example for a split
    and scenario the previous output in `output_dir` has, unless allow_fewer_outputs (then
    the manifest's `fewer_outputs_than_previous` records what the previous output had).
    """
    start = time.time()
    example_prefix(output_dir, sb.SPLIT_TRAIN, es.SCENARIO_REC, layout)  # checks the layout
    with output_lock.locked_output(output_dir):
        pipeline_options = PipelineOptions(list(beam_args))
        pipeline = beam.Pipeline(options=pipeline_options)
        adapter_output = adapter_output_fn(pipeline)
        staging = staging_dir(output_dir)
        try:
            build_pipeline(
                pipeline, adapter_output, options, staging, num_shards, layout, cooccurrence_top_k
            )
            LOG.info(
                "running the sequence-example job for %s -> %s (staged in %s)",
                dataset,
                output_dir,
                staging,
            )
            with _capped_malloc_arenas():
                result = pipeline.run()
                result.wait_until_finish()
            stats = json.loads(_read_text(os.path.join(staging, STATS_FILE)))
            _check_events_read(stats, staging, output_dir)
            check_files_against_counters(stats, staging, output_dir, layout)
            spec = assemble_spec(
                output_dir,
                stats,
                options,
                dataset,
                inputs,
                beam_args,
                time.time() - start,
                layout,
                cooccurrence_top_k,
            )
            if options.split == "time":
                report = time_split_report(
                    stats,
                    _read_json_if_any(os.path.join(staging, TIME_SPLIT_FILE)),
                    spec.examples.by_split,
                )
                if report:
                    spec = spec.replace(time_split=report)
                    if "warning" in report:
                        LOG.warning("%s", report["warning"])
            fewer = check_outputs(
                spec, options, _previous_examples(output_dir), output_dir, allow_fewer_outputs
            )
            if fewer:
                spec = spec.replace(fewer_outputs_than_previous=fewer)
            with FileSystems.create(os.path.join(staging, "schema.pbtxt")) as handle:
                handle.write(text_format.MessageToString(example_schema(options)).encode("utf-8"))
            with FileSystems.create(os.path.join(staging, MANIFEST_FILE)) as handle:
                handle.write(spec.to_json().encode("utf-8"))
            publish(staging, output_dir)
        finally:
            _delete_quietly(staging)
    return spec.to_manifest()


def _read_json_if_any(path: str) -> Optional[dict]:
    if not FileSystems.exists(path):
        return None
    text = _read_text(path).strip()
    return json.loads(text) if text else None


def _previous_examples(output_dir: str) -> Optional[Dict[str, Dict[str, int]]]:
    """The examples per split and scenario of the manifest in output_dir, None without one
    (or with one that cannot be read: then there is nothing to compare with)."""
    path = os.path.join(output_dir, MANIFEST_FILE)
    try:
        if not FileSystems.exists(path):
            return None
        examples = json.loads(_read_text(path))["examples"]
        return {
            split: {
                scenario: int(examples.get(split, {}).get(scenario, 0)) for scenario in es.SCENARIOS
            }
            for split in sb.SPLITS
        }
    except (ValueError, KeyError, TypeError, AttributeError, IOError):
        LOG.warning("%s cannot be read; not comparing this run's examples with it", path)
        return None


class NotPublished(ValueError):
    """A finished run that is not published (check_outputs); the output is as it was."""


def _why_no_examples(spec: DataSpec, options: sb.BuildOptions, scenarios: Sequence[str]) -> str:
    """What the counters say about the missing examples of `scenarios`."""
    counters = spec.counters
    read = sum(counters.get(name, 0) for name in ("events", "events_of_skipped_users"))
    skipped = spec.rejected.get(es.REJECT_TOO_FEW_NEGATIVES, 0)
    users = counters.get("users", 0) + skipped
    parts = [f"{read} events of {users} user(s) read"]
    if skipped:
        parts.append(
            f"{skipped} user(s) skipped for too few negatives "
            f"({counters.get('events_of_skipped_users', 0)} events; see rejected/)"
        )
    if es.SCENARIO_SEARCH in scenarios:
        parts.append(f"{counters.get('search_sessions', 0)} search session(s) with a click")
    for scenario in scenarios:
        below = counters.get(f"{scenario}_targets_below_min_history", 0)
        if below:
            parts.append(
                f"{below} {scenario} target(s) below the minimum history "
                f"(--min_rec_history {options.min_rec_history}, "
                f"--min_search_history {options.min_search_history}; a log with one "
                "scenario builds with --min_search_history 0, and --min_rec_history 0 "
                "for search only)"
            )
    return "; ".join(parts)


def check_outputs(
    spec: DataSpec,
    options: sb.BuildOptions,
    previous: Optional[Dict[str, Dict[str, int]]],
    output_dir: str,
    allow_fewer_outputs: bool = False,
) -> Dict[str, int]:
    """NotPublished when the run built no example at all, or none for a split and scenario
    the previous output (`previous`: its examples per split and scenario, None without one)
    has, unless allow_fewer_outputs. Returns {"split/scenario": previous count} of the
    allowed losses ({} when none)."""
    examples = spec.examples.by_split
    if not spec.examples_total:
        raise NotPublished(
            f"no example was built ({_why_no_examples(spec, options, es.SCENARIOS)}). "
            f"Nothing was written: {output_dir} is as it was."
        )
    if not previous:
        return {}
    lost = {
        f"{split}/{scenario}": previous[split][scenario]
        for split in sb.SPLITS
        for scenario in es.SCENARIOS
        if previous[split][scenario] and not examples[split][scenario]
    }
    if lost and not allow_fewer_outputs:
        scenarios = sorted({key.split("/")[1] for key in lost}, key=es.SCENARIOS.index)
        raise NotPublished(
            f"this run builds no example for {', '.join(lost)}, which the output in "
            f"{output_dir} has ({', '.join(f'{key}: {n}' for key, n in lost.items())}): "
            f"{_why_no_examples(spec, options, scenarios)}. Nothing was written: "
            f"{output_dir} is as it was. To replace it anyway, pass --allow_fewer_outputs "
            "(beam_job.run(allow_fewer_outputs=True)), or write to another --output."
        )
    if lost:
        LOG.warning(
            "replacing %s, whose %s examples this run does not build " "(--allow_fewer_outputs)",
            output_dir,
            ", ".join(lost),
        )
    return lost


STAGING_INFIX = ".staging-"
PREVIOUS_INFIX = ".previous-"


def staging_dir(output_dir: str) -> str:
    """A new folder next to output_dir for one run: <output_dir>.staging-<random>."""
    return f"{output_dir.rstrip('/')}{STAGING_INFIX}{uuid.uuid4().hex[:12]}"


def output_files(root: str) -> List[str]:
    """The files a run writes under root (both layouts), which a newer run replaces; other
    files in the folder are left alone."""
    patterns = [
        example_pattern(root, split, scenario, layout)
        for layout in LAYOUTS
        for split in sb.SPLITS
        for scenario in es.SCENARIOS
    ]
    patterns += [
        os.path.join(root, "rejected", "rejected-*.jsonl"),
        os.path.join(root, SIDE_FEATURES_DIR, "*.jsonl"),
        os.path.join(root, VOCAB_DIR, "*"),
        os.path.join(root, STATS_FILE),
        os.path.join(root, "schema.pbtxt"),
        os.path.join(root, MANIFEST_FILE),
    ] + cooccurrence_tables.output_patterns(root)
    found = {m.path for result in FileSystems.match(patterns) for m in result.metadata_list}
    # The manifest last: moved last into place, so a folder with a manifest is complete.
    return sorted(found, key=lambda path: (path.endswith(MANIFEST_FILE), path))


def publish(staging: str, output_dir: str) -> None:
    """Moves a finished run's files from `staging` into `output_dir`, replacing the files of
    an earlier run there (output_files); the earlier files are set aside first and put back
    if a move fails."""
    new = output_files(staging)
    old = output_files(output_dir)
    aside = f"{output_dir.rstrip('/')}{PREVIOUS_INFIX}{uuid.uuid4().hex[:12]}"
    moved_aside: List = []
    moved_in: List = []
    try:
        for path in reversed(old):  # the old manifest first: no manifest, no dataset
            target = _rebase(path, output_dir, aside)
            _move(path, target)
            moved_aside.append((path, target))
        for path in new:
            target = _rebase(path, staging, output_dir)
            _move(path, target)
            moved_in.append(target)
    except BaseException:
        LOG.error(
            "publishing into %s failed; putting the previous files back from %s", output_dir, aside
        )
        for target in moved_in:
            _delete_quietly(target)
        for path, target in moved_aside:
            _move(target, path)
        _delete_quietly(aside)
        raise
    _delete_quietly(aside)
    if old:
        LOG.info("replaced %d files of an earlier run in %s", len(old), output_dir)


def _rebase(path: str, old_root: str, new_root: str) -> str:
    relative = os.path.relpath(path, old_root.rstrip("/"))
    return os.path.join(new_root, relative)


def _move(source: str, target: str) -> None:
    parent = os.path.dirname(target)
    if parent and not FileSystems.exists(parent):
        try:
            FileSystems.mkdirs(parent)
        except IOError:  # created meanwhile (mkdirs refuses existing local folders)
            pass
    FileSystems.rename([source], [target])


def _delete_quietly(path: str) -> None:
    try:
        if FileSystems.exists(path):
            FileSystems.delete([path])
    except Exception:  # cleaning up must never hide the error being raised
        LOG.warning("could not delete %s", path, exc_info=True)


def check_files_against_counters(
    stats: Dict[str, int], staging: str, output_dir: str, layout: str = LAYOUT_JOB
) -> None:
    """NotPublished when the example files in `staging` disagree with the job's counters:
    per split and scenario, the records read back from the files (read_back_shard_file) must
    equal the examples the builder counted, and the files on disk those the writers wrote."""
    problems = []
    for split in sb.SPLITS:
        for scenario in es.SCENARIOS:
            key = f"{split}/{scenario}"
            counted = stats.get(f"examples/{key}", 0)
            read_back = stats.get(f"{READ_BACK_PREFIX}{key}", 0)
            if read_back != counted:
                problems.append(f"{key}: {counted} examples built, {read_back} in the files")
            written = stats.get(f"{FILES_PREFIX}{key}", 0)
            pattern = example_pattern(staging, split, scenario, layout)
            on_disk = len(FileSystems.match([pattern])[0].metadata_list)
            if on_disk != written:
                problems.append(f"{key}: {written} files written, {on_disk} match {pattern}")
    if problems:
        raise NotPublished(
            "the example files disagree with the job's counters ("
            + "; ".join(problems)
            + f"). Nothing was written: {output_dir} is as it was."
        )


def _check_events_read(stats: Dict[str, int], staging: str, output_dir: str) -> None:
    """ValueError, saying why, when not one event reached the sequence builder."""
    if any(
        stats.get(name, 0)
        for name in (
            "events",
            "events_of_skipped_users",
            "events_of_users_not_selected_by_max_users",
        )
    ):
        return
    rejected = {
        key.split("/", 1)[1]: value for key, value in stats.items() if key.startswith("rejected/")
    }
    examples = []
    for result in FileSystems.match([os.path.join(staging, "rejected", "rejected-*.jsonl")]):
        for metadata in result.metadata_list:
            examples += [line for line in _read_text(metadata.path).splitlines() if line][:3]
    raise ValueError(
        f"the input holds no usable event: {stats.get(common.INPUT_ROWS, 0)} data rows read, "
        f"{sum(rejected.values())} rejected {rejected or ''}, "
        f"{stats.get(common.FILES_WITHOUT_ROWS, 0)} input file(s) with a header and no rows"
        + (f"; first dead letters: {'; '.join(examples[:3])}" if examples else "")
        + f". Nothing was written: {output_dir} is as it was."
    )


def example_schema(options: sb.BuildOptions) -> schema_pb2.Schema:
    """The TFMD schema of the examples these options build (written as schema.pbtxt; the TFX
    pipeline imports the same schema)."""
    return tfmd_schema.build_schema(
        options.shapes,
        1 + options.num_train_negatives,
        1 + options.num_eval_negatives,
        options.train_negative_pool,
        options.id_format,
    )


def load_manifest(output_dir: str) -> dict:
    return json.loads(_read_text(os.path.join(output_dir, MANIFEST_FILE)))
