"""The trainer on data it should adapt to (issue 15, item 5).

- Single-scenario logs (recommendation only, search only) train the task they have.

Cost: the data are tiny event logs built in-process by the data job (a few seconds each);
the single-task tests train one short epoch each (~30 s each on a shared 2-core machine).
"""
import csv
import json
import os
import random

import numpy as np
import pytest

from pipeline import beam_job
from pipeline import sequence_builder as sb
from pipeline.adapters import event_log
from unisar_tf import data
from unisar_tf.config import preset
from unisar_tf.cooccurrence import training_cooccurrence, training_transitions
from unisar_tf.evaluate import evaluate_best, report_markdown
from unisar_tf.trainer import DataMismatchError, Trainer, TrainerOptions

IN_MEMORY = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]
# The small flags of the issue, and no minimum history, so a scenario alone makes examples.
OPTIONS = sb.BuildOptions(split="loo", clicks_per_session=5, num_train_negatives=2,
                          num_eval_negatives=3, rec_len=4, search_len=4, query_len=3,
                          min_rec_history=0, min_search_history=0)
TINY = dict(batch_size=16, embedding_dim=16, raw_embedding_dim=8, feed_forward_dim=16,
            expert_units=8, tower_units=(16,), head_units=(16,), num_relevance_negatives=16)


def write_events(path, scenarios, users=12, events_per_user=6, items=20, seed=0, prefix="u"):
    """An event-log CSV: each user's events alternate rec / search (or use the one scenario)."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["scenario", "click", "user_id", "query_tokens", "item_id", "timestamp",
                         "search_session_id"])
        for user in range(users):
            for k in range(events_per_user):
                item, time = f"i{rng.randrange(items)}", 1000 + 100 * k
                scenario = scenarios[k % len(scenarios)]
                if scenario == "search":
                    words = " ".join(f"w{rng.randrange(8)}" for _ in range(2))
                    writer.writerow(["search", 1, f"{prefix}{user}", words, item, time,
                                     f"s{user}_{k}"])
                else:
                    writer.writerow(["rec", 1, f"{prefix}{user}", "", item, time, ""])
    return str(path)


def build(root, name, **log):
    events = write_events(root / f"{name}.csv", **log)
    output = str(root / name)
    beam_job.run(lambda p: event_log.read(p, event_log.EventLogInputs(events=(events,))),
                 OPTIONS, output, dataset="event_log", inputs={"events": [events]},
                 beam_args=IN_MEMORY)
    return output, data.load_manifest(output)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    both = ("rec", "search")
    built = {
        "rec_only": build(root, "rec_only", scenarios=("rec",)),
        "search_only": build(root, "search_only", scenarios=("search",)),
    }
    for name, present, absent in (("rec_only", "rec", "search"), ("search_only", "search", "rec")):
        examples = built[name][1]["examples"]
        assert all(examples[split][present] > 0 and examples[split][absent] == 0
                   for split in ("train", "valid", "test")), examples
    return built


# ------------------------------------------------------------ item 5: single-task logs
def test_query_bank_and_cooccurrence_of_a_rec_only_log(datasets):
    out, manifest = datasets["rec_only"]
    bank = data.query_bank(out, manifest)
    assert bank.shape == (0, manifest["shapes"]["query_len"])
    num_items = manifest["vocab_sizes"]["items"] + 1
    # Both tasks asked for, one present: the tables count the examples there are.
    for count in (training_cooccurrence, training_transitions):
        both = count(out, manifest, num_items, ("rec", "search"))
        rec = count(out, manifest, num_items, ("rec",))
        assert both.num_pairs == rec.num_pairs > 0
        np.testing.assert_array_equal(both.pair_keys, rec.pair_keys)
    out, manifest = datasets["search_only"]
    assert len(data.query_bank(out, manifest)) > 0


@pytest.mark.parametrize("log,task", [("rec_only", "rec"), ("search_only", "search")])
@pytest.mark.parametrize("preset_name", ["default", "paper"])
def test_a_single_scenario_log_trains_and_reports_its_task(datasets, tmp_path, capsys, log,
                                                           task, preset_name):
    out, manifest = datasets[log]
    missing = "search" if task == "rec" else "rec"
    model_dir = str(tmp_path / "model")
    config = preset(preset_name, seed=0, **TINY)
    assert config.tasks == ("rec", "search")
    trainer = Trainer(config, TrainerOptions(out, model_dir, max_epochs=1, verbose=1))
    printed = capsys.readouterr().out
    assert f"no {missing} training examples" in printed and f"training {task} only" in printed
    assert trainer.config.tasks == (task,)
    # L_rel needs search queries: off without them (said so), on with them.
    assert trainer.config.use_relevance_loss is (task == "search")
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


def test_a_task_the_data_lacks_fails_clearly_when_it_is_the_only_one_asked_for(datasets,
                                                                              tmp_path):
    for log, config in (("rec_only", preset("default", tasks=("search",), **TINY)),
                        ("search_only", preset("default", architecture="sasrec",
                                               tasks=("rec",), **TINY))):
        out, _ = datasets[log]
        with pytest.raises(DataMismatchError) as raised:
            Trainer(config, TrainerOptions(out, str(tmp_path / log), verbose=0))
        message = str(raised.value)
        wanted, present = config.tasks[0], "rec" if log == "rec_only" else "search"
        assert f"no {wanted} training examples" in message and f"--tasks {present}" in message
