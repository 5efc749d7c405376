"""File reading shared by the adapters: rows by column name, with file and line for errors.

Files are read whole by one DoFn call each (a CSV cannot be split safely at arbitrary byte
offsets when quoted fields hold commas); the job reshuffles right after, so one big file costs
one reader but not one worker for the rest of the job. Give large logs as many files.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from typing import Dict, Iterable, Iterator, List, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from feature_specs.event_schema import REJECT_BAD_ROW, Event, RowError

LOG = logging.getLogger(__name__)
REJECTED = "rejected"
STATS = "stats"  # (counter name, increment) pairs, summed into the manifest
SKIPPED_BY_MAX_ROWS = "rows_not_used_beyond_max_rows_per_file"
PROGRESS_EVERY_ROWS = 200_000


@dataclasses.dataclass(frozen=True)
class RejectedRow:
    """A raw row that did not become an event; written as one JSON line to the dead letters."""

    source: str
    line: int
    reason: str
    detail: str
    raw: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def expand_paths(patterns: Sequence[str]) -> List[str]:
    """Glob patterns -> sorted file paths; a pattern that matches nothing is an error."""
    paths: List[str] = []
    for pattern in patterns:
        matches = expand_paths_or_none(pattern)
        if not matches:
            raise FileNotFoundError(f"no input file matches {pattern!r}")
        paths.extend(matches)
    return paths


def expand_paths_or_none(pattern: str) -> List[str]:
    """Like expand_paths for one optional pattern: [] when nothing matches."""
    return sorted(m.path for result in FileSystems.match([pattern]) for m in result.metadata_list)


def read_csv_header(path: str) -> List[str]:
    with FileSystems.open(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        header = next(csv.reader(text), None)
    if not header:
        raise ValueError(f"{path}: empty file, expected a CSV header row")
    return [name.strip() for name in header]


def check_columns(path: str, columns: Sequence[str], required: Iterable[str]) -> None:
    missing = [name for name in required if name not in columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {missing}; "
                         f"the header has {list(columns)}")


def iter_csv_rows(path: str, required: Sequence[str]) -> Iterator[Tuple[int, Dict[str, str], str]]:
    """(line number, {column: cell}, raw line) per data row; columns are found by header name."""
    with FileSystems.open(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        reader = csv.reader(text)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: empty file, expected a CSV header row")
        header = [name.strip() for name in header]
        check_columns(path, header, required)
        width = len(header)
        start_line = reader.line_num + 1
        for cells in reader:
            line = start_line
            start_line = reader.line_num + 1
            if not cells:
                continue  # blank line
            raw_line = ",".join(cells)
            if len(cells) != width:
                yield line, {"__malformed__": f"{len(cells)} cells, header has {width}"}, raw_line
                continue
            yield line, dict(zip(header, cells)), raw_line


class ParseCsvFile(beam.DoFn):
    """path -> events, plus RejectedRow on the REJECTED output.

    parse_row(row: {column: cell}, source, line) -> iterable of Event, raising RowError.
    """

    def __init__(self, required: Sequence[str], parse_row, max_rows_per_file: int = 0):
        self._required = tuple(required)
        self._parse_row = parse_row
        self._max_rows = max_rows_per_file

    def process(self, path: str):
        count = 0
        for line, row, raw_line in iter_csv_rows(path, self._required):
            count += 1
            if count % PROGRESS_EVERY_ROWS == 0:
                LOG.info("read %d rows of %s", count, path)
            if self._max_rows and count > self._max_rows:
                yield beam.pvalue.TaggedOutput(STATS, (SKIPPED_BY_MAX_ROWS, 1))
                continue
            if "__malformed__" in row:
                yield beam.pvalue.TaggedOutput(REJECTED, RejectedRow(
                    path, line, REJECT_BAD_ROW, row["__malformed__"], raw_line[:2000]))
                continue
            try:
                for event in self._parse_row(row, path, line):
                    yield event
            except RowError as error:
                yield beam.pvalue.TaggedOutput(REJECTED, RejectedRow(
                    path, line, error.reason, error.detail, raw_line[:2000]))
        LOG.info("read %d rows of %s", count, path)


@dataclasses.dataclass
class AdapterOutput:
    """What an adapter hands the sequence builder.

    events: PCollection[Event]; rejected: PCollection[RejectedRow];
    stats: PCollections of (name, count); item_side / user_side: optional PCollections of
    dicts keyed by the raw "item_id" / "user_id" (side features, written next to the examples).
    """

    events: object
    rejected: List[object]
    stats: List[object] = dataclasses.field(default_factory=list)
    item_side: object = None
    user_side: object = None


def event_to_tuple(event: Event) -> tuple:
    """Events cross the shuffle as plain tuples: Beam's fast coder handles them natively."""
    # Not dataclasses.astuple: it deep-copies field by field, which cost more than parsing.
    return (event.user_id, event.timestamp, event.scenario, event.item_id, event.click,
            event.search_session_id, event.query_tokens, event.source, event.line)


def event_from_tuple(values: tuple) -> Event:
    return Event(*values[:6], tuple(values[6]), *values[7:])
