"""Adapter for Amazon-style data: a sequences file plus an item-attributes JSON.

Input format (S3-Rec's preprocessing, e.g. ../shared/data/amazon_beauty):
- sequences: one line per user, `user_id item_1 item_2 ... item_n`, oldest first, no clocks;
- attributes: {"item_id": [attribute_id, ...]}, the item's brand and category levels.

There is no search log, so search is semi-synthetic (docs/data.md has the rule and numbers):
- Time: the position in the user's line (0, 1, 2, ...) is the timestamp.
- Which interactions are searches: interaction p of user u is a search session iff
  blake2b(seed, u, p) / 2^64 < search_fraction (default 0.5) and its item has a query;
  otherwise it is a rec behaviour. Deterministic, independent of worker and file order.
- The query: the item's "category-like" attributes, those carried by at least
  `query_min_item_frequency` items of the attribute file (default 100), in the file's order.
  Rare attributes (brands, fine categories) are left out, so the query names a broad category
  shared by many items, as product-search datasets do, instead of nearly identifying the item.
- The session's one click is the interacted item (Amazon: 1 click per session).

Item text: every item with a query also gets a side-feature row whose caption is that same
category-like attribute list, in the query-word vocabulary (as KuaiSAR's captions share it), so
a model, or the query-match baseline, can read an item's words. Configs with
`use_side_features=False` (the paper preset: spec 2 says Amazon is ids only) ignore it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from typing import Any, Dict, Mapping, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from feature_specs import event_schema as es
from pipeline.adapters import common, registry
from pipeline.sequence_builder import stable_hash

_TWO_64 = float(2**64)
LOG = logging.getLogger(__name__)
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_SHARED_DATA = os.path.join(os.path.dirname(_REPO_ROOT), "shared", "data")


@dataclasses.dataclass(frozen=True)
class AmazonInputs:
    sequences: str
    attributes: str
    search_fraction: float = 0.5
    query_min_item_frequency: int = 100
    seed: int = 0
    max_rows_per_file: int = 0  # quick runs: only the first N user lines (0 = all)

    def __post_init__(self):
        if not 0.0 <= self.search_fraction <= 1.0:
            raise ValueError(f"search_fraction={self.search_fraction}: expected within [0, 1]")
        if self.query_min_item_frequency < 1:
            raise ValueError("query_min_item_frequency must be >= 1")


def load_attributes(path: str) -> Dict[str, Tuple[str, ...]]:
    with FileSystems.open(path) as handle:
        try:
            raw = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object {{item_id: [attribute ids]}}")
    attributes = {}
    for item, values in raw.items():
        if not isinstance(values, list):
            raise ValueError(f"{path}: item {item!r} has {type(values).__name__}, expected a list")
        attributes[str(item)] = tuple(str(v) for v in values)
    return attributes


def category_queries(
    attributes: Dict[str, Tuple[str, ...]], min_item_frequency: int
) -> Dict[str, Tuple[str, ...]]:
    """item -> its attributes shared by >= min_item_frequency items (file order, no repeats)."""
    frequency = collections.Counter(a for values in attributes.values() for a in set(values))
    queries = {}
    for item, values in attributes.items():
        query = tuple(dict.fromkeys(a for a in values if frequency[a] >= min_item_frequency))
        if query:
            queries[item] = query
    return queries


def is_search_draw(seed: int, user_id: str, position: int, fraction: float) -> bool:
    return stable_hash(seed, "search", user_id, position) / _TWO_64 < fraction


class ParseSequencesFile(beam.DoFn):
    """sequences path -> events; RejectedRow and (stat, 1) on the side outputs."""

    def __init__(self, inputs: AmazonInputs):
        self._inputs = inputs
        self._queries = None

    def setup(self):
        attributes = load_attributes(self._inputs.attributes)
        self._queries = category_queries(attributes, self._inputs.query_min_item_frequency)

    def process(self, path: str):
        inputs = self._inputs
        with FileSystems.open(path) as handle:
            for line_number, raw in enumerate(handle, start=1):
                try:
                    text = common.decode_text_line(raw).strip()
                except es.RowError as error:  # not UTF-8, or a control character in an id
                    yield beam.pvalue.TaggedOutput(
                        common.REJECTED,
                        common.RejectedRow.of_bytes(
                            path, line_number, error.reason, error.detail, raw
                        ),
                    )
                    continue
                if not text:
                    continue
                if inputs.max_rows_per_file and line_number > inputs.max_rows_per_file:
                    yield beam.pvalue.TaggedOutput(common.STATS, (common.SKIPPED_BY_MAX_ROWS, 1))
                    continue
                fields = text.split()
                if len(fields) < 2:
                    yield beam.pvalue.TaggedOutput(
                        common.REJECTED,
                        common.RejectedRow(
                            path,
                            line_number,
                            es.REJECT_BAD_ROW,
                            "expected 'user_id item_1 ... item_n' with at least one item",
                            text[:2000],
                        ),
                    )
                    continue
                if line_number % 10_000 == 0:
                    LOG.info("read %d users of %s", line_number, path)
                user_id, items = fields[0], fields[1:]
                demoted = 0
                for position, item in enumerate(items):
                    query = self._queries.get(item)
                    search = is_search_draw(inputs.seed, user_id, position, inputs.search_fraction)
                    if search and query:
                        yield es.Event(
                            user_id,
                            position,
                            es.SCENARIO_SEARCH,
                            item,
                            1,
                            f"{user_id}:{position}",
                            query,
                            path,
                            line_number,
                        )
                    else:
                        demoted += search
                        yield es.Event(
                            user_id, position, es.SCENARIO_REC, item, 1, "", (), path, line_number
                        )
                if demoted:  # counted, so the manifest shows how often the rule fell back
                    yield beam.pvalue.TaggedOutput(
                        common.STATS, ("amazon_search_draws_kept_as_rec_no_query", demoted)
                    )


class ItemTextRows(beam.DoFn):
    """attributes path -> {"item_id", "caption_tokens"} per item with category-like attributes."""

    def __init__(self, inputs: AmazonInputs):
        self._inputs = inputs

    def process(self, path: str):
        queries = category_queries(load_attributes(path), self._inputs.query_min_item_frequency)
        for item, words in sorted(queries.items()):
            yield {"item_id": item, "caption_tokens": list(words)}


def check_inputs(inputs: AmazonInputs) -> None:
    common.expand_paths([inputs.sequences])
    common.expand_paths([inputs.attributes])


def read(pipeline, inputs: AmazonInputs) -> common.AdapterOutput:
    check_inputs(inputs)
    parsed = (
        pipeline
        | "AmazonSequencePaths" >> beam.Create(common.expand_paths([inputs.sequences]))
        | "ParseAmazonSequences"
        >> beam.ParDo(ParseSequencesFile(inputs)).with_outputs(
            common.REJECTED, common.STATS, main="events"
        )
    )
    item_text = (
        pipeline
        | "AmazonAttributesPath" >> beam.Create([inputs.attributes])
        | "AmazonItemText" >> beam.ParDo(ItemTextRows(inputs))
    )
    return common.AdapterOutput(
        events=parsed.events,
        rejected=[parsed[common.REJECTED]],
        stats=[parsed[common.STATS]],
        item_side=item_text,
    )


# --- registration (pipeline/adapters/registry.py) ---------------------------------------------

_SEARCH_GROUP = "amazon semi-synthetic search (docs/data.md)"
_FLAGS = (
    registry.InputFlag(
        "sequences", help="amazon: the 'user item item ...' sequences file", path=True
    ),
    registry.InputFlag("attributes", help="amazon: the item -> attribute ids JSON", path=True),
    registry.InputFlag("search_fraction", type=float, default=0.5, group=_SEARCH_GROUP),
    registry.InputFlag("query_min_item_frequency", type=int, default=100, group=_SEARCH_GROUP),
)
_DEFAULTS = {"split": "loo", "clicks_per_session": 1}  # spec sections 2 and 11


def _inputs(values: Mapping[str, Any], sequences: str, attributes: str) -> AmazonInputs:
    return AmazonInputs(
        sequences=sequences,
        attributes=attributes,
        search_fraction=values["search_fraction"],
        query_min_item_frequency=values["query_min_item_frequency"],
        seed=values["seed"],
        max_rows_per_file=values["max_rows_per_file"],
    )


def _beauty_inputs(values: Mapping[str, Any]) -> AmazonInputs:
    root = os.path.join(values["data_root"], "amazon_beauty")
    return _inputs(
        values,
        values["sequences"] or os.path.join(root, "Beauty.txt"),
        values["attributes"] or os.path.join(root, "Beauty_item2attributes.json"),
    )


def _amazon_inputs(values: Mapping[str, Any]) -> AmazonInputs:
    if not (values["sequences"] and values["attributes"]):
        raise registry.MissingInputs("--dataset amazon needs --sequences and --attributes")
    return _inputs(values, values["sequences"], values["attributes"])


registry.register(
    registry.Adapter(
        name="amazon_beauty",
        read=read,
        inputs=_beauty_inputs,
        flags=(
            registry.InputFlag(
                "data_root",
                help="folder holding amazon_beauty/ (for --dataset amazon_beauty)",
                default=DEFAULT_SHARED_DATA,
                from_data_root=True,
            ),
            *_FLAGS,
        ),
        defaults=_DEFAULTS,
        locate=lambda data_root: {"data_root": data_root},
    )
)
# sequences / attributes come as build options (paths relative to the component's data_root).
registry.register(
    registry.Adapter(
        name="amazon", read=read, inputs=_amazon_inputs, flags=_FLAGS, defaults=_DEFAULTS
    )
)
