"""Per-user construction of UniSAR examples (spec sections 3 and 11), free of Beam.

The Beam job groups canonical events by user and calls `build_user_examples` once per user;
tests call it directly on hand-built logs. Everything here is deterministic given the seed:
the random stream of a user depends only on (seed, user id), never on worker or bundle order.

For one user (steps 1-3 and the history features are unisar_tf/data/example_rules.py, shared
with the online path and the synthetic generator):
1. Behaviours. A rec behaviour is a rec event with click > 0 (rec rows with click 0 are
   impressions: counted, not used). A search behaviour is one search session: its query and up
   to `clicks_per_session` clicked items (rows with click > 0, in input order); a session
   without clicks is still a history behaviour, it just cannot be a target.
2. Order. Behaviours sort by (timestamp, rec before search, input order): spec 3's tie rule.
3. Targets. Every rec behaviour and every search session with a click; the positive of a search
   target is its first clicked item. History = behaviours strictly earlier in that order, the
   last `rec_len` rec and last `search_len` search ones, merged in time order.
4. Split. "loo": per scenario, the last eligible target is test, the one before validation.
   "time": the target's UTC day against the last day of the whole log (last day test, the day
   before validation). With `strict_holdout`, training histories skip every held-out behaviour.
5. Negatives. Never an item of the user's log (any row, any click) nor the positive; no
   duplicates; popularity-weighted (clicks) or uniform over the vocabulary. A user whose log
   leaves fewer items than an example needs raises NotEnoughNegatives before any example.
6. Id format. Examples carry the int ids ("ids") or, with id_format="raw", the raw strings of
   the same ids (b"" for padding 0; see feature_specs/example_schema.py). Everything above is
   computed on int ids in both formats; only the rendering differs.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from feature_specs import example_schema as fs
from feature_specs.event_schema import SCENARIO_REC, SCENARIO_SEARCH, Event
from unisar_tf.data import example_rules as rules
from unisar_tf.data.example_rules import Behaviour

SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST = "train", "valid", "test"
SPLITS = (SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST)
DAY_MS = 86_400_000


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """Every knob of the example construction; recorded verbatim in the manifest."""

    seed: int = 0
    split: str = "loo"  # "loo" (leave-one-out per user and scenario) or "time"
    strict_holdout: bool = False
    # Reference samples need >= 1 prior rec and >= 1 prior search behaviour (spec 11).
    min_rec_history: int = 1
    min_search_history: int = 1
    num_train_negatives: int = 4
    num_eval_negatives: int = 99
    negative_sampler: str = "popularity"  # or "uniform"
    rec_len: int = 30
    search_len: int = 30
    query_len: int = 50
    clicks_per_session: int = 5
    max_users: int = 0  # 0 = all users; otherwise a deterministic (seeded) subset
    # > 0: training examples also carry `negative_pool` (K distinct negatives, the first
    # num_train_negatives of which are the written candidates), so a trainer can draw fresh
    # negatives every epoch without knowing each user's items.
    train_negative_pool: int = 0
    # "ids": id features are int64 ids of the job's vocabularies; "raw": the raw strings
    # (bytes, b"" = padding) for TF Transform to map (feature_specs/example_schema.py).
    id_format: str = fs.ID_FORMAT_IDS

    def __post_init__(self):
        if self.split not in ("loo", "time"):
            raise ValueError(f"split={self.split!r}: expected 'loo' or 'time'")
        if self.negative_sampler not in ("popularity", "uniform"):
            raise ValueError(
                f"negative_sampler={self.negative_sampler!r}: " "expected 'popularity' or 'uniform'"
            )
        if self.id_format not in fs.ID_FORMATS:
            raise ValueError(
                f"id_format={self.id_format!r}: expected one of "
                f"{', '.join(map(repr, fs.ID_FORMATS))}"
            )
        for name in (
            "num_train_negatives",
            "num_eval_negatives",
            "rec_len",
            "search_len",
            "query_len",
            "clicks_per_session",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("min_rec_history", "min_search_history", "max_users", "train_negative_pool"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if 0 < self.train_negative_pool < self.num_train_negatives:
            raise ValueError(
                f"train_negative_pool={self.train_negative_pool} must be 0 or >= "
                f"num_train_negatives={self.num_train_negatives}"
            )

    @property
    def shapes(self) -> fs.SequenceShapes:
        return fs.SequenceShapes(
            rec_len=self.rec_len,
            search_len=self.search_len,
            query_len=self.query_len,
            clicks_per_session=self.clicks_per_session,
        )


def stable_hash(*parts: object) -> int:
    """A 64-bit hash that is the same in every process (Python's hash() is salted)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


@dataclasses.dataclass
class Vocabularies:
    """Raw id -> dense id (1..n; 0 is padding / unknown) plus item click counts.

    item_clicks[i] is the number of positive interactions (rec clicks and clicked search rows)
    of dense item i; item_clicks[0] = 0.
    """

    users: Dict[str, int]
    items: Dict[str, int]
    words: Dict[str, int]
    item_clicks: np.ndarray

    @property
    def num_items(self) -> int:
        """Size of the item table, padding included."""
        return len(self.items) + 1


def frequency_vocabulary(counts: Mapping[str, int]) -> Dict[str, int]:
    """Most frequent first, ties by raw id; ids start at 1 (0 = padding / out of vocabulary).

    Line k of the written vocabulary file is id k, which is what Keras' StringLookup (one OOV
    index at 0) and TF Transform's apply_vocabulary with the OOV bucket at 0 expect.
    """
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {raw: index + 1 for index, (raw, _) in enumerate(ordered)}


def id_strings(mapping: Mapping[str, int]) -> List[str]:
    """The inverse of a vocabulary: strings[id] = raw id, strings[0] = "" (padding).

    strings[1:] are the lines of the written vocabulary file, in order."""
    strings = [""] * (len(mapping) + 1)
    for raw, dense in mapping.items():
        strings[dense] = raw
    return strings


@dataclasses.dataclass(frozen=True)
class RawIdTables:
    """Per vocabulary, id -> the BytesList entry of its raw string (entry 0 = b"", padding).

    Built once per worker and vocabulary (build_raw_id_tables); the "raw" renderer joins
    entries, so a padded id row costs one lookup per value, as a varint does for "ids"."""

    users: List[bytes]
    items: List[bytes]
    words: List[bytes]


def build_raw_id_tables(vocab: Vocabularies) -> RawIdTables:
    from pipeline.tf_example import bytes_entry

    return RawIdTables(
        **{
            name: [bytes_entry(raw) for raw in id_strings(getattr(vocab, name))]
            for name in ("users", "items", "words")
        }
    )


class NotEnoughNegatives(ValueError):
    """A user's log leaves fewer unseen items than one of its examples needs as negatives.

    Raised by the builders before any example of the user is made; the Beam job skips the user
    (counted, dead-lettered with the id) and goes on."""

    def __init__(self, user_id: str, needed: int, available: int, num_items: int):
        super().__init__(
            f"user {user_id!r}: an example needs {needed} negatives, but only "
            f"{available} of the {num_items} items are not in the user's log"
        )
        self.user_id = user_id
        self.needed = needed
        self.available = available


class NegativeSampler:
    """Draws negatives that avoid a set of item ids; popularity-weighted or uniform."""

    def __init__(self, item_clicks: np.ndarray, kind: str = "popularity"):
        weights = np.asarray(item_clicks, np.float64).copy()
        if kind == "uniform":
            weights = np.ones_like(weights)
        elif kind != "popularity":
            raise ValueError(f"negative sampler {kind!r}: expected 'popularity' or 'uniform'")
        weights[0] = 0.0  # never padding
        if weights.sum() <= 0:
            raise ValueError("no item has a positive interaction: cannot sample negatives")
        self.kind = kind
        self.num_items = len(weights)
        self._weights = weights
        self._cdf = np.cumsum(weights)

    def sample(self, rng: np.random.Generator, count: int, exclude: np.ndarray) -> np.ndarray:
        """(count,) distinct item ids, none in `exclude` (an int array): the first `count`
        distinct allowed ids of the random draw sequence."""
        blocked = np.zeros(self.num_items, bool)
        blocked[0] = True
        blocked[exclude] = True
        chosen = np.zeros(0, np.int64)
        for _ in range(20):
            draws = np.searchsorted(
                self._cdf, rng.random(2 * count + 8) * self._cdf[-1], side="right"
            )
            draws = np.concatenate([chosen, draws[~blocked[draws]]])
            _, first = np.unique(draws, return_index=True)
            chosen = draws[np.sort(first)]
            if len(chosen) >= count:
                return chosen[:count].astype(np.int64)
        # The user's items hold nearly all the weight: finish with the remaining weighted items
        # (weighted, without replacement), and only past those with zero-weight ones.
        blocked[chosen] = True
        allowed = np.flatnonzero(~blocked)
        missing = count - len(chosen)
        if len(allowed) < missing:
            raise ValueError(
                f"cannot draw {count} negatives: only {len(allowed) + len(chosen)} "
                f"of {self.num_items - 1} items are not the user's"
            )
        weights = self._weights[allowed]
        weighted = allowed[weights > 0]
        take = min(missing, len(weighted))
        extra = (
            rng.choice(
                weighted,
                size=take,
                replace=False,
                p=weights[weights > 0] / weights[weights > 0].sum(),
            )
            if take
            else []
        )
        if take < missing:
            rest = allowed[weights == 0]
            extra = np.concatenate(
                [extra, rng.choice(rest, size=missing - take, replace=False)]
            ).astype(np.int64)
        return np.concatenate([chosen, extra]).astype(np.int64)


def _behaviours(
    events: Sequence[Event], vocab: Vocabularies, options: BuildOptions, stats: collections.Counter
) -> List[Behaviour]:
    return rules.behaviours(
        events,
        rules.IdMaps(vocab.items, vocab.words),
        options.query_len,
        options.clicks_per_session,
        stats,
    )


@dataclasses.dataclass
class _Plan:
    """One example before rendering: which behaviours fill its history, and its candidates."""

    split: str
    target: Behaviour
    kept_rec: List[int]
    kept_search: List[int]
    candidates: np.ndarray  # (1 + negatives,), positive first
    pool: Optional[np.ndarray] = None  # (train_negative_pool,) for training examples, if on


def _render_arrays(
    plan: _Plan, behaviours: Sequence[Behaviour], user: int, options: BuildOptions
) -> Dict[str, np.ndarray]:
    features = {
        fs.USER_ID: np.asarray(user, np.int64),
        **rules.history_features(behaviours, plan.kept_rec, plan.kept_search, options.shapes),
        fs.CANDIDATE_ITEMS: plan.candidates.astype(np.int64),
    }
    if plan.pool is not None:
        features[fs.NEGATIVE_POOL] = plan.pool.astype(np.int64)
    if plan.target.kind == fs.TYPE_SEARCH:
        features[fs.QUERY_TOKENS] = rules.query_feature(plan.target.query, options.query_len)
    return features


def _raw_arrays(
    features: Dict[str, np.ndarray], raw: Mapping[str, np.ndarray]
) -> Dict[str, np.ndarray]:
    """_render_arrays' int ids -> the "raw" format: id features as object arrays of bytes."""
    return {
        name: np.asarray(raw[fs.ID_FEATURE_VOCABULARIES[name]][values], dtype=object)
        if name in fs.ID_FEATURE_VOCABULARIES
        else values
        for name, values in features.items()
    }


class _ByteRenderer:
    """Renders plans straight to tf.Example bytes, reusing each behaviour's encoded row.

    Consecutive examples of a user share most of their history, so the encoded values of a
    behaviour (its item, its padded query row, its padded click row) are built once per user
    and joined; tests check the bytes equal tf_example.encode_example(build_user_examples
    arrays). An id is encoded as its varint ("ids") or as the BytesList entry of its raw
    string from RawIdTables ("raw"); padding is varint 0 or the empty string's entry.
    """

    def __init__(
        self,
        behaviours: Sequence[Behaviour],
        user: int,
        options: BuildOptions,
        raw_tables: Optional[RawIdTables] = None,
    ):
        from pipeline.tf_example import varint

        self._behaviours = behaviours
        self._options = options
        self._raw = options.id_format == fs.ID_FORMAT_RAW
        if self._raw:
            if raw_tables is None:
                raise ValueError("id_format='raw' needs the RawIdTables of the vocabularies")
            self._item, self._word = raw_tables.items.__getitem__, raw_tables.words.__getitem__
            self._user, self._pad = raw_tables.users[user], raw_tables.users[0]
        else:
            self._item = self._word = varint
            self._user, self._pad = varint(user), b"\x00"
        self._rows: Dict[Tuple[str, int], bytes] = {}  # (field, behaviour index) -> bytes

    def _padded(self, encode, values: Sequence[int], length: int) -> bytes:
        return b"".join(map(encode, values)) + self._pad * (length - len(values))

    def _row(self, field: str, index: int) -> bytes:
        """A behaviour's padded query ("query") or click ("clicks") row, encoded once."""
        row = self._rows.get((field, index))
        if row is None:
            if field == "query":
                encode, length = self._word, self._options.query_len
            else:
                encode, length = self._item, self._options.clicks_per_session
            row = self._rows[field, index] = self._padded(
                encode, getattr(self._behaviours[index], field), length
            )
        return row

    def render(self, plan: _Plan) -> bytes:
        from pipeline.tf_example import encode_mixed_example, encode_packed_example

        options, behaviours, pad = self._options, self._behaviours, self._pad
        missing_search = options.search_len - len(plan.kept_search)
        merged = sorted(plan.kept_rec + plan.kept_search)
        types = bytes(behaviours[i].kind for i in merged) + b"\x00" * (
            options.rec_len + options.search_len - len(merged)
        )
        ids = {
            fs.USER_ID: self._user,
            fs.REC_HISTORY_ITEMS: self._padded(
                self._item, [behaviours[i].item for i in plan.kept_rec], options.rec_len
            ),
            fs.SEARCH_HISTORY_QUERY_TOKENS: b"".join(
                self._row("query", i) for i in plan.kept_search
            )
            + pad * (missing_search * options.query_len),
            fs.SEARCH_HISTORY_CLICKED_ITEMS: b"".join(
                self._row("clicks", i) for i in plan.kept_search
            )
            + pad * (missing_search * options.clicks_per_session),
            fs.CANDIDATE_ITEMS: b"".join(map(self._item, plan.candidates.tolist())),
        }
        if plan.pool is not None:
            ids[fs.NEGATIVE_POOL] = b"".join(map(self._item, plan.pool.tolist()))
        if plan.target.kind == fs.TYPE_SEARCH:
            ids[fs.QUERY_TOKENS] = self._padded(self._word, plan.target.query, options.query_len)
        if self._raw:
            return encode_mixed_example({fs.HISTORY_TYPES: types}, ids)
        ids[fs.HISTORY_TYPES] = types
        return encode_packed_example(ids)


def _assign_splits(
    targets: Sequence[int],
    behaviours: Sequence[Behaviour],
    options: BuildOptions,
    last_day: Optional[int],
) -> Dict[int, str]:
    split_of: Dict[int, str] = {}
    if options.split == "time":
        if last_day is None:
            raise ValueError("split='time' needs the last day of the log")
        for index in targets:
            day = behaviours[index].timestamp // DAY_MS
            split_of[index] = (
                SPLIT_TEST
                if day >= last_day
                else SPLIT_VALID
                if day == last_day - 1
                else SPLIT_TRAIN
            )
        return split_of
    for scenario in (SCENARIO_REC, SCENARIO_SEARCH):
        mine = [i for i in targets if behaviours[i].scenario == scenario]
        for rank, index in enumerate(reversed(mine)):
            split_of[index] = SPLIT_TEST if rank == 0 else SPLIT_VALID if rank == 1 else SPLIT_TRAIN
    return split_of


def _plan_user(
    user_id: str,
    events: Sequence[Event],
    vocab: Vocabularies,
    sampler: NegativeSampler,
    options: BuildOptions,
    stats: collections.Counter,
    last_day: Optional[int],
) -> Tuple[List[Behaviour], List[_Plan]]:
    behaviours = _behaviours(events, vocab, options, stats)
    user_items = np.fromiter({vocab.items[e.item_id] for e in events if e.item_id}, np.int64)
    user_hash = stable_hash(user_id)
    rng = np.random.default_rng([options.seed, user_hash & 0xFFFFFFFF, user_hash >> 32])

    prior_rec = prior_search = 0
    eligible: List[int] = []
    for index, behaviour in enumerate(behaviours):
        if behaviour.kind == fs.TYPE_REC or behaviour.clicks:
            if prior_rec >= options.min_rec_history and prior_search >= options.min_search_history:
                eligible.append(index)
            else:
                stats[f"{behaviour.scenario}_targets_below_min_history"] += 1
        if behaviour.kind == fs.TYPE_REC:
            prior_rec += 1
        else:
            prior_search += 1

    split_of = _assign_splits(eligible, behaviours, options, last_day)
    held_out = {i for i, split in split_of.items() if split != SPLIT_TRAIN}
    # Negatives come from the items outside the user's log; check before drawing any.
    needed = max(
        [
            options.train_negative_pool or options.num_train_negatives
            if split == SPLIT_TRAIN
            else options.num_eval_negatives
            for split in split_of.values()
        ],
        default=0,
    )
    available = len(vocab.items) - len(user_items)
    if needed > available:
        raise NotEnoughNegatives(user_id, needed, available, len(vocab.items))
    plans = []
    for index in eligible:
        split = split_of[index]
        history = range(index)
        if options.strict_holdout and split == SPLIT_TRAIN and held_out:
            history = [i for i in history if i not in held_out]
        kept_rec, kept_search = rules.kept_history(
            history, behaviours, options.rec_len, options.search_len
        )
        count = options.num_train_negatives if split == SPLIT_TRAIN else options.num_eval_negatives
        target = behaviours[index]
        pool = None
        if split == SPLIT_TRAIN and options.train_negative_pool:
            pool = sampler.sample(rng, options.train_negative_pool, user_items)
            negatives = pool[:count]
        else:
            negatives = sampler.sample(rng, count, user_items)
        plans.append(
            _Plan(
                split,
                target,
                kept_rec,
                kept_search,
                np.concatenate([[target.item], negatives]).astype(np.int64),
                pool,
            )
        )
    return behaviours, plans


def build_user_examples(
    user_id: str,
    events: Iterable[Event],
    vocab: Vocabularies,
    sampler: NegativeSampler,
    options: BuildOptions,
    stats: collections.Counter,
    last_day: Optional[int] = None,
) -> Iterator[Tuple[str, str, Dict[str, np.ndarray]]]:
    """Yields (split, scenario, features) for every target of one user, in time order.

    features: {USER_ID: (), HISTORY_TYPES: (rec_len+search_len,), REC_HISTORY_ITEMS: (rec_len,),
    SEARCH_HISTORY_QUERY_TOKENS: (search_len, query_len), SEARCH_HISTORY_CLICKED_ITEMS:
    (search_len, clicks_per_session), CANDIDATE_ITEMS: (1 + negatives,) positive first, and
    for search QUERY_TOKENS: (query_len,)}, all int64; with id_format="raw" the id features
    (fs.ID_FEATURE_VOCABULARIES) are object arrays of the raw ids as UTF-8 bytes (b"" = 0).
    stats: counters added to (behaviours, filtered targets, ...), summed into the manifest.
    """
    behaviours, plans = _plan_user(user_id, list(events), vocab, sampler, options, stats, last_day)
    user = vocab.users[user_id]
    raw = None
    if options.id_format == fs.ID_FORMAT_RAW:
        raw = {
            name: np.array(
                [s.encode("utf-8") for s in id_strings(getattr(vocab, name))], dtype=object
            )
            for name in ("users", "items", "words")
        }
    for plan in plans:
        stats[f"examples/{plan.split}/{plan.target.scenario}"] += 1
        features = _render_arrays(plan, behaviours, user, options)
        yield (
            plan.split,
            plan.target.scenario,
            (features if raw is None else _raw_arrays(features, raw)),
        )


def build_user_tf_examples(
    user_id: str,
    events: Iterable[Event],
    vocab: Vocabularies,
    sampler: NegativeSampler,
    options: BuildOptions,
    stats: collections.Counter,
    last_day: Optional[int] = None,
    raw_tables: Optional[RawIdTables] = None,
) -> Iterator[Tuple[str, str, bytes]]:
    """build_user_examples, rendered as serialized tf.train.Example bytes (the job's path).

    raw_tables: build_raw_id_tables(vocab), for id_format="raw"; built here when not given
    (the job builds it once per worker instead)."""
    behaviours, plans = _plan_user(user_id, list(events), vocab, sampler, options, stats, last_day)
    if options.id_format == fs.ID_FORMAT_RAW and raw_tables is None:
        raw_tables = build_raw_id_tables(vocab)
    renderer = _ByteRenderer(behaviours, vocab.users[user_id], options, raw_tables)
    for plan in plans:
        stats[f"examples/{plan.split}/{plan.target.scenario}"] += 1
        yield plan.split, plan.target.scenario, renderer.render(plan)
