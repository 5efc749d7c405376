"""Adapter for a user's own event log in the canonical schema (CSV or Parquet).

Columns are found by name (feature_specs/event_schema.py); extra columns are ignored, a missing
required one fails the job before it starts, naming the file. CSV `query_tokens` cells are
"[20, 34, 3]" or "20 34 3"; Parquet may also hold a list column.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, List, Mapping, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from feature_specs import event_schema as es
from pipeline.adapters import common, registry

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EventLogInputs:
    events: Sequence[str]  # file paths or glob patterns; .parquet files are read as Parquet
    max_rows_per_file: int = 0  # quick runs: only the first N data rows of each file (0 = all)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(_cell(v) for v in value)
    if isinstance(value, bytes):  # a binary column: its bytes must be UTF-8 text
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise es.RowError(
                es.REJECT_NOT_UTF8, f"{value[:40]!r} is not UTF-8 ({error.reason})"
            ) from None
    return str(value)


def parse_canonical_row(row, source: str, line: int):
    yield es.make_event(
        row.get(es.USER_ID),
        row.get(es.TIMESTAMP),
        row.get(es.SCENARIO),
        item_id=row.get(es.ITEM_ID, ""),
        click=row.get(es.CLICK),
        search_session_id=row.get(es.SEARCH_SESSION_ID, ""),
        query_tokens=row.get(es.QUERY_TOKENS),
        source=source,
        line=line,
    )


class ParseParquetFile(beam.DoFn):
    """path -> events (row number as line), RejectedRow on the REJECTED output."""

    def __init__(self, max_rows_per_file: int = 0):
        self._max_rows = max_rows_per_file

    def process(self, path: str):
        import pyarrow.parquet as pq

        with FileSystems.open(path) as handle:
            try:
                table = pq.read_table(handle)
            except Exception as error:  # pyarrow's errors do not name the file
                raise ValueError(f"{path}: not a readable Parquet file ({error})") from error
        common.check_columns(path, table.column_names, es.REQUIRED_EVENT_COLUMNS)
        rows = table.to_pylist()
        for index, row in enumerate(rows, start=1):
            if self._max_rows and index > self._max_rows:
                yield beam.pvalue.TaggedOutput(common.STATS, (common.SKIPPED_BY_MAX_ROWS, 1))
                continue
            try:
                cells = {name: _cell(value) for name, value in row.items()}
                yield from list(parse_canonical_row(cells, path, index))
            except es.RowError as error:
                yield beam.pvalue.TaggedOutput(
                    common.REJECTED,
                    common.RejectedRow(
                        path, index, error.reason, error.detail, repr(row)[: common.MAX_RAW_BYTES]
                    ),
                )
        if not rows:
            LOG.warning("%s has no rows", path)
            yield beam.pvalue.TaggedOutput(common.STATS, (common.FILES_WITHOUT_ROWS, 1))
        yield beam.pvalue.TaggedOutput(common.STATS, (common.INPUT_ROWS, len(rows)))


def check_inputs(inputs: EventLogInputs) -> List[str]:
    paths = common.expand_paths(inputs.events)
    for path in paths:
        columns = (
            _parquet_columns(path) if path.endswith(".parquet") else common.read_csv_header(path)
        )
        common.check_columns(path, columns, es.REQUIRED_EVENT_COLUMNS)
    return paths


def _parquet_columns(path: str) -> List[str]:
    """Column names from the Parquet footer only (no row groups are read)."""
    import pyarrow.parquet as pq

    with FileSystems.open(path) as handle:
        try:
            return list(pq.ParquetFile(handle).schema_arrow.names)
        except Exception as error:  # pyarrow's errors do not name the file
            raise ValueError(f"{path}: not a readable Parquet file ({error})") from error


def read(pipeline, inputs: EventLogInputs) -> common.AdapterOutput:
    paths = check_inputs(inputs)
    csv_paths = [p for p in paths if not p.endswith(".parquet")]
    parquet_paths = [p for p in paths if p.endswith(".parquet")]
    events, rejected, stats = [], [], []
    if csv_paths:
        parsed = (
            pipeline
            | "EventLogCsvPaths" >> beam.Create(csv_paths)
            | "ParseEventLogCsv"
            >> beam.ParDo(
                common.ParseCsvFile(
                    es.REQUIRED_EVENT_COLUMNS, parse_canonical_row, inputs.max_rows_per_file
                )
            ).with_outputs(common.REJECTED, common.STATS, main="events")
        )
        events.append(parsed.events)
        rejected.append(parsed[common.REJECTED])
        stats.append(parsed[common.STATS])
    if parquet_paths:
        parsed = (
            pipeline
            | "EventLogParquetPaths" >> beam.Create(parquet_paths)
            | "ParseEventLogParquet"
            >> beam.ParDo(ParseParquetFile(inputs.max_rows_per_file)).with_outputs(
                common.REJECTED, common.STATS, main="events"
            )
        )
        events.append(parsed.events)
        rejected.append(parsed[common.REJECTED])
        stats.append(parsed[common.STATS])
    merged = events[0] if len(events) == 1 else tuple(events) | "MergeEventLogs" >> beam.Flatten()
    return common.AdapterOutput(events=merged, rejected=rejected, stats=stats)


def _inputs(values: Mapping[str, Any]) -> EventLogInputs:
    if not values["events"]:
        raise registry.MissingInputs("--dataset event_log needs --events")
    return EventLogInputs(
        events=tuple(values["events"]), max_rows_per_file=values["max_rows_per_file"]
    )


def _locate(data_root: str) -> Dict[str, Any]:
    """A file or glob as given; a folder: its *.csv and *.parquet files."""
    if any(char in data_root for char in "*?[") or data_root.endswith((".csv", ".parquet")):
        return {"events": [data_root]}
    patterns = [os.path.join(data_root, "*.csv"), os.path.join(data_root, "*.parquet")]
    # A pattern without files would stop the job; keep both if neither matches, so the
    # error names the folder.
    return {"events": [p for p in patterns if common.expand_paths_or_none(p)] or patterns}


registry.register(
    registry.Adapter(
        name="event_log",
        read=read,
        inputs=_inputs,
        flags=(
            registry.InputFlag(
                "events",
                help="event_log: CSV/Parquet files or globs",
                nargs="+",
                from_data_root=True,
            ),
        ),
        defaults={"split": "loo", "clicks_per_session": 5},  # spec sections 2 and 11
        locate=_locate,
    )
)
