"""A ranking request's model inputs, built from the history store by the data job's own rules.

    assembler = OnlineFeatureAssembler(shapes, known_items)
    request = assembler.assemble("u7", store.events("u7"), candidates, query="lipstick red")
    request.features   # what the data job would have written for u7 now (raw string ids)
    request.inputs     # the `recommend` / `search` signature inputs for TF Serving

The history is built with unisar_tf/data/example_rules.py, the same functions the data job
runs for every training example, with every stored behaviour before "now" as the history:
order and tie rule, the last rec_len / search_len windows, query_len words, clicks_per_session
clicks. The query text is split by the data job's tokeniser. The parity test
(serving/parity.py) checks `features` against the data job's test examples for every user.

`inputs` carries the kept behaviours only, each with its slot in the mixed sequence as its
timestamp, so the model's in-graph mapping (unisar_tf/export/requests.py) reproduces
`history_types` exactly, ties included, whatever clocks the events had.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Container, Dict, FrozenSet, Optional, Sequence, Tuple

import numpy as np

from feature_specs import example_schema as fs
from feature_specs.event_schema import SCENARIO_REC, Event
from feature_specs.serving import (
    CANDIDATES_INPUT,
    ONLINE_DIR,
    ONLINE_ITEMS_FILE,
    ONLINE_METADATA_FILE,
    QUERY_INPUT,
    REC_ITEMS_INPUT,
    REC_LENGTH_INPUT,
    REC_TIMESTAMPS_INPUT,
    SEARCH_CLICKS_INPUT,
    SEARCH_LENGTH_INPUT,
    SEARCH_QUERIES_INPUT,
    SEARCH_TIMESTAMPS_INPUT,
    SIGNATURE_NAMES,
    USER_ID_INPUT,
)
from unisar_tf.data import example_rules as rules

TASK_REC, TASK_SEARCH = "rec", "search"


_SHAPE_NAMES = ("rec_len", "search_len", "query_len", "clicks_per_session")


def read_online_files(export_dir: str) -> Tuple[Tuple[str, ...], fs.SequenceShapes, FrozenSet[str]]:
    """(tasks, sequence shapes, item vocabulary) of an exported version, from its
    assets.extra/online/ files (unisar_tf.export.push writes them into every version).

    Raises FileNotFoundError / ValueError naming the file when they are missing or wrong."""
    online = os.path.join(export_dir, ONLINE_DIR)
    metadata_path = os.path.join(online, ONLINE_METADATA_FILE)
    items_path = os.path.join(online, ONLINE_ITEMS_FILE)
    for path in (metadata_path, items_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: the version was exported without the "
                "online files (unisar_tf.export.push writes them)"
            )
    try:
        with open(metadata_path) as handle:
            metadata = json.load(handle)
        tasks = tuple(metadata["tasks"])
        shapes = fs.SequenceShapes(**{name: int(metadata["shapes"][name]) for name in _SHAPE_NAMES})
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{metadata_path}: not the online metadata ({error!r}); expected "
            '{"tasks": [...], "shapes": {' + ", ".join(_SHAPE_NAMES) + "}}"
        ) from error
    unknown_tasks = set(tasks) - set(SIGNATURE_NAMES)
    if not tasks or unknown_tasks:
        raise ValueError(
            f"{metadata_path}: tasks {list(tasks)}; expected some of " f"{sorted(SIGNATURE_NAMES)}"
        )
    with open(items_path, encoding="utf-8") as handle:
        items = frozenset(line.rstrip("\n") for line in handle if line.rstrip("\n"))
    return tasks, shapes, items


class QueryTooLong(ValueError):
    """A query with more words than the service accepts (`max_query_words`)."""


@dataclasses.dataclass(frozen=True)
class AssembledRequest:
    """One user's request, ready to score.

    features: the data job's example features for this user now, raw string ids as UTF-8
        bytes (b"" = padding), no batch dimension: USER_ID (), HISTORY_TYPES
        (rec_len + search_len,), REC_HISTORY_ITEMS (rec_len,), SEARCH_HISTORY_QUERY_TOKENS
        (search_len, query_len), SEARCH_HISTORY_CLICKED_ITEMS (search_len,
        clicks_per_session), CANDIDATE_ITEMS (C,), and QUERY_TOKENS (query_len,) for search.
    inputs: the signature inputs (feature_specs.serving), batch of 1.
    """

    task: str
    features: Dict[str, np.ndarray]
    inputs: Dict[str, np.ndarray]
    history_length: int
    unknown_history_items: int


class OnlineFeatureAssembler:
    """Stored events + a request -> AssembledRequest, by the data job's rules.

    known_items: the model's item vocabulary. Rec behaviours on other items are left out
    before the window is cut (the model has no row for them; its signatures do the same),
    and counted in `unknown_history_items`. None keeps every behaviour.
    """

    def __init__(
        self,
        shapes: fs.SequenceShapes,
        known_items: Optional[Container[str]] = None,
        max_query_words: int = 0,
    ):
        self.shapes = shapes
        self.known_items = known_items
        # 0: a query may have any number of words (the model reads the first query_len).
        self.max_query_words = max_query_words

    def query_tokens(self, query: str) -> Tuple[str, ...]:
        """The request's query words (the data job's tokeniser); ValueError when it would
        reject them, QueryTooLong past max_query_words."""
        tokens = rules.tokenize_query(query)
        if self.max_query_words and len(tokens) > self.max_query_words:
            raise QueryTooLong(
                f"query has {len(tokens)} words; this service accepts at most "
                f"{self.max_query_words} (the model reads the first "
                f"{self.shapes.query_len})"
            )
        return tokens

    def assemble(
        self,
        user_id: str,
        events: Sequence[Event],
        candidates: Sequence[str],
        query: Optional[str] = None,
    ) -> AssembledRequest:
        """events: the user's stored events (any order); candidates: raw item ids (C >= 1);
        query: the search text, None for a recommendation request."""
        shapes = self.shapes
        if not candidates:
            raise ValueError("candidates must not be empty")
        query_words = self.query_tokens(query) if query is not None else None
        unknown = 0
        if self.known_items is not None:
            kept_events = []
            for event in events:
                if (
                    event.scenario == SCENARIO_REC
                    and event.click > 0
                    and event.item_id not in self.known_items
                ):
                    unknown += 1
                    continue
                kept_events.append(event)
            events = kept_events
        ids = rules.InternedIds()
        behaviours = rules.behaviours(events, ids, shapes.query_len, shapes.clicks_per_session)
        kept_rec, kept_search = rules.kept_history(
            range(len(behaviours)), behaviours, shapes.rec_len, shapes.search_len
        )
        history = rules.history_features(behaviours, kept_rec, kept_search, shapes)
        features = {fs.USER_ID: np.asarray(user_id.encode("utf-8"), dtype=object)}
        for name, values in history.items():
            kind = fs.ID_FEATURE_VOCABULARIES.get(name)
            features[name] = values if kind is None else ids.raw(kind, values)
        features[fs.CANDIDATE_ITEMS] = np.array(
            [str(c).encode("utf-8") for c in candidates], dtype=object
        )
        task = TASK_REC
        if query_words is not None:
            task = TASK_SEARCH
            query_ids = [ids.words[word] for word in query_words]
            features[fs.QUERY_TOKENS] = ids.raw(
                "words", rules.query_feature(query_ids, shapes.query_len)
            )
        inputs = self._signature_inputs(
            user_id,
            behaviours,
            kept_rec,
            kept_search,
            ids,
            features[fs.CANDIDATE_ITEMS],
            query_words,
        )
        return AssembledRequest(
            task,
            features,
            inputs,
            history_length=len(kept_rec) + len(kept_search),
            unknown_history_items=unknown,
        )

    def _signature_inputs(
        self, user_id, behaviours, kept_rec, kept_search, ids, candidates, query_words
    ) -> Dict[str, np.ndarray]:
        # The slot of each kept behaviour in the mixed sequence is its clock: the in-graph
        # merge (stable sort by time, rec first on ties) then gives back this exact order.
        slot = {index: position for position, index in enumerate(sorted([*kept_rec, *kept_search]))}
        items = ids.items.strings
        words = ids.words.strings
        width = max(len(kept_search), 1)
        clicks_width = max([len(behaviours[i].clicks) for i in kept_search] + [1])
        clicked = np.full((1, width, clicks_width), b"", dtype=object)
        for row, index in enumerate(kept_search):
            for column, item in enumerate(behaviours[index].clicks):
                clicked[0, row, column] = items[item].encode("utf-8")

        def padded(values, dtype, fill):
            array = np.full((1, max(len(values), 1)), fill, dtype=dtype)
            array[0, : len(values)] = values
            return array

        inputs = {
            USER_ID_INPUT: np.array([user_id.encode("utf-8")], dtype=object),
            CANDIDATES_INPUT: candidates[np.newaxis, :],
            REC_ITEMS_INPUT: padded(
                [items[behaviours[i].item].encode("utf-8") for i in kept_rec], object, b""
            ),
            REC_TIMESTAMPS_INPUT: padded([slot[i] for i in kept_rec], np.int64, 0),
            REC_LENGTH_INPUT: np.array([len(kept_rec)], np.int64),
            SEARCH_QUERIES_INPUT: padded(
                [
                    " ".join(words[w] for w in behaviours[i].query).encode("utf-8")
                    for i in kept_search
                ],
                object,
                b"",
            ),
            SEARCH_CLICKS_INPUT: clicked,
            SEARCH_TIMESTAMPS_INPUT: padded([slot[i] for i in kept_search], np.int64, 0),
            SEARCH_LENGTH_INPUT: np.array([len(kept_search)], np.int64),
        }
        if query_words is not None:
            inputs[QUERY_INPUT] = np.array([" ".join(query_words).encode("utf-8")], dtype=object)
        return inputs
