"""On-disk layout of the data job's output: every file name a writer and a reader share.

    <data_dir>/manifest.json                         MANIFEST_FILE: counts, shapes, files
    <data_dir>/vocab/{users,items,words}.txt         VOCAB_DIR, VOCAB_FILES (line k = id k+1)
    <data_dir>/vocab/item_clicks.tsv                 ITEM_CLICKS_FILE
    <data_dir>/side_features/{items,users}-*.jsonl   SIDE_FEATURES_DIR
    <data_dir>/<split>/<scenario>-*.tfrecord.gz      example_pattern(..., LAYOUT_JOB)
    <uri>/Split-<split>_<scenario>/data-*.tfrecord.gz  example_pattern(..., LAYOUT_TFX)

The Beam job (pipeline/beam_job.py) writes these; the reader (unisar_tf.data), the export,
the baselines and the tools read them through these names only.
"""

from __future__ import annotations

import os

MANIFEST_FILE = "manifest.json"
VOCAB_DIR = "vocab"
# Vocabulary kind -> file under VOCAB_DIR; line k holds the string of id k + 1 (0 = padding).
VOCAB_FILES = {"users": "users.txt", "items": "items.txt", "words": "words.txt"}
ITEM_CLICKS_FILE = "item_clicks.tsv"
SIDE_FEATURES_DIR = "side_features"
EXAMPLE_FILE_SUFFIX = ".tfrecord.gz"

# Where the examples of one split and scenario go: "job" = <split>/<scenario>-*.tfrecord.gz
# (the data job's default), "tfx" = Split-<split>_<scenario>/data-*.tfrecord.gz, the layout of
# a TFX Examples artifact whose split names are tfx_split_name(split, scenario).
LAYOUT_JOB = "job"
LAYOUT_TFX = "tfx"
LAYOUTS = (LAYOUT_JOB, LAYOUT_TFX)


def tfx_split_name(split: str, scenario: str) -> str:
    """("train", "rec") -> "train_rec": one TFX split per split and scenario."""
    return f"{split}_{scenario}"


def example_prefix(output_dir: str, split: str, scenario: str, layout: str = LAYOUT_JOB) -> str:
    """Path prefix of the example shards (WriteToTFRecord adds -SSSSS-of-NNNNN + suffix)."""
    if layout == LAYOUT_TFX:
        return os.path.join(output_dir, f"Split-{tfx_split_name(split, scenario)}", "data")
    if layout != LAYOUT_JOB:
        raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
    return os.path.join(output_dir, split, scenario)


def example_pattern(output_dir: str, split: str, scenario: str, layout: str = LAYOUT_JOB) -> str:
    """The glob of one split and scenario's example shards."""
    return f"{example_prefix(output_dir, split, scenario, layout)}-*{EXAMPLE_FILE_SUFFIX}"


def vocab_path(data_dir: str, kind: str) -> str:
    """<data_dir>/vocab/<kind>.txt, kind in VOCAB_FILES."""
    return os.path.join(data_dir, VOCAB_DIR, VOCAB_FILES[kind])


def side_feature_pattern(data_dir: str, kind: str = "*") -> str:
    """The glob of the side-feature files of `kind` ("items", "users", or "*" for both)."""
    return os.path.join(
        data_dir, SIDE_FEATURES_DIR, f"{kind}-*.jsonl" if kind != "*" else "*.jsonl"
    )
