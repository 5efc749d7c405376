"""Bulk-load raw logs into the history store through the data job's own adapters.

    python -m serving.load_history --store sqlite:///out/online/history.db \\
        --dead_letter out/online/rejected.jsonl \\
        amazon --sequences Beauty.txt --attributes Beauty_item2attributes.json \\
        [--search_fraction 0.5 --query_min_item_frequency 100 --seed 0]
    python -m serving.load_history --store redis://127.0.0.1:6379/0 --dead_letter rej.jsonl \\
        amazon_beauty [--data_root ../shared/data]       # ../shared/data/amazon_beauty
    ... event_log --events 'logs/*.csv'      ... kuaisar --input_dir /data/KuaiSAR

The dataset and its flags are the data job's (`python -m pipeline.build_examples`): they are
parsed by its own parser and turned into inputs by its own `adapter_inputs`, so the defaults
are the same (the main job uses them with `--seed 0`), and the events are the adapter's, the
same rows with the same source and line as the examples were built from. Rows the adapter
rejects are written to `--dead_letter` as the data job writes them (one RejectedRow JSON per
line, with file and line). Prints the counts: events read, rows stored, rows rejected, users.

Re-running is safe: the store ignores events it already holds, so a load that crashed half
way is simply run again (the second run reports 0 rows stored).

How the adapter runs (`--runner`):
- "direct" (default): the adapter's `read(pipeline, inputs)` builds its Beam graph as in the
  data job, and this module runs that graph's steps (Create, ParDo with its tagged outputs,
  Flatten) in this process, calling the same DoFns; seconds for Beauty instead of Beam's
  start-up and per-element overhead.
- "beam": the same graph on Beam's DirectRunner (any adapter, whatever transforms it uses).
The two give the same events (tests/serving/test_load_history.py).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
import os
import sys
import tempfile
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from feature_specs.event_schema import Event
from serving.history_store import HistoryCaps, HistoryStore, StoreUnavailable, open_store

RUNNER_DIRECT, RUNNER_BEAM = "direct", "beam"
BATCH_EVENTS = 5000  # events per append_many call (whole users; one transaction each)
# The data job's flags beside the adapters' own that say what to read; its other flags
# shape examples, not events.
GENERAL_INPUT_FLAGS = ("--seed", "--max_rows_per_file")


def datasets() -> Tuple[str, ...]:
    """The registered adapters' names (pipeline/adapters/registry.py; imports Beam)."""
    from pipeline.adapters import registry

    return tuple(registry.adapters())


def input_flags() -> Tuple[str, ...]:
    """Every adapter's input flags, then the general ones, as `--name`."""
    from pipeline.adapters import registry

    return tuple(f"--{flag.name}" for flag in registry.input_flags()) + GENERAL_INPUT_FLAGS


@dataclasses.dataclass
class AdapterRows:
    """What an adapter read: events (its order), rejected rows, and its counters."""

    events: List[Event]
    rejected: list  # common.RejectedRow
    stats: Dict[str, int]


@dataclasses.dataclass
class LoadReport:
    events: int  # events the adapter produced
    stored: int  # rows new to the store and kept by its caps
    rejected: int  # rows dead-lettered
    users: int  # users among the events
    seconds: float

    def format(self) -> str:
        return (
            f"events read: {self.events}, rows stored: {self.stored} (new and within "
            f"the caps), rows rejected: {self.rejected}, users: {self.users} "
            f"({self.seconds:.1f} s)"
        )


# --- running an adapter -----------------------------------------------------------------------


def read_adapter(read: Callable, inputs, runner: str = RUNNER_DIRECT) -> AdapterRows:
    """Runs the adapter `read(pipeline, inputs)` (pipeline/adapters/*) and returns its events,
    rejected rows and counters; `runner` as in the module docstring."""
    if runner == RUNNER_DIRECT:
        return _read_direct(read, inputs)
    if runner == RUNNER_BEAM:
        return _read_with_beam(read, inputs)
    raise ValueError(f"runner={runner!r}: expected {RUNNER_DIRECT!r} or {RUNNER_BEAM!r}")


def adapter_events(read: Callable, inputs, runner: str = RUNNER_DIRECT) -> List[Event]:
    """The events the data job reads from `inputs` with adapter `read` (e.g. amazon.read,
    amazon.AmazonInputs(...)), in the adapter's order."""
    return read_adapter(read, inputs, runner).events


def dataset_inputs(dataset: str, flags: Sequence[str] = ()) -> Tuple[Callable, object]:
    """(adapter read, inputs) for a dataset and data-job input flags, e.g.
    dataset_inputs("amazon", ["--sequences", "s.txt", "--attributes", "a.json"]): parsed by
    the data job's parser, so every default is the data job's."""
    from pipeline import build_examples

    known_datasets, known_flags = datasets(), input_flags()
    if dataset not in known_datasets:
        raise ValueError(f"dataset={dataset!r}: expected one of {known_datasets}")
    for flag in flags:
        if flag.startswith("--") and flag.split("=", 1)[0] not in known_flags:
            raise ValueError(
                f"{flag}: not an input flag of the data job; expected one of "
                f"{', '.join(known_flags)}"
            )
    args, unknown = build_examples.parse_args(["--dataset", dataset, "--output", "unused", *flags])
    if unknown:
        raise ValueError(f"unknown arguments {unknown}")
    inputs, read = build_examples.adapter_inputs(args)
    return read, inputs


def parse_with_dataset(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None
) -> Tuple[argparse.Namespace, Callable, object]:
    """(args, adapter read, inputs): `parser` plus a positional dataset followed by the data
    job's input flags (dataset_inputs); a bad flag is the parser's usage error."""
    parser.add_argument("dataset", choices=datasets())
    args, flags = parser.parse_known_args(argv)
    try:
        read, inputs = dataset_inputs(args.dataset, flags)
    except ValueError as error:
        parser.error(str(error))
    return args, read, inputs


def _read_direct(read: Callable, inputs) -> AdapterRows:
    """Builds the adapter's graph on a Beam pipeline that is never run, then evaluates the
    steps that lead to its events and rejected rows here, calling the adapter's DoFns."""
    import apache_beam as beam
    from apache_beam.transforms.core import _MultiParDo  # what .with_outputs() returns

    pipeline = beam.Pipeline()
    output = read(pipeline, inputs)
    producer = {}
    for part in pipeline.transforms_stack[0].parts:
        for pcollection in part.outputs.values():
            producer[id(pcollection)] = part
    values: Dict[int, list] = {}

    def evaluate(pcollection) -> list:
        if id(pcollection) not in values:
            part = producer[id(pcollection)]
            transform = part.transform
            if isinstance(transform, beam.Create):
                results = {None: list(transform.values)}
            elif isinstance(transform, beam.Flatten):
                results = {None: [x for source in part.inputs for x in evaluate(source)]}
            elif isinstance(transform, (beam.ParDo, _MultiParDo)):
                do = transform._do_transform if isinstance(transform, _MultiParDo) else transform
                if do.args or do.kwargs or do.side_inputs:
                    raise NotImplementedError(
                        f"{part.full_label}: a ParDo with arguments or "
                        "side inputs; use --runner beam"
                    )
                [source] = part.inputs
                results = _run_dofn(do.fn, evaluate(source), part.outputs.keys())
            else:
                raise NotImplementedError(
                    f"{part.full_label}: {type(transform).__name__} is "
                    "not run directly; use --runner beam"
                )
            for tag, pcoll in part.outputs.items():
                values[id(pcoll)] = results.get(tag, [])
        return values[id(pcollection)]

    stats: Dict[str, int] = collections.Counter()
    for pcollection in output.stats:
        for name, count in evaluate(pcollection):
            stats[name] += count
    return AdapterRows(
        events=list(evaluate(output.events)),
        rejected=[row for pcoll in output.rejected for row in evaluate(pcoll)],
        stats=dict(stats),
    )


def _run_dofn(fn, elements: Iterable, tags: Iterable) -> Dict[Optional[str], list]:
    """A DoFn's life cycle on one bundle, outputs by tag (None = the main output)."""
    import apache_beam as beam

    results: Dict[Optional[str], list] = {tag: [] for tag in tags}
    results.setdefault(None, [])
    fn.setup()
    try:
        fn.start_bundle()
        for element in elements:
            for item in fn.process(element) or ():
                if isinstance(item, beam.pvalue.TaggedOutput):
                    results.setdefault(item.tag, []).append(item.value)
                else:
                    results[None].append(item)
        if fn.finish_bundle():  # the adapters' DoFns emit nothing there
            raise NotImplementedError(
                f"{type(fn).__name__}.finish_bundle emits elements; " "use --runner beam"
            )
    finally:
        fn.teardown()
    return results


def _read_with_beam(read: Callable, inputs) -> AdapterRows:
    """The adapter on Beam's DirectRunner (one process); events and rejected rows come back
    through JSON-lines files in a temporary folder."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.adapters import common

    with tempfile.TemporaryDirectory(prefix="load_history-") as folder:
        pipeline = beam.Pipeline(
            options=PipelineOptions(
                [
                    "--runner=DirectRunner",
                    "--direct_num_workers=1",
                    "--direct_running_mode=in_memory",
                ]
            )
        )
        output = read(pipeline, inputs)
        (
            output.events
            | "EventJson" >> beam.Map(lambda e: json.dumps(common.event_to_tuple(e)))
            | "WriteEvents" >> beam.io.WriteToText(os.path.join(folder, "events"))
        )
        rejected = tuple(output.rejected) | "AllRejected" >> beam.Flatten()
        (
            rejected
            | "RejectedJson" >> beam.Map(common.RejectedRow.to_json)
            | "WriteRejected" >> beam.io.WriteToText(os.path.join(folder, "rejected"))
        )
        if output.stats:
            (
                tuple(output.stats)
                | "AllStats" >> beam.Flatten()
                | "SumStats" >> beam.CombinePerKey(sum)
                | "StatsJson" >> beam.Map(json.dumps)
                | "WriteStats" >> beam.io.WriteToText(os.path.join(folder, "stats"))
            )
        pipeline.run().wait_until_finish()

        def lines(name):
            for path in sorted(glob.glob(os.path.join(folder, f"{name}-*"))):
                with open(path, encoding="utf-8") as handle:
                    yield from (json.loads(line) for line in handle)

        events = [common.event_from_tuple(values) for values in lines("events")]
        rejected = [common.RejectedRow(**fields) for fields in lines("rejected")]
        stats = dict(lines("stats"))
    return AdapterRows(events=events, rejected=rejected, stats=stats)


# --- loading ----------------------------------------------------------------------------------


def write_dead_letters(rows: Sequence, path: str) -> None:
    """RejectedRow JSON lines, as the data job's rejected/*.jsonl (replaced whole)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=folder, delete=False, suffix=".tmp"
    ) as handle:
        for row in rows:
            handle.write(row.to_json() + "\n")
    os.replace(handle.name, path)


def store_events(
    store: HistoryStore, events: Iterable[Event], batch_events: int = BATCH_EVENTS
) -> Tuple[int, int]:
    """(rows stored, users): events appended in batches of whole users, so each user's
    events are merged in one step (exact caps whatever the log's order)."""
    by_user: Dict[str, List[Event]] = collections.defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    stored, batch = 0, []
    for user_events in by_user.values():
        batch.extend(user_events)
        if len(batch) >= batch_events:
            stored += store.append_many(batch)
            batch = []
    if batch:
        stored += store.append_many(batch)
    return stored, len(by_user)


def load(
    store: HistoryStore, read: Callable, inputs, dead_letter: str, runner: str = RUNNER_DIRECT
) -> LoadReport:
    """Reads `inputs` with the adapter, dead-letters its rejected rows to `dead_letter`,
    stores its events; returns the counts."""
    start = time.time()
    rows = read_adapter(read, inputs, runner)
    write_dead_letters(rows.rejected, dead_letter)
    stored, users = store_events(store, rows.events)
    return LoadReport(
        events=len(rows.events),
        stored=stored,
        rejected=len(rows.rejected),
        users=users,
        seconds=time.time() - start,
    )


def main(argv: Optional[Sequence[str]] = None) -> LoadReport:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        usage="python -m serving.load_history --store URL --dead_letter PATH "
        f"{{{','.join(datasets())}}} [the data job's input flags]",
        epilog="input flags (as `python -m pipeline.build_examples`, same defaults): "
        + " ".join(input_flags()),
    )
    parser.add_argument(
        "--store", required=True, help="sqlite:///path.db (embedded) or redis://host:port/db"
    )
    parser.add_argument(
        "--dead_letter", required=True, help="JSON-lines file for the rejected rows (replaced)"
    )
    parser.add_argument("--runner", choices=(RUNNER_DIRECT, RUNNER_BEAM), default=RUNNER_DIRECT)
    defaults = HistoryCaps()
    parser.add_argument(
        "--keep_rec", type=int, default=defaults.rec, help="rec behaviours kept per user"
    )
    parser.add_argument(
        "--keep_search_sessions",
        type=int,
        default=defaults.search_sessions,
        help="search sessions kept per user",
    )
    parser.add_argument(
        "--keep_impressions",
        type=int,
        default=defaults.impressions,
        help="rec impressions kept per user",
    )
    args, read, inputs = parse_with_dataset(parser, argv)
    caps = HistoryCaps(
        rec=args.keep_rec,
        search_sessions=args.keep_search_sessions,
        impressions=args.keep_impressions,
    )
    try:
        with open_store(args.store, caps) as store:
            report = load(store, read, inputs, args.dead_letter, args.runner)
    except (StoreUnavailable, FileNotFoundError, ValueError) as error:
        # A missing input, an unreadable header, a store that is down: said in one line.
        raise SystemExit(f"error: {error}") from None
    print(report.format())
    print(f"rejected rows: {args.dead_letter}")
    return report


if __name__ == "__main__":
    main()
    sys.exit(0)
