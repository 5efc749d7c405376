"""Property-based bad-input tests for the adapters' parsing (issue 15).

Hypothesis throws arbitrary bytes, quoting, encodings, ids and timestamps at the parsing
DoFns and functions directly (no Beam pipeline, so a few hundred cases take seconds) and
checks that nothing crashes, that every data row is accounted for (rows in = rows accepted
+ rows rejected + rows skipped), that dead letters hold their row's exact bytes, and that
no accepted id could break the one-id-per-line vocabulary files. The stand-in server's
properties are in tests/serving/test_serving_server.py; whole-job bad input in
tests/pipeline/test_data_job.py.
"""

import json
import os
import tempfile
import unicodedata

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from feature_specs import event_schema as es
from pipeline.adapters import amazon, common, event_log, kuaisar

# Fixed examples in CI (derandomized: the same cases every run, a few seconds in all);
# BAD_INPUT_EXAMPLES=5000 runs that many fresh random cases per test instead.
_EXAMPLES = int(os.environ.get("BAD_INPUT_EXAMPLES", "0"))
SETTINGS = settings(
    max_examples=_EXAMPLES or 150,
    derandomize=not _EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
KNOWN_REASONS = {value for name, value in vars(es).items() if name.startswith("REJECT_")}
HEADER = list(es.EVENT_COLUMNS)


def run_dofn(dofn, path):
    """(events or rows, rejected RejectedRows, {counter: total}) of one DoFn.process call."""
    outputs, rejected, stats = [], [], {}
    for out in dofn.process(path):
        if isinstance(out, beam.pvalue.TaggedOutput):
            if out.tag == common.REJECTED:
                assert isinstance(out.value, common.RejectedRow)
                rejected.append(out.value)
            else:
                assert out.tag == common.STATS
                name, count = out.value
                stats[name] = stats.get(name, 0) + count
        else:
            outputs.append(out)
    return outputs, rejected, stats


def write_temp(data: bytes, suffix=".csv") -> str:
    handle, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    return path


def physical_lines(data: bytes):
    """Line k (1-based) of the file without its line end, as RejectedRow keeps it."""
    *ended, last = data.split(b"\n")  # only lines that end with \n lose a \r before it
    return [line[:-1] if line.endswith(b"\r") else line for line in ended] + (
        [last] if last else []
    )


def parse_event_log_csv(data: bytes):
    path = write_temp(data)
    try:
        return path, run_dofn(
            common.ParseCsvFile(es.REQUIRED_EVENT_COLUMNS, event_log.parse_canonical_row), path
        )
    finally:
        os.unlink(path)


def check_accounting(path, data, events, rejected, stats, first_data_line=2):
    """Nothing crashed (we got here); every row is one outcome; dead letters are faithful."""
    assert stats[common.INPUT_ROWS] == len(events) + len(rejected) + stats.get(
        common.SKIPPED_BY_MAX_ROWS, 0
    )
    lines = physical_lines(data)
    outcome_lines = [e.line for e in events] + [r.line for r in rejected]
    assert len(outcome_lines) == len(set(outcome_lines)), "two outcomes for one row"
    assert all(first_data_line <= line <= len(lines) for line in outcome_lines)
    for row in rejected:
        assert row.source == path and row.reason in KNOWN_REASONS and row.detail
        # A rejected row is cut to its first line: its raw is exactly that line's bytes.
        assert row.raw_bytes() == lines[row.line - 1], row
        assert json.loads(row.to_json())["line"] == row.line  # valid JSON whatever the bytes
    for event in events:
        for value in (event.user_id, event.item_id, event.search_session_id):
            assert es.unsafe_id_character(value) is None, event


# --- values --------------------------------------------------------------------------------------

# Ids and tokens a vocabulary file can hold; used to write rows that must be accepted.
SAFE_IDS = st.text(
    st.characters(
        min_codepoint=0x21,
        max_codepoint=0x2FFF,
        blacklist_categories=("Z", "C"),
        blacklist_characters='",',
    ),
    min_size=1,
    max_size=8,
)
TOKENS = st.lists(st.from_regex(r"[A-Za-z0-9_]{1,5}", fullmatch=True), max_size=4)


@st.composite
def good_rows(draw):
    """A row of the canonical schema that make_event accepts: (cells by column, event)."""
    scenario = draw(st.sampled_from(es.SCENARIOS))
    row = {
        es.USER_ID: draw(SAFE_IDS),
        es.TIMESTAMP: str(draw(st.integers(-(2**63), 2**63 - 1))),
        es.SCENARIO: scenario,
        es.ITEM_ID: draw(SAFE_IDS),
        es.CLICK: draw(st.sampled_from(["", "0", "1", "3"])),
        es.SEARCH_SESSION_ID: draw(SAFE_IDS) if scenario == es.SCENARIO_SEARCH else "",
        es.QUERY_TOKENS: "",
    }
    if scenario == es.SCENARIO_SEARCH:
        tokens = draw(TOKENS)
        row[es.QUERY_TOKENS] = draw(st.sampled_from(["[{}]", "{}"])).format(
            (", " if row[es.QUERY_TOKENS] == "" else " ").join(tokens)
        )
    return row


def csv_text(rows, quote_all=False, terminator="\n"):
    """RFC 4180 CSV of lists of cells; unlike csv.writer on Python 3.10, it writes NUL too."""

    def cell(value):
        if quote_all or any(c in value for c in ',"\r\n'):
            return '"' + value.replace('"', '""') + '"'
        return value

    return "".join(",".join(map(cell, row)) + terminator for row in rows)


def csv_bytes(header, rows, quote_all=False, terminator="\n"):
    return csv_text(
        [header] + [[row.get(name, "") for name in header] for row in rows], quote_all, terminator
    ).encode("utf-8", "surrogatepass")


# Bad rows: any bytes on one physical line (no b"\n"); at most one of them holds a quote.
BAD_LINE = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"").replace(b'"', b""))


@SETTINGS
@given(
    header=st.permutations(HEADER),
    bom=st.booleans(),
    rows=st.lists(st.one_of(good_rows(), BAD_LINE), max_size=12),
    quote_at=st.one_of(st.none(), st.tuples(st.integers(0, 11), st.integers(0, 60))),
    terminator=st.sampled_from(["\n", "\r\n"]),
)
@example(
    header=HEADER,
    bom=True,
    rows=[b"\xff\xfe", b"rec,1,a\x00b,,i,1,", b"\r"],
    quote_at=(0, 0),
    terminator="\n",
)
def test_every_good_row_survives_any_bad_rows_around_it(header, bom, rows, quote_at, terminator):
    """Good rows between arbitrary bad lines (one of which may hold a stray quote) are each
    accepted exactly once with their values; each bad line is at most one outcome."""
    bad_positions = [i for i, row in enumerate(rows) if isinstance(row, bytes)]
    lines = [csv_bytes(header, [], terminator=terminator)]
    expected = {}
    for index, row in enumerate(rows):
        if isinstance(row, bytes):
            if (
                quote_at
                and bad_positions
                and index == bad_positions[quote_at[0] % len(bad_positions)]
            ):
                cut = quote_at[1] % (len(row) + 1)
                row = row[:cut] + b'"' + row[cut:]
            lines.append(row + terminator.encode())
        else:
            line = csv_bytes(header, [row], terminator=terminator).split(terminator.encode(), 1)[1]
            lines.append(line)
            expected[len(lines)] = row
    data = (common.UTF8_BOM if bom else b"") + b"".join(lines)
    path, (events, rejected, stats) = parse_event_log_csv(data)
    check_accounting(path, data, events, rejected, stats)
    by_line = {event.line: event for event in events}
    for line, row in expected.items():
        event = by_line.get(line)
        assert event is not None, (line, row, [r for r in rejected])
        assert (event.user_id, event.timestamp, event.scenario, event.item_id) == (
            row[es.USER_ID],
            int(row[es.TIMESTAMP]),
            row[es.SCENARIO],
            row[es.ITEM_ID],
        )


@SETTINGS
@given(body=st.binary(max_size=400), header=st.permutations(HEADER), quote_all=st.booleans())
@example(body=b'rec,1,u,,i,1,"\nrec,1,u,,i,2,\n', header=HEADER, quote_all=False)
@example(body=b"rec,1,u,,i,1,x\x00\nrec,1,\xff,,i,2,\n\x00\r\n\r", header=HEADER, quote_all=False)
def test_any_bytes_after_a_header_never_crash_and_every_row_is_accounted_for(
    body, header, quote_all
):
    data = csv_bytes(header, [], quote_all) + body
    path, (events, rejected, stats) = parse_event_log_csv(data)
    check_accounting(path, data, events, rejected, stats)


@SETTINGS
@given(
    rows=st.lists(
        st.lists(st.text(st.characters(codec="utf-8"), max_size=12), min_size=7, max_size=7),
        max_size=8,
    ),
    quote_all=st.booleans(),
    max_rows=st.integers(0, 3),
)
def test_any_cells_with_any_quoting_are_accepted_or_rejected_never_crash(rows, quote_all, max_rows):
    """Arbitrary text in every cell (ids, timestamps, clicks, quotes, line breaks inside
    quoted cells), written as proper CSV; also with max_rows_per_file."""
    data = csv_text([HEADER] + rows, quote_all).encode("utf-8", "surrogatepass")
    path = write_temp(data)
    try:
        events, rejected, stats = run_dofn(
            common.ParseCsvFile(es.REQUIRED_EVENT_COLUMNS, event_log.parse_canonical_row, max_rows),
            path,
        )
    finally:
        os.unlink(path)
    assert stats[common.INPUT_ROWS] == len(events) + len(rejected) + stats.get(
        common.SKIPPED_BY_MAX_ROWS, 0
    )
    assert all(r.reason in KNOWN_REASONS and r.source == path for r in rejected)
    for event in events:
        assert es.unsafe_id_character(event.user_id + event.item_id) is None


@SETTINGS
@given(
    user=st.text(st.characters(codec=None), max_size=10),
    timestamp=st.one_of(
        st.text(max_size=30), st.integers().map(str), st.floats(allow_nan=True).map(repr)
    ),
    scenario=st.sampled_from(["rec", "search", "REC", " search ", "ads", ""]),
    item=st.text(st.characters(codec=None), max_size=10),
    click=st.one_of(st.text(max_size=8), st.integers().map(str), st.floats().map(repr)),
    session=st.text(st.characters(codec=None), max_size=10),
    query=st.text(max_size=30),
)
def test_make_event_accepts_only_rows_whose_ids_round_trip(
    user, timestamp, scenario, item, click, session, query
):
    try:
        event = es.make_event(
            user,
            timestamp,
            scenario,
            item_id=item,
            click=click,
            search_session_id=session,
            query_tokens=query,
        )
    except es.RowError as error:
        assert error.reason in KNOWN_REASONS and error.detail
        return
    assert -(2**63) <= event.timestamp < 2**63 and event.click >= 0
    ids = [event.user_id] + [event.item_id] * bool(event.item_id) + list(event.query_tokens)
    # Written one per line and read back by line, the ids come back unchanged.
    assert "\n".join(ids).encode("utf-8").decode("utf-8").splitlines() == ids
    assert all("\t" not in value for value in ids)


# --- other adapters ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attributes_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("amazon") / "attributes.json"
    path.write_text(json.dumps({"A": ["c1"], "B": ["c1"], "C": ["c2"]}))
    return str(path)


@SETTINGS
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.lists(st.sampled_from(["u1", "u2", "A", "B", "C", "Z"]), min_size=1, max_size=6).map(
                lambda ids: " ".join(ids).encode()
            ),
        ),
        max_size=10,
    )
)
def test_amazon_sequence_lines_of_any_bytes_never_crash(attributes_path, lines):
    data = b"\n".join(line.replace(b"\n", b"") for line in lines) + b"\n"
    path = write_temp(data, ".txt")
    dofn = amazon.ParseSequencesFile(
        amazon.AmazonInputs(sequences=path, attributes=attributes_path, query_min_item_frequency=1)
    )
    dofn.setup()
    try:
        events, rejected, _ = run_dofn(dofn, path)
    finally:
        os.unlink(path)
    file_lines = physical_lines(data)
    outcome_lines = {e.line for e in events} | {r.line for r in rejected}
    assert len(rejected) == len({r.line for r in rejected})
    for line, raw in enumerate(file_lines, start=1):
        text = raw.decode("utf-8", "replace").strip()
        assert (line in outcome_lines) == bool(text) or not raw.strip(), (line, raw)
    for row in rejected:
        assert (
            row.raw_bytes() == file_lines[row.line - 1].rstrip(b"\r")
            or row.raw_bytes() == file_lines[row.line - 1].decode("utf-8").strip().encode()
        )
    for event in events:
        assert es.unsafe_id_character(event.user_id + event.item_id) is None


@SETTINGS
@given(
    values=st.lists(
        st.tuples(
            st.one_of(st.none(), st.binary(max_size=8)),
            st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
            st.one_of(st.none(), st.text(max_size=6)),
        ),
        max_size=8,
    )
)
def test_parquet_rows_of_any_values_never_crash(values):
    table = pa.table(
        {
            "user_id": pa.array([v[0] for v in values], pa.binary()),
            "timestamp": pa.array([v[1] for v in values], pa.int64()),
            "scenario": pa.array([v[2] for v in values], pa.string()),
            "item_id": pa.array(["i1"] * len(values), pa.string()),
        }
    )
    handle, path = tempfile.mkstemp(suffix=".parquet")
    os.close(handle)
    pq.write_table(table, path)
    try:
        events, rejected, stats = run_dofn(event_log.ParseParquetFile(), path)
    finally:
        os.unlink(path)
    assert stats[common.INPUT_ROWS] == len(values) == len(events) + len(rejected)
    assert all(r.reason in KNOWN_REASONS for r in rejected)


@SETTINGS
@given(
    rows=st.lists(
        st.lists(st.text(st.characters(codec="utf-8"), max_size=10), min_size=4, max_size=4),
        max_size=6,
    )
)
def test_kuaisar_item_features_of_any_text_never_crash(rows):
    header = list(kuaisar.ITEM_FEATURE_COLUMNS)
    path = write_temp(csv_text([header] + rows).encode("utf-8", "surrogatepass"))
    try:
        outputs, rejected, stats = run_dofn(
            common.ParseCsvFile(kuaisar.ITEM_FEATURE_COLUMNS, kuaisar.parse_item_features), path
        )
    finally:
        os.unlink(path)
    assert stats[common.INPUT_ROWS] == len(outputs) + len(rejected)
    assert all(es.unsafe_id_character(row["item_id"]) is None for row in outputs)


# --- fixed cases of issue 15 ---------------------------------------------------------------------


def test_a_quoted_newline_or_tab_in_an_id_is_rejected_not_written_to_the_vocabulary():
    """Issue 15 item 3, at the parser: before, both rows became events with those ids."""
    data = (
        b"user_id,timestamp,scenario,item_id\n"
        b'alice,1,rec,"i\n2"\n'
        b"bob,2,rec,i\t3\n"
        b"carol,3,rec,i4\n"
    )
    path, (events, rejected, stats) = parse_event_log_csv(data)
    assert [(e.user_id, e.item_id) for e in events] == [("carol", "i4")]
    assert [(r.line, r.reason) for r in rejected] == [
        (2, es.REJECT_UNSAFE_ID),
        (3, es.REJECT_BAD_ROW),
        (4, es.REJECT_UNSAFE_ID),
    ]
    assert "'\\n'" in rejected[0].detail and "'\\t'" in rejected[2].detail


def test_non_utf8_nul_and_bom_do_not_stop_the_parser():
    """Issue 15 item 2, at the parser: before, the BOM hid the first column, and the bad byte
    and the NUL each raised out of the DoFn (failing the whole job)."""
    data = (
        b"\xef\xbb\xbf" + b"user_id,timestamp,scenario,item_id,comment\n"
        b"alice,1,rec,i1,caf\xe9\n"
        b"bob,2,rec,i2,a\x00b\n"
        b"carol,3,rec,i3,fine\n"
    )
    path, (events, rejected, stats) = parse_event_log_csv(data)
    assert [(e.user_id, e.line) for e in events] == [("bob", 3), ("carol", 4)]
    [latin1] = rejected
    assert (latin1.line, latin1.reason) == (2, es.REJECT_NOT_UTF8)
    assert latin1.raw_bytes() == b"alice,1,rec,i1,caf\xe9"
    assert json.loads(latin1.to_json())["raw"] == "alice,1,rec,i1,caf\\xe9"


def test_an_unterminated_quote_swallows_no_row():
    """Before, the rows after the quote were folded into one malformed_row (or, with the quote
    in the last column, silently into one accepted row's cell)."""
    rows = "".join(f"u{k},{k},rec,i{k},\n" for k in range(9))
    data = (
        "user_id,timestamp,scenario,item_id,search_session_id\n" 'x,0,rec,i0,"never closed\n' + rows
    ).encode()
    path, (events, rejected, stats) = parse_event_log_csv(data)
    assert [(r.line, r.reason) for r in rejected] == [(2, es.REJECT_BAD_ROW)]
    assert rejected[0].raw == 'x,0,rec,i0,"never closed'
    assert [e.user_id for e in events] == [f"u{k}" for k in range(9)]
    assert stats[common.INPUT_ROWS] == 10


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "empty file"),
        (b"\xff\xfeu\x00s\x00", "UTF-16"),
        (b"user_id,timest\xe4mp,scenario\n", "header is not UTF-8"),
        (b"user_id,user_id,timestamp,scenario\n", "more than once"),
    ],
)
def test_an_unreadable_header_fails_before_the_job_naming_the_file(data, message):
    path = write_temp(data)
    try:
        with pytest.raises(ValueError, match=message) as raised:
            common.read_csv_header(path)
        assert path in str(raised.value)
    finally:
        os.unlink(path)


def test_a_header_only_file_is_counted_and_warned_about(caplog):
    path, (events, rejected, stats) = parse_event_log_csv(b"user_id,timestamp,scenario\n")
    assert (events, rejected) == ([], [])
    assert stats == {common.INPUT_ROWS: 0, common.FILES_WITHOUT_ROWS: 1}
    assert any("no data rows" in record.getMessage() for record in caplog.records)


# --- query words of any script, offline and online (issue 23 item 7) ----------------------------

# Characters of a word: any code point but separators (white space, commas), brackets, control
# characters and surrogates; quotes are left out so that no drawn word is quote-wrapped.
WORD_CHARS = st.characters(
    codec="utf-8",
    blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
    blacklist_characters=",[]'\"\x1c\x1d\x1e\x1f\x85",
)
WORDS = st.lists(st.text(WORD_CHARS, min_size=1, max_size=6), max_size=5)
SEPARATORS = st.text(
    st.sampled_from([" ", ",", "\t", "\n", "\u3000", "\u00a0"]), min_size=1, max_size=3
)
ANY_QUERY_TEXT = st.text(st.characters(codec="utf-8"), max_size=24)


def _offline_query_tokens(texts):
    """Each text as the query_tokens cell of a search row of an event-log CSV, through the
    data job's adapter (ParseCsvFile + parse_canonical_row): [tokens, or None if the row was
    dead-lettered as malformed_query_tokens]."""
    header = list(es.EVENT_COLUMNS)
    rows = [
        {
            es.USER_ID: "u",
            es.TIMESTAMP: str(k),
            es.SCENARIO: "search",
            es.ITEM_ID: "i",
            es.CLICK: "1",
            es.SEARCH_SESSION_ID: f"s{k}",
            es.QUERY_TOKENS: text,
        }
        for k, text in enumerate(texts)
    ]
    data = csv_bytes(header, rows)
    path, (events, rejected, stats) = parse_event_log_csv(data)
    check_accounting(path, data, events, rejected, stats)
    # Line of row k: after the header and the physical lines of the rows before it.
    starts, line = [], 2
    for row in rows:
        starts.append(line)
        line += csv_text([[row[name] for name in header]]).count("\n")
    outcome = {event.line: event.query_tokens for event in events}
    for row in rejected:
        if row.line in starts:
            assert row.reason == es.REJECT_BAD_QUERY, (row, texts)
            outcome[row.line] = None
        # else: a later line of a rejected row that spans lines, read again as a row
        # (docs/data.md), not a query.
    return [outcome[line] for line in starts]


def _online_query_tokens(assembler, text):
    try:
        return assembler.query_tokens(text)
    except ValueError:
        return None


def _check_words_are_vocabulary_lines(tokens):
    for token in tokens:
        assert token and unicodedata.is_normalized("NFC", token), token
        assert es.unsafe_id_character(token) is None and not any(
            c.isspace() or c in ",[]" for c in token
        ), token
    # One word per line of vocab/words.txt, read back by line (TextFileInitializer,
    # splitlines) and re-tokenised (the raw id format's words): the same words.
    text = "".join(f"{token}\n" for token in tokens)
    assert text.encode("utf-8").decode("utf-8").splitlines() == list(tokens)
    assert es.parse_token_list(" ".join(tokens)) == tokens


@SETTINGS
@given(
    queries=st.lists(st.tuples(WORDS, SEPARATORS, st.booleans()), min_size=1, max_size=4),
    noise=st.lists(ANY_QUERY_TEXT, max_size=4),
)
@example(
    queries=[
        (["éclair", "e\u0301clair"], " ", False),
        (["قهوة", "咖啡"], ", ", True),
        (["\U0001f469\u200d\U0001f373", "men's"], "\u3000", False),
    ],
    noise=["'a'", "a\x00b", "[1, [2]]", "\u2028x\u0085y"],
)
def test_query_words_of_any_script_give_the_same_tokens_offline_and_online(queries, noise):
    """Random Unicode query text, through the data job's adapter and through the online
    path's assembler (serving.online_features): both accept it with the same words, or both
    reject it. Lists of drawn words (any script) come back as those words, NFC-normalised;
    every accepted word can be one line of vocab/words.txt."""
    from feature_specs.example_schema import SequenceShapes
    from serving.online_features import OnlineFeatureAssembler

    assembler = OnlineFeatureAssembler(
        SequenceShapes(rec_len=2, search_len=2, query_len=3, clicks_per_session=1)
    )
    texts = [
        ("[{}]" if bracketed else "{}").format(separator.join(words))
        for words, separator, bracketed in queries
    ] + noise
    offline = _offline_query_tokens(texts)
    for k, text in enumerate(texts):
        online = _online_query_tokens(assembler, text)
        assert offline[k] == online, (text, offline[k], online)
        if online is not None:
            _check_words_are_vocabulary_lines(online)
    for (words, _, _), tokens in zip(queries, offline):
        assert tokens == tuple(unicodedata.normalize("NFC", word) for word in words), words
