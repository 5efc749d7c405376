"""The trainer on data it should refuse or adapt to (issue 15, items 4 and 5).

- A run directory records the data it was trained on (model_dir/data.json): the trainer
  refuses to resume it on other data, and loading or evaluating its model on data with other
  vocabularies fails, both with a message that says what to do.
- Single-scenario logs (recommendation only, search only) train the task they have.

Cost: the data are tiny event logs built in-process by the data job (a few seconds each).
The resume tests write a checkpoint with `_end_epoch` by hand (no training step is traced);
the single-task tests train one short epoch each (~30 s each on a shared 2-core machine); the
default preset's also export and score the test split through the SavedModel (~10 s each).
"""

import csv
import json
import logging
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO

from pipeline import beam_job
from pipeline import sequence_builder as sb
from pipeline.adapters import event_log
from unisar_tf.config import amazon_preset, preset
from unisar_tf.data import reader
from unisar_tf.data.cooccurrence import training_cooccurrence, training_transitions
from unisar_tf.export import __main__ as export_cli
from unisar_tf.train.evaluation import evaluate_best, evaluate_saved_model, report_markdown
from unisar_tf.train.run_dir import DATA_FILE, DataMismatchError, load_trained_model
from unisar_tf.train.trainer import Trainer, TrainerOptions

pytestmark = pytest.mark.slow  # every test here builds, trains, exports or serves

IN_MEMORY = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]
# The small flags of the issue, and no minimum history, so a scenario alone makes examples.
OPTIONS = sb.BuildOptions(
    split="loo",
    clicks_per_session=5,
    num_train_negatives=2,
    num_eval_negatives=3,
    rec_len=4,
    search_len=4,
    query_len=3,
    min_rec_history=0,
    min_search_history=0,
)
TINY = dict(
    batch_size=16,
    embedding_dim=16,
    raw_embedding_dim=8,
    feed_forward_dim=16,
    expert_units=8,
    tower_units=(16,),
    head_units=(16,),
    num_relevance_negatives=16,
)


def write_events(path, scenarios, users=12, events_per_user=6, items=20, seed=0, prefix="u"):
    """An event-log CSV: each user's events alternate rec / search (or use the one scenario)."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "scenario",
                "click",
                "user_id",
                "query_tokens",
                "item_id",
                "timestamp",
                "search_session_id",
            ]
        )
        for user in range(users):
            for k in range(events_per_user):
                item, time = f"i{rng.randrange(items)}", 1000 + 100 * k
                scenario = scenarios[k % len(scenarios)]
                if scenario == "search":
                    words = " ".join(f"w{rng.randrange(8)}" for _ in range(2))
                    writer.writerow(
                        ["search", 1, f"{prefix}{user}", words, item, time, f"s{user}_{k}"]
                    )
                else:
                    writer.writerow(["rec", 1, f"{prefix}{user}", "", item, time, ""])
    return str(path)


def build(root, name, **log):
    events = write_events(root / f"{name}.csv", **log)
    output = str(root / name)
    beam_job.run(
        lambda p: event_log.read(p, event_log.EventLogInputs(events=(events,))),
        OPTIONS,
        output,
        dataset="event_log",
        inputs={"events": [events]},
        beam_args=IN_MEMORY,
    )
    return output, reader.load_manifest(output)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    both = ("rec", "search")
    built = {
        "a": build(root, "a", scenarios=both),
        # The same log with other user names: the same sizes and counts, other vocabulary.
        "renamed": build(root, "renamed", scenarios=both, prefix="x"),
        "bigger": build(root, "bigger", scenarios=both, items=40, seed=1),
        "rec_only": build(root, "rec_only", scenarios=("rec",)),
        "search_only": build(root, "search_only", scenarios=("search",)),
    }
    a, renamed = built["a"][1], built["renamed"][1]
    assert a["vocab_sizes"] == renamed["vocab_sizes"] and a["examples"] == renamed["examples"]
    assert built["bigger"][1]["vocab_sizes"]["items"] != a["vocab_sizes"]["items"]
    for name, present, absent in (("rec_only", "rec", "search"), ("search_only", "search", "rec")):
        examples = built[name][1]["examples"]
        assert all(
            examples[split][present] > 0 and examples[split][absent] == 0
            for split in ("train", "valid", "test")
        ), examples
    # A copy of the same data somewhere else is the same data.
    shutil.copytree(built["a"][0], str(root / "a_copy"))
    built["a_copy"] = (str(root / "a_copy"), reader.load_manifest(str(root / "a_copy")))
    return built


def validation(*tasks, value=0.5):
    return {
        task: {
            "HR@1": 0.0,
            "HR@5": value,
            "HR@10": 1.0,
            "NDCG@5": value,
            "NDCG@10": value,
            "examples": 12,
        }
        for task in tasks
    }


# ------------------------------------------------------------- item 4: the run's data
@pytest.fixture(scope="module")
def run_on_a(datasets, tmp_path_factory):
    """A run directory with one finished epoch on data "a" (written by hand, no training)."""
    model_dir = str(tmp_path_factory.mktemp("run") / "model")
    trainer = Trainer(
        amazon_preset(seed=0, **TINY), TrainerOptions(datasets["a"][0], model_dir, verbose=0)
    )
    trainer._write_run_files()
    trainer._end_epoch(0, {"loss": 1.0}, validation("rec", "search"), 0.1)
    return model_dir


def files_of(model_dir):
    paths = {
        name: os.path.join(model_dir, name)
        for name in ("config.json", DATA_FILE, "history.jsonl", "best.json")
    }
    return {
        name: open(path).read() if os.path.exists(path) else None for name, path in paths.items()
    }


def test_the_run_directory_records_the_data_it_was_trained_on(datasets, run_on_a):
    with open(os.path.join(run_on_a, DATA_FILE)) as handle:
        recorded = json.load(handle)
    manifest = datasets["a"][1]
    assert recorded["data_dir"] == datasets["a"][0]
    assert recorded["vocab_sizes"] == manifest["vocab_sizes"]
    assert recorded["examples"] == manifest["examples"]
    assert len(recorded["fingerprint"]) == 64 and len(recorded["vocabulary"]) == 64
    identity = reader.data_identity(datasets["a"][0], manifest)
    assert identity["fingerprint"] == recorded["fingerprint"]
    # The fingerprint is the data's, not its path's; other data has another.
    assert reader.data_identity(*datasets["a_copy"])["fingerprint"] == recorded["fingerprint"]
    for other in ("renamed", "bigger", "rec_only"):
        assert reader.data_identity(*datasets[other])["fingerprint"] != recorded["fingerprint"]
        assert reader.data_identity(*datasets[other])["vocabulary"] != recorded["vocabulary"]


@pytest.mark.parametrize("other", ["renamed", "bigger"])
def test_the_trainer_refuses_to_resume_a_run_of_other_data(datasets, run_on_a, other):
    """ "renamed" has the vocabulary sizes of "a" (it used to resume silently); "bigger" has
    other sizes (it used to fail with TensorFlow's shape error)."""
    before = files_of(run_on_a)
    trainer = Trainer(
        amazon_preset(seed=0, **TINY),
        TrainerOptions(datasets[other][0], run_on_a, max_epochs=5, verbose=0),
    )

    def no_training(epoch, step):
        raise AssertionError("trained on other data")

    with pytest.raises(DataMismatchError) as raised:
        trainer.fit(on_step=no_training)
    message = str(raised.value)
    assert run_on_a in message and datasets["a"][0] in message and datasets[other][0] in message
    assert "new --model_dir" in message and f"delete {run_on_a}" in message
    if other == "bigger":
        assert "vocab_sizes.items" in message
    else:
        assert "vocabulary files" in message
    assert files_of(run_on_a) == before  # nothing of the old run was touched


def test_the_same_data_still_resumes_also_from_a_copy(datasets, run_on_a, caplog):
    caplog.set_level(logging.INFO, logger="unisar_tf.train.trainer")  # its progress lines
    for name in ("a", "a_copy"):
        caplog.clear()
        trainer = Trainer(
            amazon_preset(seed=0, **TINY),
            TrainerOptions(datasets[name][0], run_on_a, max_epochs=1, verbose=1),
        )
        summary = trainer.fit()
        assert summary["epochs_run"] == 1 and summary["epoch"] == 1
        assert "resumed from" in caplog.text


@pytest.mark.parametrize("other", ["renamed", "bigger"])
def test_loading_or_evaluating_the_model_on_other_vocabularies_fails_clearly(
    datasets, run_on_a, other
):
    for load in (
        lambda: load_trained_model(run_on_a, datasets[other][0]),
        lambda: evaluate_best(run_on_a, datasets[other][0], "test", write=False),
    ):
        with pytest.raises(DataMismatchError) as raised:
            load()
        message = str(raised.value)
        assert "other vocabularies" in message and datasets["a"][0] in message
    assert not os.path.exists(os.path.join(run_on_a, "eval"))
    # The data it was trained on, and a copy of it, still load.
    for name in ("a", "a_copy"):
        assert (
            load_trained_model(run_on_a, datasets[name][0]).data.num_items
            == datasets["a"][1]["vocab_sizes"]["items"] + 1
        )


def test_a_run_directory_without_data_json_is_checked_by_its_vocabulary_sizes(datasets, tmp_path):
    """Runs written before data.json existed: other sizes fail clearly, equal ones resume."""
    model_dir = str(tmp_path / "old")
    trainer = Trainer(
        amazon_preset(seed=0, **TINY), TrainerOptions(datasets["a"][0], model_dir, verbose=0)
    )
    trainer._write_run_files()
    trainer._end_epoch(0, {"loss": 1.0}, validation("rec", "search"), 0.1)
    os.remove(os.path.join(model_dir, DATA_FILE))
    with pytest.raises(DataMismatchError, match="vocab_sizes.items"):
        Trainer(
            amazon_preset(seed=0, **TINY),
            TrainerOptions(datasets["bigger"][0], model_dir, verbose=0),
        ).fit()
    with pytest.raises(DataMismatchError, match="other vocabularies"):
        load_trained_model(model_dir, datasets["bigger"][0])
    assert not os.path.exists(os.path.join(model_dir, DATA_FILE))
    summary = Trainer(
        amazon_preset(seed=0, **TINY),
        TrainerOptions(datasets["a"][0], model_dir, max_epochs=1, verbose=0),
    ).fit()
    assert summary["epochs_run"] == 1
    assert os.path.exists(os.path.join(model_dir, DATA_FILE))  # recorded from now on


def test_cli_says_what_to_do_instead_of_a_traceback(datasets, run_on_a):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "unisar_tf.train",
            "--data_dir",
            datasets["bigger"][0],
            "--model_dir",
            run_on_a,
            "--preset",
            "paper",
            "--seed",
            "0",
            "--quiet",
        ]
        + [
            arg
            for name, value in TINY.items()
            for arg in (
                f"--{name}",
                ",".join(map(str, value)) if isinstance(value, tuple) else str(value),
            )
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "new --model_dir" in result.stderr and f"delete {run_on_a}" in result.stderr


# ------------------------------------------------------------ item 5: single-task logs
def test_query_bank_and_cooccurrence_of_a_rec_only_log(datasets):
    out, manifest = datasets["rec_only"]
    bank = reader.query_bank(out, manifest)
    assert bank.shape == (0, manifest["shapes"]["query_len"])
    num_items = manifest["vocab_sizes"]["items"] + 1
    # Both tasks asked for, one present: the tables count the examples there are.
    for count in (training_cooccurrence, training_transitions):
        both = count(out, manifest, num_items, ("rec", "search"))
        rec = count(out, manifest, num_items, ("rec",))
        assert both.num_pairs == rec.num_pairs > 0
        np.testing.assert_array_equal(both.pair_keys, rec.pair_keys)
    out, manifest = datasets["search_only"]
    assert len(reader.query_bank(out, manifest)) > 0


@pytest.mark.parametrize("log,task", [("rec_only", "rec"), ("search_only", "search")])
@pytest.mark.parametrize("preset_name", ["default", "paper"])
def test_a_single_scenario_log_trains_and_reports_its_task(
    datasets, tmp_path, caplog, log, task, preset_name
):
    caplog.set_level(logging.INFO, logger="unisar_tf.train.trainer")  # its notes
    out, manifest = datasets[log]
    missing = "search" if task == "rec" else "rec"
    model_dir = str(tmp_path / "model")
    config = preset(preset_name, seed=0, **TINY)
    assert config.model.tasks == ("rec", "search")
    trainer = Trainer(config, TrainerOptions(out, model_dir, max_epochs=1, verbose=1))
    printed = caplog.text
    assert f"no {missing} training examples" in printed and f"training {task} only" in printed
    assert trainer.config.model.tasks == (task,)
    # L_rel needs search queries: off without them (said so), on with them.
    assert trainer.config.model.use_relevance_loss is (task == "search")
    assert ("relevance loss is off" in printed) is (task == "rec")
    summary = trainer.fit()
    assert summary["epochs_run"] == 1 and set(summary["validation"]) == {task}
    with open(os.path.join(model_dir, "config.json")) as handle:
        assert json.load(handle)["tasks"] == [task]
    with open(os.path.join(model_dir, "history.jsonl")) as handle:
        line = json.loads(handle.readline())
    assert set(line["validation"]) == {task} and np.isfinite(line["train"]["loss"])
    report = evaluate_best(model_dir, out, "test")
    assert set(report["unisar"]) == {task}
    assert report["unisar"][task]["examples"] == manifest["examples"]["test"][task]
    assert report["random"] == {task: report["random"][task]}
    markdown = report_markdown(report)
    assert f"| unisar | {task} |" in markdown and f"| unisar | {missing} |" not in markdown
    if preset_name == "default":
        # The chain a user runs (issue 23 item 3): this real single-scenario run exports,
        # and the SavedModel scores the test split as the checkpoint did.
        serving_dir = str(tmp_path / "serving")
        export_cli.main(["--model_dir", model_dir, "--data_dir", out, "--serving_dir", serving_dir])
        export_dir = os.path.join(serving_dir, "unisar", "1")
        exported = evaluate_saved_model(export_dir, out, "test", tasks=(task,))
        assert exported[task]["examples"] == report["unisar"][task]["examples"]
        for metric in ("HR@1", "HR@5", "NDCG@5", "NDCG@10"):
            assert exported[task][metric] == pytest.approx(
                report["unisar"][task][metric], abs=1e-6
            ), metric


def test_a_task_the_data_lacks_fails_clearly_when_it_is_the_only_one_asked_for(datasets, tmp_path):
    for log, config in (
        ("rec_only", preset("default", tasks=("search",), **TINY)),
        ("search_only", preset("default", architecture="sasrec", tasks=("rec",), **TINY)),
    ):
        out, _ = datasets[log]
        with pytest.raises(DataMismatchError) as raised:
            Trainer(config, TrainerOptions(out, str(tmp_path / log), verbose=0))
        message = str(raised.value)
        wanted, present = config.model.tasks[0], "rec" if log == "rec_only" else "search"
        assert f"no {wanted} training examples" in message and f"--tasks {present}" in message
