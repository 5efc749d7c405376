"""Side features from the data job's `side_features/` output, as tables the model holds.

The KuaiSAR adapter writes one JSON line per item ({"id", "caption_word_ids", "categories":
[first, second]}) and per user ({"id", "features": {column: value}}), ids already dense. This
module turns them into per-id integer tables: categorical values get their own small
vocabularies (most frequent first from 1; 0 = missing/unknown), captions are padded/truncated
word ids. `DataFacts.from_spec(spec, side_features)` gives the facts that size the model's
side-feature embeddings.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from feature_specs.layout import side_feature_pattern


@dataclasses.dataclass
class SideFeatures:
    """item_categories (num_items, n_cat), item_captions (num_items, L), user_features
    (num_users, n_user): int32; row = dense id; 0 = unknown."""

    item_categories: np.ndarray
    item_captions: np.ndarray
    user_features: np.ndarray
    item_category_vocab_sizes: tuple
    user_feature_vocab_sizes: tuple
    user_feature_names: tuple


def _read_jsonl(pattern: str) -> List[dict]:
    rows = []
    for path in sorted(tf.io.gfile.glob(pattern)):
        with tf.io.gfile.GFile(path) as handle:
            rows.extend(json.loads(line) for line in handle if line.strip())
    return rows


def _encode_columns(values: Sequence[Sequence[str]], num_columns: int):
    """Rows of raw strings -> (int matrix, per-column table sizes incl. 0 = unknown)."""
    codes = np.zeros((len(values), num_columns), np.int32)
    sizes = []
    for column in range(num_columns):
        counts = collections.Counter(row[column] for row in values if row[column] != "")
        vocab = {
            raw: index + 1
            for index, (raw, _) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        }
        codes[:, column] = [vocab.get(row[column], 0) for row in values]
        sizes.append(len(vocab) + 1)
    return codes, tuple(max(size, 2) for size in sizes)


def load_side_features(
    data_dir: str,
    num_items: int,
    num_users: int,
    caption_length: int = 50,
    id_maps: Optional[Dict[str, np.ndarray]] = None,
) -> Optional[SideFeatures]:
    """Tables from `data_dir/side_features/`, or None when the dataset has none (Amazon).

    num_items / num_users: model table sizes (vocabulary + 1); ids outside them are an error.
    id_maps: {"items" | "users" | "words": (job vocabulary + 1,) int array}, data job id ->
    model id, when the model's ids come from another vocabulary (Transform's); rows whose
    id maps to 0 (not in that vocabulary) are left out, caption words mapping to 0 become 0.
    """
    items = _read_jsonl(side_feature_pattern(data_dir, "items"))
    users = _read_jsonl(side_feature_pattern(data_dir, "users"))
    if not items and not users:
        return None
    if id_maps is not None:
        items = [
            dict(
                row,
                id=int(id_maps["items"][row["id"]]),
                caption_word_ids=[
                    int(id_maps["words"][w]) for w in row.get("caption_word_ids", [])
                ],
            )
            for row in items
            if id_maps["items"][row["id"]] > 0
        ]
        users = [
            dict(row, id=int(id_maps["users"][row["id"]]))
            for row in users
            if id_maps["users"][row["id"]] > 0
        ]
    for kind, rows, limit in (("item", items, num_items), ("user", users, num_users)):
        bad = [row["id"] for row in rows if not 0 < row["id"] < limit]
        if bad:
            raise ValueError(
                f"{data_dir}: {kind} side features for ids {bad[:5]} outside " f"1..{limit - 1}"
            )

    num_categories = max((len(row.get("categories", [])) for row in items), default=0)
    category_rows = [
        [str(v) for v in row.get("categories", [])]
        + [""] * (num_categories - len(row.get("categories", [])))
        for row in items
    ]
    codes, category_sizes = _encode_columns(category_rows, num_categories)
    item_categories = np.zeros((num_items, num_categories), np.int32)
    item_captions = np.zeros((num_items, caption_length), np.int32)
    for row, code in zip(items, codes):
        item_categories[row["id"]] = code
        words = row.get("caption_word_ids", [])[:caption_length]
        item_captions[row["id"], : len(words)] = words
    # Only as many columns as the longest caption: Amazon's are a few words, and every
    # candidate's caption is gathered and averaged at scoring time.
    used = np.flatnonzero(np.any(item_captions != 0, axis=0))  # columns holding any word
    longest = int(used[-1]) + 1 if len(used) else 0
    item_captions = item_captions[:, :longest]

    names = sorted({name for row in users for name in row.get("features", {})})
    user_rows = [[str(row.get("features", {}).get(name, "")) for name in names] for row in users]
    user_codes, user_sizes = _encode_columns(user_rows, len(names))
    user_features = np.zeros((num_users, len(names)), np.int32)
    for row, code in zip(users, user_codes):
        user_features[row["id"]] = code
    return SideFeatures(
        item_categories,
        item_captions,
        user_features,
        category_sizes if num_categories else (),
        user_sizes if names else (),
        tuple(names),
    )
