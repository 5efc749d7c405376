"""SASRec, the learned rec baseline: sequence construction, causality, scores, loss, training.

Cost: one short in-process Trainer run and one CLI run on test_trainer's tiny data (each traces
its step once); everything else runs eagerly on hand-made batches.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import REPO
from helpers.model import TINY_FLAGS, tiny_config

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
)
from unisar_tf.config import DataFacts, SASRecConfig, UniSARConfig, amazon_preset
from unisar_tf.data import reader
from unisar_tf.layers import MaskedMultiHeadAttention, TransformerEncoderLayer
from unisar_tf.model import build_model, dummy_features
from unisar_tf.sasrec import SASRecModel, causal_attention_mask, first_clicks, merged_item_sequence
from unisar_tf.tools import ablation
from unisar_tf.train.evaluation import evaluate_best, evaluate_model, report_markdown, score_split
from unisar_tf.train.inputs import training_dataset
from unisar_tf.train.run_dir import load_trained_model, read_best
from unisar_tf.train.trainer import Trainer, TrainerOptions

SASREC = dict(architecture="sasrec", tasks=("rec",))


def small_model(**overrides):
    """SASRec over 3 rec + 3 search slots (sequence length 6), 2 blocks, d = 8."""
    values = dict(
        SASREC,
        embedding_dim=8,
        feed_forward_dim=16,
        num_layers=2,
        num_heads=2,
        dropout=0.3,
    )
    values.update(overrides)
    tf.keras.utils.set_random_seed(5)
    return build_model(amazon_preset(**values), DATA)


DATA = DataFacts(
    num_users=5,
    num_items=100,
    num_words=5,
    rec_len=3,
    search_len=3,
    query_len=2,
    clicks_per_session=2,
)


# Row 0: rec 11, search (21), search without a click, rec 12, search (23); rec slot 2 (99) is
#        padding. Row 1: search whose first click is in column 1 (41), rec 31, 32, 33, search
#        (42); session 2 (77, 78) is padding. Row 2: no history at all.
TYPES = [[1, 2, 2, 1, 2, 0], [2, 1, 1, 1, 2, 0], [0] * 6]
REC = [[11, 12, 99], [31, 32, 33], [0, 0, 0]]
CLICKS = [[[21, 22], [0, 0], [23, 0]], [[0, 41], [42, 0], [77, 78]], [[0, 0]] * 3]
EXPECTED_ITEMS = [[0, 0, 11, 21, 12, 23], [0, 41, 31, 32, 33, 42], [0] * 6]


def history_features(model, candidates):
    features = dummy_features(model.data, 3, len(candidates[0]), with_query=False)
    features.update(
        {
            HISTORY_TYPES: tf.constant(TYPES, tf.int64),
            REC_HISTORY_ITEMS: tf.constant(REC, tf.int64),
            SEARCH_HISTORY_CLICKED_ITEMS: tf.constant(CLICKS, tf.int64),
            CANDIDATE_ITEMS: tf.constant(candidates, tf.int64),
        }
    )
    return features


# ------------------------------------------------------------------------- the sequence
def test_merged_sequence_interleaves_rec_items_and_first_clicks_right_aligned():
    np.testing.assert_array_equal(
        first_clicks(tf.constant(CLICKS, tf.int64)).numpy(), [[21, 0, 23], [41, 42, 77], [0, 0, 0]]
    )
    items, valid = merged_item_sequence(
        tf.constant(TYPES, tf.int64), tf.constant(REC, tf.int64), tf.constant(CLICKS, tf.int64)
    )
    np.testing.assert_array_equal(items.numpy(), EXPECTED_ITEMS)
    np.testing.assert_array_equal(valid.numpy(), np.array(EXPECTED_ITEMS) != 0)


def test_causal_mask_allows_real_earlier_and_same_positions_only():
    valid = tf.constant([[False, True, True, True]])
    expected = [[[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]]]
    np.testing.assert_array_equal(causal_attention_mask(valid).numpy(), np.array(expected, bool))


# ------------------------------------------------------------------------- the encoder
def test_pre_ln_encoder_layer_is_x_plus_attention_of_ln_x_then_x_plus_ff_of_ln_x():
    layer = TransformerEncoderLayer(8, 2, 16, dropout=0.3, norm_first=True)
    x = tf.random.stateless_normal([2, 4, 8], [4, 2])
    valid = tf.constant([[True, True, True, True], [False, False, True, True]])
    mask = causal_attention_mask(valid)
    out = layer(x, mask, training=False, valid=valid).numpy()
    # By hand from the layer's own parts, on unpacked tensors (MaskedMultiHeadAttention.call).
    attention: MaskedMultiHeadAttention = layer.self_attention

    def norm(ln, t):  # the layer's LayerNorms were amazon_examples on (rows, d)
        return tf.reshape(ln(tf.reshape(t, [-1, 8])), t.shape)

    normed = norm(layer.attention_norm, x)
    h = x + attention(normed, normed, mask, training=False)
    expected = (h + layer.feed_forward(norm(layer.output_norm, h), training=False)).numpy()
    v = valid.numpy()
    np.testing.assert_allclose(out[v], expected[v], rtol=1e-5, atol=1e-5)
    assert np.all(out[~v] == 0.0)
    post = TransformerEncoderLayer(8, 2, 16, dropout=0.3)  # the default stays post-LN
    post(x, mask, valid=valid)
    post.set_weights(layer.get_weights())
    assert not np.allclose(post(x, mask, training=False, valid=valid).numpy()[v], out[v])
    assert TransformerEncoderLayer.from_config(layer.get_config()).norm_first


def test_earlier_positions_do_not_see_later_items_and_padding_is_ignored():
    model = small_model()
    items = tf.constant([[5, 6, 7, 8, 9, 10], [0, 0, 3, 4, 5, 6]], tf.int64)
    valid = tf.not_equal(items, 0)
    encoded = model.encode_sequence(items, valid).numpy()
    # A new item at position 3: positions 0-2 unchanged, 3-5 changed (row 0; row 1 too).
    changed = model.encode_sequence(
        tf.tensor_scatter_nd_update(items, [[0, 3], [1, 3]], tf.constant([30, 31], tf.int64)), valid
    ).numpy()
    np.testing.assert_allclose(changed[:, :3], encoded[:, :3], rtol=0, atol=1e-6)
    assert np.all(np.abs(changed[:, 3:] - encoded[:, 3:]).max(axis=-1) > 1e-3)
    # Padded positions are zero and an item id hidden in one changes nothing.
    assert np.all(encoded[1, :2] == 0.0) and np.all(np.abs(encoded[1, 2:]).max(axis=-1) > 0)
    hidden = tf.constant([[5, 6, 7, 8, 9, 10], [12, 13, 3, 4, 5, 6]], tf.int64)
    np.testing.assert_array_equal(model.encode_sequence(hidden, valid).numpy(), encoded)


def test_padded_history_slots_do_not_change_the_scores_the_last_item_does():
    model = small_model()
    candidates = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    features = history_features(model, candidates)
    scores = model(features)["rec"].numpy()
    # Padded slots (rec slot 2 of row 0, search session 2 of row 1, row 2) and a second click
    # (SASRec reads the first) hold other ids.
    padded = dict(features)
    padded[REC_HISTORY_ITEMS] = tf.constant([[11, 12, 35], [31, 32, 33], [36, 0, 0]], tf.int64)
    padded[SEARCH_HISTORY_CLICKED_ITEMS] = tf.constant(
        [[[21, 22], [0, 0], [23, 37]], [[0, 41], [42, 0], [38, 39]], [[0, 0]] * 3], tf.int64
    )
    np.testing.assert_array_equal(model(padded)["rec"].numpy(), scores)
    # The most recent item (row 0: search click 23; row 1: search click 42) matters.
    last = dict(features)
    last[SEARCH_HISTORY_CLICKED_ITEMS] = tf.constant(
        [[[21, 22], [0, 0], [24, 0]], [[0, 41], [43, 0], [77, 78]], [[0, 0]] * 3], tf.int64
    )
    moved = model(last)["rec"].numpy()
    assert np.all(np.abs(moved[:2] - scores[:2]) > 1e-4)
    np.testing.assert_array_equal(moved[2], scores[2])


# -------------------------------------------------------------------- scores and loss
def test_padding_item_embeds_to_zero_and_real_items_do_not():
    model = small_model()
    assert np.any(model.item_table.embeddings.numpy()[0] != 0)  # the mask, not the table
    vectors = model.embed_items(tf.constant([[0, 3], [7, 0]], tf.int64)).numpy()
    assert np.all(vectors[0, 0] == 0.0) and np.all(vectors[1, 1] == 0.0)
    assert np.all(np.abs(vectors[0, 1]) > 0) and np.all(np.abs(vectors[1, 0]) > 0)


def test_scores_are_sigmoid_of_dot_products_with_the_shared_item_table():
    model = small_model()
    candidates = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    features = history_features(model, candidates)
    items = tf.constant(EXPECTED_ITEMS, tf.int64)
    user = model.encode_sequence(items, tf.not_equal(items, 0)).numpy()[:, -1]
    table = model.item_table.embeddings.numpy()
    expected = 1 / (1 + np.exp(-np.einsum("bd,bcd->bc", user, table[np.array(candidates)])))
    scores = model(features)
    assert set(scores) == {"rec"}
    np.testing.assert_allclose(scores["rec"].numpy(), expected, rtol=1e-5)
    assert np.all(user[2] == 0.0) and np.all(scores["rec"].numpy()[2] == 0.5)  # no history
    assert np.all(np.abs(user[:2]) > 0)


def test_loss_is_candidate_bce_plus_l2_on_the_item_and_position_tables():
    model = small_model(l2_weight=1e-3)
    candidates = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    features = history_features(model, candidates)
    loss = float(model.compute_loss({"rec": features, "rel_negatives": {}}))
    p = model(features)["rec"].numpy().astype(np.float64)
    labels = np.zeros_like(p)
    labels[:, 0] = 1
    bce = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    l2 = 0.5 * (
        np.sum(model.item_table.embeddings.numpy().astype(np.float64) ** 2)
        + np.sum(model.positions.positions.numpy().astype(np.float64) ** 2)
    )
    assert loss == pytest.approx(bce + 1e-3 * l2, rel=1e-5)
    # "batch_rows": only the rows of the items the batch used (and the positions).
    sparse = small_model(l2_weight=1e-3, embedding_l2_mode="batch_rows")
    used = sorted({i for row in EXPECTED_ITEMS + candidates for i in row if i})
    rows = sparse.item_table.embeddings.numpy().astype(np.float64)[used]
    expected = 0.5 * (
        np.sum(rows**2) + np.sum(sparse.positions.positions.numpy().astype(np.float64) ** 2)
    )
    assert float(sparse.l2_penalty(features)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="'rec' batch"):
        model.compute_loss({"search": features})


def test_sasrec_needs_the_rec_task_only_and_has_its_own_config():
    with pytest.raises(ValueError, match="rec-only"):
        amazon_preset(architecture="sasrec")  # config validation (tasks default to both)
    with pytest.raises(ValueError, match="rec-only"):
        amazon_preset(architecture="sasrec", tasks=("search",))
    # The UniSAR-only settings of a preset are not SASRec's: its config holds its own fields.
    config = amazon_preset(architecture="sasrec", tasks=("rec",), dropout=0.3)
    assert isinstance(config.model, SASRecConfig) and config.model.dropout == 0.3
    assert config.model.tasks == ("rec",) and not hasattr(config.model, "gamma_search")
    assert config.to_dict()["tasks"] == ("rec",) and "gamma_search" not in config.to_dict()
    assert UniSARConfig.from_dict(config.to_dict()) == config


# ------------------------------------------------------------------------ training
class RecordingTrainer(Trainer):
    """Keeps the in-memory model's validation scores of every epoch."""

    def _end_epoch(self, epoch, train_logs, validation, *times):
        self.scores[epoch + 1] = score_split(
            self.model, self.options.data_dir, "valid", "rec", self.manifest
        )
        return super()._end_epoch(epoch, train_logs, validation, *times)


def mean_bce(model, batches):
    """Deterministic (training=False) candidate BCE over fixed training batches."""
    values = []
    for batch in batches:
        p = model(batch["rec"], training=False)["rec"]
        labels = tf.one_hot(tf.zeros(tf.shape(p)[:1], tf.int32), tf.shape(p)[1])
        values.append(
            float(
                tf.reduce_mean(
                    tf.keras.losses.binary_crossentropy(labels[..., tf.newaxis], p[..., tf.newaxis])
                )
            )
        )
    return float(np.mean(values))


@pytest.fixture(scope="module")
def trained(amazon_examples, tmp_path_factory):
    out, manifest = amazon_examples
    model_dir = str(tmp_path_factory.mktemp("sasrec"))
    config = tiny_config(learning_rate=1e-2, num_layers=2, **SASREC)
    trainer = RecordingTrainer(config, TrainerOptions(out, model_dir, max_epochs=4, verbose=0))
    trainer.scores = {}
    batches = list(
        training_dataset(
            trainer.config, out, manifest, reader.query_bank(out, manifest), seed=0, epoch=0
        )
    )
    before = mean_bce(trainer.model, batches)
    summary = trainer.fit()
    return dict(
        out=out,
        manifest=manifest,
        model_dir=model_dir,
        trainer=trainer,
        summary=summary,
        before=before,
        after=mean_bce(trainer.model, batches),
    )


@pytest.mark.slow
def test_trainer_run_lowers_the_loss(trained):
    assert isinstance(trained["trainer"].model, SASRecModel)
    assert trained["after"] < trained["before"] - 0.05, (trained["before"], trained["after"])
    with open(os.path.join(trained["model_dir"], "history.jsonl")) as handle:
        lines = [json.loads(line) for line in handle]
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4]
    assert set(lines[0]["validation"]) == {"rec"}  # validation score = rec NDCG@5 alone
    assert {"loss", "rec_bce", "l2"} <= set(lines[0]["train"])


@pytest.mark.slow
def test_best_checkpoint_reloads_to_the_same_scores(trained):
    out, manifest, model_dir = trained["out"], trained["manifest"], trained["model_dir"]
    best = read_best(model_dir)
    scores = trained["trainer"].scores
    assert best["epoch"] == trained["summary"]["epoch"]
    model = load_trained_model(model_dir, out)
    assert isinstance(model, SASRecModel)
    reloaded = score_split(model, out, "valid", "rec", manifest)
    np.testing.assert_array_equal(reloaded, scores[best["epoch"]])
    other = [epoch for epoch in scores if epoch != best["epoch"]]
    assert all(not np.array_equal(scores[epoch], reloaded) for epoch in other)  # can tell apart
    validation = evaluate_model(model, out, "valid", manifest)
    assert json.loads(json.dumps(validation)) == best["validation"]


@pytest.mark.slow
def test_evaluate_best_reports_the_run_as_sasrec(trained):
    out, model_dir = trained["out"], trained["model_dir"]
    report = evaluate_best(model_dir, out, "test", write=False)
    assert report["model"] == "SASRec" and "unisar" not in report
    assert set(report["SASRec"]) == {"rec"} and set(report["popularity"]) == {"rec"}
    markdown = report_markdown(report)
    rec_row = next(line for line in markdown.splitlines() if line.startswith("| SASRec | rec |"))
    assert f"{report['SASRec']['rec']['NDCG@10']:.4f}" in rec_row
    assert "| search |" not in markdown


def test_ablation_table_takes_a_sasrec_report_as_a_rec_only_row():
    def metrics(ndcg10):
        return {"NDCG@5": ndcg10 / 2, "NDCG@10": ndcg10}

    reports = {
        "UniSAR": {
            "model": "unisar",
            "best_epoch": 3,
            "epochs_run": 5,
            "unisar": {"rec": metrics(0.4), "search": metrics(0.7)},
        },
        "SASRec": {
            "model": "SASRec",
            "best_epoch": 2,
            "epochs_run": 4,
            "SASRec": {"rec": metrics(0.5)},
        },
    }
    rows = ablation.table_rows(reports, {})
    assert rows[1]["name"] == "SASRec" and rows[1]["search"] is None
    line = ablation.ablation_markdown(rows, "h").splitlines()[-1]
    assert line == "| SASRec | 0.2500 / 0.5000 | - | +0.1000 |  | 2 | 4 |"


# ---------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_trains_sasrec_with_architecture_flag_and_reports_it(amazon_examples, tmp_path):
    out, manifest = amazon_examples
    model_dir = str(tmp_path / "model")
    command = [
        sys.executable,
        "-m",
        "unisar_tf.train",
        "--data_dir",
        out,
        "--model_dir",
        model_dir,
        "--architecture",
        "sasrec",
        "--max_epochs",
        "1",
        "--steps_per_epoch",
        "2",
        "--quiet",
    ] + TINY_FLAGS
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    rows = [line.split(" | ")[:2] for line in table[2:]]
    assert rows[0] == ["| SASRec", "rec"]  # then the non-learned baselines, rec only
    assert {"| popularity", "| random"} <= {name for name, _ in rows}
    assert {task for _, task in rows} == {"rec"} and "| unisar" not in {name for name, _ in rows}
    with open(os.path.join(model_dir, "config.json")) as handle:
        written = json.load(handle)
    assert written["architecture"] == "sasrec" and written["tasks"] == ["rec"]  # tasks default


@pytest.mark.slow  # a subprocess that imports TensorFlow
def test_cli_rejects_sasrec_with_the_search_task(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "unisar_tf.train",
            "--data_dir",
            str(tmp_path),
            "--model_dir",
            str(tmp_path / "m"),
            "--architecture",
            "sasrec",
            "--tasks",
            "rec,search",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: architecture 'sasrec' is a rec-only model" in result.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "flags,expected",
    [
        ([], True),
        (["--sasrec_baseline", "false"], False),
        (["--skip_test"], False),  # no report to put it in
        (["--architecture", "sasrec"], False),  # the run is SASRec itself
        (["--tasks", "search"], False),  # SASRec scores rec only
    ],
)
def test_sasrec_baseline_is_trained_beside_unisar_runs_with_rec_and_a_report(flags, expected):
    from unisar_tf.train import cli

    args = cli.build_parser().parse_args(["--data_dir", "d", "--model_dir", "m"] + flags)
    assert cli.wants_sasrec_baseline(args, cli.config_from_args(args)) is expected


def test_learned_baseline_recipe_is_the_ablation_tables_on_the_same_preset():
    from unisar_tf.config import BASELINES, preset
    from unisar_tf.train.learned_baseline import sasrec_config

    for name in ("default", "paper"):
        config = sasrec_config(name, seed=3)
        assert config == preset(name, seed=3, **BASELINES["SASRec"])
        assert config.architecture == "sasrec" and config.model.tasks == ("rec",)


def test_sasrec_has_its_own_schedule_not_the_presets(monkeypatch):
    """The default preset stops after 2 epochs without gain; SASRec, which needs many more
    epochs, keeps its own patience and budget (a failed run is a bug, not a win)."""
    from unisar_tf.config import SASREC_MAX_EPOCHS, preset
    from unisar_tf.train import learned_baseline

    default = preset("default")
    sasrec = learned_baseline.sasrec_config("default")
    assert (default.training.lr_reduce_patience, default.training.early_stop_patience) == (1, 2)
    assert (sasrec.training.lr_reduce_patience, sasrec.training.early_stop_patience) == (3, 6)

    budgets = []

    class Recorder:  # stands in for the Trainer: only the options it gets matter here
        def __init__(self, config, options):
            budgets.append((config.architecture, options.max_epochs, options.model_dir))

        def fit(self):
            return {}

    monkeypatch.setattr(learned_baseline, "Trainer", Recorder)
    monkeypatch.setattr(learned_baseline, "has_rec_training", lambda *args: True)
    options = TrainerOptions(data_dir="d", model_dir="m", max_epochs=1)
    learned_baseline.train_sasrec(options)
    learned_baseline.train_sasrec(options, max_epochs=7)
    assert [budget[:2] for budget in budgets] == [("sasrec", SASREC_MAX_EPOCHS), ("sasrec", 7)]
    assert budgets[0][2] == os.path.join("m", "baselines", "SASRec")
