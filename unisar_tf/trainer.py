"""The UniSAR trainer: streams the data job's TFRecords, trains with spec 10's policy, resumes.

    trainer = Trainer(config, TrainerOptions(data_dir="out/amazon_beauty", model_dir="out/m"))
    summary = trainer.fit()          # resumes from model_dir/checkpoints if a run was cut short
    report = evaluate_best(model_dir, data_dir, split="test")

Policy (spec 10): every step takes one rec batch and one search batch (sized so both finish
an epoch together) and shares one draw of 1,024 relevance negatives; Adam; after each epoch
the validation score is the mean of rec and search NDCG@5; the learning rate is multiplied by
0.1 after `lr_reduce_patience` epochs without a new best (not below `min_learning_rate`), and
training stops after `early_stop_patience` epochs without one.

model_dir layout:
    config.json, options.json      what was trained, on what
    data.json                      the data: its fingerprint, vocabulary sizes (data.data_identity)
    checkpoints/ckpt-N             last epochs: weights, optimizer slots, lr, epoch, policy state
    best/ckpt-N, best.json         weights of the best validation epoch, and its metrics
    history.jsonl                  one line per epoch: losses, lr, validation metrics, seconds
    tensorboard/{train,validation} TensorBoard event files

Training negatives: with a negative pool in the data (`--train_negative_pool` of the data job)
each epoch draws fresh ones from it; otherwise the data job's fixed 4 are used. The batch
order and every negative are stateless functions of (seed, epoch, step), so a resumed run
sees the same batches as an uninterrupted one (dropout masks come from TF's global random
state, so the weights are not bit-identical to an uninterrupted run).

Data that does not fit (DataMismatchError, a ValueError that says what to do): a model_dir
whose data.json names other data is not resumed, and its model is not loaded on data with
other vocabularies. Single-scenario data trains the tasks of config.tasks it has examples
of (a rec-only log trains rec), and says so; the query-item relevance loss is turned off when
the training data has no search query at all.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf

from feature_specs import (CANDIDATE_ITEMS, NEGATIVE_POOL, REL_NEGATIVE_ITEMS,
                           REL_NEGATIVE_QUERY_TOKENS)
from unisar_tf import data
from unisar_tf.config import UniSARConfig
from unisar_tf.cooccurrence import training_tables
from unisar_tf.metrics import ranking_metrics
from unisar_tf.model import UniSARModel, build_model
from unisar_tf.side_features import load_side_features
from unisar_tf.training import search_batch_size  # the reference's rounding (spec 10)

CONFIG_FILE = "config.json"
OPTIONS_FILE = "options.json"
DATA_FILE = "data.json"
BEST_FILE = "best.json"
HISTORY_FILE = "history.jsonl"
VALIDATION_METRIC = "NDCG@5"


class DataMismatchError(ValueError):
    """The data does not fit the run: another dataset's model_dir, other vocabularies, or
    tasks the data has no examples of. The message says what to do."""


@dataclasses.dataclass
class TrainerOptions:
    data_dir: str
    model_dir: str
    max_epochs: int = 100
    seed: int = 0
    # Caps for quick runs and tests; None = whole epoch / whole validation split.
    steps_per_epoch: Optional[int] = None
    validation_rows: Optional[int] = None
    fresh_negatives: bool = True  # draw from the data's negative pool when it has one
    # Raw-id examples (the TFX pipeline's): the Transform output that maps them to ids.
    transform_dir: Optional[str] = None
    shuffle_buffer: int = 20_000
    keep_checkpoints: int = 2
    verbose: int = 2  # 0 silent, 1 one line per epoch, 2 also a progress bar


@dataclasses.dataclass
class EpochResult:
    epoch: int
    learning_rate: float
    train: Dict[str, float]
    validation: Dict[str, Dict[str, float]]
    validation_score: float
    seconds: float
    improved: bool


def _stateless_seed(seed: int, epoch, step) -> tf.Tensor:
    return tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64),
                     tf.cast(step, tf.int64)])


def epoch_steps(config: UniSARConfig, counts: Mapping[str, int]) -> int:
    lead = "rec" if "rec" in config.tasks else "search"
    return math.ceil(counts[lead] / config.batch_size)


def replace_negatives(features: Dict[str, tf.Tensor], num_negatives: int,
                      seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Candidates = [positive, `num_negatives` distinct draws from the row's negative pool].

    features[CANDIDATE_ITEMS] (B, 1 + n) with the positive first, features[NEGATIVE_POOL]
    (B, K) -> candidates (B, 1 + num_negatives); the pool is dropped from the features.
    """
    features = dict(features)
    pool = features.pop(NEGATIVE_POOL)
    noise = tf.random.stateless_uniform(tf.shape(pool), seed=seed)
    picks = tf.argsort(noise, axis=1)[:, :num_negatives]  # a random subset, no repeats
    negatives = tf.gather(pool, picks, batch_dims=1)
    features[CANDIDATE_ITEMS] = tf.concat([features[CANDIDATE_ITEMS][:, :1], negatives], axis=1)
    return features


def training_dataset(config: UniSARConfig, data_dir: str, manifest: dict, query_bank: np.ndarray,
                     seed: int, epoch: int, fresh_negatives: bool = True,
                     shuffle_buffer: int = 20_000) -> tf.data.Dataset:
    """One epoch of {"rec": batch, "search": batch, "rel_negatives": {...}} (spec 10).

    The rec data sets the epoch; the search data, batched to finish at the same time, cycles
    if rounding leaves a step short. With one task only that task's batches are produced.
    """
    counts = manifest["examples"]["train"]
    tasks = config.tasks
    joint = len(tasks) == 2
    sizes = {task: config.batch_size for task in tasks}
    if joint:
        sizes["search"] = search_batch_size(counts["rec"], counts["search"], config.batch_size)
    parts = {}
    for offset, task in enumerate(tasks):
        stream = data.read_examples(data_dir, "train", task, sizes[task], manifest, shuffle=True,
                                    seed=seed * 7919 + epoch * 2 + offset,
                                    shuffle_buffer=shuffle_buffer)
        parts[task] = stream.repeat() if joint and task == "search" else stream
    has_pool = bool(manifest["shapes"].get("train_negative_pool", 0))
    # No query at all (a rec-only log): no relevance negatives (the Trainer turns L_rel off).
    with_relevance = len(query_bank) > 0
    bank = tf.constant(query_bank, tf.int64) if with_relevance else None
    num_relevance = config.num_relevance_negatives

    def finish(step, batch):
        batch = dict(batch)
        for index, task in enumerate(tasks):
            task_batch = dict(batch[task])
            if has_pool and fresh_negatives:
                task_batch = replace_negatives(task_batch, config.num_train_negatives,
                                               _stateless_seed(seed, epoch, step * 4 + index))
            else:
                task_batch.pop(NEGATIVE_POOL, None)
            batch[task] = task_batch
        if not with_relevance:
            return batch
        item_seed = _stateless_seed(seed, epoch, step * 4 + 2)
        query_seed = _stateless_seed(seed, epoch, step * 4 + 3)
        batch["rel_negatives"] = {
            REL_NEGATIVE_ITEMS: tf.random.stateless_uniform(
                [num_relevance], item_seed, 1, config.num_items, tf.int64),
            REL_NEGATIVE_QUERY_TOKENS: tf.gather(bank, tf.random.stateless_uniform(
                [num_relevance], query_seed, 0, tf.shape(bank, tf.int64)[0], tf.int64)),
        }
        return batch

    return (tf.data.Dataset.zip(parts).enumerate()
            .map(finish, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(2))


def training_item_counts(data_dir: str, manifest: dict, num_items: int) -> np.ndarray:
    """(num_items,) how often each item is a training positive (the popularity baseline)."""
    counts = np.zeros(num_items, np.float64)
    width = manifest["shapes"]["train_candidates"]
    for task in data.tasks_with_examples(manifest, "train"):
        positives = data.read_feature(data_dir, "train", task, CANDIDATE_ITEMS, width,
                                      manifest)[:, 0]
        np.add.at(counts, positives, 1.0)
    return counts


# ------------------------------------------------------------------------------- evaluation
def scoring_function(model: UniSARModel, task: str, manifest: dict):
    """A traced (B, ...) features -> (B, C) scores function for one task's eval examples."""
    shapes = data.shapes_from_manifest(manifest)
    spec = data.parse_spec(shapes, None, with_query=task == "search")
    signature = {name: tf.TensorSpec((None,) + tuple(feature.shape), tf.int64)
                 for name, feature in spec.items()}
    signature[CANDIDATE_ITEMS] = tf.TensorSpec((None, None), tf.int64)
    return tf.function(lambda batch: model(batch, training=False)[task],
                       input_signature=[signature])


def score_split(model: UniSARModel, data_dir: str, split: str, task: str, manifest: dict,
                batch_size: int = 512, rows: Optional[int] = None,
                score=None) -> np.ndarray:
    """Scores (n, C) for the first `rows` examples (all if None) of a split, in file order."""
    dataset = data.read_examples(data_dir, split, task, batch_size, manifest)
    if rows is not None:
        dataset = dataset.unbatch().take(rows).batch(batch_size)
    score = score or scoring_function(model, task, manifest)
    parts = [score(batch).numpy() for batch in dataset]
    if not parts:
        raise ValueError(f"{data_dir}: {split}/{task} has no examples")
    return np.concatenate(parts)


def evaluate_model(model: UniSARModel, data_dir: str, split: str, manifest: dict,
                   batch_size: int = 512, rows: Optional[int] = None,
                   scorers: Optional[dict] = None) -> Dict[str, Dict[str, float]]:
    """{task: HR@1/5/10, NDCG@5/10} on 1 positive + N negatives for every task of the model."""
    scorers = scorers if scorers is not None else {}
    results = {}
    for task in model.config.tasks:
        if task not in scorers:
            scorers[task] = scoring_function(model, task, manifest)
        scores = score_split(model, data_dir, split, task, manifest, batch_size, rows,
                             scorers[task])
        results[task] = ranking_metrics(scores)
        results[task]["examples"] = int(len(scores))
    return results


def validation_score(metrics: Mapping[str, Mapping[str, float]]) -> float:
    """Mean NDCG@5 over the model's tasks (spec 10)."""
    return float(np.mean([metrics[task][VALIDATION_METRIC] for task in metrics]))


# ----------------------------------------------------------------------- the run's data
def fit_tasks_to_data(config: UniSARConfig, manifest: dict, data_dir: str
                      ) -> Tuple[UniSARConfig, List[str]]:
    """(config whose tasks are those of config.tasks the data has training examples of, what
    changed). A single-scenario log trains the task it has; none of config.tasks in the
    data, or a task without validation examples, is a DataMismatchError."""
    available = data.tasks_with_examples(manifest, "train")
    if not available:
        raise DataMismatchError(f"{data_dir} has no training examples (manifest.json "
                                f"examples.train: {manifest.get('examples', {}).get('train')})"
                                ": rebuild it from a log with more events per user")
    kept = tuple(task for task in config.tasks if task in available)
    missing = [task for task in config.tasks if task not in available]
    if not kept:
        raise DataMismatchError(
            f"{data_dir} has no {' or '.join(missing)} training examples, only "
            f"{' and '.join(available)} ones: train tasks={available} (--tasks "
            f"{','.join(available)})" + (", a UniSAR model (SASRec is rec-only)"
                                         if config.architecture == "sasrec" else ""))
    for task in kept:
        if not data.tasks_with_examples(manifest, "valid", (task,)):
            raise DataMismatchError(f"{data_dir} has {task} training examples but no {task} "
                                    "validation examples to pick the best epoch with: rebuild "
                                    f"it, or train the other task (--tasks)")
    notes = []
    if missing:
        notes.append(f"{data_dir} has no {' or '.join(missing)} training examples: training "
                     f"{'+'.join(kept)} only (tasks={kept})")
        config = config.replace(tasks=kept)
    return config, notes


def uses_relevance_loss(config: UniSARConfig) -> bool:
    return (config.architecture == "unisar" and config.use_history
            and config.use_relevance_loss and config.alpha_relevance > 0)


def _read_run_json(model_dir: str, name: str) -> Optional[dict]:
    """model_dir/name as JSON, or None when the run has not written it."""
    path = os.path.join(model_dir, name)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def read_run_data(model_dir: str) -> Optional[dict]:
    """model_dir/data.json (data.data_identity of the data it was trained on), or None."""
    return _read_run_json(model_dir, DATA_FILE)


def _read_run_config(model_dir: str) -> Optional[dict]:
    return _read_run_json(model_dir, CONFIG_FILE)


# What the data sets in a config (data.config_with_data_sizes), by the manifest entry it is from.
_DATA_SIZE_FIELDS = {"num_users": "vocab_sizes.users", "num_items": "vocab_sizes.items",
                     "num_words": "vocab_sizes.words", "max_rec_history": "shapes.rec_len",
                     "max_search_history": "shapes.search_len",
                     "query_length": "shapes.query_len",
                     "clicks_per_session": "shapes.clicks_per_session"}
_SEQUENCE_SHAPES = ("rec_len", "search_len", "query_len", "clicks_per_session")


def _differences(recorded: dict, current: dict) -> List[str]:
    """What differs between two data_identity records, most telling first."""
    found = []
    for key in ("vocab_sizes", "shapes", "examples"):
        old, new = recorded.get(key) or {}, current.get(key) or {}
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                found.append(f"{key}.{name} {old.get(name)} -> {new.get(name)}".replace(
                    "'", ""))
    if recorded.get("vocabulary") != current.get("vocabulary"):
        found.append("the vocabulary files (user, item or word ids mean other things)")
    if not found and recorded.get("fingerprint") != current.get("fingerprint"):
        found.append("manifest.json's build options, inputs or counters")
    return found


def _config_differences(saved: Mapping, config: UniSARConfig) -> List[str]:
    """For run directories without data.json: data-set config fields that differ."""
    return [f"{source} {saved[name] - 1 if source.startswith('vocab') else saved[name]} -> "
            f"{getattr(config, name) - 1 if source.startswith('vocab') else getattr(config, name)}"
            for name, source in _DATA_SIZE_FIELDS.items()
            if name in saved and saved[name] != getattr(config, name)]


def check_resumable(model_dir: str, current: dict, config: UniSARConfig) -> Optional[str]:
    """Raises DataMismatchError when model_dir's run was trained on other data than
    `current` (data.data_identity); returns a note when model_dir cannot say (no data.json)."""
    recorded = read_run_data(model_dir)
    if recorded is not None:
        if recorded.get("fingerprint") == current["fingerprint"]:
            return None
        found = _differences(recorded, current)
        trained_on = recorded.get("data_dir")
    else:
        saved = _read_run_config(model_dir) or {}
        found = _config_differences(saved, config)
        if not found:
            return (f"{model_dir} does not record its data ({DATA_FILE} is new): resuming, as "
                    "its vocabulary sizes and shapes match this data")
        trained_on = "other data"
    raise DataMismatchError(
        f"{model_dir} holds a run trained on {trained_on}, not on {current['data_dir']}; they "
        f"differ in: {'; '.join(found)}. Its checkpoints cannot continue on this data: train "
        f"into a new --model_dir, or delete {model_dir} to start over on this data.")


def check_model_data(model_dir: str, config: UniSARConfig, data_dir: str,
                     manifest: dict) -> None:
    """Raises DataMismatchError unless data_dir's ids mean what they meant in training (same
    vocabularies) and its sequences have the model's shapes; other examples are fine."""
    recorded = read_run_data(model_dir)
    if recorded is not None:
        current = data.data_identity(data_dir, manifest)
        same_shapes = all((recorded.get("shapes") or {}).get(name) == current["shapes"].get(name)
                          for name in _SEQUENCE_SHAPES)
        if recorded.get("vocabulary") == current["vocabulary"] and same_shapes:
            return
        # Only what the model depends on (other examples, e.g. more negatives, are fine).
        found = [d for d in _differences(recorded, current)
                 if d.startswith(("vocab_sizes.", "the vocabulary"))
                 or d.split(" ")[0] in {f"shapes.{name}" for name in _SEQUENCE_SHAPES}]
        trained_on = recorded.get("data_dir")
    else:
        found = _config_differences(config.to_dict(),
                                    data.config_with_data_sizes(config, manifest))
        if not found:
            return
        trained_on = "other data"
    raise DataMismatchError(
        f"{model_dir} was trained on {trained_on}, with other vocabularies or sequence shapes "
        f"than {data_dir} ({'; '.join(found)}): its ids would mean other users, items and "
        f"words here. Evaluate or export it with the data it was trained on, or train a "
        f"model on {data_dir} (a new --model_dir).")


# --------------------------------------------------------------------------------- trainer
class Trainer:
    """Trains one UniSAR configuration on one data directory; see the module docstring."""

    def __init__(self, config: UniSARConfig, options: TrainerOptions):
        self.options = options
        say = print if options.verbose else (lambda *args, **kwargs: None)
        if config.architecture == "sasrec":  # the plain baseline: item ids only
            config = config.replace(use_side_features=False, use_cooccurrence=False)
        self.manifest = data.load_manifest(options.data_dir, options.transform_dir)
        self.data_identity = data.data_identity(options.data_dir, self.manifest)
        config = data.config_with_data_sizes(config, self.manifest)
        config, notes = fit_tasks_to_data(config, self.manifest, options.data_dir)
        self.query_bank = data.query_bank(options.data_dir, self.manifest)
        if not len(self.query_bank) and uses_relevance_loss(config):
            notes.append("the training data has no search query: the query-item relevance "
                         "loss is off (use_relevance_loss=False)")
            config = config.replace(use_relevance_loss=False)
        for note in notes:
            say(note, flush=True)
        self.side_features = (run_side_features(options.data_dir, options.transform_dir, config)
                              if config.use_side_features else None)
        if self.side_features is not None:  # KuaiSAR categories, captions, user levels
            config = config.replace(**self.side_features.config_overrides())
        table = transitions = None
        if config.use_cooccurrence:  # counted on the training split (unisar_tf.cooccurrence)
            table, transitions = training_tables(options.data_dir, self.manifest,
                                                 config.num_items, config.tasks)
            config = config.replace(cooccurrence_pairs=table.num_pairs,
                                    transition_pairs=transitions.num_pairs)
        self.config = config
        tf.keras.utils.set_random_seed(options.seed)
        self.model = build_model(config, side_features=self.side_features)
        if table is not None:
            self.model.set_cooccurrence(table, transitions)
        self.optimizer = tf.keras.optimizers.Adam(config.learning_rate)
        self.model.compile(optimizer=self.optimizer)
        # Slots exist before any restore, so a checkpoint restores them at once, exactly.
        self.optimizer.build(self.model.trainable_variables)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_score = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best")
        self.epochs_without_gain = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epochs_since_lr_change = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, epoch=self.epoch,
            best_score=self.best_score, epochs_without_gain=self.epochs_without_gain,
            epochs_since_lr_change=self.epochs_since_lr_change)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(options.model_dir, "checkpoints"),
            max_to_keep=options.keep_checkpoints)
        self.best_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.model), os.path.join(options.model_dir, "best"),
            max_to_keep=1)
        self._train_step = None
        self._scorers: dict = {}

    # -- state --------------------------------------------------------------------------
    @property
    def learning_rate(self) -> float:
        return float(tf.keras.backend.get_value(self.optimizer.learning_rate))

    def restore(self) -> Optional[str]:
        """Restores the latest checkpoint of model_dir, if any; returns its path.

        Raises DataMismatchError if model_dir's run was trained on other data."""
        path = self.manager.latest_checkpoint
        if path:
            note = check_resumable(self.options.model_dir, self.data_identity, self.config)
            if note and self.options.verbose:
                print(note, flush=True)
            self.checkpoint.restore(path).assert_existing_objects_matched()
        return path

    def _write_run_files(self) -> None:
        tf.io.gfile.makedirs(self.options.model_dir)
        with tf.io.gfile.GFile(os.path.join(self.options.model_dir, CONFIG_FILE), "w") as out:
            out.write(self.config.to_json())
        with tf.io.gfile.GFile(os.path.join(self.options.model_dir, OPTIONS_FILE), "w") as out:
            out.write(json.dumps(dataclasses.asdict(self.options), indent=2, sort_keys=True))
        with tf.io.gfile.GFile(os.path.join(self.options.model_dir, DATA_FILE), "w") as out:
            out.write(json.dumps(self.data_identity, indent=2, sort_keys=True))

    # -- one epoch ----------------------------------------------------------------------
    def _make_train_step(self, element_spec=None):
        """The traced step; with `element_spec`, batch dimensions are left open so the
        short last batch of an epoch does not trace the graph a second time."""
        model = self.model
        signature = None
        if element_spec is not None:
            signature = [tf.nest.map_structure(
                lambda spec: tf.TensorSpec([None] + spec.shape[1:].as_list(), spec.dtype),
                element_spec)]

        @tf.function(input_signature=signature)
        def train_step(batch):
            return model.train_step(batch)

        return train_step

    def _train_epoch(self, epoch: int, query_bank: np.ndarray,
                     on_step: Optional[Callable[[int, int], None]], writer) -> Dict[str, float]:
        options = self.options
        steps = epoch_steps(self.config, self.manifest["examples"]["train"])
        if options.steps_per_epoch:
            steps = min(steps, options.steps_per_epoch)
        dataset = training_dataset(self.config, options.data_dir, self.manifest, query_bank,
                                   options.seed, epoch, options.fresh_negatives,
                                   options.shuffle_buffer).take(steps)
        if self._train_step is None:
            self._train_step = self._make_train_step(dataset.element_spec)
        self.model.reset_metrics()
        progress = (tf.keras.utils.Progbar(steps, unit_name="step", stateful_metrics=None)
                    if options.verbose >= 2 else None)
        logs: Dict[str, float] = {}
        for step, batch in enumerate(dataset):
            results = self._train_step(batch)
            logs = {name: float(value) for name, value in results.items()}
            if not math.isfinite(logs.get("loss", 0.0)):
                raise FloatingPointError(f"epoch {epoch + 1} step {step + 1}: loss is "
                                         f"{logs['loss']}; lower the learning rate")
            if progress is not None:
                progress.update(step + 1, [(name, logs[name]) for name in ("loss",)
                                           if name in logs])
            global_step = int(self.optimizer.iterations.numpy())
            if writer is not None and global_step % 10 == 0:
                with writer.as_default(step=global_step):
                    tf.summary.scalar("loss", logs["loss"])
            if on_step is not None:
                on_step(epoch, step)
        return logs

    # -- the loop -----------------------------------------------------------------------
    def fit(self, on_step: Optional[Callable[[int, int], None]] = None) -> dict:
        """Trains until early stopping or max_epochs; returns the best epoch's summary.

        on_step(epoch, step) is called after every step (tests interrupt runs with it).
        """
        options, config = self.options, self.config
        resumed = self.restore()
        self._write_run_files()
        say = print if options.verbose else (lambda *args, **kwargs: None)
        if resumed:
            say(f"resumed from {resumed}: epoch {int(self.epoch.numpy())} done, "
                f"learning rate {self.learning_rate:g}, best validation "
                f"{float(self.best_score.numpy()):.4f}", flush=True)
        query_bank = self.query_bank
        counts = self.manifest["examples"]["train"]
        say(f"training {counts['rec']} rec + {counts['search']} search examples, tasks "
            f"{'+'.join(config.tasks)}, batch {config.batch_size}"
            + (f" rec + {search_batch_size(counts['rec'], counts['search'], config.batch_size)}"
               " search" if len(config.tasks) == 2 else "")
            + f", {epoch_steps(config, counts)} steps per epoch", flush=True)
        board = os.path.join(options.model_dir, "tensorboard")
        train_writer = tf.summary.create_file_writer(os.path.join(board, "train"))
        validation_writer = tf.summary.create_file_writer(os.path.join(board, "validation"))
        stopped_early = False
        while int(self.epoch.numpy()) < options.max_epochs:
            if int(self.epochs_without_gain.numpy()) >= config.early_stop_patience:
                stopped_early = True
                break
            epoch = int(self.epoch.numpy())
            started = time.time()
            train_logs = self._train_epoch(epoch, query_bank, on_step, train_writer)
            validation = evaluate_model(self.model, options.data_dir, "valid", self.manifest,
                                        config.eval_batch_size, options.validation_rows,
                                        self._scorers)
            result = self._end_epoch(epoch, train_logs, validation, time.time() - started)
            with validation_writer.as_default(step=epoch + 1):
                tf.summary.scalar("score_mean_ndcg@5", result.validation_score)
                tf.summary.scalar("learning_rate", result.learning_rate)
                for task, metrics in validation.items():
                    for name, value in metrics.items():
                        if name != "examples":
                            tf.summary.scalar(f"{task}/{name}", value)
            say(f"epoch {epoch + 1}: {result.seconds:.0f}s, loss {train_logs.get('loss', 0):.4f}, "
                f"validation NDCG@5 " + " ".join(f"{task} {m[VALIDATION_METRIC]:.4f}"
                                                 for task, m in validation.items())
                + f" (score {result.validation_score:.4f}{', best' if result.improved else ''})"
                + f", lr {result.learning_rate:g}", flush=True)
        else:
            stopped_early = int(self.epochs_without_gain.numpy()) >= config.early_stop_patience
        train_writer.close()
        validation_writer.close()
        summary = read_best(options.model_dir)
        summary.update(epochs_run=int(self.epoch.numpy()), stopped_early=stopped_early)
        return summary

    def _end_epoch(self, epoch: int, train_logs: Dict[str, float],
                   validation: Dict[str, Dict[str, float]], seconds: float) -> EpochResult:
        """Applies the plateau / early-stop policy, writes the best model and the checkpoint."""
        config = self.config
        score = validation_score(validation)
        improved = score > float(self.best_score.numpy())
        if improved:
            self.best_score.assign(score)
            self.epochs_without_gain.assign(0)
            self.epochs_since_lr_change.assign(0)
            self.best_manager.save(checkpoint_number=epoch + 1)
            with tf.io.gfile.GFile(os.path.join(self.options.model_dir, BEST_FILE), "w") as out:
                out.write(json.dumps({"epoch": epoch + 1, "validation_score": score,
                                      "validation": validation,
                                      "checkpoint": os.path.basename(
                                          self.best_manager.latest_checkpoint)},
                                     indent=2, sort_keys=True))
        else:
            self.epochs_without_gain.assign_add(1)
            self.epochs_since_lr_change.assign_add(1)
            if int(self.epochs_since_lr_change.numpy()) >= config.lr_reduce_patience:
                reduced = max(self.learning_rate * config.lr_reduce_factor,
                              config.min_learning_rate)
                self.optimizer.learning_rate.assign(reduced)
                self.epochs_since_lr_change.assign(0)
        result = EpochResult(epoch=epoch + 1, learning_rate=self.learning_rate,
                             train=train_logs, validation=validation, validation_score=score,
                             seconds=seconds, improved=improved)
        self.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        # After the checkpoint: a crash in between re-runs the epoch without a duplicate line.
        with tf.io.gfile.GFile(os.path.join(self.options.model_dir, HISTORY_FILE), "a") as out:
            out.write(json.dumps(dataclasses.asdict(result), sort_keys=True) + "\n")
        return result


def read_best(model_dir: str) -> dict:
    path = os.path.join(model_dir, BEST_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: no epoch of {model_dir} has finished")
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def run_side_features(data_dir: str, transform_dir: Optional[str], config: UniSARConfig):
    """The data's side features (or None), keyed by the ids the model uses: the data job's,
    or with `transform_dir` Transform's (the job writes them keyed by its own ids)."""
    id_maps = None
    if transform_dir and tf.io.gfile.glob(os.path.join(data_dir, "side_features", "*.jsonl")):
        from unisar_tf.transform import data_job_id_maps

        id_maps = data_job_id_maps(os.path.join(data_dir, "vocab"), transform_dir)
    return load_side_features(data_dir, config.num_items, config.num_users,
                              config.query_length, id_maps)


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
        config = UniSARConfig.from_dict(json.load(handle))
    check_model_data(model_dir, config, data_dir,
                     data.load_manifest(data_dir, run_transform_dir(model_dir)))
    side = (run_side_features(data_dir, run_transform_dir(model_dir), config)
            if config.uses_side_features else None)
    model = build_model(config, side_features=side)
    best = tf.train.latest_checkpoint(os.path.join(model_dir, "best"))
    if best is None:
        raise FileNotFoundError(f"{model_dir}/best has no checkpoint: no epoch has finished")
    tf.train.Checkpoint(model=model).restore(best).expect_partial().assert_existing_objects_matched()
    return model
