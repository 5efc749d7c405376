"""A tiny data job output for retrieval index tests (tests/data, tests/export)."""

import json
import os

import tensorflow as tf

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    TYPE_REC,
    TYPE_SEARCH,
)
from feature_specs.layout import MANIFEST_FILE, VOCAB_DIR

R, S = TYPE_REC, TYPE_SEARCH


def _int64(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))


def write_tiny_data(root, raw: bool, names=("a", "b", "c", "d")):
    """A data job output of three training examples (rec_len 2, search_len 1, one click):
    a -> b (rec), b after a -> c (rec), a -> b (search), with items `names` for a, b, c, d;
    in the ids format (vocab c, a, b, d: ids differ from the names' order) or raw strings."""
    a, b, c, d = names
    vocab = [c, a, b, d]
    rows = [  # (types, rec items, search clicks, positive, scenario)
        ([R, 0, 0], [a, ""], [""], b, "rec"),
        ([R, S, 0], [a, ""], [b], c, "rec"),
        ([S, 0, 0], ["", ""], [a], b, "search"),
    ]
    os.makedirs(root / VOCAB_DIR)
    (root / VOCAB_DIR / "items.txt").write_text("".join(f"{item}\n" for item in vocab))
    to_id = {item: vocab.index(item) + 1 for item in vocab}
    to_id[""] = 0
    for scenario in ("rec", "search"):
        os.makedirs(root / "train", exist_ok=True)
        path = str(root / "train" / f"{scenario}-00000-of-00001.tfrecord.gz")
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for types, rec, clicks, positive, row_scenario in rows:
                if row_scenario != scenario:
                    continue
                items = _bytes if raw else (lambda v: _int64(to_id[x] for x in v))
                example = tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            HISTORY_TYPES: _int64(types),
                            REC_HISTORY_ITEMS: items(rec),
                            SEARCH_HISTORY_CLICKED_ITEMS: items(clicks),
                            CANDIDATE_ITEMS: items([positive, d]),
                        }
                    )
                )
                writer.write(example.SerializeToString())
    manifest = {
        "id_format": "raw" if raw else "ids",
        "vocab_sizes": {"users": 1, "items": len(vocab), "words": 0},
        "shapes": {
            "rec_len": 2,
            "search_len": 1,
            "query_len": 1,
            "clicks_per_session": 1,
            "train_candidates": 2,
            "eval_candidates": 2,
        },
        "examples": {"train": {"rec": 2, "search": 1}},
    }
    (root / MANIFEST_FILE).write_text(json.dumps(manifest))
    return str(root)
