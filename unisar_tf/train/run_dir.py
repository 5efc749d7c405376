"""A training run's directory: what was trained on what, its best checkpoint, and reloading it.

model_dir layout:
    config.json, options.json      what was trained, on what (a resume must ask for the same,
                                   but for RESUMABLE_CONFIG_FIELDS / RESUMABLE_OPTIONS)
    resumes.jsonl                  the allowed settings a resume changed, one line per resume
    run.lock                       held by the process training there (unisar_tf.train.run_lock)
    data.json                      the data: fingerprint, vocabulary sizes (reader.data_identity)
    checkpoints/ckpt-N             last epochs: weights, optimizer slots, lr, epoch, policy state
    best/ckpt-N, best.json         weights of the best validation epoch, and its metrics
    history.jsonl                  one line per epoch: losses, lr, validation metrics, seconds
    tensorboard/{train,validation} TensorBoard event files
    eval/{split}_metrics.{json,md} reports (unisar_tf.train.evaluation)
    baselines/SASRec/              the learned baseline's own run (unisar_tf.train.learned_baseline)

Data that does not fit raises DataMismatchError (a ValueError that says what to do): a
model_dir whose data.json names other data is not resumed, and its model is not loaded on
data with other vocabularies. Other hyperparameters or options than the recorded ones raise
SettingsMismatchError, listing them, before anything is written.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Optional, Tuple

import tensorflow as tf

from feature_specs.data_spec import DataSpec
from feature_specs.layout import VOCAB_DIR, side_feature_pattern
from unisar_tf.config import DataFacts, UniSARConfig, renamed_fields
from unisar_tf.data import reader
from unisar_tf.data.side_features import load_side_features
from unisar_tf.data.transform import data_job_id_maps
from unisar_tf.model import UniSARModel, build_model

CONFIG_FILE = "config.json"

OPTIONS_FILE = "options.json"

DATA_FILE = "data.json"

BEST_FILE = "best.json"

HISTORY_FILE = "history.jsonl"

SASREC = "SASRec"
BASELINES_DIR = "baselines"


class DataMismatchError(ValueError):
    """The data does not fit the run: another dataset's model_dir, other vocabularies, or
    tasks the data has no examples of. The message says what to do."""


def _read_run_json(model_dir: str, name: str) -> Optional[dict]:
    """model_dir/name as JSON, or None when the run has not written it."""
    path = os.path.join(model_dir, name)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def read_run_data(model_dir: str) -> Optional[dict]:
    """model_dir/data.json (reader.data_identity of the data it was trained on), or None."""
    return _read_run_json(model_dir, DATA_FILE)


def _read_run_config(model_dir: str) -> Optional[dict]:
    return _read_run_json(model_dir, CONFIG_FILE)


# The DataFacts a data directory sets (DataFacts.from_spec), by the manifest entry it is from.
_DATA_SIZE_FIELDS = {
    "num_users": "vocab_sizes.users",
    "num_items": "vocab_sizes.items",
    "num_words": "vocab_sizes.words",
    "rec_len": "shapes.rec_len",
    "search_len": "shapes.search_len",
    "query_len": "shapes.query_len",
    "clicks_per_session": "shapes.clicks_per_session",
}

_SEQUENCE_SHAPES = ("rec_len", "search_len", "query_len", "clicks_per_session")


def _differences(recorded: dict, current: dict) -> List[str]:
    """What differs between two data_identity records, most telling first."""
    found = []
    for key in ("vocab_sizes", "shapes", "examples"):
        old, new = recorded.get(key) or {}, current.get(key) or {}
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                found.append(f"{key}.{name} {old.get(name)} -> {new.get(name)}".replace("'", ""))
    if recorded.get("vocabulary") != current.get("vocabulary"):
        found.append("the vocabulary files (user, item or word ids mean other things)")
    if not found and recorded.get("fingerprint") != current.get("fingerprint"):
        found.append("manifest.json's build options, inputs or counters")
    return found


def _data_fact_differences(saved: Mapping, data: DataFacts) -> List[str]:
    """For run directories without data.json: the data facts of its config.json (`saved`)
    that differ from `data`'s."""
    return [
        f"{source} {saved[name] - 1 if source.startswith('vocab') else saved[name]} -> "
        f"{getattr(data, name) - 1 if source.startswith('vocab') else getattr(data, name)}"
        for name, source in _DATA_SIZE_FIELDS.items()
        if name in saved and saved[name] != getattr(data, name)
    ]


def check_resumable(model_dir: str, current: dict, data: DataFacts) -> Optional[str]:
    """Raises DataMismatchError when model_dir's run was trained on other data than
    `current` (reader.data_identity); returns a note when model_dir cannot say (no data.json)."""
    recorded = read_run_data(model_dir)
    if recorded is not None:
        if recorded.get("fingerprint") == current["fingerprint"]:
            return None
        found = _differences(recorded, current)
        trained_on = recorded.get("data_dir")
    else:
        saved = renamed_fields(_read_run_config(model_dir) or {})
        found = _data_fact_differences(saved, data)
        if not found:
            return (
                f"{model_dir} does not record its data ({DATA_FILE} is new): resuming, as "
                "its vocabulary sizes and shapes match this data"
            )
        trained_on = "other data"
    raise DataMismatchError(
        f"{model_dir} holds a run trained on {trained_on}, not on {current['data_dir']}; they "
        f"differ in: {'; '.join(found)}. Its checkpoints cannot continue on this data: train "
        f"into a new --model_dir, or delete {model_dir} to start over on this data."
    )


# What a resumed run may change (docs/training.md, "Resuming"): they decide how long it goes
# on, how it is validated in batches and where it runs, not what has been trained. Every other
# setting must be the recorded one: the checkpoint holds what those settings trained.
RESUMABLE_CONFIG_FIELDS = ("early_stop_patience", "eval_batch_size")
RESUMABLE_OPTIONS = (
    "max_epochs",
    "keep_checkpoints",
    "verbose",
    "distribution",
    "data_dir",
    "transform_dir",
    "model_dir",
)

RESUMABLE_SHOWN = (
    "max_epochs",
    "early_stop_patience",
    "eval_batch_size",
    "keep_checkpoints",
    "distribution",
    "where the data and the run directory are",
)

RESUMES_FILE = "resumes.jsonl"


class SettingsMismatchError(ValueError):
    """A run directory is asked to resume with other settings than it was trained with; the
    message lists each setting with its recorded and requested value."""


def _normalised(values: Mapping) -> dict:
    return json.loads(json.dumps(dict(values), sort_keys=True, default=list))


def _recorded_config(model_dir: str) -> Optional[dict]:
    saved = _read_run_config(model_dir)
    if saved is None:
        return None
    try:  # older config.json: renamed fields, and new fields at their defaults
        return _normalised(UniSARConfig.from_dict(saved).to_dict())
    except (TypeError, ValueError):
        return _normalised(renamed_fields(saved))


def setting_changes(
    model_dir: str, config: UniSARConfig, options: Mapping
) -> Tuple[Dict[str, tuple], Dict[str, tuple]]:
    """({name: (recorded, requested)} of settings that may not change on resume,
    {name: (recorded, requested)} of those that may), against model_dir's config.json and
    options.json; an absent file compares nothing."""
    refused: Dict[str, tuple] = {}
    allowed: Dict[str, tuple] = {}
    recorded = _recorded_config(model_dir)
    if recorded is not None:
        current = _normalised(config.to_dict())
        for name in sorted(set(recorded) | set(current)):
            if recorded.get(name) != current.get(name):
                target = allowed if name in RESUMABLE_CONFIG_FIELDS else refused
                target[name] = (recorded.get(name), current.get(name))
    recorded_options = _read_run_json(model_dir, OPTIONS_FILE)
    if recorded_options is not None:
        current = _normalised(options)
        for name in sorted(set(recorded_options) & set(current)):
            if recorded_options[name] != current[name] and name not in refused:
                target = allowed if name in RESUMABLE_OPTIONS else refused
                target[name] = (recorded_options[name], current[name])
    return refused, allowed


def _value(value) -> str:
    return json.dumps(value)


def check_same_settings(model_dir: str, config: UniSARConfig, options: Mapping) -> Dict[str, tuple]:
    """Raises SettingsMismatchError when model_dir's run was trained with other settings than
    `config` and `options` (a TrainerOptions as a dict) ask for, except those of
    RESUMABLE_CONFIG_FIELDS and RESUMABLE_OPTIONS; returns the changes of those."""
    refused, allowed = setting_changes(model_dir, config, options)
    if refused:
        listed = "; ".join(
            f"{name}: recorded {_value(old)}, requested {_value(new)}"
            for name, (old, new) in refused.items()
        )
        raise SettingsMismatchError(
            f"{model_dir} holds a run trained with other settings than this command asks for "
            f"({listed}). Its checkpoints hold what the recorded settings trained, so it "
            f"resumes only with them ({CONFIG_FILE} and {OPTIONS_FILE} there; a resumed run "
            f"may change only {', '.join(RESUMABLE_SHOWN)}). Re-run with the recorded values, "
            f"train into a new --model_dir, or delete {model_dir} to start over."
        )
    return allowed


def check_model_data(model_dir: str, data: DataFacts, data_dir: str, manifest: dict) -> None:
    """Raises DataMismatchError unless data_dir's ids mean what they meant in training (same
    vocabularies) and its sequences have the model's shapes; other examples are fine."""
    recorded = read_run_data(model_dir)
    if recorded is not None:
        current = reader.data_identity(data_dir, manifest)
        same_shapes = all(
            (recorded.get("shapes") or {}).get(name) == current["shapes"].get(name)
            for name in _SEQUENCE_SHAPES
        )
        if recorded.get("vocabulary") == current["vocabulary"] and same_shapes:
            return
        # Only what the model depends on (other examples, e.g. more negatives, are fine).
        found = [
            d
            for d in _differences(recorded, current)
            if d.startswith(("vocab_sizes.", "the vocabulary"))
            or d.split(" ")[0] in {f"shapes.{name}" for name in _SEQUENCE_SHAPES}
        ]
        trained_on = recorded.get("data_dir")
    else:
        found = _data_fact_differences(data.to_dict(), DataFacts.from_spec(DataSpec.of(manifest)))
        if not found:
            return
        trained_on = "other data"
    raise DataMismatchError(
        f"{model_dir} was trained on {trained_on}, with other vocabularies or sequence shapes "
        f"than {data_dir} ({'; '.join(found)}): its ids would mean other users, items and "
        f"words here. Evaluate or export it with the data it was trained on, or train a "
        f"model on {data_dir} (a new --model_dir)."
    )


def run_eval_batch_size(model_dir: str) -> int:
    """The validation batch size the run was trained with (its config.json)."""
    return UniSARConfig.from_dict(_read_run_config(model_dir) or {}).training.eval_batch_size


def read_best(model_dir: str) -> dict:
    path = os.path.join(model_dir, BEST_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: no epoch of {model_dir} has finished")
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def run_side_features(data_dir: str, transform_dir: Optional[str], spec: DataSpec):
    """The data's side features (or None), keyed by the ids the model uses: the data job's,
    or with `transform_dir` Transform's (the job writes them keyed by its own ids)."""
    id_maps = None
    if transform_dir and tf.io.gfile.glob(side_feature_pattern(data_dir)):
        id_maps = data_job_id_maps(os.path.join(data_dir, VOCAB_DIR), transform_dir)
    sizes = spec.vocab_sizes
    return load_side_features(
        data_dir, sizes.item_table, sizes.user_table, spec.shapes.query_len, id_maps
    )


def run_transform_dir(model_dir: str) -> Optional[str]:
    """The Transform output a run was trained with (its options.json), or None."""
    path = os.path.join(model_dir, OPTIONS_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle).get("transform_dir")


def load_trained_model(model_dir: str, data_dir: str) -> UniSARModel:
    """The best validation checkpoint of a finished (or interrupted) run, ready to score.

    Raises DataMismatchError if data_dir's vocabularies or sequence shapes are not the ones
    the run was trained with (its ids would mean other things)."""
    with tf.io.gfile.GFile(os.path.join(model_dir, CONFIG_FILE)) as handle:
        recorded = json.load(handle)
    config, data = UniSARConfig.from_dict(recorded), DataFacts.from_dict(recorded)
    manifest = reader.load_manifest(data_dir, run_transform_dir(model_dir))
    check_model_data(model_dir, data, data_dir, manifest)
    side = (
        run_side_features(data_dir, run_transform_dir(model_dir), DataSpec.of(manifest))
        if data.uses_side_features
        else None
    )
    model = build_model(config, data, side_features=side, tables_from_checkpoint=True)
    best = tf.train.latest_checkpoint(os.path.join(model_dir, "best"))
    if best is None:
        raise FileNotFoundError(f"{model_dir}/best has no checkpoint: no epoch has finished")
    tf.train.Checkpoint(model=model).restore(
        best
    ).expect_partial().assert_existing_objects_matched()
    return model


def sasrec_run_dir(model_dir: str) -> str:
    """Where the SASRec run of a UniSAR run directory lives."""
    return os.path.join(model_dir, BASELINES_DIR, SASREC)
