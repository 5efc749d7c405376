"""Adapter for the KuaiSAR raw files (spec section 14), read by column name.

- rec_inter.csv: one row per recommended item; `click` > 0 makes it a rec behaviour.
- src_inter.csv: one row per item a search returned; the session's clicked items are its rows
  with click_cnt > 0 (the builder keeps the first `clicks_per_session`, 5 for KuaiSAR).
- user_features.csv / item_features.csv (optional): side features, written id-mapped next to
  the examples (users: active levels and one-hot features; items: caption words, which share
  the query-word vocabulary, and first/second-level category ids).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

import apache_beam as beam

from feature_specs import event_schema as es
from pipeline.adapters import common, registry

REC_COLUMNS = ("user_id", "item_id", "timestamp", "click")
SEARCH_COLUMNS = (
    "user_id",
    "search_session_id",
    "search_session_timestamp",
    "keyword",
    "item_id",
    "click_cnt",
)
USER_FEATURE_COLUMNS = (
    "user_id",
    "search_active_level",
    "rec_active_level",
    "onehot_feat1",
    "onehot_feat2",
)
ITEM_FEATURE_COLUMNS = ("item_id", "caption", "first_level_category_id", "second_level_category_id")


@dataclasses.dataclass(frozen=True)
class KuaiSARInputs:
    rec_inter: str
    src_inter: str
    user_features: Optional[str] = None
    item_features: Optional[str] = None
    max_rows_per_file: int = 0  # quick runs: only the first N data rows of each file (0 = all)

    @classmethod
    def from_dir(cls, root: str, max_rows_per_file: int = 0) -> "KuaiSARInputs":
        def optional(name):
            path = os.path.join(root, name)
            return path if common.expand_paths_or_none(path) else None

        return cls(
            rec_inter=os.path.join(root, "rec_inter.csv"),
            src_inter=os.path.join(root, "src_inter.csv"),
            user_features=optional("user_features.csv"),
            item_features=optional("item_features.csv"),
            max_rows_per_file=max_rows_per_file,
        )


def parse_rec_row(row, source, line):
    yield es.make_event(
        row["user_id"],
        row["timestamp"],
        es.SCENARIO_REC,
        item_id=row["item_id"],
        click=row["click"],
        source=source,
        line=line,
    )


def parse_search_row(row, source, line):
    yield es.make_event(
        row["user_id"],
        row["search_session_timestamp"],
        es.SCENARIO_SEARCH,
        item_id=row["item_id"],
        click=row["click_cnt"],
        search_session_id=row["search_session_id"],
        query_tokens=row["keyword"],
        source=source,
        line=line,
    )


def parse_user_features(row, source, line):
    user_id = row["user_id"].strip()
    if not user_id:
        raise es.RowError(es.REJECT_MISSING_USER, "user_id is empty")
    es.check_id("user_id", user_id)
    yield {
        "user_id": user_id,
        "features": {name: row[name].strip() for name in USER_FEATURE_COLUMNS[1:]},
    }


def parse_item_features(row, source, line):
    item_id = row["item_id"].strip()
    if not item_id:
        raise es.RowError(es.REJECT_MISSING_ITEM, "item_id is empty")
    es.check_id("item_id", item_id)
    yield {
        "item_id": item_id,
        "caption_tokens": list(es.parse_token_list(row["caption"], field="caption")),
        "categories": [
            row["first_level_category_id"].strip(),
            row["second_level_category_id"].strip(),
        ],
    }


_FILES = (
    ("rec_inter", REC_COLUMNS, parse_rec_row),
    ("src_inter", SEARCH_COLUMNS, parse_search_row),
    ("user_features", USER_FEATURE_COLUMNS, parse_user_features),
    ("item_features", ITEM_FEATURE_COLUMNS, parse_item_features),
)


def check_inputs(inputs: KuaiSARInputs) -> None:
    for field, columns, _ in _FILES:
        pattern = getattr(inputs, field)
        if pattern is None:
            continue
        for path in common.expand_paths([pattern]):
            common.check_columns(path, common.read_csv_header(path), columns)


def read(pipeline, inputs: KuaiSARInputs) -> common.AdapterOutput:
    check_inputs(inputs)
    outputs = {}
    rejected, stats = [], []
    for field, columns, parse in _FILES:
        pattern = getattr(inputs, field)
        if pattern is None:
            continue
        parsed = (
            pipeline
            | f"KuaiSAR_{field}_paths" >> beam.Create(common.expand_paths([pattern]))
            | f"KuaiSAR_{field}_parse"
            >> beam.ParDo(
                common.ParseCsvFile(columns, parse, inputs.max_rows_per_file)
            ).with_outputs(common.REJECTED, common.STATS, main="rows")
        )
        outputs[field] = parsed.rows
        rejected.append(parsed[common.REJECTED])
        stats.append(parsed[common.STATS])
    events = (outputs["rec_inter"], outputs["src_inter"]) | "KuaiSAR_events" >> beam.Flatten()
    return common.AdapterOutput(
        events=events,
        rejected=rejected,
        stats=stats,
        item_side=outputs.get("item_features"),
        user_side=outputs.get("user_features"),
    )


def _inputs(values: Mapping[str, Any]) -> KuaiSARInputs:
    if not values["input_dir"]:
        raise registry.MissingInputs("--dataset kuaisar needs --input_dir")
    return KuaiSARInputs.from_dir(values["input_dir"], values["max_rows_per_file"])


registry.register(
    registry.Adapter(
        name="kuaisar",
        read=read,
        inputs=_inputs,
        flags=(
            registry.InputFlag(
                "input_dir",
                help="kuaisar: folder with rec_inter.csv, src_inter.csv, "
                "and optionally user_features.csv, item_features.csv",
                from_data_root=True,
            ),
        ),
        defaults={"split": "time", "clicks_per_session": 5},  # spec sections 2 and 11
        locate=lambda data_root: {"input_dir": data_root},
    )
)
