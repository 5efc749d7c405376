"""UniSARModel: gradients, ablations, edge cases, loss composition, round trips, size."""

import numpy as np
import pytest
import tensorflow as tf

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    SEARCH_HISTORY_QUERY_TOKENS,
    TYPE_PAD,
)
from unisar_tf.config import (
    ABLATIONS,
    DataFacts,
    UniSARConfig,
    amazon_preset,
    run_config_dict,
)
from unisar_tf.data.synthetic import random_feature_batch
from unisar_tf.model import build_model, count_parameters
from unisar_tf.tools.param_count import parameter_breakdown

SMALL = dict(num_relevance_negatives=16, batch_size=8)
DATA = DataFacts(
    num_users=40,
    num_items=80,
    num_words=30,
    rec_len=6,
    search_len=5,
    query_len=4,
    clicks_per_session=2,
)


def small_config(**overrides) -> UniSARConfig:
    return UniSARConfig(**{**SMALL, **overrides})


def joint_batch(config, rng, batch_size=8, num_candidates=5, **edge_cases):
    batch = {}
    for task in config.model.tasks:
        batch[task] = random_feature_batch(
            DATA, batch_size, num_candidates, with_query=(task == "search"), rng=rng, **edge_cases
        )
    batch["rel_negatives"] = {
        "rel_negative_items": rng.integers(1, DATA.num_items, size=16),
        "rel_negative_query_tokens": batch.get("search", batch.get("rec"))[
            SEARCH_HISTORY_QUERY_TOKENS
        ].reshape(-1, DATA.query_len)[:16],
    }
    return tf.nest.map_structure(tf.constant, batch)


def gradients(model, batch):
    with tf.GradientTape() as tape:
        loss = model.compute_loss(batch, training=True)
    return loss, tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize("variant", sorted(ABLATIONS))
def test_every_variable_gets_a_gradient_and_one_step_trains(variant):
    tf.keras.utils.set_random_seed(1)
    config = small_config(**ABLATIONS[variant])
    model = build_model(config, DATA)
    batch = joint_batch(config, np.random.default_rng(2))
    loss, grads = gradients(model, batch)
    assert np.isfinite(loss.numpy())
    missing = [
        v.name
        for v, g in zip(model.trainable_variables, grads)
        if g is None or not np.any(tf.convert_to_tensor(g).numpy() != 0)
    ]
    assert not missing, f"{variant}: no gradient for {missing}"
    # Components an ablation removes do not exist at all (so cannot train by accident).
    names = set(parameter_breakdown(model))
    assert ("rec_encoder_0" in names) == config.model.use_r2r
    assert ("mixed_encoder_0" in names) == (config.model.use_r2s or config.model.use_s2r)
    assert ("experts" in names) == config.model.use_mmoe
    assert ("relevance" in names) == config.model.use_relevance_loss
    assert ("rec_fusion_0" in names) == config.model.use_fusion_rec
    before = [v.numpy().copy() for v in model.trainable_variables]
    tf.keras.optimizers.Adam(1e-3).apply_gradients(zip(grads, model.trainable_variables))
    assert all(np.any(b != v.numpy()) for b, v in zip(before, model.trainable_variables))


@pytest.mark.parametrize("edge", ["empty_search_history", "empty_rec_history"])
def test_user_without_one_kind_of_history_gives_finite_scores_loss_and_gradients(edge):
    tf.keras.utils.set_random_seed(3)
    config = small_config()
    model = build_model(config, DATA)
    batch = joint_batch(config, np.random.default_rng(4), **{edge: True})
    scores = model(batch["search"])
    for task in ("rec", "search"):
        assert np.all(np.isfinite(scores[task].numpy()))
    loss, grads = gradients(model, batch)
    assert np.isfinite(loss.numpy())
    assert all(np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads if g is not None)


def test_scores_ignore_padded_history_slots():
    tf.keras.utils.set_random_seed(5)
    config = small_config()
    model = build_model(config, DATA)
    features = random_feature_batch(DATA, 6, 4, True, np.random.default_rng(6))
    reference = model(features)
    noisy = {k: v.copy() for k, v in features.items()}
    rng = np.random.default_rng(7)
    num_rec = (features[HISTORY_TYPES] == 1).sum(1)
    num_search = (features[HISTORY_TYPES] == 2).sum(1)
    for row in range(6):  # garbage ids in slots the types say are padding
        noisy[REC_HISTORY_ITEMS][row, num_rec[row] :] = rng.integers(1, 80)
        noisy[SEARCH_HISTORY_QUERY_TOKENS][row, num_search[row] :] = rng.integers(1, 30)
        noisy[SEARCH_HISTORY_CLICKED_ITEMS][row, num_search[row] :] = rng.integers(1, 80)
    assert np.any(noisy[REC_HISTORY_ITEMS] != features[REC_HISTORY_ITEMS])
    for task, scores in model(noisy).items():
        np.testing.assert_allclose(scores.numpy(), reference[task].numpy(), rtol=1e-5, atol=1e-6)


def test_candidates_are_scored_independently_of_each_other():
    tf.keras.utils.set_random_seed(8)
    config = small_config()
    model = build_model(config, DATA)
    features = random_feature_batch(DATA, 3, 5, True, np.random.default_rng(9))
    together = model(features)
    for column in (0, 3):
        single = dict(
            features, **{CANDIDATE_ITEMS: features[CANDIDATE_ITEMS][:, column : column + 1]}
        )
        alone = model(single)
        for task in together:
            np.testing.assert_allclose(
                alone[task].numpy()[:, 0], together[task].numpy()[:, column], rtol=1e-5, atol=1e-6
            )


def test_history_order_matters_through_the_mixed_sequence():
    tf.keras.utils.set_random_seed(10)
    config = small_config(dropout=0.0)
    model = build_model(config, DATA)
    features = random_feature_batch(DATA, 4, 3, True, np.random.default_rng(11))
    features[HISTORY_TYPES][:] = TYPE_PAD
    features[HISTORY_TYPES][:, :4] = [1, 2, 1, 2]
    swapped = {k: v.copy() for k, v in features.items()}
    swapped[HISTORY_TYPES][:, :4] = [2, 1, 2, 1]
    a, b = model(features)["rec"].numpy(), model(swapped)["rec"].numpy()
    assert not np.allclose(a, b)


def test_bce_part_of_the_loss_matches_numpy():
    tf.keras.utils.set_random_seed(12)
    config = small_config(dropout=0.0)
    model = build_model(config, DATA)
    batch = joint_batch(config, np.random.default_rng(13))
    model.compute_loss(batch, training=False)
    for task in ("rec", "search"):
        p = np.clip(model(batch[task])[task].numpy().astype(np.float64), 1e-12, 1 - 1e-12)
        labels = np.zeros_like(p)
        labels[:, 0] = 1
        expected = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
        np.testing.assert_allclose(
            model.loss_trackers[f"{task}_bce"].result().numpy(), expected, rtol=1e-4
        )


def test_loss_weights_follow_spec_section_10():
    tf.keras.utils.set_random_seed(14)
    config = small_config(dropout=0.0, gamma_search=0.25, l2_weight=1e-3)
    model = build_model(config, DATA)
    batch = joint_batch(config, np.random.default_rng(15))
    total = model.compute_loss(batch, training=False).numpy()
    rec = model.task_loss("rec", batch["rec"], batch["rel_negatives"]).numpy()
    search = model.task_loss("search", batch["search"], batch["rel_negatives"]).numpy()
    decayed = [
        v.numpy()
        for v in model.trainable_variables
        if not v.name.split("/")[-1].startswith(("bias", "beta"))
    ]
    l2 = 0.5 * sum(float(np.sum(w.astype(np.float64) ** 2)) for w in decayed)
    np.testing.assert_allclose(total, rec + 0.25 * search + 1e-3 * l2, rtol=1e-5)


def test_batch_rows_l2_decays_only_rows_the_step_read():
    tf.keras.utils.set_random_seed(16)
    config = small_config(embedding_l2_mode="batch_rows", l2_weight=1.0)
    model = build_model(config, DATA)
    batch = joint_batch(config, np.random.default_rng(17))
    with tf.GradientTape() as tape:
        penalty = model.l2_penalty(batch)
    grad = tf.convert_to_tensor(tape.gradient(penalty, model.item_embedding.embeddings)).numpy()
    touched = np.unique(
        np.concatenate(
            [
                np.ravel(batch[t][k].numpy())
                for t in ("rec", "search")
                for k in (REC_HISTORY_ITEMS, SEARCH_HISTORY_CLICKED_ITEMS, CANDIDATE_ITEMS)
            ]
            + [batch["rel_negatives"]["rel_negative_items"].numpy()]
        )
    )
    rows_with_grad = np.flatnonzero(np.any(grad != 0, axis=1))
    np.testing.assert_array_equal(rows_with_grad, touched[touched != 0])
    touched = touched[touched != 0]
    np.testing.assert_allclose(
        grad[touched], model.item_embedding.embeddings.numpy()[touched], rtol=1e-6
    )


def test_weights_checkpoint_round_trip_gives_identical_scores(tmp_path):
    tf.keras.utils.set_random_seed(18)
    config = small_config()
    model = build_model(config, DATA)
    features = random_feature_batch(DATA, 4, 6, True, np.random.default_rng(19))
    expected = model(features)
    model.save_weights(str(tmp_path / "ckpt"))
    tf.keras.utils.set_random_seed(99)  # a differently initialised twin
    recorded = run_config_dict(config, DATA)  # what a run's config.json holds
    twin = build_model(UniSARConfig.from_dict(recorded), DataFacts.from_dict(recorded))
    assert not np.allclose(twin(features)["rec"].numpy(), expected["rec"].numpy())
    twin.load_weights(str(tmp_path / "ckpt"))
    for task in expected:
        np.testing.assert_array_equal(twin(features)[task].numpy(), expected[task].numpy())


def test_parameter_count_of_amazon_preset_at_kindle_sizes():
    items, words, users, d, raw = 61935, 1866, 68223, 64, 32
    embeddings = (items + words + users) * raw + 3 * (raw * d + d)
    positions = (60 + 30 + 30) * d
    attention = 4 * (d * d + d)
    encoder = attention + 2 * (d * d + d) + 2 * 2 * d
    decoder = 2 * attention + 2 * (d * d + d) + 3 * 2 * d
    pooling_and_losses = 2 * d * d + 3 * (d * d + 1)
    experts = 12 * (5 * d * 64 + 64) + 2 * (5 * d * 8 + 8) + 2 * (64 * 128 + 128 + 128 * 64 + 64)
    heads = 2 * (64 * 200 + 200 + 200 * 80 + 80 + 80 + 1)
    expected = (
        embeddings
        + positions
        + 3 * encoder
        + 2 * decoder
        + pooling_and_losses
        + experts
        + heads
        + d
    )  # + q_phi
    data = DataFacts(  # Kindle's tables, spec 3's shapes
        num_users=users,
        num_items=items,
        num_words=words,
        rec_len=30,
        search_len=30,
        query_len=50,
        clicks_per_session=1,
    )
    model = build_model(amazon_preset(), data)
    assert count_parameters(model) == expected == 4_762_085


def test_model_rejects_missing_relevance_negatives():
    config = small_config()
    model = build_model(config, DATA)
    batch = joint_batch(config, np.random.default_rng(22))
    del batch["rel_negatives"]
    with pytest.raises(ValueError, match="rel_negative_items"):
        model.compute_loss(batch)


def test_config_round_trips_and_rejects_bad_values():
    config = amazon_preset(dropout=0.3)
    assert UniSARConfig.from_dict(config.to_dict()) == config
    assert config.model.alpha_relevance == 0.1 and config.model.dropout == 0.3
    with pytest.raises(ValueError, match="query_len"):
        DATA.replace(query_len=0)
    with pytest.raises(ValueError, match="num_items must be >= 2"):
        DATA.replace(num_items=1)
    with pytest.raises(ValueError, match="side-feature table sizes"):
        DATA.replace(item_category_vocab_sizes=(1,))
    with pytest.raises(ValueError, match="at least one of r2r and s2r"):
        UniSARConfig(use_r2r=False, use_s2r=False)
    with pytest.raises(ValueError, match="unknown UniSARConfig fields"):
        UniSARConfig.from_dict({"num_itemz": 3})


def test_a_config_json_with_the_older_shape_names_still_loads():
    from unisar_tf.config import RENAMED_FIELDS

    config, data = UniSARConfig(), DATA.replace(rec_len=7, search_len=5, query_len=3)
    older = {
        next((old for old, new in RENAMED_FIELDS.items() if new == name), name): value
        for name, value in run_config_dict(config, data).items()
    }
    assert {"max_rec_history", "max_search_history", "query_length"} <= set(older)
    assert UniSARConfig.from_dict(older) == config
    assert DataFacts.from_dict(older) == data
    with pytest.raises(ValueError, match="unknown UniSARConfig fields"):
        UniSARConfig.from_dict(dict(older, max_history=3))
