"""Seeded synthetic UniSAR data with planted search <-> recommendation transitions.

The generator writes examples in exactly the format of `feature_specs` (NumPy int64 arrays
with a leading batch dimension), so model, training and evaluation code can be run and tested
without a real dataset, and a model that learns transitions can be told apart from one that
does not.

Generative story (all draws from one `np.random.Generator(seed)`):

- Items 1..num_items-1 and words 1..num_words-1 are cut into `num_topics` contiguous blocks;
  topic k owns item block k and word block k. Inside a block, popularity is Zipf-like
  (weight 1 / rank^zipf_exponent), so a few items and words per topic dominate.
- Each user (ids 1..num_users-1) has a topic mix that drifts slowly: a linear blend, over the
  user's stream, from one Dirichlet draw to another. The stream has 20-60 events (seeded);
  each event is a search session with probability `search_probability`, else a rec event.
- Transitions (the planted signal):
  * a search session's topic is, with probability `search_follows_rec_probability`, the
    topic of the user's latest rec event (r2s), else a draw from the mix;
  * after a search session on topic t, each rec event until the next search session is
    from topic t with probability `rec_follows_search_probability` (s2r), else from the mix.
- A rec event is one item of its topic. A search session is a query of 1-3 distinct words
  of its topic and 1..clicks_per_session distinct clicked items of its topic.

Examples: each user's stream becomes canonical events (`feature_specs.event_schema.Event`,
timestamp = position in the stream, user/item/word ids as decimal strings): a rec event is one
row with click 1, a search session one row per clicked item sharing a search_session_id and
the query's words. Every rec event and every search session (all have a click) is a target,
and its history is what the data job's example rules (`unisar_tf.data.example_rules`, with
ids mapped back to the same ints) give for the events before it: the user's last `rec_len`
rec events and last `search_len` search sessions strictly before it, in time order. Per
user and scenario, the last target is test, the one before it validation, and earlier ones
train (leave-one-out). A search target's positive is its first
clicked item. Negatives are uniform over items, distinct, and never an item the user ever
interacted with; training examples get `num_train_negatives`, evaluation examples
`num_eval_negatives`, so `candidate_items` is (n, 1 + num_negatives) with the positive first.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    ID_FORMAT_IDS,
    QUERY_TOKENS,
    REC_HISTORY_ITEMS,
    REL_NEGATIVE_ITEMS,
    REL_NEGATIVE_QUERY_TOKENS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    SEARCH_HISTORY_QUERY_TOKENS,
    TYPE_PAD,
    TYPE_REC,
    TYPE_SEARCH,
    USER_ID,
    SequenceShapes,
    model_feature_shapes,
)
from feature_specs.data_spec import Candidates, DataSpec, ExampleCounts, VocabSizes
from feature_specs.event_schema import SCENARIO_REC, SCENARIO_SEARCH, Event
from feature_specs.layout import (
    EXAMPLE_FILE_SUFFIX,
    MANIFEST_FILE,
    VOCAB_DIR,
    example_pattern,
    example_prefix,
    vocab_path,
)
from unisar_tf.config import DataFacts
from unisar_tf.data import example_rules as rules

__all__ = [
    "SyntheticData",
    "generate_synthetic_data",
    "random_feature_batch",
    "relevance_negatives",
    "write_data_dir",
]

Features = Dict[str, np.ndarray]

MAX_QUERY_WORDS = 3


@dataclasses.dataclass
class SyntheticData:
    """Feature dicts per split and scenario, plus the planted structure for tests.

    Every feature dict maps `feature_specs` names to int64 arrays of shape (n, ...) as given by
    `model_feature_shapes`; rec dicts have no `query_tokens`. `candidate_items` is
    (n, 1 + num_train_negatives) in train and (n, 1 + num_eval_negatives) in valid/test.
    """

    train_rec: Features
    train_search: Features
    valid_rec: Features
    valid_search: Features
    test_rec: Features
    test_search: Features
    num_topics: int
    item_topics: np.ndarray  # (num_items,) int64, topic of each item; -1 for padding item 0
    word_topics: np.ndarray  # (num_words,) int64, topic of each word; -1 for padding word 0
    train_queries: np.ndarray  # (num_unique_queries, query_len) int64, queries of train sessions

    def split(self, name: str) -> Tuple[Features, Features]:
        """(rec, search) feature dicts of split "train", "valid" or "test"."""
        if name not in ("train", "valid", "test"):
            raise ValueError(f"unknown split {name!r}; choose train, valid or test")
        return getattr(self, f"{name}_rec"), getattr(self, f"{name}_search")


# ----------------------------------------------------------------------------- sampling helpers


def _topic_blocks(vocab_size: int, num_topics: int) -> Tuple[np.ndarray, np.ndarray]:
    """Contiguous blocks of ids 1..vocab_size-1: (starts, sizes), each (num_topics,)."""
    sizes = np.full(num_topics, (vocab_size - 1) // num_topics, dtype=np.int64)
    sizes[: (vocab_size - 1) % num_topics] += 1
    starts = 1 + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return starts, sizes


def _id_topics(vocab_size: int, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(vocab_size,) topic of every id; -1 for padding id 0."""
    topics = np.full(vocab_size, -1, dtype=np.int64)
    for topic, (start, size) in enumerate(zip(starts, sizes)):
        topics[start : start + size] = topic
    return topics


def _sample_in_topics(
    rng: np.random.Generator,
    topics: np.ndarray,
    width: int,
    starts: np.ndarray,
    sizes: np.ndarray,
    zipf_exponent: float,
) -> np.ndarray:
    """Zipf-weighted ids from each row's topic block: topics (n,) -> ids (n, width)."""
    ids = np.zeros((topics.size, width), dtype=np.int64)
    for topic in range(starts.size):  # one vectorised draw per topic
        rows = np.flatnonzero(topics == topic)
        if rows.size == 0:
            continue
        weights = 1.0 / np.arange(1, sizes[topic] + 1) ** zipf_exponent
        ranks = rng.choice(sizes[topic], size=(rows.size, width), p=weights / weights.sum())
        ids[rows] = starts[topic] + ranks
    return ids


def _keep_first_distinct(ids: np.ndarray) -> np.ndarray:
    """Zero repeated non-zero ids in each row (keeping the first) and pack survivors left.

    (n, w) -> (n, w), row order preserved, zeros at the end.
    """
    # A stable sort puts the first occurrence of each value first among its equals.
    order = np.argsort(ids, axis=1, kind="stable")
    ordered = np.take_along_axis(ids, order, axis=1)
    repeated_sorted = np.zeros(ids.shape, dtype=bool)
    repeated_sorted[:, 1:] = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != 0)
    repeated = np.zeros(ids.shape, dtype=bool)
    np.put_along_axis(repeated, order, repeated_sorted, axis=1)
    ids = np.where(repeated, 0, ids)
    return np.take_along_axis(ids, np.argsort(ids == 0, axis=1, kind="stable"), axis=1)


def _first_n_distinct(rng: np.random.Generator, ids: np.ndarray, max_count: int) -> np.ndarray:
    """Keep 1..max_count (uniform) leading distinct ids per row; (n, w) -> (n, w) zero-padded."""
    counts = rng.integers(1, max_count + 1, size=ids.shape[0])
    ids = np.where(np.arange(ids.shape[1]) < counts[:, None], ids, 0)
    return _keep_first_distinct(ids)


def _sample_negatives(
    rng: np.random.Generator,
    user_index: np.ndarray,
    num_negatives: int,
    num_items: int,
    user_item_keys: np.ndarray,
) -> np.ndarray:
    """Distinct uniform items outside each row's user history: (n,) -> (n, num_negatives).

    `user_item_keys` is the sorted unique array of user_index * num_items + item over every
    interaction (the positives included), so membership is one searchsorted.
    """
    negatives = np.zeros((user_index.size, num_negatives), dtype=np.int64)
    pending = np.arange(user_index.size)
    draws = num_negatives + num_negatives // 4 + 16  # a little slack for repeats and rejects
    for _ in range(3):  # vectorised rejection sampling; rows short of negatives draw again
        if pending.size == 0:
            return negatives
        items = rng.integers(1, num_items, size=(pending.size, draws))
        keys = user_index[pending, None] * num_items + items
        position = np.minimum(np.searchsorted(user_item_keys, keys), user_item_keys.size - 1)
        allowed = user_item_keys[position] != keys
        items = _keep_first_distinct(np.where(allowed, items, 0))
        complete = items[:, num_negatives - 1] != 0
        negatives[pending[complete]] = items[complete, :num_negatives]
        pending = pending[~complete]
        draws *= 2
    # Rare (catalogue nearly exhausted by the user): sample exactly, one row at a time.
    all_items = np.arange(1, num_items)
    for row in pending:
        lower = np.searchsorted(user_item_keys, user_index[row] * num_items)
        upper = np.searchsorted(user_item_keys, (user_index[row] + 1) * num_items)
        allowed = np.setdiff1d(all_items, user_item_keys[lower:upper] % num_items)
        negatives[row] = rng.choice(allowed, size=num_negatives, replace=False)
    return negatives


# ----------------------------------------------------------------------------- event streams


@dataclasses.dataclass
class _Streams:
    """Per-user event streams, (U, T) with U = num_users - 1 and T = max_events."""

    is_rec: np.ndarray  # (U, T) bool
    is_search: np.ndarray  # (U, T) bool
    topics: np.ndarray  # (U, T) int64, -1 past the end of the stream
    rec_items: np.ndarray  # (U, T) int64, the item of rec events, else 0
    queries: np.ndarray  # (U, T, query_len) int64, search sessions only
    clicks: np.ndarray  # (U, T, clicks_per_session) int64, search sessions only


def _generate_streams(
    facts: DataFacts,
    rng: np.random.Generator,
    num_topics: int,
    min_events: int,
    max_events: int,
    search_probability: float,
    rec_follows_search_probability: float,
    search_follows_rec_probability: float,
    topic_concentration: float,
    zipf_exponent: float,
) -> Tuple[_Streams, Tuple[np.ndarray, ...]]:
    num_users = facts.num_users - 1
    steps = np.arange(max_events)
    lengths = rng.integers(min_events, max_events + 1, size=num_users)
    in_stream = steps < lengths[:, None]
    is_search = (rng.random((num_users, max_events)) < search_probability) & in_stream
    is_rec = in_stream & ~is_search

    # Slow drift: blend two Dirichlet mixes over each user's stream.
    mix_start = rng.dirichlet(np.full(num_topics, topic_concentration), size=num_users)
    mix_end = rng.dirichlet(np.full(num_topics, topic_concentration), size=num_users)
    progress = np.minimum(steps / np.maximum(lengths[:, None] - 1, 1), 1.0)  # (U, T)
    mix_draw = rng.random((num_users, max_events))
    follow_draw = rng.random((num_users, max_events))

    topics = np.full((num_users, max_events), -1, dtype=np.int64)
    last_rec_topic = np.full(num_users, -1, dtype=np.int64)
    last_search_topic = np.full(num_users, -1, dtype=np.int64)
    for step in steps:  # vectorised over users; the loop is over time only
        mix = (1 - progress[:, step, None]) * mix_start + progress[:, step, None] * mix_end
        mix_topic = np.minimum(
            (np.cumsum(mix, axis=1) < mix_draw[:, step, None]).sum(axis=1), num_topics - 1
        )
        search_topic = np.where(
            (last_rec_topic >= 0) & (follow_draw[:, step] < search_follows_rec_probability),
            last_rec_topic,
            mix_topic,
        )
        rec_topic = np.where(
            (last_search_topic >= 0) & (follow_draw[:, step] < rec_follows_search_probability),
            last_search_topic,
            mix_topic,
        )
        topic = np.where(is_search[:, step], search_topic, rec_topic)
        topics[:, step] = np.where(in_stream[:, step], topic, -1)
        last_rec_topic = np.where(is_rec[:, step], topic, last_rec_topic)
        last_search_topic = np.where(is_search[:, step], topic, last_search_topic)

    item_starts, item_sizes = _topic_blocks(facts.num_items, num_topics)
    word_starts, word_sizes = _topic_blocks(facts.num_words, num_topics)

    rec_items = np.zeros((num_users, max_events), dtype=np.int64)
    rec_items[is_rec] = _sample_in_topics(
        rng, topics[is_rec], 1, item_starts, item_sizes, zipf_exponent
    )[:, 0]

    search_topics = topics[is_search]
    num_words = min(MAX_QUERY_WORDS, facts.query_len)
    words = _sample_in_topics(rng, search_topics, num_words, word_starts, word_sizes, zipf_exponent)
    queries = np.zeros((num_users, max_events, facts.query_len), dtype=np.int64)
    queries[is_search, :num_words] = _first_n_distinct(rng, words, num_words)
    clicked = _sample_in_topics(
        rng, search_topics, facts.clicks_per_session, item_starts, item_sizes, zipf_exponent
    )
    clicks = np.zeros((num_users, max_events, facts.clicks_per_session), dtype=np.int64)
    clicks[is_search] = _first_n_distinct(rng, clicked, facts.clicks_per_session)

    streams = _Streams(
        is_rec=is_rec,
        is_search=is_search,
        topics=topics,
        rec_items=rec_items,
        queries=queries,
        clicks=clicks,
    )
    return streams, (item_starts, item_sizes, word_starts, word_sizes)


# ----------------------------------------------------------------------------- examples


SYNTHETIC_SOURCE = "synthetic"  # Event.source of every generated event


def _identity_ids(facts: DataFacts) -> rules.IdMaps:
    """IdMaps str(id) -> id, so the rules' int ids are the story's own."""
    return rules.IdMaps(
        items={str(k): k for k in range(1, facts.num_items)},
        words={str(k): k for k in range(1, facts.num_words)},
    )


def _user_events(
    user_id: str,
    is_rec: List[bool],
    is_search: List[bool],
    rec_items: List[int],
    queries: List[List[int]],
    clicks: List[List[int]],
) -> List[Event]:
    """One user's stream (lists over its steps) as canonical events, timestamp = step.

    A rec event is one row with click 1; a search session is one row per clicked item (click
    1, in click order) sharing a search_session_id and the query's words."""
    events: List[Event] = []
    append = events.append
    for step, rec in enumerate(is_rec):
        if rec:
            append(
                Event(
                    user_id,
                    step,
                    SCENARIO_REC,
                    str(rec_items[step]),
                    1,
                    "",
                    (),
                    SYNTHETIC_SOURCE,
                    len(events),
                )
            )
        elif is_search[step]:
            session = f"{user_id}-{step}"
            query = tuple([str(word) for word in queries[step] if word])
            for item in clicks[step]:
                if item:
                    append(
                        Event(
                            user_id,
                            step,
                            SCENARIO_SEARCH,
                            str(item),
                            1,
                            session,
                            query,
                            SYNTHETIC_SOURCE,
                            len(events),
                        )
                    )
    return events


def _left_packed(values: np.ndarray, counts: np.ndarray, width: int) -> np.ndarray:
    """Consecutive runs of `values` (run r has counts[r] entries) as rows (len(counts), width),
    each run at the start of its row and zeros after it."""
    rows = np.repeat(np.arange(counts.size), counts)
    columns = np.arange(values.size) - np.repeat(np.cumsum(counts) - counts, counts)
    packed = np.zeros((counts.size, width), np.int64)
    packed[rows, columns] = values
    return packed


class _Histories:
    """The history features of many targets, by the example rules, without a
    rules.history_features call per target.

    Per user (`add`), rules.history_features renders the whole stream once, every behaviour
    kept (one rendered row per behaviour), and rules.kept_history gives each target's window.
    `features` then gathers each target's kept rows in the layout history_features gives a
    window: kept rows first in time order, then padding. A history_features call per target
    cost 28 us per example, 2.2 s of CPU on the 2,000-user test set (shared 2-core machine);
    tests/data/test_synthetic.py checks both give the same features.
    """

    def __init__(self, shapes: SequenceShapes):
        self.shapes = shapes
        # Rendered rows of all users' behaviours, each table after a padding row 0.
        self.tables = {
            name: [np.zeros((1,) + shape[1:], np.int64)]
            for name, shape in model_feature_shapes(shapes, 1, with_query=False).items()
            if name not in (USER_ID, CANDIDATE_ITEMS)
        }
        self.num_rows = {REC_HISTORY_ITEMS: 1, SEARCH_HISTORY_QUERY_TOKENS: 1}
        self.row_of: List[int] = []  # behaviour (all users') -> its row in its kind's table
        # Per target: its user's first behaviour in row_of, and its windows (behaviour
        # indices inside the user), flattened, with their lengths.
        self.first: List[int] = []
        self.kept = {REC_HISTORY_ITEMS: [], SEARCH_HISTORY_QUERY_TOKENS: []}
        self.counts = {REC_HISTORY_ITEMS: [], SEARCH_HISTORY_QUERY_TOKENS: []}

    def add(self, behaviours: Sequence[rules.Behaviour], targets: Sequence[int]) -> None:
        """One user's behaviours (rules.behaviours) and targets (indices, ascending)."""
        shapes = self.shapes
        by_kind = {
            REC_HISTORY_ITEMS: [i for i, b in enumerate(behaviours) if b.kind == TYPE_REC],
            SEARCH_HISTORY_QUERY_TOKENS: [
                i for i, b in enumerate(behaviours) if b.kind == TYPE_SEARCH
            ],
        }
        whole = rules.history_features(
            behaviours,
            by_kind[REC_HISTORY_ITEMS],
            by_kind[SEARCH_HISTORY_QUERY_TOKENS],
            SequenceShapes(
                len(by_kind[REC_HISTORY_ITEMS]),
                len(by_kind[SEARCH_HISTORY_QUERY_TOKENS]),
                shapes.query_len,
                shapes.clicks_per_session,
            ),
        )
        for name, values in whole.items():
            self.tables[name].append(values)
        user_rows = [0] * len(behaviours)
        for table, indices in by_kind.items():
            for k, index in enumerate(indices):
                user_rows[index] = self.num_rows[table] + k
            self.num_rows[table] += len(indices)
        self.first += [len(self.row_of)] * len(targets)
        self.row_of += user_rows

        kept_rec, kept_search = self.kept.values()
        rec_counts, search_counts = self.counts.values()
        kept_history, rec_len, search_len = rules.kept_history, shapes.rec_len, shapes.search_len
        for index in targets:
            rec, search = kept_history(range(index), behaviours, rec_len, search_len)
            kept_rec += rec
            kept_search += search
            rec_counts.append(len(rec))
            search_counts.append(len(search))

    def features(self) -> Features:
        """HISTORY_TYPES, REC_HISTORY_ITEMS, SEARCH_HISTORY_* of every target, (n, ...)."""
        row_of, first = np.asarray(self.row_of, np.int64), np.asarray(self.first, np.int64)
        counts = {name: np.asarray(values, np.int64) for name, values in self.counts.items()}
        # Kept behaviours as indices into row_of, per target in time order.
        kept = {
            name: np.repeat(first, counts[name]) + np.asarray(values, np.int64)
            for name, values in self.kept.items()
        }
        widths = {
            REC_HISTORY_ITEMS: self.shapes.rec_len,
            SEARCH_HISTORY_QUERY_TOKENS: self.shapes.search_len,
        }
        rows = {name: _left_packed(row_of[kept[name]], counts[name], widths[name]) for name in kept}
        rows[SEARCH_HISTORY_CLICKED_ITEMS] = rows[SEARCH_HISTORY_QUERY_TOKENS]
        # HISTORY_TYPES: both windows merged in time order; the types table kept every
        # behaviour, so behaviour b's row is 1 + b.
        both = np.concatenate(list(kept.values()))
        owner = np.concatenate(
            [np.repeat(np.arange(first.size), count) for count in counts.values()]
        )
        merged = both[np.lexsort((both, owner))]
        rows[HISTORY_TYPES] = _left_packed(1 + merged, sum(counts.values()), self.shapes.mixed_len)
        return {name: np.concatenate(tables)[rows[name]] for name, tables in self.tables.items()}


def _from_end(kinds: Sequence[int]) -> List[int]:
    """Per target (in time order) how many later targets of its kind the user has."""
    later: Dict[int, int] = collections.Counter()
    result = [0] * len(kinds)
    for position in range(len(kinds) - 1, -1, -1):
        result[position] = later[kinds[position]]
        later[kinds[position]] += 1
    return result


def _build_examples(
    facts: DataFacts, streams: _Streams
) -> Dict[str, Tuple[Features, np.ndarray, np.ndarray, np.ndarray]]:
    """Every target of every user, per scenario in (user, time) order: {"rec" | "search":
    (features without candidates, user index (n,), positive (n,), from_end (n,): 0 for the
    user's last target of the scenario, 1 for the one before, ...)}.

    Every rec behaviour and every search session with a click is a target; its history is what
    the example rules (unisar_tf.data.example_rules) give for the user's canonical events
    before it, as in the data job: rules.behaviours, rules.kept_history of the target's prefix,
    rules.history_features (through _Histories).
    """
    ids = _identity_ids(facts)
    histories = _Histories(facts.sequence_shapes)
    users, positives, kinds, from_end, queries = [], [], [], [], []
    for user in range(streams.is_rec.shape[0]):
        events = _user_events(
            str(user + 1),
            streams.is_rec[user].tolist(),
            streams.is_search[user].tolist(),
            streams.rec_items[user].tolist(),
            streams.queries[user].tolist(),
            streams.clicks[user].tolist(),
        )
        behaviours = rules.behaviours(events, ids, facts.query_len, facts.clicks_per_session)
        targets = [i for i, b in enumerate(behaviours) if b.kind == TYPE_REC or b.clicks]
        histories.add(behaviours, targets)
        users += [user] * len(targets)
        positives += [behaviours[i].item for i in targets]
        user_kinds = [behaviours[i].kind for i in targets]
        kinds += user_kinds
        from_end += _from_end(user_kinds)
        queries += [
            rules.query_feature(behaviours[i].query, facts.query_len)
            for i in targets
            if behaviours[i].kind == TYPE_SEARCH
        ]

    features = histories.features()
    users = np.asarray(users, np.int64)
    features[USER_ID] = users + 1
    is_search = np.asarray(kinds, np.int64) == TYPE_SEARCH
    positives, from_end = np.asarray(positives, np.int64), np.asarray(from_end, np.int64)
    result = {}
    for scenario, rows in (("rec", ~is_search), ("search", is_search)):
        scenario_features = _take(features, rows)
        if scenario == "search":
            scenario_features[QUERY_TOKENS] = np.asarray(queries, np.int64).reshape(
                -1, facts.query_len
            )
        result[scenario] = (scenario_features, users[rows], positives[rows], from_end[rows])
    return result


def _take(features: Features, rows: np.ndarray) -> Features:
    return {name: values[rows] for name, values in features.items()}


# ----------------------------------------------------------------------------- public API


def generate_synthetic_data(
    facts: DataFacts,
    num_train_negatives: int = 4,
    num_eval_negatives: int = 99,
    num_topics: int = 10,
    seed: int = 0,
    min_events: int = 20,
    max_events: int = 60,
    search_probability: float = 0.4,
    rec_follows_search_probability: float = 0.8,
    search_follows_rec_probability: float = 0.7,
    topic_concentration: float = 0.5,
    zipf_exponent: float = 1.0,
) -> SyntheticData:
    """Seeded synthetic dataset sized by `facts` (see the module docstring for the story).

    Tables and shapes are the facts'; train examples get num_train_negatives negatives,
    valid and test ones num_eval_negatives. The same arguments and seed give identical
    arrays.
    """
    if not 1 <= num_topics <= min(facts.num_items, facts.num_words) - 1:
        raise ValueError(
            f"num_topics={num_topics} needs at least one item and one word per "
            f"topic (num_items={facts.num_items}, num_words={facts.num_words})"
        )
    if not 1 <= min_events <= max_events:
        raise ValueError(f"need 1 <= min_events <= max_events, got {min_events}, {max_events}")
    rng = np.random.default_rng(seed)
    streams, (item_starts, item_sizes, word_starts, word_sizes) = _generate_streams(
        facts,
        rng,
        num_topics,
        min_events,
        max_events,
        search_probability,
        rec_follows_search_probability,
        search_follows_rec_probability,
        topic_concentration,
        zipf_exponent,
    )

    # Every (user, item) interaction, for excluding negatives.
    user_ids = np.arange(facts.num_users - 1)
    user_items = np.concatenate(
        [
            (user_ids[:, None] * facts.num_items + streams.rec_items)[streams.is_rec],
            (user_ids[:, None, None] * facts.num_items + streams.clicks)[streams.clicks > 0],
        ]
    )
    user_item_keys = np.unique(user_items)
    most_items = np.bincount(user_item_keys // facts.num_items).max()
    num_negatives = max(num_train_negatives, num_eval_negatives)
    if facts.num_items - 1 - most_items < num_negatives:
        raise ValueError(
            f"num_items={facts.num_items} is too small: a user interacted with "
            f"{most_items} items, leaving fewer than {num_negatives} negatives; "
            f"raise num_items or lower max_events"
        )

    splits: Dict[str, Features] = {}
    examples = _build_examples(facts, streams)
    for scenario in ("rec", "search"):
        features, users, positives, from_end = examples[scenario]
        for split, rows in (
            ("train", from_end >= 2),
            ("valid", from_end == 1),
            ("test", from_end == 0),
        ):
            rows = np.flatnonzero(rows)
            num_negatives = num_train_negatives if split == "train" else num_eval_negatives
            negatives = _sample_negatives(
                rng, users[rows], num_negatives, facts.num_items, user_item_keys
            )
            split_features = _take(features, rows)
            split_features[CANDIDATE_ITEMS] = np.concatenate(
                [positives[rows, None], negatives], axis=1
            )
            splits[f"{split}_{scenario}"] = split_features

    train_queries = splits["train_search"][QUERY_TOKENS]
    if train_queries.shape[0]:
        train_queries = np.unique(train_queries, axis=0)
    return SyntheticData(
        **splits,
        num_topics=num_topics,
        item_topics=_id_topics(facts.num_items, item_starts, item_sizes),
        word_topics=_id_topics(facts.num_words, word_starts, word_sizes),
        train_queries=train_queries,
    )


def relevance_negatives(
    facts: DataFacts, rng: np.random.Generator, num: int, queries: np.ndarray
) -> Features:
    """Per-step negatives for the relevance loss (spec section 6), sampled with replacement.

    `queries` (num_queries, query_len) is the pool, e.g. `SyntheticData.train_queries`.
    Returns {"rel_negative_items": (num,), "rel_negative_query_tokens": (num, query_len)},
    int64; items are uniform over 1..num_items-1, queries uniform over the pool's rows.
    """
    queries = np.asarray(queries, dtype=np.int64)
    if queries.ndim != 2 or queries.shape[1] != facts.query_len or not queries.shape[0]:
        raise ValueError(
            f"queries must be a non-empty (n, {facts.query_len}) array, "
            f"got shape {queries.shape}"
        )
    return {
        REL_NEGATIVE_ITEMS: rng.integers(1, facts.num_items, size=num, dtype=np.int64),
        REL_NEGATIVE_QUERY_TOKENS: queries[rng.integers(0, queries.shape[0], size=num)],
    }


def random_feature_batch(
    facts: DataFacts,
    batch_size: int,
    num_candidates: int,
    with_query: bool,
    rng: np.random.Generator,
    empty_search_history: bool = False,
    empty_rec_history: bool = False,
) -> Features:
    """A random but valid batch of model features, for layer and model unit tests.

    Shapes are `model_feature_shapes(facts.sequence_shapes, num_candidates, with_query)`
    with a leading batch_size; all int64. Each row keeps 0..rec_len rec behaviours and
    0..search_len search sessions (0 for the `empty_*` switches), randomly interleaved
    in `history_types` with padding last. Queries have 1..query_len words; a session has
    0..clicks_per_session clicks (zero clicks is valid: spec section 1).
    """
    rec_len, search_len = facts.rec_len, facts.search_len
    query_len, clicks_len = facts.query_len, facts.clicks_per_session
    num_rec = (
        np.zeros(batch_size, dtype=np.int64)
        if empty_rec_history
        else rng.integers(0, rec_len + 1, size=batch_size)
    )
    num_search = (
        np.zeros(batch_size, dtype=np.int64)
        if empty_search_history
        else rng.integers(0, search_len + 1, size=batch_size)
    )

    rec_valid = np.arange(rec_len) < num_rec[:, None]
    search_valid = np.arange(search_len) < num_search[:, None]
    # Random interleaving: sort the kept slots by random keys, padding (key 2) last.
    types = np.concatenate(
        [np.where(rec_valid, TYPE_REC, TYPE_PAD), np.where(search_valid, TYPE_SEARCH, TYPE_PAD)],
        axis=1,
    )
    keys = np.where(types == TYPE_PAD, 2.0, rng.random(types.shape))
    history_types = np.take_along_axis(types, np.argsort(keys, axis=1, kind="stable"), axis=1)

    def _padded_ids(vocab_size, shape, counts):
        ids = rng.integers(1, vocab_size, size=shape)
        return np.where(np.arange(shape[-1]) < counts[..., None], ids, 0)

    query_words = rng.integers(1, query_len + 1, size=(batch_size, search_len))
    num_clicks = rng.integers(0, clicks_len + 1, size=(batch_size, search_len))
    features = {
        USER_ID: rng.integers(1, facts.num_users, size=batch_size),
        HISTORY_TYPES: history_types,
        REC_HISTORY_ITEMS: _padded_ids(facts.num_items, (batch_size, rec_len), num_rec),
        SEARCH_HISTORY_QUERY_TOKENS: _padded_ids(
            facts.num_words,
            (batch_size, search_len, query_len),
            np.where(search_valid, query_words, 0),
        ),
        SEARCH_HISTORY_CLICKED_ITEMS: _padded_ids(
            facts.num_items,
            (batch_size, search_len, clicks_len),
            np.where(search_valid, num_clicks, 0),
        ),
        CANDIDATE_ITEMS: rng.integers(1, facts.num_items, size=(batch_size, num_candidates)),
    }
    if with_query:
        features[QUERY_TOKENS] = _padded_ids(
            facts.num_words,
            (batch_size, query_len),
            rng.integers(1, query_len + 1, size=batch_size),
        )
    return {name: values.astype(np.int64) for name, values in features.items()}


# ------------------------------------------------------------------------ as the data job's output
SYNTHETIC_VOCAB_PREFIXES = {"users": "u", "items": "i", "words": "w"}


def _int64_example(features: Features, row: int) -> bytes:
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                name: tf.train.Feature(
                    int64_list=tf.train.Int64List(
                        value=np.asarray(values[row], np.int64).reshape(-1)
                    )
                )
                for name, values in features.items()
            }
        )
    ).SerializeToString()


def write_data_dir(data: SyntheticData, facts: DataFacts, out_dir: str, seed: int = 0) -> dict:
    """Writes `data` in the data job's id-format layout (feature_specs.layout), so the Trainer,
    the evaluation and the baselines read it exactly as they read the data job's output:

        manifest.json                      counts, vocabulary sizes, shapes, file patterns
        vocab/{users,items,words}.txt      "u1", "i1", "w1", ...: line k is id k + 1
        <split>/<scenario>-00000-of-00001.tfrecord.gz

    Returns the manifest. Tables of `facts` have vocabulary size + 1 rows (id 0 = padding);
    the candidate counts are those of `data`'s examples.
    """
    shapes = facts.sequence_shapes
    counts: Dict[str, Dict[str, int]] = {}
    files: Dict[str, str] = {}
    for split in ("train", "valid", "test"):
        counts[split] = {}
        for scenario, features in zip(("rec", "search"), data.split(split)):
            prefix = example_prefix(out_dir, split, scenario)
            tf.io.gfile.makedirs(os.path.dirname(prefix))
            path = f"{prefix}-00000-of-00001{EXAMPLE_FILE_SUFFIX}"
            rows = len(features[CANDIDATE_ITEMS])
            with tf.io.TFRecordWriter(path, options="GZIP") as writer:
                for row in range(rows):
                    writer.write(_int64_example(features, row))
            counts[split][scenario] = int(rows)
            files[f"{split}/{scenario}"] = os.path.relpath(
                example_pattern(out_dir, split, scenario), out_dir
            )
    sizes = {
        "users": facts.num_users - 1,
        "items": facts.num_items - 1,
        "words": facts.num_words - 1,
    }
    tf.io.gfile.makedirs(os.path.join(out_dir, VOCAB_DIR))
    for kind, size in sizes.items():
        with tf.io.gfile.GFile(vocab_path(out_dir, kind), "w") as out:
            out.write("".join(f"{SYNTHETIC_VOCAB_PREFIXES[kind]}{k}\n" for k in range(1, size + 1)))
    spec = DataSpec(
        dataset="synthetic",
        id_format=ID_FORMAT_IDS,
        build_options={"seed": seed, "num_topics": data.num_topics},
        vocab_sizes=VocabSizes(**sizes),
        shapes=shapes,
        candidates=Candidates(
            train=int(data.train_rec[CANDIDATE_ITEMS].shape[1]),
            eval=int(data.test_rec[CANDIDATE_ITEMS].shape[1]),
            train_negative_pool=0,
        ),
        examples=ExampleCounts(counts),
        files=files,
    )
    with tf.io.gfile.GFile(os.path.join(out_dir, MANIFEST_FILE), "w") as out:
        out.write(spec.to_json())
    return spec.to_manifest()
