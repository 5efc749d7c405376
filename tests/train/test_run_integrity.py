"""Run directories and data that must not be silently rewritten or misread (issue 23).

- Resuming with other hyperparameters is refused, listing each setting (recorded, requested),
  before anything is written; the epoch budget and early-stopping patience may change, and
  what changed is recorded (resumes.jsonl, config.json).
- One trainer per run directory: an OS lock (run.lock); a second one fails at once naming the
  holder (pid, host); the lock goes with the holder's process.
- A truncated or corrupted TFRecord is named in the error (trainer, evaluation and its CLI).
- A manifest.json that disagrees with the example files is named field by field.
- An empty validation split says which data, which split, the counts and the likely cause.

Cost: the lock's own tests run without TensorFlow. The others use the session's tiny Amazon
examples (tests/helpers/datasets.py), copied where a test damages them, and run directories
written by hand with `_end_epoch` (no training step is traced, so no test here trains).
"""

import copy
import dataclasses
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from helpers import REPO
from helpers.model import TINY_FLAGS, tiny_config

LOCK_HOLDER = [sys.executable, "-m", "unisar_tf.train.run_lock"]


# ----------------------------------------------------------------------- helpers
def hold_lock(model_dir):
    """A process holding model_dir's lock (until its stdin closes or it is killed)."""
    holder = subprocess.Popen(
        LOCK_HOLDER + [str(model_dir)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def release(holder):
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0


def validation(value=0.5):
    return {
        task: {
            "HR@1": 0.0,
            "HR@5": value,
            "HR@10": 1.0,
            "NDCG@5": value,
            "NDCG@10": value,
            "examples": 10,
        }
        for task in ("rec", "search")
    }


def hand_written_run(data_dir, model_dir, config=None, **options):
    """A run directory with one finished epoch (checkpoint, best/, history), no training."""
    from unisar_tf.train.trainer import Trainer, TrainerOptions

    trainer = Trainer(
        config or tiny_config(), TrainerOptions(data_dir, str(model_dir), verbose=0, **options)
    )
    trainer._write_run_files()
    trainer._end_epoch(0, {"loss": 1.0}, validation(), 0.1)
    return trainer


def snapshot(model_dir):
    """{relative path: (bytes, mtime)} of every file of a run directory but its lock."""
    found = {}
    for folder, _, files in os.walk(model_dir):
        for name in files:
            path = os.path.join(folder, name)
            if name != "run.lock":
                with open(path, "rb") as handle:
                    found[os.path.relpath(path, model_dir)] = (
                        handle.read(),
                        os.stat(path).st_mtime_ns,
                    )
    return found


@pytest.fixture(scope="module")
def finished_run(amazon_examples, tmp_path_factory):
    """A run directory with one finished epoch on the tiny examples (written by hand, no
    training): max_epochs 100, early_stop_patience 5. Tests work on copies (run_copy)."""
    out, _ = amazon_examples
    model_dir = tmp_path_factory.mktemp("finished") / "model"
    hand_written_run(out, model_dir)
    return model_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A private copy of finished_run (the data it names is the same data)."""
    target = tmp_path / "model"
    shutil.copytree(finished_run, target)
    return target


@pytest.fixture
def data_copy(amazon_examples, tmp_path):
    """A private copy of the tiny examples, for tests that damage them."""
    out, _ = amazon_examples
    target = str(tmp_path / "data")
    shutil.copytree(out, target)
    return target


def truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) * 2 // 3])  # the first record stays whole


def flip_a_byte(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) * 2 // 3] ^= 0xFF
    with open(path, "wb") as handle:
        handle.write(bytes(data))


# -------------------------------------------------------------- the run directory lock
def test_a_held_run_directory_is_refused_at_once_naming_the_holder(tmp_path):
    from unisar_tf.train.run_lock import RunDirLock, RunDirLockedError

    model_dir = tmp_path / "model"
    holder = hold_lock(model_dir)
    try:
        with pytest.raises(RunDirLockedError) as raised:
            RunDirLock(str(model_dir)).acquire()
        message = str(raised.value)
        assert str(model_dir) in message
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message
        assert "another --model_dir" in message
    finally:
        release(holder)
    with RunDirLock(str(model_dir)) as lock:  # released with its holder
        assert lock.held
        # Re-entrant within one process (a Trainer inside the CLI's hold).
        with RunDirLock(str(model_dir)) as inner:
            assert inner.held
        other = subprocess.run(
            LOCK_HOLDER + [str(model_dir)],
            cwd=REPO,
            input="",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode == 1 and f"pid {os.getpid()}" in other.stderr
        assert "Traceback" not in other.stderr


def test_the_lock_goes_with_a_killed_holder(tmp_path):
    from unisar_tf.train.run_lock import RunDirLock

    holder = hold_lock(tmp_path)
    holder.send_signal(signal.SIGKILL)  # no clean-up runs
    holder.wait(timeout=30)
    with RunDirLock(str(tmp_path)) as lock:
        assert lock.held


@pytest.mark.slow
def test_a_second_trainer_on_a_run_in_progress_fails_before_reading_or_writing(
    amazon_examples, run_copy, tmp_path
):
    from unisar_tf.train.run_lock import RunDirLock, RunDirLockedError
    from unisar_tf.train.trainer import Trainer, TrainerOptions

    out, _ = amazon_examples
    model_dir = run_copy
    before = snapshot(model_dir)
    holder = hold_lock(model_dir)
    try:
        # A run directory that exists: refused when the trainer is made.
        with pytest.raises(RunDirLockedError, match=f"pid {holder.pid}"):
            Trainer(tiny_config(), TrainerOptions(out, str(model_dir), max_epochs=2, verbose=0))
        # A new one, locked by another process after the trainer was made: fit() refuses.
        fresh = tmp_path / "fresh"
        trainer = Trainer(tiny_config(), TrainerOptions(out, str(fresh), verbose=0))
        second = hold_lock(fresh)
        try:
            with pytest.raises(RunDirLockedError) as raised:
                trainer.fit(on_step=lambda epoch, step: pytest.fail("trained"))
            assert str(fresh) in str(raised.value) and f"pid {second.pid}" in str(raised.value)
            assert sorted(os.listdir(fresh)) == ["run.lock"]
        finally:
            release(second)
    finally:
        release(holder)
    assert snapshot(model_dir) == before
    with RunDirLock(str(model_dir)) as lock:  # free again once the holder is gone
        assert lock.held


@pytest.mark.slow
def test_the_cli_says_who_holds_the_run_directory(amazon_examples, tmp_path, capsys):
    from unisar_tf.train import cli

    out, _ = amazon_examples
    model_dir = tmp_path / "model"
    holder = hold_lock(model_dir)
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(
                ["--data_dir", out, "--model_dir", str(model_dir), "--preset", "paper", "--quiet"]
                + TINY_FLAGS
            )
    finally:
        release(holder)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"{model_dir} is in use by another trainer (pid {holder.pid} on host" in err
    assert sorted(os.listdir(model_dir)) == ["run.lock"]


# ------------------------------------------------------- resuming with other settings
@pytest.mark.slow
def test_resuming_with_other_hyperparameters_is_refused_listing_them(
    amazon_examples, run_copy, capsys
):
    """The issue's command and a flag that changes the shapes: refused before anything is
    written. Before, the first trained on with the restored values and rewrote config.json
    with the requested ones; the second failed in TensorFlow's checkpoint restore."""
    from unisar_tf.train import cli

    out, _ = amazon_examples
    model_dir = run_copy
    before = snapshot(model_dir)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            [
                "--data_dir",
                out,
                "--model_dir",
                str(model_dir),
                "--preset",
                "paper",
                "--quiet",
                "--max_epochs",
                "3",
                "--learning_rate",
                "0.05",
                "--dropout",
                "0.5",
            ]
            + TINY_FLAGS
            + ["--embedding_dim", "32"]
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{model_dir} holds a run trained with other settings" in err
    assert "new --model_dir" in err
    listed = err.split("(", 1)[1].split(")")[0]
    assert listed.split("; ") == [
        "dropout: recorded 0.1, requested 0.5",
        "embedding_dim: recorded 16, requested 32",
        "learning_rate: recorded 0.001, requested 0.05",
    ]
    assert snapshot(model_dir) == before  # config.json still says what was trained


@pytest.mark.slow
def test_every_setting_but_the_resumable_ones_must_match(amazon_examples, finished_run):
    from unisar_tf.config import UniSARConfig
    from unisar_tf.train.run_dir import RESUMABLE_CONFIG_FIELDS, RESUMABLE_OPTIONS, setting_changes
    from unisar_tf.train.trainer import TrainerOptions

    out, _ = amazon_examples
    with open(finished_run / "config.json") as handle:
        config = UniSARConfig.from_dict(json.load(handle))
    options = dataclasses.asdict(TrainerOptions(out, str(finished_run), verbose=0))
    assert setting_changes(str(finished_run), config, options) == ({}, {})
    refused, allowed = setting_changes(
        str(finished_run),
        config.replace(early_stop_patience=7, eval_batch_size=64, num_layers=2),
        dict(options, max_epochs=3, seed=1, steps_per_epoch=2, distribution="default"),
    )
    assert refused == {"num_layers": (1, 2), "seed": (0, 1), "steps_per_epoch": (None, 2)}
    assert allowed == {
        "early_stop_patience": (5, 7),
        "eval_batch_size": (512, 64),
        "max_epochs": (100, 3),
        "distribution": ("auto", "default"),
    }
    assert set(RESUMABLE_CONFIG_FIELDS) == {"early_stop_patience", "eval_batch_size"}
    assert "max_epochs" in RESUMABLE_OPTIONS and "seed" not in RESUMABLE_OPTIONS


@pytest.mark.slow
def test_the_epoch_budget_and_patience_may_change_and_the_change_is_recorded(
    amazon_examples, finished_run, run_copy
):
    from unisar_tf.train.run_dir import RESUMES_FILE
    from unisar_tf.train.trainer import Trainer, TrainerOptions

    out, _ = amazon_examples
    model_dir = run_copy  # max_epochs 100, early_stop_patience 5
    trainer = Trainer(
        tiny_config(early_stop_patience=9),
        TrainerOptions(out, str(model_dir), max_epochs=1, verbose=0),
    )
    summary = trainer.fit(on_step=lambda epoch, step: pytest.fail("trained"))
    assert summary["epochs_run"] == 1
    with open(model_dir / "config.json") as handle:
        assert json.load(handle)["early_stop_patience"] == 9  # what the run goes on with
    with open(model_dir / RESUMES_FILE) as handle:
        lines = [json.loads(line) for line in handle]
    assert lines == [
        {
            "after_epoch": 1,
            "changed": {
                "early_stop_patience": {"recorded": 5, "now": 9},
                "max_epochs": {"recorded": 100, "now": 1},
                "model_dir": {"recorded": str(finished_run), "now": str(model_dir)},
            },
        }
    ]  # a copy


# ------------------------------------------------------- damaged and mismatched data
@pytest.mark.slow
@pytest.mark.parametrize("damage", [truncate, flip_a_byte])
def test_a_damaged_example_file_is_named(data_copy, damage):
    import tensorflow as tf

    from unisar_tf.data import reader

    manifest = reader.load_manifest(data_copy)
    bad = reader.example_files(data_copy, "train", "rec")[0]
    damage(bad)
    with pytest.raises(tf.errors.DataLossError) as raised:  # still a DataLossError
        reader.load_arrays(data_copy, "train", "rec", manifest)
    assert isinstance(raised.value, reader.CorruptExampleFileError)
    message = str(raised.value)
    assert bad in message and "truncated or corrupted" in message
    assert ("truncated record" if damage is truncate else "inflate") in message
    # Found by reading each file on its own: only the damaged one fails.
    found = reader.find_bad_files(sorted(glob.glob(os.path.join(data_copy, "*", "*.gz"))))
    assert [path for path, _ in found] == [bad] and f"{bad} ({found[0][1]})" in message


@pytest.mark.slow
def test_the_trainer_and_the_evaluation_name_a_truncated_file(data_copy, run_copy, capsys):
    from unisar_tf.data import reader
    from unisar_tf.train import evaluation
    from unisar_tf.train.trainer import Trainer, TrainerOptions

    model_dir = run_copy  # trained on the same data as data_copy
    train_rec = reader.example_files(data_copy, "train", "rec")[0]
    test_search = reader.example_files(data_copy, "test", "search")[0]
    truncate(train_rec)
    truncate(test_search)
    trainer = Trainer(
        tiny_config(), TrainerOptions(data_copy, str(model_dir), max_epochs=2, verbose=0)
    )
    with pytest.raises(reader.CorruptExampleFileError, match=train_rec):
        trainer.fit()  # the first batch fails, before any step
    with pytest.raises(SystemExit) as exit_info:
        evaluation.main(["--model_dir", str(model_dir), "--data_dir", data_copy])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert test_search in err and "truncated record" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize(
    "field,value",
    [("rec_len", 20), ("query_len", 6), ("eval_candidates", 100), ("train_negative_pool", 4)],
)
def test_a_manifest_that_disagrees_with_the_files_is_named_field_by_field(
    amazon_examples, field, value
):
    from unisar_tf.data import reader

    out, manifest = amazon_examples
    edited = copy.deepcopy(manifest)
    held = edited["shapes"][field]
    edited["shapes"][field] = value
    split = "valid" if field == "eval_candidates" else "train"
    with pytest.raises(reader.ManifestMismatchError) as raised:
        reader.read_examples(out, split, "search", 8, edited)
    message = str(raised.value)
    assert f"manifest.json says {field} {value}, the files hold {held}" in message
    assert reader.example_files(out, split, "search")[0] in message
    reader.read_examples(out, split, "search", 8, manifest)  # the right manifest reads


@pytest.mark.slow
def test_the_trainer_checks_the_manifest_before_building_anything(data_copy):
    from unisar_tf.data import reader
    from unisar_tf.train.trainer import Trainer, TrainerOptions

    path = os.path.join(data_copy, "manifest.json")
    with open(path) as handle:
        manifest = json.load(handle)
    manifest["shapes"]["rec_len"] = 20
    with open(path, "w") as handle:
        json.dump(manifest, handle)
    with pytest.raises(
        reader.ManifestMismatchError, match="manifest.json says rec_len 20, the files hold 5"
    ):
        Trainer(tiny_config(), TrainerOptions(data_copy, os.path.join(data_copy, "m"), verbose=0))


# ------------------------------------------------------------ empty validation split
def manifest_with(split_rule, valid):
    return {
        "vocab_sizes": {"users": 50, "items": 30, "words": 20},
        "shapes": {
            "rec_len": 5,
            "search_len": 5,
            "query_len": 3,
            "clicks_per_session": 2,
            "train_candidates": 5,
            "eval_candidates": 11,
        },
        "examples": {
            "train": {"rec": 40, "search": 30},
            "valid": valid,
            "test": {"rec": 12, "search": 10},
        },
        "build_options": {"split": split_rule},
    }


def test_an_empty_validation_split_says_where_and_why():
    from unisar_tf.train.run_dir import DataMismatchError
    from unisar_tf.train.trainer import fit_tasks_to_data

    config = tiny_config()
    with pytest.raises(DataMismatchError) as raised:
        fit_tasks_to_data(config, manifest_with("time", {"rec": 0, "search": 7}), "out/x")
    message = str(raised.value)
    assert message.startswith(f"{os.path.join('out/x', 'valid')} has no rec examples")
    assert "valid {'rec': 0, 'search': 7}" in message and "--split time" in message
    assert "far-future timestamp" in message and "--tasks search" in message
    # The data job's report on its cut (manifest.json time_split), when it has one.
    reported = dict(
        manifest_with("time", {"rec": 0, "search": 7}),
        time_split={
            "valid_day": "2024-05-01",
            "test_day": "2024-05-02",
            "events": {"train_days": 90, "valid_day": 4, "test_day": 6},
        },
    )
    with pytest.raises(DataMismatchError, match=r"validation day was 2024-05-01 \(4 events\)"):
        fit_tasks_to_data(config, reported, "out/x")
    reported["time_split"]["warning"] = "--split time: the valid split(s) have no example."
    with pytest.raises(DataMismatchError, match="The data job said: --split time: the valid"):
        fit_tasks_to_data(config, reported, "out/x")
    with pytest.raises(DataMismatchError) as raised:
        fit_tasks_to_data(config, manifest_with("loo", {"rec": 3, "search": 0}), "out/x")
    message = str(raised.value)
    assert "no search examples" in message and "--split loo" in message
    assert "--tasks rec" in message and "far-future" not in message
