"""The serving contract: signature names, raw request inputs, outputs and export files.

One definition for everything on either side of a request: the export writes signatures with
these names and inputs (unisar_tf/export), the stand-in server replays WARMUP_FILE and
defaults to EXAMPLES_SIGNATURE (serving/server.py), and the client builds requests with
these input names (serving/client.py).

Raw inputs, B = requests, C = candidates, R / S = history slots sent, K = clicks per search
session sent (dtypes as TensorFlow names, so this module needs no TensorFlow):

    user_id                          string (B,)
    candidate_item_ids               string (B, C)     every entry is scored
    rec_history_item_ids             string (B, R)     padded past rec_history_length
    rec_history_timestamps           int64  (B, R)
    rec_history_length               int64  (B,)
    search_history_queries           string (B, S)     query text, words split on spaces
    search_history_clicked_item_ids  string (B, S, K)  "" pads a session's clicks
    search_history_timestamps        int64  (B, S)
    search_history_length            int64  (B,)
    query (`search` only)            string (B,)
"""

from __future__ import annotations

import os
from typing import Dict, Tuple

MODEL_NAME = "unisar"  # <serving_dir>/<MODEL_NAME>/<version>, as TF Serving watches it
SIGNATURE_NAMES = {"rec": "recommend", "search": "search"}
RECOMMEND_SIGNATURE = SIGNATURE_NAMES["rec"]
SEARCH_SIGNATURE = SIGNATURE_NAMES["search"]
EXAMPLES_SIGNATURE = "serving_default"  # serialized tf.Examples in, as batch inference sends
EXAMPLES_INPUT = "examples"
SCORES_OUTPUT = "scores"  # (B, C) float32 click probabilities, every signature

USER_ID_INPUT = "user_id"
CANDIDATES_INPUT = "candidate_item_ids"
REC_ITEMS_INPUT = "rec_history_item_ids"
REC_TIMESTAMPS_INPUT = "rec_history_timestamps"
REC_LENGTH_INPUT = "rec_history_length"
SEARCH_QUERIES_INPUT = "search_history_queries"
SEARCH_CLICKS_INPUT = "search_history_clicked_item_ids"
SEARCH_TIMESTAMPS_INPUT = "search_history_timestamps"
SEARCH_LENGTH_INPUT = "search_history_length"
QUERY_INPUT = "query"

# Input name -> (dtype name, rank including the batch dimension); both signatures take these,
# `search` also QUERY_INPUT.
RAW_INPUTS: Dict[str, Tuple[str, int]] = {
    USER_ID_INPUT: ("string", 1),
    CANDIDATES_INPUT: ("string", 2),
    REC_ITEMS_INPUT: ("string", 2),
    REC_TIMESTAMPS_INPUT: ("int64", 2),
    REC_LENGTH_INPUT: ("int64", 1),
    SEARCH_QUERIES_INPUT: ("string", 2),
    SEARCH_CLICKS_INPUT: ("string", 3),
    SEARCH_TIMESTAMPS_INPUT: ("int64", 2),
    SEARCH_LENGTH_INPUT: ("int64", 1),
}
QUERY_INPUT_SPEC: Tuple[str, int] = ("string", 1)

# TF Serving replays this file (TFRecord of PredictionLog) when it loads a version.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# What the online path in front of TF Serving reads from a version (TF Serving ignores
# assets.extra): ONLINE_METADATA_FILE {"tasks": [...], "shapes": {rec_len, search_len,
# query_len, clicks_per_session}}, ONLINE_ITEMS_FILE the item vocabulary (one id a line), and
# the retrieval index under RETRIEVAL_DIR (unisar_tf/data/retrieval_index.py).
ONLINE_DIR = os.path.join("assets.extra", "online")
ONLINE_METADATA_FILE = "metadata.json"
ONLINE_ITEMS_FILE = "items.txt"
RETRIEVAL_DIR = os.path.join("assets.extra", "retrieval")


def signature_inputs(task: str) -> Dict[str, Tuple[str, int]]:
    """The raw inputs of the signature that scores `task` ("rec" or "search")."""
    if task not in SIGNATURE_NAMES:
        raise ValueError(f"task must be one of {sorted(SIGNATURE_NAMES)}, got {task!r}")
    return dict(RAW_INPUTS, **({QUERY_INPUT: QUERY_INPUT_SPEC} if task == "search" else {}))
