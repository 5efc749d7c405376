"""The standard protocols' command (unisar_tf.tools.standard_protocols): its rank arithmetic
by hand, its refusal of other builds, and one tiny end-to-end run (build, train, both
protocols, the published rows beside the project's)."""

import json
import math
import os

import numpy as np
import pytest
from helpers.data_job import run_cli

from unisar_tf.metrics import random_ranking_metrics
from unisar_tf.tools import standard_protocols as sp
from unisar_tf.tools.published_tables import PUBLISHED


def test_metrics_from_ranks_by_hand():
    ranks = np.array([0.0, 1.0, np.inf, 9.0])  # 0-based; inf = a miss
    got = sp.metrics_from_ranks(ranks, (1, 5, 10), (5, 10))
    assert got["HR@1"] == 0.25 and got["HR@5"] == 0.5 and got["HR@10"] == 0.75
    per_user = [1.0, 1 / math.log2(3), 0.0, 1 / math.log2(11)]
    assert got["NDCG@10"] == pytest.approx(np.mean(per_user))
    assert got["NDCG@5"] == pytest.approx((1.0 + 1 / math.log2(3)) / 4)
    assert got["NDCG@10 SE"] == pytest.approx(np.std(per_user, ddof=1) / 2)
    assert got["users"] == 4


def test_sampled_ranks_count_ties_against_the_positive():
    scores = np.array(
        [
            [0.5, 0.1, 0.5, 0.2],  # one tie: rank 1 (0-based)
            [0.9, 0.1, 0.2, 0.3],
        ]
    )  # best: rank 0
    assert sp.sampled_ranks(scores).tolist() == [1.0, 0.0]


def test_random_full_metrics_is_the_mean_over_every_place():
    # 10 items; user A has 2 history items (8 left), user B's positive is in its history.
    got = sp.random_full_metrics(
        np.array([2, 1]), np.array([True, False]), 10, hit_ks=(5,), ndcg_ks=(5, 10)
    )
    places = np.arange(8)  # A's positive is equally likely at each of 8 places
    assert got["HR@5"] == pytest.approx((5 / 8 + 0) / 2)
    assert got["NDCG@5"] == pytest.approx(
        np.mean(np.where(places < 5, 1 / np.log2(places + 2), 0)) / 2
    )
    assert got["NDCG@10"] == pytest.approx(np.mean(1 / np.log2(places + 2)) / 2)


def test_two_stage_ranks_miss_outside_the_retrieved_items():
    retrieved = np.array([[7, 3, 9], [4, 5, 6], [2, 8, 1]])
    ranker = np.array([[0.2, 0.9, 0.1], [0.5, 0.4, 0.3], [0.3, 0.3, 0.1]])
    positives = np.array([7, 9, 8])
    # 7 is beaten by 3: rank 1; 9 was not retrieved: a miss; 8 ties with 2: rank 1.
    assert sp.two_stage_ranks(retrieved, ranker, positives).tolist() == [1.0, np.inf, 1.0]


def test_published_rows_are_the_issue_table():
    ndcg = {
        (protocol, dataset): [
            PUBLISHED[protocol][dataset][m]["NDCG@10"] for m in ("PopRec", "SASRec", "S3-Rec")
        ]
        for protocol in ("sampled", "full")
        for dataset in ("amazon_beauty", "amazon_sports")
    }
    assert ndcg[("sampled", "amazon_beauty")] == [0.1803, 0.3156, 0.3732]
    assert ndcg[("sampled", "amazon_sports")] == [0.1902, 0.2869, 0.3538]
    assert ndcg[("full", "amazon_beauty")] == [0.0068, 0.0318, 0.0327]
    assert ndcg[("full", "amazon_sports")] == [0.0053, 0.0192, 0.0204]


@pytest.mark.slow
def test_a_popularity_sampled_joint_build_is_refused(amazon_examples):
    out, manifest = amazon_examples
    with pytest.raises(ValueError) as error:
        sp.check_protocol_build(manifest, out)
    message = str(error.value)
    assert out in message and "negative_sampler 'popularity'" in message
    assert "search examples" in message and "--negative_sampler uniform" in message


# ------------------------------------------------------------------------------ end to end
NUM_ITEMS = 150  # more than 99 negatives + a user's 8 items


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory):
    """A tiny protocol build (60 users x 8 of 150 items), UniSAR and SASRec for one epoch,
    both protocols scored: (run, results, lines of the sequences file)."""
    root = tmp_path_factory.mktemp("protocols")
    rng = np.random.default_rng(5)
    lines = [
        f"u{u} " + " ".join(f"i{i}" for i in rng.choice(NUM_ITEMS, size=8, replace=False))
        for u in range(60)
    ]
    (root / "seq.txt").write_text("\n".join(lines) + "\n")
    (root / "attrs.json").write_text(
        json.dumps({f"i{i}": [f"cat{i % 4}"] for i in range(NUM_ITEMS)})
    )
    run = sp.ProtocolRun.at("tiny", str(root))
    run_cli(
        [
            "--dataset",
            "amazon",
            "--sequences",
            str(root / "seq.txt"),
            "--attributes",
            str(root / "attrs.json"),
            "--output",
            run.data_dir,
            *sp.PROTOCOL_BUILD_FLAGS,
        ]
    )
    results = sp.run_protocols(
        sp.PROTOCOLS, run, str(root), max_epochs=1, sasrec_max_epochs=1, retrieve=20, seed=0
    )
    return run, results, lines


@pytest.mark.slow
def test_both_protocols_report_every_row_beside_the_published_ones(protocol_run):
    run, results, _ = protocol_run
    sampled = results["sampled"]["rows"]
    assert set(sampled) == {sp.UNISAR, sp.SASREC_ROW, sp.ITEMKNN, sp.POPULARITY, sp.RANDOM}
    for name, row in sampled.items():
        assert row["users"] == 60, name
        assert 0 <= row["HR@1"] <= row["HR@5"] <= row["HR@10"] <= 1, name
    exact = random_ranking_metrics(100)
    assert sampled[sp.RANDOM]["NDCG@10"] == exact["NDCG@10"]
    full = results["full"]["rows"]
    two_stage = sp.TWO_STAGE.format(k=20)
    assert {
        sp.SASREC_ROW,
        sp.ITEMKNN,
        sp.POPULARITY,
        sp.RETRIEVAL_ONLY,
        two_stage,
        sp.RANDOM,
    } <= set(full)
    # Reranking can only reorder what was retrieved.
    assert full[two_stage]["HR@20"] <= full["_notes"]["two-tower Recall@20"] + 1e-12
    for protocol in sp.PROTOCOLS:
        with open(os.path.join(run.out_dir, f"tiny_{protocol}.md")) as handle:
            markdown = handle.read()
        assert "this project" in markdown and "S3-Rec (Zhou et al., CIKM 2020)" in markdown
        with open(os.path.join(run.out_dir, f"tiny_{protocol}.json")) as handle:
            assert json.load(handle)["rows"][sp.POPULARITY]["users"] == 60


@pytest.mark.slow
def test_full_ranking_of_popularity_matches_a_count_by_hand(protocol_run):
    """Training positives are every item but the first and the last two of each user
    (leave-one-out); the test item is the last, ranked among the items not in its history by
    (count desc, vocabulary id asc)."""
    run, results, lines = protocol_run
    with open(os.path.join(run.data_dir, "vocab", "items.txt")) as handle:
        ids = {item: index + 1 for index, item in enumerate(handle.read().splitlines())}
    sequences = [[ids[item] for item in line.split()[1:]] for line in lines]
    counts = np.zeros(len(ids) + 1)
    for items in sequences:
        for item in items[1:-2]:
            counts[item] += 1
    ranks = []
    for items in sequences:
        positive, history = items[-1], set(items[:-1])
        ahead = [
            c
            for c in range(1, len(ids) + 1)
            if c not in history
            and c != positive
            and (counts[c] > counts[positive] or (counts[c] == counts[positive] and c < positive))
        ]
        ranks.append(len(ahead))
    expected = sp.metrics_from_ranks(np.array(ranks, float), sp.FULL_KS, sp.FULL_KS)
    got = results["full"]["rows"][sp.POPULARITY]
    for metric in ("HR@5", "HR@10", "HR@20", "NDCG@10"):
        assert got[metric] == pytest.approx(expected[metric]), metric


@pytest.mark.slow
def test_rec_only_data_gets_the_counted_baselines(protocol_run):
    from unisar_tf.data import reader
    from unisar_tf.train.evaluation import baseline_metrics, single_scenario_note

    run, _, _ = protocol_run
    manifest = reader.load_manifest(run.data_dir)
    metrics = baseline_metrics(
        run.data_dir, "test", manifest, manifest["vocab_sizes"]["items"] + 1, ("rec",)
    )
    assert {"popularity", "random", "ItemKNN"} <= set(metrics)
    assert metrics["ItemKNN"]["rec"]["examples"] == 60
    assert "counted on the rec training examples alone" in single_scenario_note(manifest)


def test_logit_functions_score_with_their_own_model():
    """Full ranking scores by logits (probabilities saturate); each model's function must be
    its own model's logits (AutoGraph once traced UniSAR with SASRec's lambda)."""
    import tensorflow as tf
    from helpers.model import DEFAULT_FACTS, tiny_config

    from unisar_tf.config import DataFacts
    from unisar_tf.model import build_model, dummy_features

    rng = np.random.default_rng(0)
    data = DataFacts(**dict(DEFAULT_FACTS, num_items=40))
    for config in (tiny_config(), tiny_config(architecture="sasrec", tasks=("rec",))):
        model = build_model(config, data)
        features = dummy_features(data, 3, 5, with_query=False)
        features = {
            name: tf.constant(rng.integers(0, 40, value.shape), tf.int64)
            for name, value in features.items()
        }
        logits = sp.rec_logit_function(model)(features).numpy()
        probabilities = model(features)["rec"].numpy()
        np.testing.assert_allclose(1 / (1 + np.exp(-logits)), probabilities, rtol=1e-5, atol=1e-6)
