"""File reading shared by the adapters: rows by column name, with file and line for errors.

Files are read whole by one DoFn call each (a CSV cannot be split safely at arbitrary byte
offsets when quoted fields hold commas); the job reshuffles right after, so one big file costs
one reader but not one worker for the rest of the job. Give large logs as many files.
"""

from __future__ import annotations

import base64
import collections
import csv
import dataclasses
import json
import logging
import re
from typing import Deque, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from feature_specs.event_schema import (
    REJECT_BAD_ROW,
    REJECT_NOT_UTF8,
    REJECT_UNSAFE_ID,
    Event,
    RowError,
)

LOG = logging.getLogger(__name__)
REJECTED = "rejected"
STATS = "stats"  # (counter name, increment) pairs, summed into the manifest
SKIPPED_BY_MAX_ROWS = "rows_not_used_beyond_max_rows_per_file"
PROGRESS_EVERY_ROWS = 200_000


@dataclasses.dataclass(frozen=True)
class RejectedRow:
    """A raw row that did not become an event; written as one JSON line to the dead letters.

    raw: the row as it is in the file (CSV quoting and inner line breaks kept, the final line
    end dropped). When its bytes are not UTF-8, raw shows them as \\xNN escapes and
    raw_base64 holds the exact bytes (the key is left out otherwise).
    """

    source: str
    line: int
    reason: str
    detail: str
    raw: str
    raw_base64: str = ""

    @classmethod
    def of_bytes(
        cls, source: str, line: int, reason: str, detail: str, data: bytes
    ) -> "RejectedRow":
        if data.endswith(b"\n"):
            data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
        if len(data) > MAX_RAW_BYTES:
            detail = f"{detail} (raw keeps the first {MAX_RAW_BYTES} of {len(data)} bytes)"
            data = data[:MAX_RAW_BYTES]
        try:
            return cls(source, line, reason, detail, data.decode("utf-8"))
        except UnicodeDecodeError:
            return cls(
                source,
                line,
                reason,
                detail,
                data.decode("utf-8", "backslashreplace"),
                base64.b64encode(data).decode("ascii"),
            )

    def raw_bytes(self) -> bytes:
        """The row's bytes (without its final line end), as far as the dead letter kept them."""
        return base64.b64decode(self.raw_base64) if self.raw_base64 else self.raw.encode("utf-8")

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        if not fields["raw_base64"]:
            del fields["raw_base64"]
        return json.dumps(fields, sort_keys=True)


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
    """The header's column names (stripped; a UTF-8 byte-order mark is dropped).

    ValueError naming the file when there is no header or it cannot be read as UTF-8 CSV."""
    with CsvFile(path) as csv_file:
        return csv_file.header


def check_columns(path: str, columns: Sequence[str], required: Iterable[str]) -> None:
    missing = [name for name in required if name not in columns]
    if missing:
        raise ValueError(
            f"{path}: missing required column(s) {missing}; " f"the header has {list(columns)}"
        )


# --- CSV at the byte level ----------------------------------------------------------------------
#
# A data row must never stop the job, whatever its bytes: the file is read as bytes, one
# physical line at a time, and each line is decoded on its own. Bytes that are not UTF-8 become
# lone surrogates (surrogateescape) and the row that holds them is rejected as not_utf8; a NUL
# byte (which Python 3.10's csv module refuses) is swapped for a stand-in the decoder never
# produces and swapped back in the cells, so the row is judged by its fields (an id holding
# NUL is an unsafe_id). Python's csv module then splits the lines into rows, asking for the
# next line only while a quoted cell is open, so the lines behind every row are known.

UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_NUL_STAND_IN = "\udc00"  # a lone surrogate; surrogateescape only yields \udc80-\udcff
MAX_RAW_BYTES = 65_536  # a dead letter keeps at most this much of its row
SPANNING_ROWS = "csv_rows_spanning_several_lines"
INPUT_ROWS = "input_rows"
FILES_WITHOUT_ROWS = "input_files_without_data_rows"


@dataclasses.dataclass
class CsvRecord:
    """One CSV row: its physical lines `line`..`end_line` (1-based), their bytes (line ends
    included) and cells, or `problem` = (reason, detail) when the lines are not a valid row."""

    line: int
    end_line: int
    # (line number, bytes, is UTF-8) per physical line
    entries: List[Tuple[int, bytes, bool]] = dataclasses.field(repr=False)
    cells: Optional[List[str]] = None
    problem: Optional[Tuple[str, str]] = None

    @property
    def raw(self) -> bytes:
        return b"".join(entry[1] for entry in self.entries)

    @property
    def spans_lines(self) -> bool:
        return self.end_line > self.line


class _PhysicalLines:
    """A binary file's lines, decoded one by one for the csv module, with push-back.

    `pulled` lists (line number, bytes, is UTF-8) of the lines handed out since start_row(),
    the lines of the row the csv reader is building; `all_utf8` and `has_nul` say whether
    they are all UTF-8 and whether one holds a NUL."""

    def __init__(self, handle):
        self._read = handle.readline
        self._pushed: Deque[Tuple[int, bytes]] = collections.deque()
        self._next_number = 1
        self.start_row()

    def start_row(self) -> None:
        self.pulled: List[Tuple[int, bytes, bool]] = []
        self.all_utf8 = True
        self.has_nul = False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self._pushed:
            number, raw = self._pushed.popleft()
        else:
            raw = self._read()
            if not raw:
                raise StopIteration
            number = self._next_number
            if number == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM) :]
            self._next_number += 1
        try:
            text = raw.decode("utf-8")
            utf8 = True
        except UnicodeDecodeError:
            text = raw.decode("utf-8", "surrogateescape")
            utf8 = self.all_utf8 = False
        self.pulled.append((number, raw, utf8))
        if "\x00" in text:
            self.has_nul = True
            return text.replace("\x00", _NUL_STAND_IN)
        return text

    def push_back(self, entries: Sequence[Tuple[int, bytes, bool]]) -> None:
        self._pushed.extendleft((number, raw) for number, raw, _ in reversed(entries))


def _not_utf8_detail(entries) -> str:
    for number, raw, utf8 in entries:
        if not utf8:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return (
                    f"line {number}, byte {error.start + 1}: "
                    f"{raw[error.start:error.start + 4]!r} is not UTF-8 ({error.reason})"
                )
    return "not UTF-8"


def _strict_problem(entries) -> Optional[str]:
    """Why the lines of a row that spans lines are not one strict (RFC 4180) CSV row, or None.

    A row may span lines only through a quoted cell that closes properly; anything else (a
    quote that never closes, text right after a closing quote) is a stray quote that would
    swallow the rows after it."""
    texts = [
        raw.decode("utf-8", "surrogateescape").replace("\x00", _NUL_STAND_IN)
        for _, raw, _ in entries
    ]
    reader = csv.reader(texts, strict=True)
    try:
        next(reader)
        for extra in reader:
            if extra:
                return "the lines hold more than one row"
    except csv.Error as error:
        return f"a quoted cell does not close properly ({error})"
    return None


class CsvFile:
    """A CSV file read row by row at the byte level (see above), for ParseCsvFile and tests.

    with CsvFile(path) as csv_file:
        header = csv_file.header          # ValueError naming the file if unreadable
        for record in csv_file.records():  # CsvRecord per row, blank lines skipped
            ...
            csv_file.reread_after_first_line(record)  # optional, see there
    """

    def __init__(self, path: str):
        self.path = path
        self._handle = FileSystems.open(path)
        try:
            self._lines = _PhysicalLines(self._handle)
            self._reader = csv.reader(self._lines)
            self.header = self._read_header()
        except BaseException:
            self._handle.close()
            raise

    def __enter__(self) -> "CsvFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()

    def _read_header(self) -> List[str]:
        path = self.path
        try:
            cells = next(self._reader, None)
        except csv.Error as error:
            raise ValueError(f"{path}: line 1 (the header) is not CSV: {error}") from None
        if not cells or not any(cell.strip() for cell in cells):
            raise ValueError(
                f"{path}: empty file or empty first line, expected a CSV " "header row"
            )
        first = self._lines.pulled[0][1]
        if first.startswith(_UTF16_BOMS):
            raise ValueError(
                f"{path}: starts with a UTF-16 byte-order mark; the adapters "
                "read UTF-8: save the file as UTF-8"
            )
        if not all(utf8 for _, _, utf8 in self._lines.pulled):
            raise ValueError(
                f"{path}: the header is not UTF-8 " f"({_not_utf8_detail(self._lines.pulled)})"
            )
        header = [name.replace(_NUL_STAND_IN, "\x00").strip() for name in cells]
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise ValueError(f"{path}: the header names column(s) {repeated} more than once")
        return header

    def records(self) -> Iterator[CsvRecord]:
        lines, reader, width = self._lines, self._reader, len(self.header)
        while True:
            lines.start_row()
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as error:  # e.g. a field over csv.field_size_limit(), a bare CR
                entries = lines.pulled
                yield CsvRecord(
                    entries[0][0],
                    entries[-1][0],
                    entries,
                    problem=(REJECT_BAD_ROW, f"not CSV: {error}"),
                )
                continue
            entries = lines.pulled
            if not cells:
                continue  # blank line
            if lines.has_nul:
                cells = [cell.replace(_NUL_STAND_IN, "\x00") for cell in cells]
            record = CsvRecord(entries[0][0], entries[-1][0], entries, cells)
            if not lines.all_utf8:
                record.problem = (REJECT_NOT_UTF8, _not_utf8_detail(entries))
            elif len(cells) != width:
                record.problem = (REJECT_BAD_ROW, f"{len(cells)} cells, header has {width}")
            elif record.spans_lines:
                strict = _strict_problem(entries)
                if strict:
                    record.problem = (REJECT_BAD_ROW, strict)
            yield record

    def reread_after_first_line(self, record: CsvRecord) -> None:
        """Cut a rejected row that spans lines back to its first line: the lines after it are
        read again as rows of their own, so a stray quote cannot take the rows after it into
        the dead letters (or into one cell). `record` then covers its first line only."""
        entries = record.entries
        if len(entries) < 2:
            return
        self._lines.push_back(entries[1:])
        record.end_line, record.entries = entries[0][0], entries[:1]


# Control characters that str.split() does not split on: in a whitespace-separated line they
# would end up inside an id (the others are separators there, see event_schema.check_id).
_NON_SPACE_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x7f]")


def decode_text_line(raw: bytes) -> str:
    """One line of a whitespace-separated text input (Amazon sequences) as str.

    RowError(not_utf8) naming the byte, or RowError(unsafe_id) for a control character that
    would end up inside an id; the caller dead-letters the line (RejectedRow.of_bytes)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RowError(
            REJECT_NOT_UTF8,
            f"byte {error.start + 1}: "
            f"{raw[error.start:error.start + 4]!r} is not UTF-8 "
            f"({error.reason})",
        ) from None
    bad = _NON_SPACE_CONTROLS.search(text)
    if bad:
        raise RowError(
            REJECT_UNSAFE_ID,
            f"control character {bad.group(0)!r} at character "
            f"{bad.start() + 1}, which no id may contain",
        )
    return text


class ParseCsvFile(beam.DoFn):
    """path -> parsed rows, plus RejectedRow on the REJECTED output and counters on STATS.

    parse_row(row: {column: cell}, source, line) -> iterable of outputs, raising RowError.
    Every data row becomes parse_row's output, a dead letter, or (past max_rows_per_file) a
    counter; `input_rows` counts them all.
    """

    def __init__(self, required: Sequence[str], parse_row, max_rows_per_file: int = 0):
        self._required = tuple(required)
        self._parse_row = parse_row
        self._max_rows = max_rows_per_file

    def process(self, path: str):
        count = spanning = 0
        with CsvFile(path) as csv_file:
            header = csv_file.header
            check_columns(path, header, self._required)
            for record in csv_file.records():
                count += 1
                if count % PROGRESS_EVERY_ROWS == 0:
                    LOG.info("read %d rows of %s", count, path)
                if self._max_rows and count > self._max_rows:
                    yield beam.pvalue.TaggedOutput(STATS, (SKIPPED_BY_MAX_ROWS, 1))
                    continue
                problem = record.problem
                if problem is None:
                    try:
                        outputs = list(
                            self._parse_row(dict(zip(header, record.cells)), path, record.line)
                        )
                    except RowError as error:
                        problem = (error.reason, error.detail)
                if problem is None:
                    spanning += record.spans_lines
                    yield from outputs
                    continue
                reason, detail = problem
                if record.spans_lines:
                    last = record.end_line
                    csv_file.reread_after_first_line(record)
                    rest = (
                        f"line {last} is read again as a row"
                        if last == record.line + 1
                        else f"lines {record.line + 1}-{last} are read again as rows"
                    )
                    detail += (
                        f" [the row spans lines {record.line}-{last}: only line "
                        f"{record.line} is rejected, {rest}]"
                    )
                yield beam.pvalue.TaggedOutput(
                    REJECTED, RejectedRow.of_bytes(path, record.line, reason, detail, record.raw)
                )
        LOG.info("read %d rows of %s", count, path)
        if not count:
            LOG.warning("%s has a header and no data rows", path)
            yield beam.pvalue.TaggedOutput(STATS, (FILES_WITHOUT_ROWS, 1))
        yield beam.pvalue.TaggedOutput(STATS, (INPUT_ROWS, count))
        if spanning:
            yield beam.pvalue.TaggedOutput(STATS, (SPANNING_ROWS, spanning))


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
    return (
        event.user_id,
        event.timestamp,
        event.scenario,
        event.item_id,
        event.click,
        event.search_session_id,
        event.query_tokens,
        event.source,
        event.line,
    )


def event_from_tuple(values: tuple) -> Event:
    return Event(*values[:6], tuple(values[6]), *values[7:])
