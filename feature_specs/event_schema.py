"""The canonical event schema: one row per behaviour, whatever log it came from.

Every adapter (KuaiSAR, Amazon sequences, a user's own event log) turns its input into these
rows; the sequence builder reads nothing else.

| column              | type        | required | meaning                                              |
|---------------------|-------------|----------|------------------------------------------------------|
| `user_id`           | string      | yes      | raw user id                                          |
| `timestamp`         | int64       | yes      | event time in milliseconds (any monotone integer for logs without clocks) |
| `scenario`          | "rec" / "search" | yes | which surface the behaviour happened on              |
| `item_id`           | string      | rec: yes | the recommended item / one item a search returned; empty for a search with no results |
| `click`             | int64 >= 0  | no (1)   | clicks on the item; rec rows with 0 are impressions, search rows with 0 are returned-not-clicked |
| `search_session_id` | string      | search   | groups the rows of one search session (one query)    |
| `query_tokens`      | token list  | search   | the query's words (or word ids), "[20, 34, 3]" or "20 34 3"; any script (parse_token_list) |

Side features live in two optional tables keyed by id, not on every event:
items (`item_id`, `categories`, `caption_tokens`) and users (`user_id` plus string columns).

Ids (`user_id`, `item_id`, `search_session_id`) are UTF-8 text without line breaks, tabs or
other control characters (check_id): the vocabulary files hold one id per line, so such an id
would shift every later id; rows with one are rejected as `unsafe_id`.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Optional, Tuple

USER_ID = "user_id"
TIMESTAMP = "timestamp"
SCENARIO = "scenario"
ITEM_ID = "item_id"
CLICK = "click"
SEARCH_SESSION_ID = "search_session_id"
QUERY_TOKENS = "query_tokens"

EVENT_COLUMNS = (USER_ID, TIMESTAMP, SCENARIO, ITEM_ID, CLICK, SEARCH_SESSION_ID, QUERY_TOKENS)
REQUIRED_EVENT_COLUMNS = (USER_ID, TIMESTAMP, SCENARIO)

SCENARIO_REC = "rec"
SCENARIO_SEARCH = "search"
SCENARIOS = (SCENARIO_REC, SCENARIO_SEARCH)

# Reasons a raw row is rejected; each is counted and written to the dead-letter output.
REJECT_MISSING_USER = "missing_user_id"
REJECT_BAD_TIMESTAMP = "unparseable_timestamp"
REJECT_BAD_SCENARIO = "unknown_scenario"
REJECT_MISSING_ITEM = "missing_item_id"
REJECT_BAD_CLICK = "unparseable_click"
REJECT_MISSING_SESSION = "missing_search_session_id"
REJECT_BAD_QUERY = "malformed_query_tokens"
REJECT_BAD_ROW = "malformed_row"
# A row whose bytes are not UTF-8 (raw bytes kept base64 in the dead letter).
REJECT_NOT_UTF8 = "not_utf8"
# A user_id, item_id or search_session_id holding a character the one-id-per-line vocabulary
# files (and item_clicks.tsv) cannot hold: line breaks, tabs, other control characters.
REJECT_UNSAFE_ID = "unsafe_id"
# Not a row: a user whose log leaves fewer unseen items than the negatives an example needs;
# the user is skipped (raw = the user id), the job goes on.
REJECT_TOO_FEW_NEGATIVES = "too_few_negatives_for_user"

# Characters an id may not contain: every character str.splitlines() breaks on (\n, \r,
# \v, \f, \x1c-\x1e, \x85, \u2028, \u2029), tab (the .tsv separator), the other C0 controls and
# DEL, and lone surrogates (bytes that were not UTF-8). With them out, vocab/*.txt has exactly
# one line per id for TensorFlow's TextFileInitializer, Python's splitlines() and TFT alike.
_UNSAFE_ID_CHARS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]")


@dataclasses.dataclass(frozen=True)
class Event:
    """One canonical behaviour row. `source`/`line` point back at the raw input for debugging.

    Ordering within a user: (timestamp, rec before search, source order) - see sort_key.
    """

    user_id: str
    timestamp: int
    scenario: str
    item_id: str = ""
    click: int = 1
    search_session_id: str = ""
    query_tokens: Tuple[str, ...] = ()
    source: str = ""
    line: int = 0

    def sort_key(self) -> Tuple[int, int, str, int]:
        # Spec 3: ties in time put rec before search; then the input's own order.
        return (self.timestamp, 0 if self.scenario == SCENARIO_REC else 1, self.source, self.line)


class RowError(ValueError):
    """A raw row that cannot become an event; `reason` is one of the REJECT_* names."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_TOKEN_LIST = re.compile(r"^\[?\s*([^\[\]]*?)\s*\]?$")
# Words are separated by white space (every character str.isspace() calls space, which
# includes every line break str.splitlines() knows, tab and the ASCII separators
# \x1c-\x1f) and commas.
_TOKEN_SEPARATORS = re.compile(r"[,\s]+")
# What a word may not hold: the control characters that are not separators (Unicode Cc:
# the rest of C0, DEL, C1) and lone surrogates (bytes that were not UTF-8). With the
# separators, this keeps every character of _UNSAFE_ID_CHARS out of the words, so
# vocab/words.txt holds one word per line.
_TOKEN_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_QUOTES = "'\""


def parse_token_list(text: Optional[str], field: str = QUERY_TOKENS) -> Tuple[str, ...]:
    """ "[20, 34, 3]", "20 34 3", "20,34,3" or "" -> ("20", "34", "3") / ().

    A word is any run of characters between separators (white space, commas), in any script
    ("éclair", "قهوة", "咖啡", "👩‍🍳"), Unicode NFC-normalised, so "e" + combining acute and "é"
    are the same word offline and online (example_rules.tokenize_query, the online path's
    tokeniser, is this function). Raises RowError(REJECT_BAD_QUERY) on anything that is not a
    flat list of words, so a mangled keyword column is never read as words: unbalanced
    brackets, brackets inside (nested lists), a word in quotes ('a' or "a", a list of string
    literals), or a control character (or a byte that was not UTF-8) in a word.
    """
    if text is None:
        return ()
    text = unicodedata.normalize("NFC", text.strip())
    if not text:
        return ()
    if text.startswith("[") != text.endswith("]"):
        raise RowError(REJECT_BAD_QUERY, f"{field}={text[:80]!r}: unbalanced brackets")
    match = _TOKEN_LIST.match(text)
    if match is None:
        raise RowError(REJECT_BAD_QUERY, f"{field}={text[:80]!r}: not a flat token list")
    tokens = tuple(token for token in _TOKEN_SEPARATORS.split(match.group(1)) if token)
    for token in tokens:
        bad = _TOKEN_FORBIDDEN.search(token)
        if bad is not None:
            raise RowError(
                REJECT_BAD_QUERY,
                f"{field}={text[:80]!r}: bad token {token[:40]!r} holds "
                f"{bad.group(0)!r} (U+{ord(bad.group(0)):04X}), a control character",
            )
        if len(token) > 1 and token[0] == token[-1] and token[0] in _QUOTES:
            raise RowError(
                REJECT_BAD_QUERY,
                f"{field}={text[:80]!r}: bad token {token[:40]!r} is quoted; words "
                "are written without quotes",
            )
    return tokens


def unsafe_id_character(value: str) -> Optional[str]:
    """The first character of `value` that a one-id-per-line file cannot hold, else None."""
    match = _UNSAFE_ID_CHARS.search(value)
    return match.group(0) if match else None


def check_id(field: str, value: str) -> str:
    """`value` unchanged, or RowError(REJECT_UNSAFE_ID) naming the field and the character."""
    bad = unsafe_id_character(value)
    if bad is not None:
        raise RowError(
            REJECT_UNSAFE_ID,
            f"{field}={value[:80]!r} contains {bad!r} (U+{ord(bad):04X}), which "
            "the one-id-per-line vocabulary files cannot hold",
        )
    return value


def parse_timestamp(text: Optional[str]) -> int:
    """Integer milliseconds; floats like "1652371200000.0" are accepted, anything else rejected."""
    if text is None or not str(text).strip():
        raise RowError(REJECT_BAD_TIMESTAMP, "timestamp is empty")
    text = str(text).strip()
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise RowError(
                REJECT_BAD_TIMESTAMP, f"timestamp={text[:40]!r} is not a number"
            ) from None
        if number != number or number in (float("inf"), float("-inf")):
            raise RowError(REJECT_BAD_TIMESTAMP, f"timestamp={text[:40]!r} is not finite") from None
        value = int(number)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise RowError(REJECT_BAD_TIMESTAMP, f"timestamp={text[:40]!r} is outside int64")
    return value


def parse_click(text: Optional[str]) -> int:
    """Click count >= 0; an empty cell means 1 (a log of positive behaviours only)."""
    if text is None or not str(text).strip():
        return 1
    text = str(text).strip()
    try:
        value = int(float(text))
    except (ValueError, OverflowError):  # OverflowError: "inf", "1e400"
        raise RowError(REJECT_BAD_CLICK, f"click={text[:40]!r} is not a finite number") from None
    if value < 0:
        raise RowError(REJECT_BAD_CLICK, f"click={value} is negative")
    return value


def make_event(
    user_id: Optional[str],
    timestamp: Optional[str],
    scenario: Optional[str],
    item_id: Optional[str] = "",
    click: Optional[str] = None,
    search_session_id: Optional[str] = "",
    query_tokens: Optional[str] = None,
    source: str = "",
    line: int = 0,
) -> Event:
    """Validate one row's raw string cells into an Event, or raise RowError naming the field."""
    user_id = (user_id or "").strip()
    if not user_id:
        raise RowError(REJECT_MISSING_USER, "user_id is empty")
    check_id(USER_ID, user_id)
    ts = parse_timestamp(timestamp)
    scenario = (scenario or "").strip().lower()
    if scenario not in SCENARIOS:
        raise RowError(REJECT_BAD_SCENARIO, f"scenario={scenario!r}, expected rec or search")
    item_id = check_id(ITEM_ID, (item_id or "").strip())
    clicks = parse_click(click)
    # Checked on rec rows too, where it is unused: a line break there is a sign of a quoted
    # cell that swallowed the rows after it (common.ParseCsvFile re-reads them).
    session = check_id(SEARCH_SESSION_ID, (search_session_id or "").strip())
    tokens: Tuple[str, ...] = ()
    if scenario == SCENARIO_REC:
        if not item_id:
            raise RowError(REJECT_MISSING_ITEM, "a rec event needs an item_id")
    else:
        if not session:
            raise RowError(REJECT_MISSING_SESSION, "a search event needs a search_session_id")
        tokens = parse_token_list(query_tokens)
        if clicks > 0 and not item_id:
            raise RowError(REJECT_MISSING_ITEM, "a clicked search row needs an item_id")
    return Event(
        user_id=user_id,
        timestamp=ts,
        scenario=scenario,
        item_id=item_id,
        click=clicks,
        search_session_id=session,
        query_tokens=tokens,
        source=source,
        line=line,
    )
