"""The default preset's co-occurrence parts, each switched off (issue 22's ablation switches):
cooccurrence_wide_term, cooccurrence_transitions and cooccurrence_query_overlap."""

import argparse
import re

import numpy as np
import pytest
import tensorflow as tf
from helpers.model import TINY, cooccurrence_model

from unisar_tf.config import DEFAULT_PRESET_ABLATIONS, UniSARConfig, default_preset
from unisar_tf.model import MATCH_FEATURE_PRIOR, match_feature_prior

SWITCHES = ("cooccurrence_wide_term", "cooccurrence_transitions", "cooccurrence_query_overlap")
REL_NEGATIVES = {
    "rel_negative_items": tf.constant([1, 2, 3, 4]),
    "rel_negative_query_tokens": tf.zeros((4, 4), tf.int64),
}


def _model(seed=0, **overrides):
    """helpers.model.cooccurrence_model with tiny widths and no dropout (so two models with
    the same weights score alike)."""
    return cooccurrence_model(
        seed, **dict(TINY, num_relevance_negatives=4, dropout=0.0, **overrides)
    )


def _batch(query_tokens=((5, 4, 0, 0), (7, 0, 0, 0))):
    """Row 0's newest behaviour is the click on 2 (2 -> 3 is the one transition); the default
    queries share words with candidates 1, 2 and 3."""
    return {
        "user_id": tf.constant([1, 2]),
        "history_types": tf.constant([[1, 2, 0, 0, 0], [1, 0, 0, 0, 0]]),
        "rec_history_items": tf.constant([[1, 0, 0], [4, 0, 0]]),
        "search_history_query_tokens": tf.constant(
            [[[4, 0, 0, 0], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]]]
        ),
        "search_history_clicked_items": tf.constant([[[2], [0]], [[0], [0]]]),
        "candidate_items": tf.constant([[3, 1, 2], [5, 3, 6]]),
        "query_tokens": tf.constant(query_tokens),
    }


def _head_input_width(model) -> int:
    """Width of x, what the experts (and so the heads) read: the rows of a gate's kernel."""
    (gate,) = [v for v in model.experts.variables if v.name.startswith("experts/rec_gate/kernel")]
    return int(gate.shape[0])


def _name(variable) -> str:  # the loss layers' names start with the model's own
    return re.sub(r"^uni_sar_model(_\d+)?/", "", variable.name)


def _copy_weights(full, variant, removed_columns):
    """Gives `variant` the weights of `full`: the same variables in the same order, less the
    layers the variant lacks; a kernel that reads x loses the rows of the removed features
    (`removed_columns`, indices into the full x), the wide term's kernel those of the match
    features (the last 8 columns of x)."""
    width = _head_input_width(full)
    dropped = ()
    if variant.transitions is None:
        dropped += ("item_transitions/",)
    if variant.cooccurrence_logit is None:
        dropped += ("rec_cooccurrence_logit/", "search_cooccurrence_logit/")
    kept = [v for v in full.variables if not v.name.startswith(dropped)]
    assert [_name(v) for v in kept] == [_name(v) for v in variant.variables]
    for source, target in zip(kept, variant.variables):
        value = source.numpy()
        if value.shape != tuple(target.shape):  # the axis that reads x (or the 8 features)
            (axis,) = [a for a, (n, m) in enumerate(zip(value.shape, target.shape)) if n != m]
            if value.shape[axis] == width:  # the experts' and gates' kernels
                value = np.delete(value, removed_columns, axis=axis)
            else:  # the wide term's (8, 1) kernel
                value = np.delete(
                    value,
                    [c - width + len(MATCH_FEATURE_PRIOR) for c in removed_columns],
                    axis=axis,
                )
        target.assign(value)


def _logits(model, batch):
    return {task: value.numpy() for task, value in model.task_logits(batch).items()}


def test_default_preset_and_the_dataclass_have_every_part_on():
    for config in (default_preset(), UniSARConfig()):
        assert all(getattr(config.model, name) is True for name in SWITCHES)


def test_an_older_config_json_without_the_switches_loads_with_them_on():
    config = default_preset()
    older = config.to_dict()
    for name in SWITCHES:
        del older[name]
    loaded = UniSARConfig.from_dict(older)
    assert all(getattr(loaded.model, name) is True for name in SWITCHES)
    assert loaded == config


def test_the_default_preset_ablations_switch_one_addition_each():
    assert DEFAULT_PRESET_ABLATIONS["default"] == {}
    for name, overrides in DEFAULT_PRESET_ABLATIONS.items():
        config = default_preset(**overrides)  # every variant is a valid config
        assert len(overrides) == (0 if name == "default" else 1)
        assert all(
            config.to_dict()[field] != value
            for field, value in default_preset().to_dict().items()
            if field in overrides
        )
    switched = {field for overrides in DEFAULT_PRESET_ABLATIONS.values() for field in overrides}
    assert set(SWITCHES) < switched


def test_the_command_line_has_a_flag_per_switch():
    from unisar_tf.train.cli import build_parser, config_from_args

    parser = build_parser()
    help_text = parser.format_help()
    assert all(f"--{name}" in help_text for name in SWITCHES)
    args = parser.parse_args(
        ["--data_dir", "d", "--model_dir", "m", "--cooccurrence_transitions", "false"]
    )
    config = config_from_args(args)
    assert not config.model.cooccurrence_transitions
    assert config.model.cooccurrence_wide_term and config.model.cooccurrence_query_overlap
    assert isinstance(args, argparse.Namespace)


def test_match_feature_prior_follows_the_switches():
    config = default_preset().model
    assert match_feature_prior(config) == MATCH_FEATURE_PRIOR
    assert len(match_feature_prior(config.replace(cooccurrence_transitions=False))) == 7
    assert (
        match_feature_prior(config.replace(cooccurrence_query_overlap=False))
        == (MATCH_FEATURE_PRIOR[:6])
    )


@pytest.fixture(scope="module")
def full():
    return _model()


def test_without_the_wide_term_the_logit_loses_exactly_that_term(full):
    variant = _model(cooccurrence_wide_term=False)
    assert variant.cooccurrence_logit is None
    assert _head_input_width(variant) == _head_input_width(full)  # the head still reads them
    _copy_weights(full, variant, [])
    batch = _batch()
    ours, theirs = _logits(variant, batch), _logits(full, batch)
    for task in ("rec", "search"):
        match = full._cooccurrence_features(batch, training=False)
        match = tf.concat([match, full._query_match_features(batch, task)], axis=-1)
        wide = tf.squeeze(full.cooccurrence_logit[task](match), axis=-1).numpy()
        assert np.abs(wide).max() > 0.1
        np.testing.assert_allclose(theirs[task] - ours[task], wide, rtol=1e-5, atol=1e-5)


def test_without_transitions_the_feature_is_neither_computed_nor_read(full):
    variant = _model(cooccurrence_transitions=False)
    assert variant.transitions is None
    assert not [v for v in variant.variables if v.name.startswith("item_transitions/")]
    assert _head_input_width(variant) == _head_input_width(full) - 1
    assert variant.cooccurrence_logit["rec"].kernel.shape == (7, 1)
    batch = _batch()
    assert variant._cooccurrence_features(batch, training=False).shape[-1] == 5
    # With the same weights (the transition's rows taken out) the variant scores as the full
    # model would with that feature 0: row 0's candidate 3 (2 -> 3) differs, nothing else.
    width = _head_input_width(full)
    _copy_weights(full, variant, [width - 3])  # x ends with ..., transition, overlap, fraction
    ours, theirs = _logits(variant, batch), _logits(full, batch)
    for task in ("rec", "search"):
        assert abs(ours[task][0, 0] - theirs[task][0, 0]) > 1e-3
        np.testing.assert_allclose(ours[task][0, 1:], theirs[task][0, 1:], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours[task][1], theirs[task][1], rtol=1e-5, atol=1e-5)
    loss = variant.compute_loss({"rec": batch, "search": batch, "rel_negatives": REL_NEGATIVES})
    assert np.isfinite(float(loss))


def test_without_query_overlap_the_features_are_neither_computed_nor_read(full, monkeypatch):
    variant = _model(cooccurrence_query_overlap=False)
    assert _head_input_width(variant) == _head_input_width(full) - 2
    assert variant.cooccurrence_logit["search"].kernel.shape == (6, 1)
    width = _head_input_width(full)
    _copy_weights(full, variant, [width - 2, width - 1])
    # Queries that share words with candidates: search scores differ, rec (0 overlap) do not.
    batch = _batch()
    ours, theirs = _logits(variant, batch), _logits(full, batch)
    assert np.abs(ours["search"] - theirs["search"]).max() > 1e-3
    np.testing.assert_allclose(ours["rec"], theirs["rec"], rtol=1e-5, atol=1e-5)
    # Queries with no item word: the full model's overlap is 0, so the two score alike.
    unmatched = _batch(query_tokens=((8, 0, 0, 0), (8, 0, 0, 0)))
    np.testing.assert_allclose(
        _logits(variant, unmatched)["search"],
        _logits(full, unmatched)["search"],
        rtol=1e-5,
        atol=1e-5,
    )

    def never(*args, **kwargs):
        raise AssertionError("the query-overlap features were computed")

    monkeypatch.setattr(variant, "_query_match_features", never)
    loss = variant.compute_loss({"rec": batch, "search": batch, "rel_negatives": REL_NEGATIVES})
    assert np.isfinite(float(loss))


def test_every_part_off_leaves_the_five_cooccurrence_scores_in_the_head(full):
    variant = _model(**{name: False for name in SWITCHES})
    assert _head_input_width(variant) == _head_input_width(full) - 3
    assert variant.cooccurrence_logit is None and variant.transitions is None
    batch = _batch()
    with tf.GradientTape() as tape:
        loss = variant.compute_loss(
            {"rec": batch, "search": batch, "rel_negatives": REL_NEGATIVES}, training=True
        )
    gradients = tape.gradient(loss, variant.trainable_variables)
    assert np.isfinite(float(loss)) and all(g is not None for g in gradients)


def test_the_ablation_tool_selects_the_default_preset_set():
    from unisar_tf.tools import ablation

    assert ablation.variant_overrides(variant_set="default_preset") == DEFAULT_PRESET_ABLATIONS
    assert set(ablation.variant_overrides()) == set(ablation.VARIANT_SETS["spec12"])
    # --variants picks names from either set; every name has its own directory.
    args = ablation.parse_args(
        [
            "--data_dir",
            "d",
            "--out_dir",
            "o",
            "--preset",
            "default",
            "--variants",
            "default, w/o wide term, UniSAR",
        ]
    )
    assert ablation.variant_overrides(args.variants, args.variant_set) == {
        "default": {},
        "w/o wide term": {"cooccurrence_wide_term": False},
        "UniSAR": {},
    }
    names = [name for variants in ablation.VARIANT_SETS.values() for name in variants]
    assert len({ablation.slug(name) for name in names}) == len(names)
    args = ablation.parse_args(
        ["--data_dir", "d", "--out_dir", "o", "--variant_set", "default_preset"]
    )
    assert args.variant_set == "default_preset"


def test_ablation_deltas_are_against_the_default_row():
    from unisar_tf.tools import ablation

    def report(rec, search):
        return {
            "unisar": {
                "rec": {"NDCG@5": rec, "NDCG@10": rec},
                "search": {"NDCG@5": search, "NDCG@10": search},
            },
            "best_epoch": 1,
            "epochs_run": 2,
        }

    rows = ablation.table_rows(
        {"default": report(0.25, 0.84), "w/o wide term": report(0.24, 0.85)}, {}
    )
    text = ablation.ablation_markdown(rows, "header")
    assert "| -0.0100 | +0.0100 |" in text.splitlines()[-1]
