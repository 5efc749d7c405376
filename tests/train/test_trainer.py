"""The TFRecord trainer: resume, plateau policy, fresh negatives, epoch data, report, CLI.

Cost: every new Trainer that trains traces its step (~30 s on a shared 2-core machine), so
the module builds one tiny dataset and trains one run (interrupted, then resumed); the
policy and report tests drive `_end_epoch` by hand on an untrained model; the CLI test
trains one short epoch in a subprocess. Training is capped at STEPS batches per epoch.
"""

import collections
import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
from helpers import REPO
from helpers.datasets import STEPS
from helpers.model import TINY, TINY_FLAGS, tiny_config

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    NEGATIVE_POOL,
    QUERY_TOKENS,
    REC_HISTORY_ITEMS,
    REL_NEGATIVE_ITEMS,
    REL_NEGATIVE_QUERY_TOKENS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    SEARCH_HISTORY_QUERY_TOKENS,
    USER_ID,
)
from feature_specs.data_spec import DataSpec
from unisar_tf.config import DataFacts, amazon_preset, run_config_dict
from unisar_tf.data import reader
from unisar_tf.export.push import export_serving_model
from unisar_tf.metrics import ranking_metrics
from unisar_tf.model import build_model, dummy_features
from unisar_tf.train.evaluation import (
    evaluate_best,
    evaluate_saved_model,
    score_split,
    validation_score,
)
from unisar_tf.train.inputs import (
    epoch_steps,
    replace_negatives,
    search_batch_size,
    training_dataset,
)
from unisar_tf.train.run_dir import DataMismatchError, load_trained_model, read_best
from unisar_tf.train.trainer import Trainer, TrainerOptions

MAX_EPOCHS = 3


def checkpoint_values(path):
    """{key: value} of every saved tensor of a checkpoint prefix."""
    reader = tf.train.load_checkpoint(path)
    return {
        name: reader.get_tensor(name)
        for name, _ in tf.train.list_variables(path)
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }


def history(model_dir):
    with open(os.path.join(model_dir, "history.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def adam_slot_keys(trainer, variable):
    """Checkpoint keys of Adam's m and v for `variable` (optimizer.variables: it, m0, v0, ...)."""
    index = next(i for i, v in enumerate(trainer.model.trainable_variables) if v is variable)
    m, v = trainer.optimizer.variables[1 + 2 * index], trainer.optimizer.variables[2 + 2 * index]
    assert m.name.startswith("m/") and v.name.startswith("v/") and m.shape == variable.shape
    return tuple(
        f"optimizer/_variables/{j}/.ATTRIBUTES/VARIABLE_VALUE"
        for j in (1 + 2 * index, 2 + 2 * index)
    ), (m, v)


VAR = "/.ATTRIBUTES/VARIABLE_VALUE"
ITEM_TABLE = "model/item_embedding/table/embeddings" + VAR
FF_KERNEL = "model/rec_encoder/0/feed_forward/inner/kernel" + VAR


def tracked(trainer):
    """The variables the resume test checks by name, with their checkpoint keys."""
    model = trainer.model
    table, kernel = model.item_embedding.embeddings, model.rec_encoder[0].feed_forward.inner.kernel
    (table_m, table_v), (tm, tv) = adam_slot_keys(trainer, table)
    (kernel_m, kernel_v), (km, kv) = adam_slot_keys(trainer, kernel)
    return {
        ITEM_TABLE: table,
        FF_KERNEL: kernel,
        table_m: tm,
        table_v: tv,
        kernel_m: km,
        kernel_v: kv,
        "optimizer/_iterations" + VAR: trainer.optimizer.iterations,
        "optimizer/_learning_rate" + VAR: trainer.optimizer.learning_rate,
        "epoch" + VAR: trainer.epoch,
        "best_score" + VAR: trainer.best_score,
        "epochs_without_gain" + VAR: trainer.epochs_without_gain,
    }


def snapshot(trainer):
    return {key: np.array(variable.numpy()) for key, variable in tracked(trainer).items()}


def row_keys(features):
    """One hashable key per example: every feature but the candidates' negatives and pool."""
    names = sorted(k for k in features if k not in (CANDIDATE_ITEMS, NEGATIVE_POOL))
    return [
        tuple(features[k][i].tobytes() for k in names) + (int(features[CANDIDATE_ITEMS][i, 0]),)
        for i in range(len(features[CANDIDATE_ITEMS]))
    ]


# ------------------------------------------------------------------- replace_negatives
def test_replace_negatives_draws_distinct_items_from_each_rows_pool():
    pool = np.array(
        [
            [101, 102, 103, 104, 105, 106],
            [201, 202, 203, 204, 205, 206],
            [301, 302, 303, 304, 305, 306],
        ],
        np.int64,
    )
    candidates = np.array([[7, 1, 1, 1], [8, 2, 2, 2], [9, 3, 3, 3]], np.int64)
    features = {
        CANDIDATE_ITEMS: tf.constant(candidates),
        NEGATIVE_POOL: tf.constant(pool),
        USER_ID: tf.constant([1, 2, 3], tf.int64),
    }

    def draw(seed, n=4):
        out = replace_negatives(features, n, tf.constant(seed, tf.int64))
        assert NEGATIVE_POOL not in out and NEGATIVE_POOL in features  # input left alone
        np.testing.assert_array_equal(out[USER_ID].numpy(), [1, 2, 3])
        return out[CANDIDATE_ITEMS].numpy()

    first = draw([1, 2])
    assert first.shape == (3, 5)
    np.testing.assert_array_equal(first[:, 0], [7, 8, 9])  # the positive stays in column 0
    for row, negatives in enumerate(first[:, 1:]):
        assert len(set(negatives)) == 4  # no repeats
        assert set(negatives) <= set(pool[row])  # only this row's pool
    np.testing.assert_array_equal(draw([1, 2]), first)  # same seed, same draw
    second = draw([1, 3])
    assert not np.array_equal(second, first)  # another seed, another draw
    np.testing.assert_array_equal(second[:, 0], [7, 8, 9])
    # Drawing the whole pool is a permutation of it.
    everything = draw([5, 5], n=6)
    np.testing.assert_array_equal(np.sort(everything[:, 1:], axis=1), pool)


# --------------------------------------------------------------------- training_dataset
@pytest.mark.slow
def test_training_dataset_epoch_batches_order_and_fresh_negatives(amazon_examples):
    out, manifest = amazon_examples
    config = tiny_config(num_train_negatives=6)
    bank = reader.query_bank(out, manifest)
    counts = manifest["examples"]["train"]
    train = {task: reader.load_arrays(out, "train", task, manifest) for task in ("rec", "search")}

    def epoch(seed, number, fresh=True):
        dataset = training_dataset(config, out, manifest, bank, seed, number, fresh)
        return [tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in dataset]

    batches = epoch(0, 0)
    steps = epoch_steps(config, counts)
    assert steps == math.ceil(counts["rec"] / 16) and len(batches) == steps
    rec_sizes = [len(b["rec"][CANDIDATE_ITEMS]) for b in batches]
    assert rec_sizes == [16] * (steps - 1) + [counts["rec"] - 16 * (steps - 1)]
    # Search: batches of search_batch_size from a stream that restarts when it runs out.
    size = search_batch_size(counts["rec"], counts["search"], 16)
    one_pass = [size] * (counts["search"] // size) + (
        [counts["search"] % size] if counts["search"] % size else []
    )
    expected = (one_pass * steps)[:steps]
    assert [len(b["search"][CANDIDATE_ITEMS]) for b in batches] == expected

    for task in ("rec", "search"):
        for batch in batches:
            assert NEGATIVE_POOL not in batch[task]
            assert batch[task][CANDIDATE_ITEMS].shape[1] == 1 + 6  # fresh: 1 + num_train_negatives
        # Every training example exactly once per epoch (rec; search when one pass fits).
        seen = collections.Counter(k for b in batches for k in row_keys(b[task]))
        stored = collections.Counter(row_keys(train[task]))
        if task == "rec" or sum(expected) == counts["search"]:
            assert seen == stored
        else:
            assert set(seen) <= set(stored)
        # Fresh negatives: distinct, and drawn from that example's own pool.
        pools = collections.defaultdict(set)
        for key, row in zip(row_keys(train[task]), train[task][NEGATIVE_POOL]):
            pools[key] |= set(row.tolist())
        for b in batches:
            for key, row in zip(row_keys(b[task]), b[task][CANDIDATE_ITEMS]):
                assert len(set(row[1:])) == 6 and set(row[1:]) <= pools[key], (row, pools[key])
        assert QUERY_TOKENS in batches[0]["search"] and QUERY_TOKENS not in batches[0]["rec"]

    rel = batches[0]["rel_negatives"]
    assert rel[REL_NEGATIVE_ITEMS].shape == (16,)
    items = manifest["vocab_sizes"]["items"] + 1
    assert rel[REL_NEGATIVE_ITEMS].min() >= 1 and rel[REL_NEGATIVE_ITEMS].max() < items
    bank_rows = {row.tobytes() for row in bank}
    assert all(row.tobytes() in bank_rows for row in rel[REL_NEGATIVE_QUERY_TOKENS])

    # Same (seed, epoch): identical batches; another epoch or seed: another order and draw.
    again = epoch(0, 0)
    tf.nest.map_structure(np.testing.assert_array_equal, again, batches)
    for other in (epoch(0, 1), epoch(1, 0)):
        assert row_keys(other[0]["rec"]) != row_keys(batches[0]["rec"])
        assert not np.array_equal(
            other[0]["rel_negatives"][REL_NEGATIVE_ITEMS], rel[REL_NEGATIVE_ITEMS]
        )

    # Without fresh negatives the data job's fixed candidates are used as written.
    fixed = epoch(0, 0, fresh=False)
    written = dict(zip(row_keys(train["rec"]), train["rec"][CANDIDATE_ITEMS]))
    assert fixed[0]["rec"][CANDIDATE_ITEMS].shape[1] == manifest["shapes"]["train_candidates"]
    assert NEGATIVE_POOL not in fixed[0]["rec"]
    for key, row in zip(row_keys(fixed[0]["rec"]), fixed[0]["rec"][CANDIDATE_ITEMS]):
        np.testing.assert_array_equal(row, written[key])


# ------------------------------------------------------------------- no-history baseline
def test_no_history_baseline_trains_one_step_and_ignores_the_history():
    config = amazon_preset(use_history=False, **dict(TINY, num_relevance_negatives=8))
    data = DataFacts(
        num_users=20,
        num_items=50,
        num_words=10,
        rec_len=4,
        search_len=3,
        query_len=3,
        clicks_per_session=1,
    )
    tf.keras.utils.set_random_seed(1)
    model = build_model(config, data)
    names = [w.name for w in model.weights]
    assert not [
        n
        for n in names
        if any(
            part in n
            for part in (
                "rec_encoder",
                "search_encoder",
                "mixed_encoder",
                "fusion",
                "pooling",
                "positions",
                "alignment",
                "relevance",
            )
        )
    ], names
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    rng = np.random.default_rng(0)

    def features(batch, with_query, history_seed):
        f = dummy_features(data, batch, 6, with_query)
        f[USER_ID] = tf.constant(rng.integers(0, 20, batch), tf.int64)
        f[CANDIDATE_ITEMS] = tf.constant(rng.integers(1, 50, (batch, 6)), tf.int64)
        if with_query:
            f[QUERY_TOKENS] = tf.constant(rng.integers(0, 10, (batch, 3)), tf.int64)
        h = np.random.default_rng(history_seed)  # histories: must not matter
        f[HISTORY_TYPES] = tf.constant(h.integers(0, 3, f[HISTORY_TYPES].shape), tf.int64)
        f[REC_HISTORY_ITEMS] = tf.constant(h.integers(0, 50, f[REC_HISTORY_ITEMS].shape), tf.int64)
        f[SEARCH_HISTORY_CLICKED_ITEMS] = tf.constant(
            h.integers(0, 50, f[SEARCH_HISTORY_CLICKED_ITEMS].shape), tf.int64
        )
        f[SEARCH_HISTORY_QUERY_TOKENS] = tf.constant(
            h.integers(0, 10, f[SEARCH_HISTORY_QUERY_TOKENS].shape), tf.int64
        )
        return f

    batch = {
        "rec": features(8, False, 1),
        "search": features(8, True, 2),
        "rel_negatives": {
            REL_NEGATIVE_ITEMS: tf.constant(rng.integers(1, 50, 8), tf.int64),
            REL_NEGATIVE_QUERY_TOKENS: tf.constant(rng.integers(0, 10, (8, 3)), tf.int64),
        },
    }
    before = [w.numpy().copy() for w in model.trainable_weights]
    logs = model.train_step(batch)
    assert np.isfinite(float(logs["loss"])) and float(logs["loss"]) > 0
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert all(changed), [w.name for w, c in zip(model.trainable_weights, changed) if not c]
    scores = model(batch["search"], training=False)
    assert set(scores) == {"rec", "search"}
    for task in ("rec", "search"):
        s = scores[task].numpy()
        assert s.shape == (8, 6) and np.all(np.isfinite(s)) and np.all((s > 0) & (s < 1))
    other_history = dict(batch["search"])
    for name, value in features(8, True, 99).items():
        if name not in (USER_ID, CANDIDATE_ITEMS, QUERY_TOKENS):
            other_history[name] = value
    tf.nest.map_structure(
        np.testing.assert_array_equal, model(other_history, training=False), scores
    )


# ---------------------------------------------------------------- plateau / early stop
def validation(rec, search):
    return {
        task: {
            "HR@1": 0.0,
            "HR@5": 0.5,
            "HR@10": 1.0,
            "NDCG@5": value,
            "NDCG@10": value,
            "examples": 10,
        }
        for task, value in (("rec", rec), ("search", search))
    }


# (rec NDCG@5, search NDCG@5) per epoch; the score is their mean. Binary fractions, so the
# tie in epoch 3 is an exact tie.
PLATEAU = [
    (0.25, 0.5),  # 1: 0.375, first best
    (0.625, 0.0),  # 2: 0.3125 (rec alone, the max or the sum would beat 0.375)
    (0.375, 0.375),  # 3: 0.375 ties the best: not a gain
    (0.125, 0.125),  # 4: third epoch without gain: lr 1e-3 -> 1e-4
    (0.125, 0.125),  # 5: fourth; the patience count restarted at the reduction
    (0.5, 0.5),  # 6: new best 0.5 (the lr stays reduced)
    (0.0, 0.0),
    (0.0, 0.0),
    (0.0, 0.0),  # 9: 1e-4 * 0.1 = 1e-5 is below the 2e-5 floor: lr 2e-5
    (0.75, 0.5),  # 10: new best 0.625
    (0.125, 0.125),
    (0.125, 0.125),
    (0.125, 0.125),  # 13: reduce again, but the floor holds
    (0.125, 0.125),
    (0.125, 0.125),
]  # 15: fifth epoch without gain
EXPECTED_LR = [1e-3] * 3 + [1e-4] * 5 + [2e-5] * 7
EXPECTED_WITHOUT_GAIN = [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5]
BEST_EPOCH, LAST_EPOCH, BEST_SCORE = 10, len(PLATEAU), 0.625


@pytest.mark.slow  # builds a Trainer on the session's data job output
def test_training_refuses_files_holding_fewer_examples_than_the_manifest_counts(
    amazon_examples, tmp_path
):
    """A build whose train files lost examples after the job counted them (seen once on a
    local run: a third of Sports' users' training examples missing) must not train on
    silently: the rec stream, which is not repeated, ends before the epoch's steps."""
    import shutil

    out, manifest = amazon_examples
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    counted = manifest["examples"]["train"]["rec"]
    claimed = counted + 2 * TINY["batch_size"]  # two batches the files do not hold
    changed = json.loads((damaged / "manifest.json").read_text())
    changed["examples"]["train"]["rec"] = claimed
    (damaged / "manifest.json").write_text(json.dumps(changed))
    trainer = Trainer(
        tiny_config(), TrainerOptions(str(damaged), str(tmp_path / "run"), max_epochs=1, verbose=0)
    )
    steps = math.ceil(claimed / TINY["batch_size"])
    held = math.ceil(counted / TINY["batch_size"])
    with pytest.raises(DataMismatchError) as raised:
        trainer.fit()
    message = str(raised.value)
    assert f"holds fewer rec examples than manifest.json counts ({claimed})" in message
    assert f"epoch 1 ended after {held} of {steps} batches" in message
    assert os.path.join(str(damaged), "train") in message


@pytest.fixture(scope="module")
def policy_run(amazon_examples, tmp_path_factory):
    """A Trainer fed PLATEAU through _end_epoch; its weights move before every epoch."""
    out, _ = amazon_examples
    model_dir = str(tmp_path_factory.mktemp("policy"))
    trainer = Trainer(
        tiny_config(min_learning_rate=2e-5), TrainerOptions(out, model_dir, verbose=0)
    )
    trainer._write_run_files()
    results, learning_rates, without_gain, weights = [], [], [], {}
    for epoch, (rec, search) in enumerate(PLATEAU):
        rng = np.random.default_rng(epoch)
        for variable in trainer.model.trainable_weights:
            variable.assign(variable + rng.normal(0, 0.05, variable.shape).astype(np.float32))
        results.append(trainer._end_epoch(epoch, {"loss": 1.0}, validation(rec, search), 0.5))
        learning_rates.append(trainer.learning_rate)
        without_gain.append(int(trainer.epochs_without_gain.numpy()))
        weights[epoch + 1] = [w.numpy().copy() for w in trainer.model.trainable_weights]
    return types.SimpleNamespace(
        trainer=trainer,
        model_dir=model_dir,
        results=results,
        learning_rates=learning_rates,
        without_gain=without_gain,
        weights=weights,
    )


def test_validation_score_is_the_mean_ndcg5_of_the_tasks():
    assert validation_score(validation(0.5, 0.0)) == 0.25
    assert validation_score(validation(0.75, 0.5)) == 0.625
    assert validation_score({"rec": {"NDCG@5": 0.375, "HR@1": 1.0}}) == 0.375


@pytest.mark.slow
def test_plateau_policy_reduces_lr_to_the_floor_and_counts_epochs_without_gain(policy_run):
    run = policy_run
    assert run.trainer.config.training.lr_reduce_patience == 3
    assert run.trainer.config.training.early_stop_patience == 5
    assert run.trainer.config.training.lr_reduce_factor == pytest.approx(0.1)
    np.testing.assert_allclose(run.learning_rates, EXPECTED_LR, rtol=1e-6)
    assert min(run.learning_rates) == np.float32(2e-5)  # exactly the floor, never below
    assert run.without_gain == EXPECTED_WITHOUT_GAIN
    assert [r.improved for r in run.results] == [w == 0 for w in EXPECTED_WITHOUT_GAIN]
    assert [r.epoch for r in run.results] == list(range(1, LAST_EPOCH + 1))
    assert [r.validation_score for r in run.results] == [
        (rec + search) / 2 for rec, search in PLATEAU
    ]
    assert float(run.trainer.best_score.numpy()) == BEST_SCORE
    assert int(run.trainer.epoch.numpy()) == LAST_EPOCH

    lines = history(run.model_dir)
    assert [line["epoch"] for line in lines] == list(range(1, LAST_EPOCH + 1))
    np.testing.assert_allclose([line["learning_rate"] for line in lines], EXPECTED_LR, rtol=1e-6)
    best = read_best(run.model_dir)
    assert best["epoch"] == BEST_EPOCH and best["validation_score"] == BEST_SCORE
    assert best["checkpoint"] == f"ckpt-{BEST_EPOCH}"
    assert tf.train.latest_checkpoint(os.path.join(run.model_dir, "best")).endswith(
        f"ckpt-{BEST_EPOCH}"
    )
    assert run.trainer.manager.latest_checkpoint.endswith(f"ckpt-{LAST_EPOCH}")
    assert len(run.trainer.manager.checkpoints) == 2  # keep_checkpoints


@pytest.mark.slow
def test_fit_stops_at_once_when_the_restored_run_has_no_patience_left(amazon_examples, policy_run):
    out, _ = amazon_examples
    trainer = Trainer(
        tiny_config(min_learning_rate=2e-5),
        TrainerOptions(out, policy_run.model_dir, max_epochs=100, verbose=0),
    )

    def no_training(epoch, step):
        raise AssertionError(f"trained epoch {epoch + 1} step {step + 1}")

    summary = trainer.fit(on_step=no_training)
    assert summary["stopped_early"] is True
    assert summary["epochs_run"] == LAST_EPOCH and summary["epoch"] == BEST_EPOCH
    # The policy state came back from the checkpoint: the reduced lr and the counters.
    assert trainer.learning_rate == np.float32(2e-5)
    assert int(trainer.epochs_without_gain.numpy()) == 5
    assert float(trainer.best_score.numpy()) == BEST_SCORE
    assert len(history(policy_run.model_dir)) == LAST_EPOCH


# ----------------------------------------------------------------------- test report
@pytest.mark.slow
def test_evaluate_best_scores_the_best_checkpoint_and_writes_the_report(
    amazon_examples, policy_run
):
    out, manifest = amazon_examples
    model_dir = policy_run.model_dir
    report = evaluate_best(model_dir, out, "test")
    assert report["best_epoch"] == BEST_EPOCH
    assert report["validation_score"] == BEST_SCORE

    with open(os.path.join(model_dir, "eval", "test_metrics.json")) as handle:
        assert json.load(handle) == json.loads(json.dumps(report))
    with open(os.path.join(model_dir, "eval", "test_metrics.md")) as handle:
        markdown = handle.read()
    assert f"best validation epoch {BEST_EPOCH}" in markdown
    for name in ("unisar", "popularity", "random"):
        for task in ("rec", "search"):
            assert f"| {name} | {task} | " in markdown
    rec_row = next(line for line in markdown.splitlines() if line.startswith("| unisar | rec |"))
    assert f"{report['unisar']['rec']['NDCG@5']:.4f}" in rec_row

    # The best epoch's weights, not the last epoch's (they differ).
    model = load_trained_model(model_dir, out)
    best_weights, last_weights = policy_run.weights[BEST_EPOCH], policy_run.weights[LAST_EPOCH]
    for variable, expected in zip(model.trainable_weights, best_weights):
        np.testing.assert_array_equal(variable.numpy(), expected, err_msg=variable.name)
    best_file = checkpoint_values(tf.train.latest_checkpoint(os.path.join(model_dir, "best")))
    last_file = checkpoint_values(policy_run.trainer.manager.latest_checkpoint)
    np.testing.assert_array_equal(model.item_embedding.embeddings.numpy(), best_file[ITEM_TABLE])
    assert not np.array_equal(best_file[ITEM_TABLE], last_file[ITEM_TABLE])

    # The report's numbers, recomputed from score_split scores with ranking_metrics.
    def metrics(task):
        scores = score_split(
            model,
            out,
            "test",
            task,
            manifest,
            score=lambda batch: model(batch, training=False)[task],
        )
        assert scores.shape == (
            manifest["examples"]["test"][task],
            manifest["shapes"]["eval_candidates"],
        )
        return dict(ranking_metrics(scores), examples=len(scores))

    best_metrics = {task: metrics(task) for task in ("rec", "search")}
    assert report["unisar"] == best_metrics
    for variable, value in zip(model.trainable_weights, last_weights):
        variable.assign(value)
    assert {task: metrics(task) for task in ("rec", "search")} != best_metrics


@pytest.mark.slow
def test_the_exported_model_scores_the_test_split_like_the_checkpoint(
    amazon_examples, policy_run, tmp_path
):
    """evaluate_saved_model goes through serving_default on the serialized examples."""
    out, _ = amazon_examples
    model = load_trained_model(policy_run.model_dir, out)
    path = export_serving_model(model, os.path.join(out, "vocab"), str(tmp_path / "1"))
    from_export = evaluate_saved_model(path, out, "test")
    report = evaluate_best(policy_run.model_dir, out, "test", with_baselines=False, write=False)
    for task in ("rec", "search"):
        assert from_export[task]["examples"] == report["unisar"][task]["examples"]
        for name in ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"):
            assert from_export[task][name] == pytest.approx(
                report["unisar"][task][name], abs=1e-6
            ), (task, name)


# ---------------------------------------------------------------------- resume
class Interrupted(Exception):
    pass


def record_step_losses(trainer, losses):
    """Appends the loss of every training step of `trainer` to `losses`."""
    make = trainer._make_train_step

    def make_recording(element_spec=None):
        step = make(element_spec)

        def recorded(batch):
            logs = step(batch)
            losses.append(float(logs["loss"]))
            return logs

        return recorded

    trainer._make_train_step = make_recording


def training_state(trainer):
    """Every weight and optimizer variable (slots, step, learning rate) of a trainer."""
    return [
        variable.numpy().copy()
        for variable in trainer.model.weights + list(trainer.optimizer.variables)
    ]


@pytest.fixture(scope="module")
def resumed(amazon_examples, tmp_path_factory):
    """Run 1 trains epoch 1 and every step of epoch 2, and stops before epoch 2's validation
    and checkpoint (so it is the uninterrupted run up to there); run 2 restores epoch 1's
    checkpoint, is compared, finishes."""
    out, _ = amazon_examples
    model_dir = str(tmp_path_factory.mktemp("resume"))
    options = TrainerOptions(
        out, model_dir, max_epochs=MAX_EPOCHS, steps_per_epoch=STEPS, verbose=0
    )
    first = Trainer(tiny_config(), options)
    first_steps, first_losses = [], []
    record_step_losses(first, first_losses)

    def stop_at_the_end_of_epoch_2(epoch, step):
        first_steps.append((epoch, step))
        if (epoch, step) == (1, STEPS - 1):
            raise Interrupted

    with pytest.raises(Interrupted):
        first.fit(on_step=stop_at_the_end_of_epoch_2)
    state = types.SimpleNamespace(
        model_dir=model_dir, first_steps=first_steps, first_losses=first_losses
    )
    state.saved_path = first.manager.latest_checkpoint
    state.saved = checkpoint_values(state.saved_path)
    state.first_in_memory = snapshot(first)
    state.first_state = training_state(first)
    state.history_after_interrupt = history(model_dir)

    second = Trainer(tiny_config(), options)
    state.second_losses = []
    record_step_losses(second, state.second_losses)
    state.before_restore = snapshot(second)
    state.restored_path = second.restore()
    state.after_restore = snapshot(second)
    state.learning_rate = second.learning_rate
    rewritten = second.checkpoint.write(
        os.path.join(str(tmp_path_factory.mktemp("rewrite")), "restored")
    )
    state.rewritten = checkpoint_values(rewritten)

    second_steps = []

    def after_step(epoch, step):
        second_steps.append((epoch, step))
        if (epoch, step) == (1, STEPS - 1):
            state.second_state = training_state(second)

    state.summary = second.fit(on_step=after_step)
    state.second_steps = second_steps
    state.iterations = int(second.optimizer.iterations.numpy())
    state.checkpoints = list(second.manager.checkpoints)
    return state


@pytest.mark.slow
def test_interrupted_run_restores_weights_optimizer_slots_and_policy_state_exactly(resumed):
    run = resumed
    assert run.first_steps == [(epoch, step) for epoch in (0, 1) for step in range(STEPS)]
    assert [line["epoch"] for line in run.history_after_interrupt] == [1]
    assert run.saved_path.endswith("ckpt-1") and run.restored_path == run.saved_path
    saved = run.saved
    # The checkpoint holds epoch 1's end, not the interrupted in-memory state.
    assert saved["epoch" + VAR] == 1 and run.first_in_memory["epoch" + VAR] == 1
    assert saved["optimizer/_iterations" + VAR] == STEPS
    assert run.first_in_memory["optimizer/_iterations" + VAR] == 2 * STEPS
    assert not np.array_equal(run.first_in_memory[ITEM_TABLE], saved[ITEM_TABLE])
    assert saved["best_score" + VAR] == run.history_after_interrupt[0]["validation_score"]

    for key, value in run.after_restore.items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)
    for key in (ITEM_TABLE, FF_KERNEL):
        # Restoring changed them: a fresh Trainer starts elsewhere (slots at zero, epoch 0).
        assert not np.array_equal(run.before_restore[key], saved[key]), key
    slots = [k for k in run.after_restore if k.startswith("optimizer/_variables/")]
    assert len(slots) == 4
    for key in slots:
        assert np.all(run.before_restore[key] == 0) and np.any(saved[key] != 0), key
    assert run.before_restore["epoch" + VAR] == 0 and run.before_restore["best_score" + VAR] == -1
    assert run.learning_rate == pytest.approx(1e-3, rel=1e-6)

    # Every saved tensor (all weights, all slots, counters) equals the restored state.
    ignored = {"save_counter" + VAR}
    assert set(run.rewritten) - ignored == set(saved) - ignored
    for key in set(saved) - ignored:
        np.testing.assert_array_equal(run.rewritten[key], saved[key], err_msg=key)


@pytest.mark.slow
def test_a_resumed_run_trains_exactly_as_an_uninterrupted_one(resumed):
    """Issue 23: the same batches, negatives and dropout masks (stateless in seed and step),
    so epoch 2 after a restart gives the uninterrupted run's losses and state bit for bit
    (dropout masks from Keras' stateful random ops started over after a restart: the issue's
    epoch-2 loss 7.0584 resumed against 7.0283 uninterrupted)."""
    run = resumed
    assert len(run.first_losses) == 2 * STEPS  # run 1: epochs 1 and 2 without a break
    assert run.second_losses[:STEPS] == run.first_losses[STEPS:]  # epoch 2, step by step
    assert history(run.model_dir)[1]["train"]["loss"] == run.first_losses[-1]
    assert len(run.second_state) == len(run.first_state)
    for index, (resumed_value, straight) in enumerate(zip(run.second_state, run.first_state)):
        np.testing.assert_array_equal(resumed_value, straight, err_msg=str(index))


@pytest.mark.slow
def test_resumed_fit_reruns_the_interrupted_epoch_and_finishes(resumed):
    run = resumed
    assert run.second_steps == [(epoch, step) for epoch in (1, 2) for step in range(STEPS)]
    lines = history(run.model_dir)
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert lines[0] == run.history_after_interrupt[0]
    assert run.iterations == MAX_EPOCHS * STEPS  # the lost step of run 1 is not counted
    assert [os.path.basename(path) for path in run.checkpoints] == ["ckpt-2", "ckpt-3"]
    assert sorted(os.listdir(os.path.join(run.model_dir, "checkpoints"))) == [
        "checkpoint",
        "ckpt-2.data-00000-of-00001",
        "ckpt-2.index",
        "ckpt-3.data-00000-of-00001",
        "ckpt-3.index",
    ]
    saved = checkpoint_values(run.checkpoints[-1])
    assert saved["epoch" + VAR] == MAX_EPOCHS
    assert saved["optimizer/_iterations" + VAR] == MAX_EPOCHS * STEPS
    assert run.summary["epochs_run"] == MAX_EPOCHS and run.summary["stopped_early"] is False
    best = max(lines, key=lambda line: line["validation_score"])
    assert run.summary["epoch"] == best["epoch"]
    for line in lines:
        assert np.isfinite(line["train"]["loss"]) and line["validation"]["rec"]["examples"] > 0


# ------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def cli_run(amazon_examples, tmp_path_factory):
    """A short real CLI run: one epoch of STEPS steps on the tiny data, then the report."""
    out, _ = amazon_examples
    model_dir = str(tmp_path_factory.mktemp("cli") / "model")
    command = [
        sys.executable,
        "-m",
        "unisar_tf.train",
        "--data_dir",
        out,
        "--model_dir",
        model_dir,
        "--max_epochs",
        "1",
        "--steps_per_epoch",
        str(STEPS),
        "--quiet",
        "--preset",
        "paper",
        "--sasrec_max_epochs",
        "1",
    ] + TINY_FLAGS
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    result.model_dir = model_dir
    return result


@pytest.mark.slow
def test_cli_trains_and_ends_with_the_metrics_table_and_the_report_path(amazon_examples, cli_run):
    assert cli_run.returncode == 0, cli_run.stderr[-3000:]
    lines = cli_run.stdout.rstrip("\n").splitlines()
    report = os.path.join(cli_run.model_dir, "eval", "test_metrics.md")
    assert lines[-1] == f"report: {report}"
    table = [line for line in lines if line.startswith("|")]
    # The table comes right before the path, followed only by the notes on comparators at
    # or below random or popularity (2 training steps: SASRec may be one).
    end = max(index for index, line in enumerate(lines) if line.startswith("|"))
    assert lines[end + 1 - len(table) : end + 1] == table
    assert all(
        line == "" or line.endswith("it is not a result to compare with.")
        for line in lines[end + 1 : -2]
    )
    assert table[2].startswith("| unisar | rec |") and table[3].startswith("| unisar | search |")
    # The learned baseline, trained beside the run by the same Trainer: rec only.
    assert table[4].startswith("| SASRec | rec |") and "| SASRec | search |" not in table
    # --quiet: a line per epoch, logged (stderr)
    assert any(line.startswith("epoch 1: ") for line in cli_run.stderr.splitlines())
    assert any(line.startswith("best validation epoch 1 of 1") for line in lines)
    assert [line["epoch"] for line in history(cli_run.model_dir)] == [1]
    with open(os.path.join(cli_run.model_dir, "config.json")) as handle:
        cli_config = json.load(handle)
    out, manifest = amazon_examples
    # The config asked for, and the data facts of the data it trained on.
    assert cli_config == json.loads(
        json.dumps(run_config_dict(tiny_config(), DataFacts.from_spec(DataSpec.of(manifest))))
    )
    with open(os.path.join(cli_run.model_dir, "eval", "test_metrics.json")) as handle:
        written = json.load(handle)
    cells = table[2].split("|")[3:8]
    assert [float(c) for c in cells] == [
        round(written["unisar"]["rec"][k], 4)
        for k in ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10")
    ]
    assert set(written["SASRec"]) == {"rec"}
    assert written["SASRec"]["rec"]["examples"] == written["unisar"]["rec"]["examples"]


@pytest.mark.slow
def test_cli_trains_the_sasrec_baseline_as_its_own_run_beside_the_model(amazon_examples, cli_run):
    from unisar_tf.train.evaluation import sasrec_metrics
    from unisar_tf.train.run_dir import sasrec_run_dir

    out, _ = amazon_examples
    assert cli_run.returncode == 0, cli_run.stderr[-3000:]
    run_dir = sasrec_run_dir(cli_run.model_dir)
    assert run_dir == os.path.join(cli_run.model_dir, "baselines", "SASRec")
    with open(os.path.join(run_dir, "config.json")) as handle:
        sasrec_config = json.load(handle)
    assert sasrec_config["architecture"] == "sasrec" and sasrec_config["tasks"] == ["rec"]
    assert [line["epoch"] for line in history(run_dir)] == [1]  # --sasrec_max_epochs
    assert "SASRec: best validation epoch 1 of 1" in cli_run.stdout
    with open(os.path.join(cli_run.model_dir, "eval", "test_metrics.json")) as handle:
        written = json.load(handle)
    assert sasrec_metrics(cli_run.model_dir, out, "test") == written["SASRec"]
    assert sasrec_metrics(run_dir, out, "test") is None  # no baseline beside the baseline


@pytest.mark.slow
def test_evaluate_best_gives_the_same_numbers_in_another_process(amazon_examples, cli_run):
    out, _ = amazon_examples
    assert cli_run.returncode == 0, cli_run.stderr[-3000:]
    with open(os.path.join(cli_run.model_dir, "eval", "test_metrics.json")) as handle:
        written = json.load(handle)
    again = evaluate_best(cli_run.model_dir, out, "test", write=False)
    assert json.loads(json.dumps(again)) == written
    assert again["best_epoch"] == read_best(cli_run.model_dir)["epoch"]


@pytest.mark.slow  # a subprocess that imports TensorFlow
@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--use_s2r", "maybe", "expected true or false, got 'maybe'"),
        ("--tower_units", "16,x", "expected comma-separated values"),
        ("--learning_rate", "fast", "invalid float value: 'fast'"),
    ],
)
def test_cli_rejects_a_bad_flag_value_naming_the_flag(tmp_path, flag, value, message):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "unisar_tf.train",
            "--data_dir",
            str(tmp_path),
            "--model_dir",
            str(tmp_path / "m"),
            flag,
            value,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert f"error: argument {flag}: {message}" in result.stderr, result.stderr[-500:]
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--max_epochs", "0", "--max_epochs must be >= 1, got 0"),
        ("--validation_rows", "0", "--validation_rows must be >= 1, got 0"),
        ("--steps_per_epoch", "-2", "--steps_per_epoch must be >= 1, got -2"),
        ("--learning_rate", "-1", "learning_rate must be > 0, got -1.0"),
    ],
)
def test_cli_refuses_impossible_values_before_writing_anything(
    tmp_path, capsys, flag, value, message
):
    from unisar_tf.train import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--data_dir", str(tmp_path), "--model_dir", str(tmp_path / "m"), flag, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
