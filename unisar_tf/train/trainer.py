"""The UniSAR trainer: streams the data job's TFRecords, trains with spec 10's policy, resumes.

    trainer = Trainer(config, TrainerOptions(data_dir="out/amazon_beauty", model_dir="out/m"))
    summary = trainer.fit()          # resumes from model_dir/checkpoints if a run was cut short
    report = evaluate_best(model_dir, data_dir, split="test")

Policy (spec 10): every step takes one rec batch and one search batch (sized so both finish
an epoch together) and shares one draw of 1,024 relevance negatives; Adam; after each epoch
the validation score is the mean of rec and search NDCG@5; the learning rate is multiplied by
0.1 after `lr_reduce_patience` epochs without a new best (not below `min_learning_rate`), and
training stops after `early_stop_patience` epochs without one.

What a run writes to model_dir (checkpoints, best/, history, TensorBoard, its config and
data): unisar_tf.train.run_dir. Where it runs (one device, several GPUs, several workers under
TF_CONFIG) and how the global batch is split: unisar_tf.train.distribution; the chief alone
writes to model_dir.

Training negatives: with a negative pool in the data (`--train_negative_pool` of the data job)
each epoch draws fresh ones from it; otherwise the data job's fixed 4 are used. The batch
order, every negative and every dropout mask are stateless functions of (seed, epoch or
step), so a resumed run trains exactly as an uninterrupted one: same batches, same draws,
bit-identical losses and weights (`step_seeded_dropout`; the checkpoint holds the step).

A run directory has one trainer at a time (an OS lock, unisar_tf.train.run_lock), and resumes
only with the settings it was trained with (run_dir.check_same_settings: SettingsMismatchError
listing the others, before anything is written; the epoch budget and a few more may change).

Data that does not fit (DataMismatchError, a ValueError that says what to do): a model_dir
whose data.json names other data is not resumed, and its model is not loaded on data with
other vocabularies. Single-scenario data trains the tasks of config.model.tasks it has examples
of (a rec-only log trains rec), and says so; the query-item relevance loss is turned off when
the training data has no search query at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from feature_specs.data_spec import DataSpec
from unisar_tf.config import TASKS, DataFacts, UniSARConfig, run_config_dict
from unisar_tf.data import reader
from unisar_tf.data.cooccurrence import tables_for_training
from unisar_tf.model import build_model
from unisar_tf.train.distribution import (
    STRATEGY_CLASSES,
    distribute_global_batches,
    make_strategy,
    mean_over_replicas,
    replica_train_step,
    resolve_strategy_name,
    worker_role,
)
from unisar_tf.train.evaluation import VALIDATION_METRIC, evaluate_model, validation_score
from unisar_tf.train.inputs import epoch_steps, search_batch_size, training_dataset
from unisar_tf.train.run_dir import (
    BEST_FILE,
    CONFIG_FILE,
    DATA_FILE,
    HISTORY_FILE,
    OPTIONS_FILE,
    RESUMES_FILE,
    DataMismatchError,
    check_resumable,
    check_same_settings,
    read_best,
    run_side_features,
)
from unisar_tf.train.run_lock import RunDirLock

LOG = logging.getLogger(__name__)


def progress_log(verbose: int) -> Callable[..., None]:
    """Where progress lines go: INFO (shown by the entry points) with TrainerOptions.verbose,
    else DEBUG (shown only with their --verbose)."""
    return LOG.info if verbose else LOG.debug


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
    verbose: int = 2  # 0 silent (log DEBUG), 1 a line per epoch (log INFO), 2 also a progress bar
    # tf.distribute strategy: auto | default | mirrored | multi_worker (train/distribution.py)
    distribution: str = "auto"


@dataclasses.dataclass
class EpochResult:
    epoch: int
    learning_rate: float
    train: Dict[str, float]
    validation: Dict[str, Dict[str, float]]
    validation_score: float
    seconds: float
    improved: bool
    train_seconds: float = 0.0  # the training steps alone (seconds less validation)


# ----------------------------------------------------------------------- the run's data
def fit_tasks_to_data(
    config: UniSARConfig, manifest: dict | DataSpec, data_dir: str
) -> Tuple[UniSARConfig, List[str]]:
    """(config whose tasks are those of config.model.tasks the data has training examples of, what
    changed). A single-scenario log trains the task it has; none of config.model.tasks in the
    data, or a task without validation examples, is a DataMismatchError."""
    spec = DataSpec.of(manifest)
    available = spec.tasks_with_examples("train", TASKS)
    if not available:
        raise DataMismatchError(
            f"{data_dir} has no training examples (manifest.json "
            f"examples.train: {spec.examples.split('train')})"
            ": rebuild it from a log with more events per user"
        )
    kept = tuple(task for task in config.model.tasks if task in available)
    missing = [task for task in config.model.tasks if task not in available]
    if not kept:
        raise DataMismatchError(
            f"{data_dir} has no {' or '.join(missing)} training examples, only "
            f"{' and '.join(available)} ones: train tasks={available} (--tasks "
            f"{','.join(available)})"
            + (", a UniSAR model (SASRec is rec-only)" if config.architecture == "sasrec" else "")
        )
    for task in kept:
        if not spec.tasks_with_examples("valid", (task,)):
            raise DataMismatchError(no_validation_message(data_dir, spec, task, kept))
    notes = []
    if missing:
        notes.append(
            f"{data_dir} has no {' or '.join(missing)} training examples: training "
            f"{'+'.join(kept)} only (tasks={kept})"
        )
        config = config.replace(tasks=kept)
    return config, notes


def no_validation_message(data_dir: str, spec: DataSpec, task: str, tasks: Tuple[str, ...]) -> str:
    """Why a task has no validation examples, and what to do: the split's counts and build
    options from the data job's manifest."""
    examples = spec.examples.by_split if spec.examples else {}
    counts = ", ".join(f"{split} {examples.get(split)}" for split in reader.SPLITS)
    split_rule = spec.build_option("split", "loo")
    if split_rule == "time":
        cause = (
            "it was built with --split time, where validation is the targets of the day "
            "before the log's last day (UTC): one event with a far-future timestamp, or a "
            "log whose last two days have no such event, leaves it empty. Check the log's "
            "latest timestamps, or rebuild with --split loo"
        )
        cut = spec.time_split or {}  # the data job's report on its cut, if any
        if cut.get("warning"):
            cause += f". The data job said: {cut['warning'].rstrip('.')}"
        elif cut.get("valid_day"):
            cause += (
                f". The validation day was {cut['valid_day']} "
                f"({(cut.get('events') or {}).get('valid_day', '?')} events), the test "
                f"day {cut.get('test_day')}"
            )
    else:
        cause = (
            f"it was built with --split {split_rule}, where a user's second-to-last "
            f"{task} target is validation: no user has enough {task} targets for one "
            "(check the log, or rebuild with lower --min_rec_history / --min_search_history)"
        )
    others = [
        other
        for other in spec.tasks_with_examples("valid", TASKS)
        if other != task and other in spec.tasks_with_examples("train", TASKS)
    ]
    return (
        f"{os.path.join(data_dir, 'valid')} has no {task} examples to pick the best epoch "
        f"with ({data_dir}/manifest.json counts {counts}): {cause}"
        + (f"; or train {others[0]} only (--tasks {others[0]})" if others else "")
        + "."
    )


def step_seeded_dropout(model: tf.keras.Model, seed: int, step: tf.Variable) -> int:
    """Makes every dropout mask of `model` a stateless function of (seed, layer, step,
    replica), like the batches and negatives: a resumed run draws the same masks as an
    uninterrupted one (issue 23). Keras draws them from stateful random ops by default, whose
    state lives in the process, so after a restart they started over at the first step's.

    `step` is the optimizer's step counter (in the checkpoint). The layers are numbered in
    the model's submodule order, the same for the same configuration. Returns how many
    layers draw masks."""
    layers = [
        layer
        for layer in model.submodules
        if isinstance(layer, tf.keras.layers.Layer)
        and hasattr(getattr(layer, "_random_generator", None), "make_seed_for_stateless_op")
    ]
    for index, layer in enumerate(layers):
        generator = layer._random_generator
        generator._maybe_init()
        generator._rng_type = generator.RNG_STATELESS
        generator._generator = None
        generator.make_seed_for_stateless_op = _dropout_seed_function(seed, index, step)
    return len(layers)


def _dropout_seed_function(seed: int, index: int, step: tf.Variable):
    def seed_tensor() -> tf.Tensor:
        context = tf.distribute.get_replica_context()
        replica = context.replica_id_in_sync_group if context is not None else 0
        return tf.stack(
            [
                tf.constant(seed * 1_000_003 + index, tf.int64),
                tf.cast(step, tf.int64) * 4096 + tf.cast(replica, tf.int64),
            ]
        )

    return seed_tensor


def uses_relevance_loss(config: UniSARConfig) -> bool:
    return (
        config.architecture == "unisar"
        and config.model.use_history
        and config.model.use_relevance_loss
        and config.model.alpha_relevance > 0
    )


# --------------------------------------------------------------------------------- trainer
class Trainer:
    """Trains one UniSAR configuration on one data directory; see the module docstring."""

    def __init__(self, config: UniSARConfig, options: TrainerOptions):
        self.options = options
        # First: a multi-worker strategy must exist before the process runs any op.
        self.strategy = make_strategy(options.distribution)
        self.role = worker_role(self.strategy)
        self.replicas = self.strategy.num_replicas_in_sync
        say = progress_log(options.verbose)
        # One trainer per run directory (run_lock): a run in progress is refused here, before
        # any reading; a new directory is locked when fit() starts.
        self._early_lock = (
            RunDirLock(options.model_dir).acquire()
            if self.role.is_chief and os.path.isdir(options.model_dir)
            else None
        )
        # The dict for data_identity (hashed as written); typed reads go through self.spec.
        self.manifest = reader.load_manifest(options.data_dir, options.transform_dir)
        self.spec = DataSpec.from_manifest(self.manifest)
        self.data_identity = reader.data_identity(options.data_dir, self.manifest)
        # The config changes only here, for what the data cannot train: tasks without
        # examples, and the relevance loss without queries. Its sizes are the DataFacts'.
        config, notes = fit_tasks_to_data(config, self.spec, options.data_dir)
        # The manifest's shapes against the files it trains and validates on, up front (the
        # test split is read only by the evaluation, which checks it then: a tuner never
        # touches it).
        for task in config.model.tasks:
            for split in ("train", "valid"):
                if self.spec.tasks_with_examples(split, (task,)):
                    reader.check_example_shapes(options.data_dir, split, task, self.spec)
        self.query_bank = reader.query_bank(options.data_dir, self.spec)
        if not len(self.query_bank) and uses_relevance_loss(config):
            notes.append(
                "the training data has no search query: the query-item relevance "
                "loss is off (use_relevance_loss=False)"
            )
            config = config.replace(use_relevance_loss=False)
        for note in notes:
            say(note)
        self.side_features = (  # KuaiSAR categories, captions, user levels
            run_side_features(options.data_dir, options.transform_dir, self.spec)
            if config.model.reads_side_features
            else None
        )
        tables = None
        if (
            config.model.reads_cooccurrence
        ):  # the data job's tables, or counted on the training split
            with reader.naming_bad_files(options.data_dir, ("train",)):
                table, transitions, note = tables_for_training(
                    options.data_dir,
                    self.spec,
                    self.spec.vocab_sizes.item_table,
                    config.model.tasks,
                )
            if note:
                say(note)
            tables = (table, transitions)
        # What the data sizes the model by (tables, shapes, side features, table pairs).
        self.data = DataFacts.from_spec(self.spec, self.side_features, tables)
        if config.training.batch_size % self.replicas:
            raise ValueError(
                f"batch_size {config.training.batch_size} is the global batch: it must be a "
                f"multiple of the {self.replicas} replicas"
            )
        self.config = config
        tf.keras.utils.set_random_seed(options.seed)
        with self.strategy.scope():
            self.model = build_model(
                config, self.data, side_features=self.side_features, cooccurrence=tables
            )
            self.optimizer = tf.keras.optimizers.Adam(config.training.learning_rate)
            self.model.compile(optimizer=self.optimizer)
            # Slots exist before any restore, so a checkpoint restores them at once, exactly.
            self.optimizer.build(self.model.trainable_variables)
        # Dropout masks from (seed, layer, step): a resumed run draws the masks an
        # uninterrupted one does.
        step_seeded_dropout(self.model, options.seed, self.optimizer.iterations)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_score = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best")
        self.epochs_without_gain = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epochs_since_lr_change = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            epoch=self.epoch,
            best_score=self.best_score,
            epochs_without_gain=self.epochs_without_gain,
            epochs_since_lr_change=self.epochs_since_lr_change,
        )
        # Every worker saves (saving may synchronise them); only the chief's copy is kept.
        self.checkpoint_dir = os.path.join(options.model_dir, "checkpoints")
        save_root = (
            options.model_dir if self.role.is_chief else self.role.scratch_dir(options.model_dir)
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            os.path.join(save_root, "checkpoints"),
            max_to_keep=options.keep_checkpoints,
        )
        self.best_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.model), os.path.join(save_root, "best"), max_to_keep=1
        )
        self._train_step = None
        self._scorers: dict = {}
        self._best: Optional[dict] = None  # this run's best epoch (best.json's content)
        self._resume_changes: dict = {}  # allowed settings this resume changed

    # -- state --------------------------------------------------------------------------
    @property
    def learning_rate(self) -> float:
        return float(tf.keras.backend.get_value(self.optimizer.learning_rate))

    def restore(self) -> Optional[str]:
        """Restores the latest checkpoint of model_dir, if any; returns its path.

        Raises DataMismatchError if model_dir's run was trained on other data."""
        path = tf.train.latest_checkpoint(self.checkpoint_dir)  # the chief's, on every worker
        if path:
            note = check_resumable(self.options.model_dir, self.data_identity, self.data)
            if note:
                progress_log(self.options.verbose)(note)
            # Other hyperparameters than the checkpoint was trained with: refused, listed.
            self._resume_changes = check_same_settings(
                self.options.model_dir, self.config, dataclasses.asdict(self.options)
            )
            self.checkpoint.restore(path).assert_existing_objects_matched()
        return path

    def _write_run_files(self) -> None:
        if not self.role.is_chief:
            return
        tf.io.gfile.makedirs(self.options.model_dir)
        with tf.io.gfile.GFile(os.path.join(self.options.model_dir, CONFIG_FILE), "w") as out:
            out.write(json.dumps(run_config_dict(self.config, self.data), indent=2, sort_keys=True))
        with tf.io.gfile.GFile(os.path.join(self.options.model_dir, OPTIONS_FILE), "w") as out:
            out.write(json.dumps(dataclasses.asdict(self.options), indent=2, sort_keys=True))
        with tf.io.gfile.GFile(os.path.join(self.options.model_dir, DATA_FILE), "w") as out:
            out.write(json.dumps(self.data_identity, indent=2, sort_keys=True))
        changes = {
            name: {"recorded": old, "now": new}  # of what a resume may change
            for name, (old, new) in self._resume_changes.items()
            if name != "verbose"
        }
        if changes:
            path = os.path.join(self.options.model_dir, RESUMES_FILE)
            line = {"after_epoch": int(self.epoch.numpy()), "changed": changes}
            with tf.io.gfile.GFile(path, "a") as out:
                out.write(json.dumps(line, sort_keys=True) + "\n")

    # -- one epoch ----------------------------------------------------------------------
    def _make_train_step(self, element_spec=None):
        """The traced step: every replica steps on its rows (distribution.replica_train_step)
        and the logged losses are averaged. With one replica, batch dimensions are left open
        so the short last batch of an epoch does not trace the graph a second time."""
        model, strategy = self.model, self.strategy
        signature = None
        if element_spec is not None and self.replicas == 1:
            signature = [
                tf.nest.map_structure(
                    lambda spec: tf.TensorSpec([None] + spec.shape[1:].as_list(), spec.dtype),
                    element_spec,
                )
            ]

        @tf.function(input_signature=signature)
        def train_step(batch):
            per_replica = strategy.run(lambda rows: replica_train_step(model, rows), args=(batch,))
            return mean_over_replicas(strategy, per_replica)

        return train_step

    def _train_epoch(
        self,
        epoch: int,
        query_bank: np.ndarray,
        on_step: Optional[Callable[[int, int], None]],
        writer,
    ) -> Dict[str, float]:
        options = self.options
        steps = epoch_steps(self.config, self.spec.examples.split("train"), self.replicas)
        if options.steps_per_epoch:
            steps = min(steps, options.steps_per_epoch)
        dataset = distribute_global_batches(
            self.strategy,
            lambda: training_dataset(
                self.config,
                options.data_dir,
                self.spec,
                query_bank,
                options.seed,
                epoch,
                options.fresh_negatives,
                options.shuffle_buffer,
                self.replicas,
            ).take(steps),
        )
        if self._train_step is None:
            self._train_step = self._make_train_step(dataset.element_spec)
        self.model.reset_metrics()
        progress = (
            tf.keras.utils.Progbar(steps, unit_name="step", stateful_metrics=None)
            if options.verbose >= 2
            else None
        )
        logs: Dict[str, float] = {}
        done = 0
        # A truncated or corrupted file: the error names it (TensorFlow's does not).
        with reader.naming_bad_files(options.data_dir, ("train",), self.config.model.tasks):
            for step, batch in enumerate(dataset):
                done = step + 1
                results = self._train_step(batch)
                logs = {name: float(value) for name, value in results.items()}
                if not math.isfinite(logs.get("loss", 0.0)):
                    raise FloatingPointError(
                        f"epoch {epoch + 1} step {step + 1}: loss is "
                        f"{logs['loss']}; lower the learning rate"
                    )
                if progress is not None:
                    progress.update(
                        step + 1, [(name, logs[name]) for name in ("loss",) if name in logs]
                    )
                global_step = int(self.optimizer.iterations.numpy())
                if writer is not None and global_step % 10 == 0:
                    with writer.as_default(step=global_step):
                        tf.summary.scalar("loss", logs["loss"])
                if on_step is not None:
                    on_step(epoch, step)
        if done < steps:
            raise self._fewer_examples_than_counted(epoch, done, steps)
        return logs

    def _fewer_examples_than_counted(self, epoch: int, done: int, steps: int) -> Exception:
        """The lead task's stream ends (it is not repeated) before the epoch's steps, which
        come from the manifest's count: the files lost examples the data job counted."""
        lead = "rec" if "rec" in self.config.model.tasks else "search"
        count = self.spec.examples.count("train", lead)
        return DataMismatchError(
            f"{os.path.join(self.options.data_dir, 'train')} holds fewer {lead} examples than "
            f"manifest.json counts ({count}): epoch {epoch + 1} ended after {done} of {steps} "
            f"batches of {self.config.training.batch_size}. The example files are incomplete (a "
            "damaged or partly copied build): rebuild them with the data job"
        )

    # -- the loop -----------------------------------------------------------------------
    def fit(self, on_step: Optional[Callable[[int, int], None]] = None) -> dict:
        """Trains until early stopping or max_epochs; returns the best epoch's summary.

        on_step(epoch, step) is called after every step (tests interrupt runs with it).
        Holds model_dir's lock (unisar_tf.train.run_lock) from start to end: another process
        training there is a RunDirLockedError, before anything is read or written.
        """
        lock = RunDirLock(self.options.model_dir) if self.role.is_chief else None
        try:
            with lock or contextlib.nullcontext():
                return self._fit(on_step)
        finally:
            if self._early_lock is not None:
                self._early_lock.release()
                self._early_lock = None

    def run_dir_lock(self):
        """model_dir's lock for callers that keep working there after fit (the CLI's report
        and export); a no-op context on workers other than the chief."""
        return (
            RunDirLock(self.options.model_dir) if self.role.is_chief else contextlib.nullcontext()
        )

    def _fit(self, on_step: Optional[Callable[[int, int], None]]) -> dict:
        options, config = self.options, self.config
        resumed = self.restore()
        self._write_run_files()
        say = progress_log(options.verbose)
        if self.replicas > 1 or self.role.count > 1:
            say(
                f"{STRATEGY_CLASSES[resolve_strategy_name(options.distribution)]}: "
                f"{self.replicas} replicas on "
                f"{self.role.count} worker(s); this is worker {self.role.index}"
                + (" (chief)" if self.role.is_chief else "")
            )
        if resumed:
            say(
                f"resumed from {resumed}: epoch {int(self.epoch.numpy())} done, "
                f"learning rate {self.learning_rate:g}, best validation "
                f"{float(self.best_score.numpy()):.4f}"
            )
            for name, (old, new) in self._resume_changes.items():
                if name != "verbose":
                    say(f"resuming with {name} {new} (recorded {old}; it may change on " "resume)")
        query_bank = self.query_bank
        counts = self.spec.examples.split("train")
        say(
            f"training {counts['rec']} rec + {counts['search']} search examples, tasks "
            f"{'+'.join(config.model.tasks)}, batch {config.training.batch_size}"
            + (
                f" rec + {search_batch_size(counts['rec'], counts['search'], config.training.batch_size, self.replicas)}"  # noqa: E501
                " search"
                if len(config.model.tasks) == 2
                else ""
            )
            + f", {epoch_steps(config, counts, self.replicas)} steps per epoch"
        )
        if self.role.is_chief:
            board = os.path.join(options.model_dir, "tensorboard")
            train_writer = tf.summary.create_file_writer(os.path.join(board, "train"))
            validation_writer = tf.summary.create_file_writer(os.path.join(board, "validation"))
        else:
            train_writer = validation_writer = tf.summary.create_noop_writer()
        stopped_early = False
        while int(self.epoch.numpy()) < options.max_epochs:
            if int(self.epochs_without_gain.numpy()) >= config.training.early_stop_patience:
                stopped_early = True
                break
            epoch = int(self.epoch.numpy())
            started = time.time()
            train_logs = self._train_epoch(epoch, query_bank, on_step, train_writer)
            train_seconds = time.time() - started
            validation = evaluate_model(
                self.model,
                options.data_dir,
                "valid",
                self.spec,
                config.training.eval_batch_size,
                options.validation_rows,
                self._scorers,
            )
            result = self._end_epoch(
                epoch, train_logs, validation, time.time() - started, train_seconds
            )
            with validation_writer.as_default(step=epoch + 1):
                tf.summary.scalar("score_mean_ndcg@5", result.validation_score)
                tf.summary.scalar("learning_rate", result.learning_rate)
                for task, metrics in validation.items():
                    for name, value in metrics.items():
                        if name != "examples":
                            tf.summary.scalar(f"{task}/{name}", value)
            say(
                f"epoch {epoch + 1}: {result.seconds:.0f}s, loss {train_logs.get('loss', 0):.4f}, "
                f"validation NDCG@5 "
                + " ".join(f"{task} {m[VALIDATION_METRIC]:.4f}" for task, m in validation.items())
                + f" (score {result.validation_score:.4f}{', best' if result.improved else ''})"
                + f", lr {result.learning_rate:g}"
            )
        else:
            stopped_early = (
                int(self.epochs_without_gain.numpy()) >= config.training.early_stop_patience
            )
        train_writer.close()
        validation_writer.close()
        if not self.role.is_chief:  # what it saved was a copy for the synchronisation only
            tf.io.gfile.rmtree(self.role.scratch_dir(options.model_dir))
        # This run's best epoch, or (a resumed run without a new best) the one on disk.
        summary = dict(self._best) if self._best else read_best(options.model_dir)
        summary.update(epochs_run=int(self.epoch.numpy()), stopped_early=stopped_early)
        return summary

    def _end_epoch(
        self,
        epoch: int,
        train_logs: Dict[str, float],
        validation: Dict[str, Dict[str, float]],
        seconds: float,
        train_seconds: float = 0.0,
    ) -> EpochResult:
        """Applies the plateau / early-stop policy, writes the best model and the checkpoint."""
        config = self.config
        score = validation_score(validation)
        improved = score > float(self.best_score.numpy())
        if improved:
            self.best_score.assign(score)
            self.epochs_without_gain.assign(0)
            self.epochs_since_lr_change.assign(0)
            self.best_manager.save(checkpoint_number=epoch + 1)
            self._best = {
                "epoch": epoch + 1,
                "validation_score": score,
                "validation": validation,
                "checkpoint": os.path.basename(self.best_manager.latest_checkpoint),
            }
            if self.role.is_chief:
                with tf.io.gfile.GFile(os.path.join(self.options.model_dir, BEST_FILE), "w") as out:
                    out.write(json.dumps(self._best, indent=2, sort_keys=True))
        else:
            self.epochs_without_gain.assign_add(1)
            self.epochs_since_lr_change.assign_add(1)
            if int(self.epochs_since_lr_change.numpy()) >= config.training.lr_reduce_patience:
                reduced = max(
                    self.learning_rate * config.training.lr_reduce_factor,
                    config.training.min_learning_rate,
                )
                self.optimizer.learning_rate.assign(reduced)
                self.epochs_since_lr_change.assign(0)
        result = EpochResult(
            epoch=epoch + 1,
            learning_rate=self.learning_rate,
            train=train_logs,
            validation=validation,
            validation_score=score,
            seconds=seconds,
            improved=improved,
            train_seconds=train_seconds,
        )
        self.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        # After the checkpoint: a crash in between re-runs the epoch without a duplicate line.
        if self.role.is_chief:
            with tf.io.gfile.GFile(os.path.join(self.options.model_dir, HISTORY_FILE), "a") as out:
                out.write(json.dumps(dataclasses.asdict(result), sort_keys=True) + "\n")
        return result
