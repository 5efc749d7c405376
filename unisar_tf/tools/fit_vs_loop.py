"""The project's training loop against `model.fit` on the same model and data (issue 24).

    python -m unisar_tf.tools.fit_vs_loop [--steps_per_epoch 20 --max_epochs 2 --interrupt_at 27
                                           --save_freq 5]

Writes a small synthetic data directory (unisar_tf.data.synthetic) and trains one model both
ways: a Trainer builds it (the default preset at small widths, Adam, step-seeded dropout), and
fit gets that Trainer's model (so the same dropout seeding, from the optimizer's step, and
TFRS's train step) with the loop's own per-epoch datasets (`training_dataset` of
epoch 0, 1, ... concatenated, steps_per_epoch batches each). It measures:

1. Step time: the median interval between consecutive steps over `--rounds` epochs of each
   (the uninterrupted runs' models, their functions traced), the two alternating, the first
   `--warmup` steps of every epoch left out.
2. Resume: N = epochs x steps_per_epoch steps uninterrupted, against a run stopped after step
   `--interrupt_at` and resumed to N with a new model. The loop resumes its own way (Trainer.fit
   restores the last epoch's checkpoint and reruns that epoch); fit resumes from
   BackupAndRestore(save_freq=--save_freq)'s mid-epoch backup, once as it is and once with the
   dataset made to skip the batches the backup already trained on (read from the backup).
   Printed: the max abs difference of the weights and Adam's state from the uninterrupted
   run's, whether the batches after the resume are the uninterrupted run's (a fingerprint of
   every step's batch), steps redone. Also uninterrupted fit against the uninterrupted loop.
3. fit on a dataset one batch short of epochs x steps_per_epoch: whether fit stops with an
   error (the loop raises DataMismatchError when the files hold fewer examples than counted).

Every figure is measured on this run; nothing is copied in.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from unisar_tf import logs
from unisar_tf.config import DataFacts, default_preset
from unisar_tf.data.synthetic import generate_synthetic_data, write_data_dir
from unisar_tf.train.inputs import training_dataset
from unisar_tf.train.trainer import Trainer, TrainerOptions

# The model: the default preset at small widths (the Trainer sizes its tables by the data).
WIDTHS = dict(
    batch_size=32,
    embedding_dim=16,
    raw_embedding_dim=8,
    feed_forward_dim=16,
    expert_units=8,
    tower_units=(16,),
    head_units=(16,),
    num_relevance_negatives=64,
)
# The synthetic data's sizes: 200 users give ~2,500 rec training examples, 78 batches.
FACTS = DataFacts(
    num_users=201,
    num_items=200,
    num_words=60,
    rec_len=30,
    search_len=30,
    query_len=8,
    clicks_per_session=2,
)


def write_synthetic_data(data_dir: str, seed: int) -> None:
    training = default_preset(seed=seed, **WIDTHS).training
    data = generate_synthetic_data(
        FACTS,
        num_train_negatives=training.num_train_negatives,
        num_eval_negatives=training.num_eval_negatives,
        seed=seed,
    )
    write_data_dir(data, FACTS, data_dir, seed)


class Interrupted(Exception):
    """Stands for the process being killed after a step."""


def fingerprint(batch):
    """One int64 per batch (a position-weighted sum of every feature): equal fingerprints,
    same batch."""
    total = tf.constant(0, tf.int64)
    for leaf in tf.nest.flatten(batch):
        flat = tf.reshape(tf.cast(leaf, tf.int64), [-1])
        total += tf.reduce_sum(flat * tf.range(1, tf.size(flat, tf.int64) + 1))
    return total


class Run:
    """One training run: its Trainer (model, optimizer) and every step's batch fingerprint."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.prints: List[int] = []

    def step_done(self, interrupt_at: Optional[int]) -> None:
        if interrupt_at is not None and int(self.trainer.optimizer.iterations) == interrupt_at:
            raise Interrupted

    def weights(self):
        """The model's trainable weights and the optimizer's variables (Adam's slots, step);
        not the loss metrics' running means, which every epoch starts over."""
        variables = self.trainer.model.trainable_weights + self.trainer.optimizer.variables
        return [variable.numpy() for variable in variables]


class Setup:
    def __init__(self, data_dir: str, scratch: str, epochs: int, steps: int, seed: int):
        self.data_dir, self.scratch = data_dir, scratch
        self.epochs, self.steps, self.seed = epochs, steps, seed

    def trainer(self, name: str):
        options = TrainerOptions(
            self.data_dir,
            os.path.join(self.scratch, name),
            max_epochs=self.epochs,
            seed=self.seed,
            steps_per_epoch=self.steps,
            validation_rows=64,
            verbose=0,
        )
        return Trainer(default_preset(seed=self.seed, **WIDTHS), options)

    def loop(self, name: str, interrupt_at: Optional[int] = None) -> Run:
        """Trainer.fit in model_dir `name` (a second call resumes it); fingerprints recorded
        inside the traced step, as fit's are."""
        run = Run(self.trainer(name))
        make = run.trainer._make_train_step

        def recording(element_spec=None):
            step = make(element_spec)

            @tf.function
            def with_print(batch):
                return dict(step(batch), fingerprint=fingerprint(batch))

            def call(batch):
                out = with_print(batch)
                run.prints.append(int(out.pop("fingerprint")))
                return out

            return call

        run.trainer._make_train_step = recording
        try:
            run.trainer.fit(on_step=lambda epoch, step: run.step_done(interrupt_at))
        except Interrupted:
            pass
        return run

    def epoch_dataset(self, trainer, epoch: int):
        """The loop's dataset of an epoch (steps_per_epoch batches)."""
        options = trainer.options
        return training_dataset(
            trainer.config,
            self.data_dir,
            trainer.spec,
            trainer.query_bank,
            self.seed,
            epoch,
            options.fresh_negatives,
            options.shuffle_buffer,
        ).take(self.steps)

    def epochs_dataset(self, trainer, skip: int = 0, drop: int = 0):
        """The loop's datasets of every epoch one after the other, less `skip` first and
        `drop` last batches."""
        parts = [self.epoch_dataset(trainer, epoch) for epoch in range(self.epochs)]
        dataset = parts[0]
        for part in parts[1:]:
            dataset = dataset.concatenate(part)
        return dataset.take(self.epochs * self.steps - drop).skip(skip)

    def fit(
        self,
        name: str,
        backup: Optional[str] = None,
        save_freq: int = 1,
        interrupt_at: Optional[int] = None,
        skip_trained: bool = False,
    ) -> Run:
        """model.fit on a Trainer's model; with `backup`, under BackupAndRestore there (a
        second call resumes). skip_trained: the dataset starts after the batches the backup
        holds the training of."""
        run = Run(self.trainer(name))
        model = run.trainer.model
        tfrs_step = model.train_step  # TFRS: compute_loss, the gradient, Adam

        def train_step(batch):
            return dict(tfrs_step(batch), fingerprint=fingerprint(batch))

        model.train_step = train_step

        class Record(tf.keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                run.prints.append(int(logs["fingerprint"]))
                run.step_done(interrupt_at)

        skip = backup_step(backup, self.steps) if skip_trained else 0
        callbacks = [Record()]
        if backup:
            callbacks.insert(0, tf.keras.callbacks.BackupAndRestore(backup, save_freq=save_freq))
        try:
            model.fit(
                self.epochs_dataset(run.trainer, skip=skip),
                epochs=self.epochs,
                steps_per_epoch=self.steps,
                callbacks=callbacks,
                verbose=0,
            )
        except Interrupted:
            pass
        return run


def time_steps(setup: Setup, loop: Run, fit: Run, rounds: int, warmup: int) -> dict:
    """{"loop" | "fit": (median ms between consecutive steps, intervals)}: `rounds` epochs each,
    alternating (loop first in even rounds, fit first in odd ones, so a drift in the machine's
    load falls on both), the first `warmup` steps of every epoch left out. Trains the
    uninterrupted runs' models on (their functions are traced already)."""
    gaps: Dict[str, List[float]] = {"loop": [], "fit": []}
    trainer, model = loop.trainer, fit.trainer.model
    stamps: List[float] = []  # perf_counter after every step of the epoch being timed

    def stamp(*_) -> None:
        stamps.append(time.perf_counter())

    timer = tf.keras.callbacks.LambdaCallback(on_train_batch_end=stamp)
    for index in range(rounds):
        epoch = setup.epochs + index  # an epoch neither run has seen, the same for both
        for column in ("loop", "fit") if index % 2 == 0 else ("fit", "loop"):
            stamps.clear()
            if column == "loop":
                trainer._train_epoch(epoch, trainer.query_bank, stamp, None)
            else:
                dataset = setup.epoch_dataset(fit.trainer, epoch)
                model.fit(dataset, steps_per_epoch=setup.steps, callbacks=[timer], verbose=0)
            kept = stamps[warmup:]
            gaps[column] += [(later - earlier) * 1000 for earlier, later in zip(kept, kept[1:])]
    return {column: (statistics.median(values), len(values)) for column, values in gaps.items()}


def backup_step(backup: str, steps_per_epoch: int) -> int:
    """How many steps the latest BackupAndRestore backup in `backup` holds (0 without one),
    from the epoch and batch Keras saves with it."""
    path = tf.train.latest_checkpoint(os.path.join(backup, "chief"))
    if not path:
        return 0
    reader = tf.train.load_checkpoint(path)
    epoch = int(reader.get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    batch = int(reader.get_tensor("ckpt_saved_batch/.ATTRIBUTES/VARIABLE_VALUE"))
    return epoch * steps_per_epoch + batch + 1


def max_difference(first: Run, second: Run) -> float:
    return max(float(np.max(np.abs(a - b))) for a, b in zip(first.weights(), second.weights()))


def resume_row(straight: Run, resumed: Run, stopped_at: int) -> dict:
    """The resumed run against the uninterrupted one; the step it resumed from is the steps
    it ended with less those it ran."""
    steps_at_end = int(resumed.trainer.optimizer.iterations)
    restored_at = steps_at_end - len(resumed.prints)
    return {
        "restored_at_step": restored_at,
        "steps_redone": stopped_at - restored_at,
        "steps_at_end": steps_at_end,
        "max_weight_difference": max_difference(straight, resumed),
        "same_batches_after_resume": resumed.prints == straight.prints[restored_at:],
    }


def measure(
    data_dir: str,
    scratch: str,
    epochs: int = 2,
    steps_per_epoch: int = 20,
    interrupt_at: int = 27,
    save_freq: int = 5,
    warmup: int = 3,
    seed: int = 0,
    rounds: int = 6,
) -> Dict[str, dict]:
    """The numbers of the module docstring, by column: loop, fit, fit_skip; and "short"."""
    setup = Setup(data_dir, scratch, epochs, steps_per_epoch, seed)
    total = epochs * steps_per_epoch
    if not 0 < interrupt_at < total:
        raise ValueError(f"interrupt_at must be in 1..{total - 1}")
    results: Dict[str, dict] = {}

    loop = setup.loop("loop")
    setup.loop("loop_resumed", interrupt_at)
    loop_resumed = setup.loop("loop_resumed")
    results["loop"] = dict(resume_row(loop, loop_resumed, interrupt_at))

    fit = setup.fit("fit")
    results["fit"] = {
        "vs_loop_uninterrupted": max_difference(loop, fit),
        "same_batches_as_loop": fit.prints == loop.prints,
    }
    # One stopped run; each way of resuming gets its own copy of the backup.
    stopped = os.path.join(scratch, "backup")
    setup.fit("fit_stopped", stopped, save_freq, interrupt_at)
    for column, skip in (("fit", False), ("fit_skip", True)):
        backup = shutil.copytree(stopped, os.path.join(scratch, f"backup_{column}"))
        resumed = setup.fit(f"{column}_resumed", backup, save_freq, skip_trained=skip)
        results.setdefault(column, {}).update(resume_row(fit, resumed, interrupt_at))

    # One batch short (last: it trains the uninterrupted fit model on): fit's own handling,
    # the data handler's warning, against the loop's DataMismatchError.
    steps_run = []

    class Count(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps_run.append(batch)

    try:
        fit.trainer.model.fit(
            setup.epochs_dataset(fit.trainer, drop=1),
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=[Count()],
            verbose=0,
        )
        error = None
    except Exception as raised:  # noqa: BLE001 - reported, whatever it is
        error = type(raised).__name__
    results["short"] = {"steps_expected": total, "steps_run": len(steps_run), "error": error}
    for column, timing in time_steps(setup, loop, fit, rounds, warmup).items():
        results[column]["ms_per_step"] = timing
    return results


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def table(results: Dict[str, dict], args) -> str:
    columns = [("loop", "project loop (Trainer)"), ("fit", "model.fit + BackupAndRestore")]
    columns.append(("fit_skip", "fit + BackupAndRestore + dataset.skip(backup's step)"))

    def cell(column: str, key: str, show) -> str:
        value = results[column].get(key)
        return "—" if value is None else show(value)

    rows = [
        (
            "ms/step: median of the timed steps (count)",
            "ms_per_step",
            lambda v: f"{v[0]:.1f} ({v[1]})",
        ),
        ("resumes from step", "restored_at_step", str),
        (f"steps redone after the stop at step {args.interrupt_at}", "steps_redone", str),
        ("optimizer steps at the end", "steps_at_end", str),
        (
            "max abs(resumed − uninterrupted), weights and Adam state",
            "max_weight_difference",
            lambda v: f"{v:.3g}",
        ),
        ("batches after the resume = uninterrupted's", "same_batches_after_resume", yes_no),
        ("uninterrupted: the loop's batches, step by step", "same_batches_as_loop", yes_no),
        (
            "uninterrupted: max abs(weights and Adam state − the loop's)",
            "vs_loop_uninterrupted",
            lambda v: f"{v:.3g}",
        ),
    ]
    lines = ["| | " + " | ".join(title for _, title in columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for title, key, show in rows:
        lines.append(f"| {title} | " + " | ".join(cell(c, key, show) for c, _ in columns) + " |")
    short = results["short"]
    lines.append(
        f"\nfit on a dataset one batch short of {short['steps_expected']} steps: ran "
        f"{short['steps_run']} steps, "
        + (f"raised {short['error']}" if short["error"] else "returned without an error")
        + " (the loop raises DataMismatchError from the manifest's count)"
    )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    logs.setup(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_epochs", type=int, default=2, help="the epochs of every run")
    parser.add_argument("--steps_per_epoch", type=int, default=20)
    parser.add_argument("--interrupt_at", type=int, default=27, help="stop after this step")
    parser.add_argument("--save_freq", type=int, default=5, help="BackupAndRestore's, in steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of each timed epoch")
    parser.add_argument("--rounds", type=int, default=6, help="timed epochs of each")
    parser.add_argument("--seed", type=int, default=0)
    logs.add_verbose_flag(parser)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = os.path.join(scratch, "data")
        write_synthetic_data(data_dir, args.seed)
        results = measure(
            data_dir,
            scratch,
            args.max_epochs,
            args.steps_per_epoch,
            args.interrupt_at,
            args.save_freq,
            args.warmup,
            args.seed,
            args.rounds,
        )
    print(
        f"\nDefault preset at small widths, batch {WIDTHS['batch_size']}, synthetic data; "
        f"{args.max_epochs} epochs x {args.steps_per_epoch} steps, stopped after step "
        f"{args.interrupt_at}, BackupAndRestore save_freq {args.save_freq}; {os.cpu_count()} "
        f"CPUs, {platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}\n"
    )
    print(table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
