"""The KerasTuner search (unisar_tf.tools.tune) on the tiny Amazon fixture: 2 trials x 1 epoch x
2 steps of a tiny model. Records, repeatability, reuse of finished trials, no test split."""

import json
import os
import types

import pytest
from helpers.datasets import POOL, STEPS
from helpers.model import TINY

from feature_specs import SequenceShapes
from feature_specs.data_spec import Candidates, DataSpec, VocabSizes
from unisar_tf.data import reader
from unisar_tf.tools import tune
from unisar_tf.train import cli

pytestmark = pytest.mark.slow  # trains (the amazon_examples fixture marks it too)

SEARCHED = ("learning_rate", "dropout", "embedding_dim", "num_train_negatives")
# TINY's fields except the searched embedding size, on the no-history model without the
# co-occurrence and interaction features: a trial traces in seconds, not a minute (the search
# is what is tested here, not the model).
FIXED = dict(
    {name: value for name, value in TINY.items() if name not in SEARCHED},
    use_history=False,
    use_cooccurrence=False,
    interaction_features=False,
)
FIXED_SETS = [
    arg for name, value in FIXED.items() for arg in ("--set", f"{name}={json.dumps(value)}")
]


def command(data_dir, out_dir, **changes):
    flags = {
        "--seed": "0",
        "--max_trials": "2",
        "--max_epochs": "1",
        "--steps_per_epoch": str(STEPS),
        "--validation_rows": "32",
        "--learning_rates": "1e-3,3e-3",
        "--dropouts": "0.0,0.2",
        "--embedding_dims": "8,16",
        "--negatives": "4,10,20",
        "--verbose": "0",
    }
    flags.update(changes)
    return (
        ["--data_dir", data_dir, "--out_dir", str(out_dir)]
        + [part for pair in flags.items() for part in pair]
        + FIXED_SETS
    )


def read_report(out_dir):
    with open(os.path.join(out_dir, "tuning.json")) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def searched(amazon_examples, tmp_path_factory):
    """The same command run into two out_dirs; every split the reader opened meanwhile."""
    data_dir, _ = amazon_examples
    root = tmp_path_factory.mktemp("tune")
    opened = []
    original = reader.example_files

    def recording(data_dir, split, scenario):
        opened.append(split)
        return original(data_dir, split, scenario)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reader, "example_files", recording)
        for name in ("a", "b"):
            tune.main(command(data_dir, root / name))
    return types.SimpleNamespace(
        data_dir=data_dir, a=str(root / "a"), b=str(root / "b"), opened=opened
    )


def test_the_search_records_its_trials_and_a_table_sorted_by_score(searched):
    out = searched.a
    # KerasTuner's own records, in out_dir.
    for name in ("oracle.json", "tuner0.json", "search.json", "tuning.md", "tuning.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    report = read_report(out)
    rows = report["rows"]
    assert len(rows) == 2 and all(row["status"] == "COMPLETED" for row in rows)
    for row in rows:
        assert os.path.isfile(os.path.join(out, f"trial_{row['trial']}", "trial.json"))
        run_dir = os.path.join(out, "trials", row["trial"])  # each trial's Trainer run
        assert os.path.isfile(os.path.join(run_dir, "best.json"))
        assert os.path.isdir(os.path.join(run_dir, "checkpoints"))
        assert row["best_epoch"] == 1 and row["epochs_run"] == 1 and row["seconds"] > 0
        assert set(row["validation"]) == {"rec", "search"}
        assert row["validation_score"] == pytest.approx(
            (row["validation"]["rec"] + row["validation"]["search"]) / 2
        )
    scores = [row["validation_score"] for row in rows]
    assert scores == sorted(scores, reverse=True)
    # The Markdown table has the same order; the best row's flags come last.
    text = open(os.path.join(out, "tuning.md")).read()
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [line.split(" | ")[0][2:] for line in table[1:]] == [row["trial"] for row in rows]
    assert report["best"]["trial"] == rows[0]["trial"]
    assert report["best"]["command"] in text


def test_the_best_flags_train_the_best_values_with_the_train_cli(searched):
    best = read_report(searched.a)["best"]
    args = cli.build_parser().parse_args(
        ["--data_dir", searched.data_dir, "--model_dir", "m"] + best["train_flags"]
    )
    config = cli.config_from_args(args)
    for name, value in best["values"].items():
        assert config.to_dict()[name] == value, name
    assert config.training.batch_size == TINY["batch_size"]
    assert config.model.tower_units == TINY["tower_units"]
    assert (args.max_epochs, args.steps_per_epoch, args.validation_rows) == (1, STEPS, 32)
    assert config.model.use_history is False
    assert config.model.ranking_loss == "softmax"  # on top of the default preset


def test_the_same_command_proposes_the_same_trials(searched):
    a, b = (read_report(out)["rows"] for out in (searched.a, searched.b))
    values = {row["trial"]: row["values"] for row in a}
    assert values == {row["trial"]: row["values"] for row in b}
    assert len({json.dumps(v, sort_keys=True) for v in values.values()}) == 2
    for trial in values.values():
        assert set(trial) == set(SEARCHED)
        # 10 and 20 are capped at the fixture's pool of POOL negatives.
        assert trial["num_train_negatives"] in (4, POOL) and trial["embedding_dim"] in (8, 16)
    assert (
        f"capped at the data's pool of {POOL}" in open(os.path.join(searched.a, "tuning.md")).read()
    )


def test_a_finished_search_run_again_reuses_its_trials(searched, monkeypatch):
    before = read_report(searched.a)["rows"]
    histories = {
        row["trial"]: open(os.path.join(searched.a, "trials", row["trial"], "history.jsonl")).read()
        for row in before
    }

    class NoTraining:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(tune, "Trainer", NoTraining)
    tune.main(command(searched.data_dir, searched.a))
    assert read_report(searched.a)["rows"] == before
    for trial, history in histories.items():
        assert open(os.path.join(searched.a, "trials", trial, "history.jsonl")).read() == history


def test_the_test_split_is_never_read(searched):
    assert "valid" in searched.opened and "train" in searched.opened
    assert "test" not in searched.opened
    report = read_report(searched.a)
    assert all(set(row["validation"]) == {"rec", "search"} for row in report["rows"])
    assert "test" not in report and all("test" not in row for row in report["rows"])


def test_other_settings_on_the_same_out_dir_are_refused(searched, capsys):
    with pytest.raises(SystemExit):
        tune.main(command(searched.data_dir, searched.a, **{"--dropouts": "0.1,0.3"}))
    assert "holds a search with other settings" in capsys.readouterr().err


def _spec(train_negative_pool: int) -> DataSpec:
    return DataSpec(
        vocab_sizes=VocabSizes(users=3, items=5, words=2),
        shapes=SequenceShapes(rec_len=4, search_len=4, query_len=3, clicks_per_session=1),
        candidates=Candidates(train=5, eval=100, train_negative_pool=train_negative_pool),
    )


def test_the_space_caps_negatives_and_checks_the_choices():
    settings = tune.SearchSettings(data_dir="d", out_dir="o")
    space, notes = tune.search_space(settings, _spec(train_negative_pool=12))
    assert {hp.name: list(hp.values) for hp in space.space} == {
        "learning_rate": [3e-4, 1e-3, 3e-3],
        "dropout": [0.0, 0.1, 0.2, 0.3],
        "embedding_dim": [32, 64, 128],
        "num_train_negatives": [4, 10, 12],
    }
    assert notes == [
        "num_train_negatives [4, 10, 20] capped at the data's pool of 12: " "[4, 10, 12]"
    ]
    space, notes = tune.search_space(settings, _spec(0))  # no pool: fixed negatives
    assert [hp.name for hp in space.space] == ["learning_rate", "dropout", "embedding_dim"]
    assert "not searched" in notes[0]
    for bad, match in (
        ({"embedding_dim": [32, 15]}, "divisible by num_heads"),
        ({"dropout": [1.0]}, "dropout"),
        ({"batch_size": [8]}, "cannot search"),
        ({"learning_rate": [0.0]}, "learning rates"),
    ):
        with pytest.raises(ValueError, match=match):
            tune.search_space(tune.SearchSettings("d", "o", space=bad), _spec(0))
    with pytest.raises(ValueError, match="are searched"):
        tune.search_space(tune.SearchSettings("d", "o", base_overrides={"dropout": 0.5}), _spec(0))


def test_tuner_fn_returns_the_same_search_for_tfx(searched, tmp_path):
    assert tune.examples_root(["/a/Examples/7/Split-train_rec/*"]) == "/a/Examples/7"
    with pytest.raises(ValueError, match="custom_config"):
        tune.examples_root(["/data/train/rec-*.tfrecord.gz"])
    custom = {
        "data_dir": searched.data_dir,
        "max_trials": 2,
        "max_epochs": 1,
        "steps_per_epoch": STEPS,
        "validation_rows": 32,
        "config_overrides": FIXED,
        "space": {
            "learning_rate": [1e-3, 3e-3],
            "dropout": [0.0, 0.2],
            "embedding_dim": [8, 16],
            "num_train_negatives": [4, 10, 20],
        },
    }
    fn_args = types.SimpleNamespace(
        train_files=["unused"],
        working_dir=str(tmp_path / "work"),
        custom_config=custom,
        transform_graph_path=None,
    )
    result = tune.tuner_fn(fn_args)
    assert isinstance(result.tuner, tune.UniSARTuner) and result.fit_kwargs == {}
    assert result.tuner.project_dir == str(tmp_path / "work")
    # The same settings as the command line's: its first proposal is the CLI search's.
    first = result.tuner.oracle.create_trial("tuner0")
    rows = {row["trial"]: row["values"] for row in read_report(searched.a)["rows"]}
    assert first.hyperparameters.values == rows[first.trial_id]
