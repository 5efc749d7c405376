"""KuaiSAR side features: from the data job's side tables into the model (spec 2)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers import FIXTURES
from helpers.model import write_vocabularies

from feature_specs.data_spec import DataSpec
from pipeline import beam_job
from pipeline import sequence_builder as sb
from pipeline.adapters import kuaisar
from unisar_tf.config import DataFacts, kuaisar_preset
from unisar_tf.data.side_features import SideFeatures, load_side_features
from unisar_tf.data.synthetic import random_feature_batch
from unisar_tf.data.vocab import read_vocabularies
from unisar_tf.export.push import export_serving_model
from unisar_tf.export.requests import raw_request_from_features
from unisar_tf.model import build_model

FIXTURE = os.path.join(FIXTURES, "kuaisar")
IN_MEMORY = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]


@pytest.fixture(scope="module")
def kuaisar_build(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("kuaisar") / "out")
    options = sb.BuildOptions(
        split="time",
        clicks_per_session=5,
        num_eval_negatives=3,
        min_rec_history=0,
        min_search_history=0,
        query_len=6,
    )
    manifest = beam_job.run(
        lambda p: kuaisar.read(p, kuaisar.KuaiSARInputs.from_dir(FIXTURE)),
        options,
        out,
        "kuaisar",
        {},
        IN_MEMORY,
    )
    return out, manifest


def _jsonl(out, name):
    rows = []
    for path in tf.io.gfile.glob(os.path.join(out, "side_features", f"{name}-*.jsonl")):
        rows += [json.loads(line) for line in open(path) if line.strip()]
    return rows


@pytest.mark.slow
def test_side_tables_follow_the_written_rows(kuaisar_build):
    out, manifest = kuaisar_build
    num_items = manifest["vocab_sizes"]["items"] + 1
    num_users = manifest["vocab_sizes"]["users"] + 1
    side = load_side_features(out, num_items, num_users, caption_length=2)
    items, users = _jsonl(out, "items"), _jsonl(out, "users")
    assert side.item_categories.shape == (num_items, 2)
    assert side.item_captions.shape == (num_items, 2)
    assert side.user_features.shape == (num_users, 4)
    assert side.user_feature_names == (
        "onehot_feat1",
        "onehot_feat2",
        "rec_active_level",
        "search_active_level",
    )
    for row in items:
        np.testing.assert_array_equal(
            side.item_captions[row["id"]], (row["caption_word_ids"][:2] + [0, 0])[:2]
        )  # truncated / padded to 2
    # Equal raw categories <-> equal codes; every known item has a non-zero code.
    for a in items:
        for b in items:
            same = a["categories"][0] == b["categories"][0]
            assert (side.item_categories[a["id"], 0] == side.item_categories[b["id"], 0]) == same
        assert side.item_categories[a["id"], 0] > 0
    assert np.all(side.item_categories[0] == 0) and np.all(side.item_captions[0] == 0)
    for row in users:
        assert np.all(side.user_features[row["id"]] > 0)
    facts = DataFacts.from_spec(DataSpec.of(manifest), side)
    assert facts.item_category_vocab_sizes[0] == len({r["categories"][0] for r in items}) + 1
    assert facts.item_caption_length == 2 and facts.uses_side_features
    assert (facts.num_items, facts.num_users) == (num_items, num_users)
    assert not DataFacts.from_spec(DataSpec.of(manifest)).uses_side_features


def _small_side_model(seed=0):
    config = kuaisar_preset(num_relevance_negatives=4, dropout=0.0)
    data = DataFacts(
        num_users=6,
        num_items=9,
        num_words=12,
        query_len=4,
        clicks_per_session=2,
        rec_len=3,
        search_len=3,
        item_category_vocab_sizes=(4, 5),
        user_feature_vocab_sizes=(3,),
        item_caption_length=3,
    )
    rng = np.random.default_rng(seed)
    side = SideFeatures(
        item_categories=rng.integers(1, 4, (9, 2)).astype(np.int32),
        item_captions=rng.integers(0, 12, (9, 3)).astype(np.int32),
        user_features=rng.integers(0, 3, (6, 1)).astype(np.int32),
        item_category_vocab_sizes=(4, 5),
        user_feature_vocab_sizes=(3,),
        user_feature_names=("level",),
    )
    side.item_categories[0] = 0
    side.item_captions[0] = 0
    tf.keras.utils.set_random_seed(seed)
    return config, side, build_model(config, data, side_features=side)


def test_side_features_change_the_item_embedding_and_padding_stays_zero():
    config, side, model = _small_side_model()
    ids = tf.constant([0, 3, 4], tf.int64)
    before = model.embed_items(ids).numpy()
    assert np.all(before[0] == 0.0)
    changed = side.item_categories.copy()
    changed[3, 0] = 1 if changed[3, 0] != 1 else 2
    model.set_side_features(
        SideFeatures(
            changed,
            side.item_captions,
            side.user_features,
            side.item_category_vocab_sizes,
            side.user_feature_vocab_sizes,
            ("level",),
        )
    )
    after = model.embed_items(ids).numpy()
    assert not np.allclose(before[1], after[1])  # item 3's category changed
    np.testing.assert_array_equal(before[2], after[2])  # item 4 untouched
    assert np.all(after[0] == 0.0)


def test_side_feature_tables_get_gradients_and_lookup_tables_are_not_trained():
    config, side, model = _small_side_model(1)
    features = random_feature_batch(model.data, 4, 5, True, np.random.default_rng(2))
    with tf.GradientTape() as tape:
        scores = model(features, training=True)
        loss = tf.reduce_sum(scores["rec"]) + tf.reduce_sum(scores["search"])
    variables = model.trainable_variables
    names = [v.name for v in variables]
    gradients = tape.gradient(loss, variables)
    grads = dict(zip(names, gradients))
    # One word table (12 x 32): captions read the query encoder's table, not one of their own.
    assert sum(tuple(v.shape) == (12, 32) for v in variables) == 1
    # Scoring reaches everything but the loss-only layers (alignment / relevance W and tau).
    unused = [v.name for v, g in zip(variables, gradients) if g is None]
    assert unused and all(
        name.split("/")[-2] in ("rec_alignment", "search_alignment", "relevance") for name in unused
    ), unused
    for part in (
        "item_categories/column_0",
        "item_categories/column_1",
        "user_side_features/column_0",
    ):
        (name,) = [n for n in names if part in n]
        assert (
            grads[name] is not None
            and float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(grads[name])))) > 0
        ), name
    assert not any("attributes" in n or "item_captions" in n for n in names)


@pytest.mark.slow  # exports and reloads a SavedModel
def test_side_feature_model_round_trips_through_saved_model(tmp_path):
    config, side, model = _small_side_model(3)
    features = random_feature_batch(model.data, 3, 5, True, np.random.default_rng(4))
    expected = model(features)
    vocab_dir = write_vocabularies(tmp_path / "vocab", model.data)
    export_serving_model(model, vocab_dir, str(tmp_path / "export"))
    reloaded = tf.saved_model.load(str(tmp_path / "export"))
    raw = raw_request_from_features(features, read_vocabularies(vocab_dir))
    search = reloaded.signatures["search"](**{k: tf.constant(v) for k, v in raw.items()})
    np.testing.assert_allclose(
        search["scores"].numpy(), expected["search"].numpy(), rtol=1e-5, atol=1e-6
    )


def test_side_feature_config_needs_tables_and_valid_sizes():
    config, side, model = _small_side_model()
    with pytest.raises(ValueError, match="side_features"):
        build_model(config, model.data)
    with pytest.raises(ValueError, match="does not read"):  # the paper preset: ids only
        build_model(config.replace(use_side_features=False), model.data, side_features=side)
    with pytest.raises(ValueError, match="side-feature table sizes"):
        model.data.replace(item_category_vocab_sizes=(1,))


def test_amazon_style_data_has_no_side_features(tmp_path):
    assert load_side_features(str(tmp_path), 10, 10) is None


@pytest.mark.slow
def test_training_on_kuaisar_tfrecords_uses_the_side_features(kuaisar_build, tmp_path):
    from unisar_tf.train.evaluation import evaluate_model
    from unisar_tf.train.trainer import Trainer, TrainerOptions

    out, _ = kuaisar_build
    trainer = Trainer(
        kuaisar_preset(batch_size=4, num_relevance_negatives=4),
        TrainerOptions(out, str(tmp_path / "model"), max_epochs=1, verbose=0),
    )
    trainer.fit()
    results = evaluate_model(trainer.model, out, "test", trainer.manifest)
    for task in ("rec", "search"):
        assert 0.0 <= results[task]["NDCG@10"] <= 1.0
        assert np.isfinite(list(results[task].values())).all()
    model = trainer.model
    assert model.data.item_category_vocab_sizes and model.data.user_feature_vocab_sizes
    # Caption columns trimmed to the fixture's longest caption.
    longest = max(
        len(row["caption_word_ids"])
        for path in tf.io.gfile.glob(os.path.join(out, "side_features", "items-*.jsonl"))
        for row in map(json.loads, open(path))
    )
    assert 0 < longest < model.data.query_len
    assert model.data.item_caption_length == longest
    assert int(tf.reduce_sum(model.item_captions.table)) > 0  # the fixture's captions, loaded
