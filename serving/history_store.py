"""The online history store: each user's most recent behaviours, as canonical events.

    store = open_store("sqlite:///out/online/history.db")      # embedded, no server
    store = open_store("redis://127.0.0.1:6379/0")              # production
    store.append(Event("u1", 1700000000000, "rec", "item7"))    # online: source "online"
    store.append_many(events)                                   # bulk (serving/load_history)
    store.events("u1")                                          # sorted by Event.sort_key

What is kept per user (HistoryCaps), the most recent by Event.sort_key:
- `rec` rec behaviours (rec rows with click > 0),
- `search_sessions` search sessions, each with all its rows; a session's place in time is
  its first row's, as the data job orders behaviours (unisar_tf/data/example_rules.py),
- `impressions` rec impressions (rec rows with click 0; logged, not read by the model).
Older rows are deleted as newer ones arrive, so a user's storage stays bounded.

Every stored row is one "member" string, the same in both backends:

    <timestamp + 2^63 as 16 hex><0 rec | 1 search><source>\\0<line + 2^63 as 16 hex>\\0<JSON>

Byte order of members is Event.sort_key order (time, rec before search, source, line; the
JSON breaks the last ties), so both backends sort by plain byte comparison (SQLite's BINARY
collation, a Redis sorted set with all scores 0), and a member identifies its event exactly.

Guarantees, both backends:
- Idempotent bulk writes: storing a member twice is a no-op, so re-running a crashed bulk load
  stores nothing twice. The key is the whole event, not (user_id, source, line): an Amazon
  sequences line holds a user's whole history, one event per position, all with that line.
- Concurrent writers (threads or processes) for one user lose nothing and keep time order:
  each write (read the user's rows, plan the insert and trim with plan_merge, apply) is
  atomic: one BEGIN IMMEDIATE transaction in SQLite; in Redis a Lua script that applies the
  plan only if the user's version is unchanged (else re-read, re-plan). Order comes from the
  member, not from arrival.
- Caps are exact: the store holds what capped_events() gives for all events it was given,
  when a user's rows arrive in time order (online) or all in one append_many call (the bulk
  loader groups by user). Sessions are dated by their first row; the first rows of trimmed
  sessions are remembered (a bounded number), so a late click on a trimmed session is
  dropped with it instead of coming back as a new session.
- Online appends (`append` with source "") are numbered per user by an atomic counter
  (source "online", line 1, 2, ...), so two appends at the same millisecond stay distinct
  and keep their arrival order.
- A server that is down or a file that cannot be opened raises StoreUnavailable naming the
  URL; Redis calls have socket timeouts and SQLite a bounded lock wait, never a hang.

Events are stored as JSON (no pickle).
"""

from __future__ import annotations

import abc
import collections
import contextlib
import dataclasses
import json
import os
import sqlite3
import threading
import urllib.parse
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from feature_specs import event_schema as es
from feature_specs.event_schema import Event

ONLINE_SOURCE = "online"
SQLITE_SCHEME = "sqlite"
REDIS_SCHEMES = ("redis", "rediss")
DEFAULT_REDIS_PREFIX = "unisar:history"
BULK_TRANSACTION_EVENTS = 5000  # append_many: events per transaction (whole users)

# Row kinds, one table partition (SQLite) or sorted set (Redis) each.
KIND_REC, KIND_SEARCH, KIND_IMPRESSION = 0, 1, 2
_OFFSET = 2**63  # int64 -> unsigned, so fixed-width hex sorts like the signed integer


@dataclasses.dataclass(frozen=True)
class HistoryCaps:
    """Per user, how much is kept: the most recent by Event.sort_key."""

    rec: int = 60  # rec behaviours (click > 0)
    search_sessions: int = 60  # search sessions, all rows of each
    impressions: int = 100  # rec rows with click 0 (kept for logging, unused by the model)

    def __post_init__(self):
        for name in ("rec", "search_sessions", "impressions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"HistoryCaps.{name}={value!r}: expected an int >= 0")


class StoreUnavailable(RuntimeError):
    """The store cannot be reached or opened; the message names the URL."""


# --- encoding ---------------------------------------------------------------------------------


def check_event(event: Event) -> None:
    """ValueError naming the field when `event` cannot be stored (types, ids, scenario)."""
    if not isinstance(event, Event):
        raise ValueError(f"expected an Event, got {type(event).__name__}")
    for field in ("timestamp", "click", "line"):
        value = getattr(event, field)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not (-_OFFSET <= value < _OFFSET)
        ):
            raise ValueError(f"{field}={value!r}: expected an int64")
    if event.click < 0:
        raise ValueError(f"click={event.click}: expected >= 0")
    if event.scenario not in es.SCENARIOS:
        raise ValueError(f"scenario={event.scenario!r}: expected one of {es.SCENARIOS}")
    if not event.user_id:
        raise ValueError("user_id is empty")
    for field in ("user_id", "item_id", "search_session_id"):
        value = getattr(event, field)
        if not isinstance(value, str):
            raise ValueError(f"{field}={value!r}: expected str")
        es.check_id(field, value)
    if (
        not isinstance(event.source, str)
        or "\x00" in event.source
        or not _is_utf8_text(event.source)
    ):
        raise ValueError(f"source={event.source!r}: expected UTF-8 text without NUL")
    if isinstance(event.query_tokens, str) or not all(
        isinstance(token, str) for token in event.query_tokens
    ):
        raise ValueError(f"query_tokens={event.query_tokens!r}: expected a tuple of str")
    if event.scenario == es.SCENARIO_SEARCH and not event.search_session_id:
        raise ValueError("a search event needs a search_session_id")


def _is_utf8_text(text: str) -> bool:
    try:  # lone surrogates (a file name that was not UTF-8) cannot be stored as text
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def event_kind(event: Event) -> int:
    if event.scenario == es.SCENARIO_SEARCH:
        return KIND_SEARCH
    return KIND_REC if event.click > 0 else KIND_IMPRESSION


def encode_member(event: Event) -> str:
    """The event's stored string; byte order of members = (Event.sort_key, JSON) order."""
    body = json.dumps(
        [
            event.user_id,
            event.timestamp,
            event.scenario,
            event.item_id,
            event.click,
            event.search_session_id,
            list(event.query_tokens),
            event.source,
            event.line,
        ],
        ensure_ascii=True,
        separators=(",", ":"),
    )
    scenario_rank = 0 if event.scenario == es.SCENARIO_REC else 1
    # The source's NUL terminator sorts a source before every longer source it prefixes,
    # as str comparison does; JSON escapes NUL, so the body has none.
    return (
        f"{event.timestamp + _OFFSET:016x}{scenario_rank}{event.source}\x00"
        f"{event.line + _OFFSET:016x}\x00{body}"
    )


def decode_member(member: str) -> Event:
    (user_id, timestamp, scenario, item_id, click, session, tokens, source, line) = json.loads(
        member.rpartition("\x00")[2]
    )
    return Event(user_id, timestamp, scenario, item_id, click, session, tuple(tokens), source, line)


Row = Tuple[int, str, str]  # (kind, search_session_id, member) of one stored event


def session_starts(rows: Iterable[Row], starts: Mapping[str, str] = {}) -> Dict[str, str]:
    """search_session_id -> the member of its first row, from `rows` and the remembered
    `starts` of sessions whose first row is no longer stored."""
    first = dict(starts)
    for kind, session, member in rows:
        if kind == KIND_SEARCH and (session not in first or member < first[session]):
            first[session] = member
    return first


def kept_members(
    rows: Sequence[Row], caps: HistoryCaps, starts: Mapping[str, str] = {}
) -> Set[str]:
    """One user's rows -> the members the caps keep: the newest `caps.rec` rec behaviours
    and `caps.impressions` impressions, and every row of the newest `caps.search_sessions`
    sessions, a session dated by its first row (session_starts)."""
    by_kind: Dict[int, List[str]] = collections.defaultdict(list)
    for kind, _, member in rows:
        by_kind[kind].append(member)
    kept: Set[str] = set()
    for kind, cap in ((KIND_REC, caps.rec), (KIND_IMPRESSION, caps.impressions)):
        members = sorted(by_kind[kind])
        kept.update(members[max(0, len(members) - cap) :] if cap else ())
    first = session_starts(rows, starts)
    by_age = sorted(first, key=first.__getitem__)
    newest = set(
        by_age[max(0, len(by_age) - caps.search_sessions) :] if caps.search_sessions else ()
    )
    kept.update(
        member for kind, session, member in rows if kind == KIND_SEARCH and session in newest
    )
    return kept


@dataclasses.dataclass
class MergePlan:
    """What one write changes for one user (both backends apply it in one transaction)."""

    insert: List[Row]  # new rows the caps keep
    delete: List[Row]  # stored rows the caps no longer keep
    starts: Optional[Dict[str, str]]  # the user's new remembered session starts; None: same
    stored: int  # = len(insert)


def remembered_starts_limit(caps: HistoryCaps) -> int:
    """How many trimmed sessions' first rows a user keeps: a late row (a click) of one of
    them is then dropped with its session instead of coming back as a session of its own."""
    return 4 * caps.search_sessions + 16


def plan_merge(
    existing: Sequence[Row], starts: Mapping[str, str], new_rows: Iterable[Row], caps: HistoryCaps
) -> MergePlan:
    """Adds `new_rows` to a user's stored rows and remembered starts, trimmed to `caps`.

    Order-free for rec rows and impressions. Sessions are dated by their first row; the first
    rows of trimmed sessions are remembered (bounded), so rows arriving in time order (online)
    or all of a user's rows in one call (the bulk loader) give exactly capped_events()."""
    present = {member for _, _, member in existing}
    fresh: Dict[str, Row] = {}
    for row in new_rows:
        if row[2] not in present:
            fresh.setdefault(row[2], row)
    if not fresh:
        return MergePlan([], [], None, 0)
    rows = list(existing) + list(fresh.values())
    first = session_starts(rows, starts)
    kept = kept_members(rows, caps, first)
    # Remember the start of every session whose first row is not (or no longer) stored.
    gone = sorted(
        ((member, session) for session, member in first.items() if member not in kept), reverse=True
    )[: remembered_starts_limit(caps)]
    new_starts = {session: member for member, session in gone}
    insert = [row for member, row in fresh.items() if member in kept]
    return MergePlan(
        insert=insert,
        delete=[row for row in existing if row[2] not in kept],
        starts=None if new_starts == dict(starts) else new_starts,
        stored=len(insert),
    )


def capped_events(events: Iterable[Event], caps: HistoryCaps) -> List[Event]:
    """What a store with `caps` holds after storing `events` in one append_many call:
    sorted, capped. The reference the backends are tested against."""
    members = {encode_member(event): event for event in events}
    kept = kept_members([(event_kind(e), e.search_session_id, m) for m, e in members.items()], caps)
    return [members[m] for m in sorted(kept)]


# --- the interface ----------------------------------------------------------------------------


class HistoryStore(abc.ABC):
    """Users' recent events; see the module docstring for what is kept and guaranteed."""

    url: str
    caps: HistoryCaps

    def append(self, event: Event) -> Event:
        """Stores one event and returns it as stored. source "" -> source ONLINE_SOURCE and
        line = the user's next sequence number (1, 2, ...; atomic across writers)."""
        check_event(event)
        return self._append_one(event)

    def append_many(self, events: Iterable[Event]) -> int:
        """Stores events in bulk; returns how many rows were new and kept by the caps.

        Storing an event that is already there (or that the caps trim away) adds nothing, so
        a crashed bulk load can simply be run again. Each user's events are merged in one
        step, whatever their order in `events` (so they are all held in memory)."""
        by_user: Dict[str, List[Row]] = collections.defaultdict(list)
        for event in events:
            check_event(event)
            by_user[event.user_id].append(_row(event))
        stored, batch, size = 0, [], 0
        for user_id, rows in by_user.items():
            batch.append((user_id, rows))
            size += len(rows)
            if size >= BULK_TRANSACTION_EVENTS:
                stored += self._merge_users(batch)
                batch, size = [], 0
        if batch:
            stored += self._merge_users(batch)
        return stored

    @abc.abstractmethod
    def events(self, user_id: str) -> List[Event]:
        """The user's kept events sorted by Event.sort_key; [] for an unknown user."""

    @abc.abstractmethod
    def has_user(self, user_id: str) -> bool:
        """Whether any event of the user is stored."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raises StoreUnavailable when the store cannot be used."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def _append_one(self, event: Event) -> Event:
        """Numbers an online event (source "") and merges it, atomically."""

    @abc.abstractmethod
    def _merge_users(self, batch: Sequence[Tuple[str, List[Row]]]) -> int:
        """Merges each user's new rows (plan_merge), each user atomically; new rows kept."""

    def _capped(self, rows: Sequence[Row], starts: Mapping[str, str]) -> List[Event]:
        # Already trimmed when written; trimmed again in case the store was written with
        # larger caps than this one's.
        return [decode_member(m) for m in sorted(kept_members(rows, self.caps, starts))]

    def __enter__(self) -> "HistoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, {self.caps})"


def _row(event: Event) -> Row:
    return (event_kind(event), event.search_session_id, encode_member(event))


def _numbered(event: Event, line: int) -> Event:
    return dataclasses.replace(event, source=ONLINE_SOURCE, line=int(line))


# --- SQLite -----------------------------------------------------------------------------------

_SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        user_id TEXT NOT NULL,
        member TEXT NOT NULL,      -- encode_member(event): sort key + JSON
        kind INTEGER NOT NULL,     -- KIND_REC, KIND_SEARCH, KIND_IMPRESSION
        session TEXT NOT NULL,     -- search_session_id ("" for rec rows)
        PRIMARY KEY (user_id, member)
    ) WITHOUT ROWID""",
    # The first rows of trimmed search sessions (plan_merge), to date their late rows.
    """CREATE TABLE IF NOT EXISTS session_starts (
        user_id TEXT NOT NULL,
        session TEXT NOT NULL,
        member TEXT NOT NULL,
        PRIMARY KEY (user_id, session)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS online_sequences (
        user_id TEXT PRIMARY KEY,
        last_line INTEGER NOT NULL
    ) WITHOUT ROWID""",
)
SQLITE_LOCK_TIMEOUT_S = 30.0  # a writer waits this long for another's transaction, then fails


class SqliteHistoryStore(HistoryStore):
    """The embedded default: one SQLite file in WAL mode, shared by threads and processes.

    One connection per thread; every write is one BEGIN IMMEDIATE transaction (read the
    user's rows, plan, apply), so writers serialise on the file's lock and readers never wait
    (WAL)."""

    def __init__(self, path: str, caps: HistoryCaps = HistoryCaps(), url: str = ""):
        self.path = path
        self.caps = caps
        self.url = url or f"sqlite:///{path}"
        self._local = threading.local()
        self._connections: List[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        except OSError as error:
            raise StoreUnavailable(
                f"{self.url}: cannot create the folder for the database " f"({error})"
            ) from None
        with self._transaction() as connection:  # one writer creates the tables
            for statement in _SQLITE_SCHEMA:
                connection.execute(statement)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self._closed:
                raise StoreUnavailable(f"{self.url}: the store is closed")
            try:
                connection = sqlite3.connect(
                    self.path,
                    timeout=SQLITE_LOCK_TIMEOUT_S,
                    isolation_level=None,
                    check_same_thread=False,
                )
                connection.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: a committed write survives a process crash (not a power cut).
                connection.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as error:
                raise StoreUnavailable(f"{self.url}: cannot open {self.path!r} ({error})") from None
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); SQLite errors -> StoreUnavailable."""
        connection = self._connection()
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise StoreUnavailable(f"{self.url}: cannot write ({error})") from None
        try:
            yield connection
            connection.execute("COMMIT")
        except BaseException as error:
            with contextlib.suppress(sqlite3.Error):  # (nothing to roll back if BEGIN failed)
                connection.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error):
                raise StoreUnavailable(f"{self.url}: cannot write ({error})") from None
            raise

    def _read_rows(
        self, connection: sqlite3.Connection, user_id: str
    ) -> Tuple[List[Row], Dict[str, str]]:
        rows = connection.execute(
            "SELECT kind, session, member FROM events WHERE user_id = ?", (user_id,)
        ).fetchall()
        starts = dict(
            connection.execute(
                "SELECT session, member FROM session_starts WHERE user_id = ?", (user_id,)
            )
        )
        return [tuple(row) for row in rows], starts

    def _merge(self, connection: sqlite3.Connection, user_id: str, new_rows: List[Row]) -> int:
        if all(kind != KIND_SEARCH for kind, _, _ in new_rows):
            return self._merge_unplanned(connection, user_id, new_rows)
        existing, starts = self._read_rows(connection, user_id)
        plan = plan_merge(existing, starts, new_rows, self.caps)
        connection.executemany(
            "INSERT INTO events (user_id, member, kind, session) VALUES (?, ?, ?, ?)",
            [(user_id, member, kind, session) for kind, session, member in plan.insert],
        )
        connection.executemany(
            "DELETE FROM events WHERE user_id = ? AND member = ?",
            [(user_id, member) for _, _, member in plan.delete],
        )
        if plan.starts is not None:
            connection.execute("DELETE FROM session_starts WHERE user_id = ?", (user_id,))
            connection.executemany(
                "INSERT INTO session_starts (user_id, session, member) VALUES (?, ?, ?)",
                [(user_id, session, member) for session, member in plan.starts.items()],
            )
        return plan.stored

    def _merge_unplanned(
        self, connection: sqlite3.Connection, user_id: str, new_rows: List[Row]
    ) -> int:
        """Rec rows and impressions alone need no plan (keeping the newest N is order-free):
        insert, trim each kind in SQL, count the inserted rows that stayed."""
        inserted = []
        for kind, session, member in new_rows:
            if connection.execute(
                "INSERT OR IGNORE INTO events (user_id, member, kind, session) "
                "VALUES (?, ?, ?, ?)",
                (user_id, member, kind, session),
            ).rowcount:
                inserted.append(member)
        if not inserted:
            return 0
        for kind, cap in ((KIND_REC, self.caps.rec), (KIND_IMPRESSION, self.caps.impressions)):
            # The cap-th newest member of the kind; older ones go (none when fewer).
            connection.execute(
                "DELETE FROM events WHERE user_id = ?1 AND kind = ?2 AND (?3 = 0 OR member < ("
                "SELECT member FROM events WHERE user_id = ?1 AND kind = ?2 "
                "ORDER BY member DESC LIMIT 1 OFFSET ?3 - 1))",
                (user_id, kind, cap),
            )
        oldest_kept = {
            kind: connection.execute(
                "SELECT MIN(member) FROM events WHERE user_id = ? AND kind = ?", (user_id, kind)
            ).fetchone()[0]
            for kind in (KIND_REC, KIND_IMPRESSION)
        }
        kinds = {member: kind for kind, _, member in new_rows}
        return sum(
            oldest_kept[kinds[m]] is not None and m >= oldest_kept[kinds[m]] for m in inserted
        )

    def _append_one(self, event: Event) -> Event:
        with self._transaction() as connection:
            if event.source == "":
                (line,) = connection.execute(
                    "INSERT INTO online_sequences (user_id, last_line) VALUES (?, 1) "
                    "ON CONFLICT (user_id) DO UPDATE SET last_line = last_line + 1 "
                    "RETURNING last_line",
                    (event.user_id,),
                ).fetchone()
                event = _numbered(event, line)
            self._merge(connection, event.user_id, [_row(event)])
        return event

    def _merge_users(self, batch: Sequence[Tuple[str, List[Row]]]) -> int:
        with self._transaction() as connection:
            return sum(self._merge(connection, user_id, rows) for user_id, rows in batch)

    def events(self, user_id: str) -> List[Event]:
        connection = self._connection()
        try:
            connection.execute("BEGIN")  # one snapshot for both tables (WAL: no waiting)
            try:
                rows, starts = self._read_rows(connection, user_id)
            finally:
                connection.execute("COMMIT")
        except sqlite3.Error as error:
            raise StoreUnavailable(f"{self.url}: {error}") from None
        return self._capped(rows, starts)

    def has_user(self, user_id: str) -> bool:
        try:
            return (
                self._connection()
                .execute("SELECT 1 FROM events WHERE user_id = ? LIMIT 1", (user_id,))
                .fetchone()
                is not None
            )
        except sqlite3.Error as error:
            raise StoreUnavailable(f"{self.url}: {error}") from None

    def ping(self) -> None:
        try:
            self._connection().execute("SELECT 1 FROM events LIMIT 1").fetchall()
        except sqlite3.Error as error:
            raise StoreUnavailable(f"{self.url}: {error}") from None

    def close(self) -> None:
        self._closed = True
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self._local = threading.local()


# --- Redis ------------------------------------------------------------------------------------

# Applies a write: a MergePlan if the user's version is still the one the plan was made from
# (optimistic concurrency: on -1 the caller re-reads and re-plans), or, with version "*",
# rec rows and impressions alone, which need no plan (keeping the newest N is order-free).
# KEYS: rec, search, impressions (sorted sets, all scores 0: members sort by their bytes),
# session starts (hash), version. ARGV: version, rec cap, impression cap, then n + n (slot,
# member) to add, m + m (slot, member) to remove, k + k (session, member) replacing the starts
# (k = -1: unchanged). Returns how many added members are still there after the trim.
_REDIS_APPLY_SCRIPT = """
if ARGV[1] ~= '*' and (redis.call('GET', KEYS[5]) or '0') ~= ARGV[1] then return -1 end
redis.call('INCR', KEYS[5])
local caps = {tonumber(ARGV[2]), 0, tonumber(ARGV[3])}
local i = 4
local added = {}
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local slot = tonumber(ARGV[i])
  if redis.call('ZADD', KEYS[slot], 0, ARGV[i + 1]) == 1 then
    added[#added + 1] = {slot, ARGV[i + 1]}
  end
  i = i + 2
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('ZREM', KEYS[tonumber(ARGV[i])], ARGV[i + 1]); i = i + 2 end
local k = tonumber(ARGV[i]); i = i + 1
if k >= 0 then
  redis.call('DEL', KEYS[4])
  for _ = 1, k do redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1]); i = i + 2 end
end
for _, slot in ipairs({1, 3}) do
  local size = redis.call('ZCARD', KEYS[slot])
  if size > caps[slot] then redis.call('ZREMRANGEBYRANK', KEYS[slot], 0, size - caps[slot] - 1) end
end
local stored = 0
for _, entry in ipairs(added) do
  if redis.call('ZSCORE', KEYS[entry[1]], entry[2]) then stored = stored + 1 end
end
return stored
"""
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 2.0
REDIS_MAX_ATTEMPTS = 1000  # optimistic retries of one write under contention
_SLOTS = {KIND_REC: 1, KIND_SEARCH: 2, KIND_IMPRESSION: 3}  # KEYS index in the script


class RedisHistoryStore(HistoryStore):
    """Redis: per user three sorted sets (rec, search, impressions), a hash of trimmed
    sessions' starts, a write version and an INCR counter for online sequence numbers.

    Keys `<prefix>:{<user_id>}:rec|search|imp|starts|ver|seq` (the braces keep a user's keys
    in one cluster slot). A write reads the user's keys (one round trip for a whole batch of
    users), plans in Python (plan_merge, as SQLite does) and applies the plan with a Lua
    script that first checks the version: a concurrent writer makes it re-read and re-plan,
    so nothing is lost. ZADD of a stored member is a no-op: bulk loads are idempotent."""

    def __init__(self, url: str, caps: HistoryCaps = HistoryCaps()):
        import redis

        self.url = url
        self.caps = caps
        parsed = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parsed.query)
        self.prefix = query.pop("prefix", [DEFAULT_REDIS_PREFIX])[0]
        client_url = urllib.parse.urlunsplit(
            parsed._replace(query=urllib.parse.urlencode(query, doseq=True))
        )
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        # Options in the URL (e.g. ?socket_timeout=0.5) override these defaults.
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self._client = redis.Redis.from_url(
            client_url,
            decode_responses=True,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            # One quick retry (a dropped idle connection), not redis-py's default of three
            # with backoff: a request waiting on a dead store should fail fast.
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
        )
        self._apply = self._client.register_script(_REDIS_APPLY_SCRIPT)
        self.ping()

    def _keys(self, user_id: str) -> List[str]:
        base = f"{self.prefix}:{{{user_id}}}"
        return [f"{base}:rec", f"{base}:search", f"{base}:imp", f"{base}:starts", f"{base}:ver"]

    def _unavailable(self, error: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"{self.url}: Redis unavailable ({error})")

    def _queue_read(self, pipe, user_id: str) -> None:
        rec, search, impressions, starts, version = self._keys(user_id)
        for key in (rec, search, impressions):
            pipe.zrange(key, 0, -1)
        pipe.hgetall(starts)
        pipe.get(version)

    @staticmethod
    def _parse_read(values) -> Tuple[List[Row], Dict[str, str], str]:
        # A search member's session is in its JSON; rec rows need none.
        rec, search, impressions, starts, version = values
        rows = (
            [(KIND_REC, "", m) for m in rec]
            + [(KIND_IMPRESSION, "", m) for m in impressions]
            + [(KIND_SEARCH, decode_member(m).search_session_id, m) for m in search]
        )
        return rows, starts, version or "0"

    def _apply_args(
        self,
        version: str,
        insert: Sequence[Row],
        delete: Sequence[Row] = (),
        starts: Optional[Dict[str, str]] = None,
    ) -> List:
        args: List = [version, self.caps.rec, self.caps.impressions, len(insert)]
        for kind, _, member in insert:
            args += [_SLOTS[kind], member]
        args.append(len(delete))
        for kind, _, member in delete:
            args += [_SLOTS[kind], member]
        if starts is None:
            args.append(-1)
        else:
            args.append(len(starts))
            for session, member in starts.items():
                args += [session, member]
        return args

    def _merge_users(self, batch: Sequence[Tuple[str, List[Row]]]) -> int:
        try:
            # Rec rows and impressions alone: straight to the script, no read, no conflict.
            direct = [
                (user_id, rows)
                for user_id, rows in batch
                if all(kind != KIND_SEARCH for kind, _, _ in rows)
            ]
            stored = 0
            if direct:
                writes = self._client.pipeline(transaction=False)
                for user_id, rows in direct:
                    self._apply(
                        keys=self._keys(user_id), args=self._apply_args("*", rows), client=writes
                    )
                stored += sum(int(count) for count in writes.execute())
            pending = [
                (user_id, rows)
                for user_id, rows in batch
                if any(kind == KIND_SEARCH for kind, _, _ in rows)
            ]
            for _ in range(REDIS_MAX_ATTEMPTS):
                if not pending:
                    return stored
                pending, planned = self._merge_planned(pending)
                stored += planned
        except self._errors as error:
            raise self._unavailable(error) from None
        raise StoreUnavailable(
            f"{self.url}: gave up writing {len(pending)} user(s) after "
            f"{REDIS_MAX_ATTEMPTS} conflicting attempts"
        )

    def _merge_planned(
        self, pending: Sequence[Tuple[str, List[Row]]]
    ) -> Tuple[List[Tuple[str, List[Row]]], int]:
        """Reads the users (one round trip), plans, applies if unchanged (another); returns
        the users another writer changed meanwhile, to try again, and the rows stored."""
        reads = self._client.pipeline(transaction=False)
        for user_id, _ in pending:
            self._queue_read(reads, user_id)
        values = reads.execute()
        writes = self._client.pipeline(transaction=False)
        for index, (user_id, new_rows) in enumerate(pending):
            existing, starts, version = self._parse_read(values[5 * index : 5 * index + 5])
            plan = plan_merge(existing, starts, new_rows, self.caps)
            self._apply(
                keys=self._keys(user_id),
                client=writes,
                args=self._apply_args(version, plan.insert, plan.delete, plan.starts),
            )
        retry, stored = [], 0
        for entry, outcome in zip(pending, writes.execute()):
            if int(outcome) == -1:
                retry.append(entry)
            else:
                stored += int(outcome)
        return retry, stored

    def _append_one(self, event: Event) -> Event:
        if event.source == "":
            try:
                line = self._client.incr(f"{self.prefix}:{{{event.user_id}}}:seq")
            except self._errors as error:
                raise self._unavailable(error) from None
            event = _numbered(event, line)
        self._merge_users([(event.user_id, [_row(event)])])
        return event

    def events(self, user_id: str) -> List[Event]:
        try:
            pipe = self._client.pipeline(transaction=True)  # one snapshot of the user's keys
            self._queue_read(pipe, user_id)
            rec, search, impressions, starts, _ = pipe.execute()
        except self._errors as error:
            raise self._unavailable(error) from None
        decoded = {member: decode_member(member) for member in (*rec, *search, *impressions)}
        rows = (
            [(KIND_REC, "", m) for m in rec]
            + [(KIND_IMPRESSION, "", m) for m in impressions]
            + [(KIND_SEARCH, decoded[m].search_session_id, m) for m in search]
        )
        # Trimmed when written; again in case it was written with larger caps than these.
        return [decoded[m] for m in sorted(kept_members(rows, self.caps, starts))]

    def has_user(self, user_id: str) -> bool:
        try:
            return self._client.exists(*self._keys(user_id)[:3]) > 0
        except self._errors as error:
            raise self._unavailable(error) from None

    def ping(self) -> None:
        try:
            self._client.ping()
        except self._errors as error:
            raise self._unavailable(error) from None

    def close(self) -> None:
        self._client.close()


# --- opening ----------------------------------------------------------------------------------


def sqlite_path(url: str) -> str:
    """ "sqlite:///rel/path.db" -> "rel/path.db", "sqlite:////abs/path.db" -> "/abs/path.db"
    (SQLAlchemy's convention); a plain path is taken as it is."""
    if "://" not in url:
        return url
    prefix = f"{SQLITE_SCHEME}:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(
            f"{url!r}: expected sqlite:///relative/path.db or " "sqlite:////absolute/path.db"
        )
    return url[len(prefix) :]


def open_store(url: str, caps: HistoryCaps = HistoryCaps()) -> HistoryStore:
    """A store for `url`: "sqlite:///path.db" (embedded; a plain path works too) or
    "redis://host:port/db" (optionally "?prefix=..." for the key prefix, default
    "unisar:history"). StoreUnavailable naming the URL when it cannot be opened."""
    scheme = urllib.parse.urlsplit(url).scheme if "://" in url else SQLITE_SCHEME
    if scheme == SQLITE_SCHEME:
        return SqliteHistoryStore(sqlite_path(url), caps, url)
    if scheme in REDIS_SCHEMES:
        return RedisHistoryStore(url, caps)
    raise ValueError(
        f"{url!r}: unknown history store; expected sqlite:///path.db or " "redis://host:port/db"
    )
