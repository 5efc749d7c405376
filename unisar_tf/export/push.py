"""Writing a serving SavedModel: one immutable version, complete or absent, with warmup requests.

    export_serving_model(model, vocab_dir, "out/serving/unisar/3")
    push(model, vocab_dir, "out/serving")      # the next free <serving_dir>/unisar/<version>

The export writes `assets.extra/tf_serving_warmup_requests` (feature_specs.serving
WARMUP_FILE; one request per signature), which TF Serving replays when it loads a version, so
the first user request is not slow, and `assets.extra/online/` (ONLINE_DIR): what the online
path in front of TF Serving needs and cannot ask TF Serving for: `metadata.json` (tasks and
sequence shapes) and `items.txt` (the item vocabulary, line k = id k, for candidate checks
and retrieval). `extra_writers` add more files there (the retrieval index) before the version
appears.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from feature_specs.serving import (  # noqa: F401
    CANDIDATES_INPUT,
    MODEL_NAME,
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
    WARMUP_FILE,
)
from unisar_tf.export.requests import id_source
from unisar_tf.export.signatures import ServingFunctions
from unisar_tf.model import UniSARModel


def write_online_metadata(model: UniSARModel, ids, export_dir: str) -> None:
    """<export_dir>/assets.extra/online/{metadata.json, items.txt} (module docstring)."""
    online = os.path.join(export_dir, ONLINE_DIR)
    tf.io.gfile.makedirs(online)
    shapes = model.data.sequence_shapes
    metadata = {
        "tasks": list(model.config.tasks),
        "shapes": {
            name: int(getattr(shapes, name))
            for name in ("rec_len", "search_len", "query_len", "clicks_per_session")
        },
    }
    with tf.io.gfile.GFile(os.path.join(online, ONLINE_METADATA_FILE), "w") as out:
        out.write(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    items = ids.vocabularies()["items"][1:]
    with tf.io.gfile.GFile(os.path.join(online, ONLINE_ITEMS_FILE), "w") as out:
        out.write("".join(f"{item}\n" for item in items))


def next_version(base_path: str) -> int:
    """1 + the highest numeric version under base_path (1 if none)."""
    if not tf.io.gfile.isdir(base_path):
        return 1
    versions = [
        int(name.rstrip("/"))
        for name in tf.io.gfile.listdir(base_path)
        if name.rstrip("/").isdigit()
    ]
    return max(versions, default=0) + 1


def warmup_requests(tasks, num_candidates: int = 100):
    """PredictionLogs TF Serving replays at load: one realistic-size request per signature."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    history = 5
    arrays = {
        USER_ID_INPUT: np.array([b""]),
        CANDIDATES_INPUT: np.array([[b""] * num_candidates]),
        REC_ITEMS_INPUT: np.array([[b""] * history]),
        REC_TIMESTAMPS_INPUT: np.arange(history, dtype=np.int64)[np.newaxis],
        REC_LENGTH_INPUT: np.array([history], np.int64),
        SEARCH_QUERIES_INPUT: np.array([[b""] * history]),
        SEARCH_CLICKS_INPUT: np.array([[[b""]] * history]),
        SEARCH_TIMESTAMPS_INPUT: np.arange(history, dtype=np.int64)[np.newaxis] + 1,
        SEARCH_LENGTH_INPUT: np.array([history], np.int64),
    }
    logs = []
    for task in tasks:
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=MODEL_NAME, signature_name=SIGNATURE_NAMES[task])
        )
        inputs = dict(arrays)
        if task == "search":
            inputs[QUERY_INPUT] = np.array([b""])
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        logs.append(
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
        )
    return logs


def export_serving_model(
    model: UniSARModel,
    vocab_dir: Optional[str],
    export_dir: str,
    warmup: bool = True,
    transform_dir: Optional[str] = None,
    extra_writers: Sequence[Callable[[str], None]] = (),
) -> str:
    """Write a SavedModel (tag "serve") with the three signatures into export_dir.

    Ids are mapped with the data job's vocabularies (`vocab_dir`) or, for a model trained on
    Transform's ids, with the Transform graph (`transform_dir`, vocab_dir None).
    extra_writers: each is called with the staging directory before it becomes export_dir.

    The directory appears complete or not at all: it is written next to export_dir and
    renamed, so a server watching the parent never loads half a model; an export that fails
    removes what it wrote.
    """
    if tf.io.gfile.exists(export_dir):
        raise FileExistsError(f"{export_dir} exists; versions are immutable, pick a new one")
    parent, leaf = os.path.split(os.path.normpath(export_dir))
    staging = os.path.join(parent, f".tmp-{leaf}")
    if tf.io.gfile.exists(staging):
        tf.io.gfile.rmtree(staging)
    try:
        serving = ServingFunctions(model, id_source(vocab_dir, transform_dir))
        # The id mapping rides on the model so model.save tracks it (and its vocabulary
        # assets).
        model.serving_functions = serving
        # save_traces=False: the signatures are all a server needs; tracing every Keras
        # layer's call for Python-free reloading costs tens of seconds and adds nothing here.
        model.save(staging, save_format="tf", save_traces=False, signatures=serving.signatures())
        if warmup:
            tf.io.gfile.makedirs(os.path.dirname(os.path.join(staging, WARMUP_FILE)))
            with tf.io.TFRecordWriter(os.path.join(staging, WARMUP_FILE)) as writer:
                for log in warmup_requests(model.config.tasks):
                    writer.write(log.SerializeToString())
        write_online_metadata(model, serving.ids, staging)
        for write in extra_writers:
            write(staging)
        tf.io.gfile.rename(staging, export_dir)
    except BaseException:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
        raise
    return export_dir


def _highest_missing(path: str) -> Optional[str]:
    """The highest directory of `path` (itself included) that does not exist yet, or None."""
    missing = None
    while path and not tf.io.gfile.exists(path):
        missing = path
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _holds_files(path: str) -> bool:
    return any(files for _, _, files in tf.io.gfile.walk(path))


def push(
    model: UniSARModel,
    vocab_dir: Optional[str],
    serving_dir: str,
    version: Optional[int] = None,
    transform_dir: Optional[str] = None,
    extra_writers: Sequence[Callable[[str], None]] = (),
) -> str:
    """Export as `<serving_dir>/unisar/<version>` (next free number by default). A failed
    export leaves nothing behind: no version, and no directory this call created."""
    base_path = os.path.join(serving_dir, MODEL_NAME)
    created = _highest_missing(os.path.normpath(base_path))
    tf.io.gfile.makedirs(base_path)
    version = next_version(base_path) if version is None else version
    try:
        return export_serving_model(
            model,
            vocab_dir,
            os.path.join(base_path, str(version)),
            transform_dir=transform_dir,
            extra_writers=extra_writers,
        )
    except BaseException:
        if created and tf.io.gfile.exists(created) and not _holds_files(created):
            tf.io.gfile.rmtree(created)
        raise
