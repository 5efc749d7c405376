"""The quality gate (unisar_tf/train/gate.py): per-list NDCG@10, the paired comparison, the
per-task rule; and that the evaluator's model and baseline scores pair up list by list."""

import json
import math

import numpy as np
import pytest
from helpers.datasets import build_amazon_examples

from unisar_tf.metrics import positive_rank_numpy, ranking_metrics
from unisar_tf.train import gate

C = 100  # 1 positive + 99 negatives, as the pipeline's test lists
N = 2000


def scores_with_ranks(ranks, num_candidates=C):
    """(N, C) scores whose positive (column 0) has exactly these pessimistic ranks."""
    ranks = np.asarray(ranks)
    negatives = np.tile(
        np.arange(num_candidates - 1, 0, -1, dtype=np.float64), (len(ranks), 1)
    )  # C-1 .. 1
    positive = (num_candidates - ranks + 0.5)[:, None]  # beaten by exactly rank-1 negatives
    return np.concatenate([positive, negatives], axis=1)


def hit_or_miss(rng, hit_rate, size=N):
    """Ranks: 1 with probability hit_rate, else beyond the top 10 (NDCG@10 0), so a list's
    NDCG@10 is 1 or 0 and the mean NDCG@10 is close to hit_rate."""
    return np.where(rng.random(size) < hit_rate, 1, rng.integers(11, C + 1, size))


def test_scores_helper_gives_the_ranks():
    ranks = np.array([1, 2, 10, 11, 100])
    np.testing.assert_array_equal(positive_rank_numpy(scores_with_ranks(ranks)), ranks)


def test_ndcg_per_list_by_hand_with_ties():
    nan = float("nan")
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3] + [0.0] * 8,  # rank 1: 1
            [0.5, 0.5, 0.1, 0.2] + [0.0] * 8,  # tied with one negative: rank 2, 1/log2(3)
            [0.5, 0.5, 0.5, 0.9] + [0.0] * 8,  # two ties + one above: rank 4, 1/log2(5) = 0.4307
            [0.3] * 12,  # all tied: rank 12 > 10: 0
            [0.1] + [0.2] * 9 + [0.0] * 2,  # rank 10: 1/log2(11)
            [0.1] + [0.2] * 10 + [0.0],  # rank 11: 0
            [nan] + [0.0] * 11,  # a NaN positive counts against itself: rank 12
        ]
    )
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(5), 0.0, 1 / math.log2(11), 0.0, 0.0]
    np.testing.assert_allclose(gate.ndcg_per_list(scores), expected, rtol=0, atol=1e-12)
    assert gate.ndcg_per_list(scores).mean() == pytest.approx(ranking_metrics(scores)["NDCG@10"])


def test_random_is_the_exact_expectation():
    # C = 4: ranks 1..4 equally likely.
    assert gate.random_ndcg(4) == pytest.approx(
        (1 + 1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)) / 4
    )
    from unisar_tf.metrics import random_ranking_metrics

    assert gate.random_ndcg(100) == pytest.approx(random_ranking_metrics(100)["NDCG@10"])
    assert gate.random_ndcg(100) == pytest.approx(0.0454, abs=1e-4)
    assert gate.random_ndcg(100, k=5) == pytest.approx(random_ranking_metrics(100)["NDCG@5"])


def test_paired_comparison_numbers():
    model = np.array([1.0, 0.5, 0.0, 1.0])
    baseline = np.array([0.5, 0.5, 0.5, 0.0])
    stats = gate.paired_comparison(model, baseline, confidence=0.9, samples=500, seed=1)
    differences = model - baseline  # 0.5, 0, -0.5, 1
    assert stats["model"] == pytest.approx(0.625) and stats["baseline"] == pytest.approx(0.375)
    assert stats["difference"] == pytest.approx(0.25)
    assert stats["standard_error"] == pytest.approx(differences.std(ddof=1) / 2)
    assert -0.5 <= stats["lower_bound"] < 0.25 and stats["lists"] == 4
    constant = gate.paired_comparison(model, 0.5, confidence=0.0)
    assert constant["baseline"] == 0.5 and constant["difference"] == pytest.approx(0.125)
    assert constant["lower_bound"] is None  # confidence 0: no noise test
    assert gate.paired_comparison([0.3], 0.1)["standard_error"] is None  # one list
    with pytest.raises(ValueError, match="not paired"):
        gate.paired_comparison(model, baseline[:3])


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(0)
    differences = rng.normal(0.01, 0.3, size=5000)
    first = gate.bootstrap_lower_bound(differences, 0.95, 1000, seed=7)
    assert gate.bootstrap_lower_bound(differences, 0.95, 1000, seed=7) == first
    assert gate.bootstrap_lower_bound(differences, 0.95, 1000, seed=8) != first
    # Close to the normal approximation mean - 1.645 SE.
    normal = differences.mean() - 1.6449 * differences.std(ddof=1) / math.sqrt(5000)
    assert first == pytest.approx(normal, abs=0.002)
    # A whole decision replays to the same JSON.
    model = {"rec": scores_with_ranks(hit_or_miss(rng, 0.3, 500))}
    others = {"popularity": {"rec": scores_with_ranks(hit_or_miss(rng, 0.25, 500))}}
    assert json.dumps(gate.decide(model, others, seed=3).to_dict()) == json.dumps(
        gate.decide(model, others, seed=3).to_dict()
    )


def test_below_random_model_is_refused_on_both_tasks():
    """The issue-14 case: the mean over tasks beats popularity's mean, yet the model is
    below random ranking on each task."""
    rng = np.random.default_rng(1)
    model = {task: scores_with_ranks(hit_or_miss(rng, 0.03)) for task in ("rec", "search")}
    popularity = {task: scores_with_ranks(hit_or_miss(rng, 0.02)) for task in ("rec", "search")}
    model_mean = np.mean([gate.ndcg_per_list(s).mean() for s in model.values()])
    popularity_mean = np.mean([gate.ndcg_per_list(s).mean() for s in popularity.values()])
    assert model_mean > popularity_mean  # what the old mean rule blessed

    decision = gate.decide(model, {"popularity": popularity})
    assert not decision.blessed
    for task in ("rec", "search"):
        [row] = [r for r in decision.rows if r.task == task and r.comparator == "random"]
        assert (
            not row.passed
            and row.difference < 0
            and row.baseline == pytest.approx(0.0454, abs=1e-4)
        )
        [reason] = [
            r
            for r in decision.reasons
            if r.startswith(f"{task}: NDCG@10 ") and "does not beat random 0.0454" in r
        ]
        # The refusal names the task, the comparator and both numbers, and the bound.
        assert f"NDCG@10 {row.model:.4f} does not beat random {row.baseline:.4f}" in reason
        assert f"difference {row.difference:+.4f}, 95% lower bound {row.lower_bound:+.4f}" in reason
    assert "rec: " in decision.reason and "search: " in decision.reason
    json.dumps(decision.to_dict())  # serialisable


def test_a_model_that_wins_one_task_and_loses_the_other_is_refused_naming_the_loser():
    rng = np.random.default_rng(2)
    model = {
        "rec": scores_with_ranks(hit_or_miss(rng, 0.30)),
        "search": scores_with_ranks(hit_or_miss(rng, 0.10)),
    }
    popularity = {
        "rec": scores_with_ranks(hit_or_miss(rng, 0.05)),
        "search": scores_with_ranks(hit_or_miss(rng, 0.25)),
    }
    decision = gate.decide(model, {"popularity": popularity})
    assert not decision.blessed
    assert all(row.passed for row in decision.rows if row.task == "rec")
    failed = [(row.task, row.comparator) for row in decision.rows if not row.passed]
    assert failed == [("search", "popularity")]
    [row] = [row for row in decision.rows if not row.passed]
    [reason] = decision.reasons
    assert reason.startswith(
        f"search: NDCG@10 {row.model:.4f} does not beat popularity "
        f"{row.baseline:.4f} (difference {row.difference:+.4f}, "
    )
    # ... although its mean over the tasks beats popularity's.
    means = {
        name: np.mean([gate.ndcg_per_list(s).mean() for s in scores.values()])
        for name, scores in (("model", model), ("popularity", popularity))
    }
    assert means["model"] > means["popularity"]


def test_a_model_inside_the_noise_of_the_last_blessed_one_is_refused():
    rng = np.random.default_rng(3)
    last = hit_or_miss(rng, 0.5, 1000)
    candidate = last.copy()
    # The candidate hits 60 lists the last model missed and misses 55 it hit: +0.005 on
    # average, far inside the noise of 1,000 lists.
    hits, misses = np.flatnonzero(last == 1), np.flatnonzero(last != 1)
    candidate[rng.choice(misses, 60, replace=False)] = 1
    candidate[rng.choice(hits, 55, replace=False)] = 50
    decision = gate.decide(
        {"rec": scores_with_ranks(candidate)},
        {
            gate.LAST_BLESSED: {"rec": scores_with_ranks(last)},
            "popularity": {"rec": scores_with_ranks(hit_or_miss(rng, 0.05, 1000))},
        },
    )
    assert not decision.blessed
    by_name = {row.comparator: row for row in decision.rows}
    assert by_name["random"].passed and by_name["popularity"].passed
    row = by_name[gate.LAST_BLESSED]
    assert row.difference == pytest.approx(0.005) and row.lower_bound < 0 < row.difference
    assert row.failures == [f"lower bound {row.lower_bound:+.4f} <= 0"]
    [reason] = decision.reasons
    assert reason.startswith("rec: NDCG@10 ") and "does not beat last blessed" in reason


def test_a_clearly_better_model_is_blessed():
    rng = np.random.default_rng(4)
    tasks = ("rec", "search")
    model = {task: scores_with_ranks(hit_or_miss(rng, 0.5)) for task in tasks}
    comparators = {
        "popularity": {task: scores_with_ranks(hit_or_miss(rng, 0.03)) for task in tasks},
        "ItemKNN": {task: scores_with_ranks(hit_or_miss(rng, 0.1)) for task in tasks},
        "query match": {"search": scores_with_ranks(hit_or_miss(rng, 0.3))},
        gate.LAST_BLESSED: {task: scores_with_ranks(hit_or_miss(rng, 0.4)) for task in tasks},
    }
    decision = gate.decide(model, comparators, min_improvement=0.02)
    assert decision.blessed and decision.reasons == []
    assert [(row.task, row.comparator) for row in decision.rows] == [
        ("rec", "random"),
        ("rec", "popularity"),
        ("rec", "ItemKNN"),
        ("rec", "last blessed"),
        ("search", "random"),
        ("search", "popularity"),
        ("search", "ItemKNN"),
        ("search", "query match"),
        ("search", "last blessed"),
    ]  # no query match for rec
    assert all(row.passed and row.lower_bound > 0 for row in decision.rows)
    assert (
        decision.reason.startswith("rec: NDCG@10 0.")
        and "beats random 0.0454 (+0." in decision.reason
        and "search: NDCG@10 0." in decision.reason
    )
    payload = json.loads(json.dumps(decision.to_dict()))
    assert payload["blessed"] and len(payload["rows"]) == 9
    assert payload["settings"] == {
        "min_improvement": 0.02,
        "min_relative_improvement": 0.0,
        "confidence": 0.95,
        "bootstrap_samples": 1000,
        "seed": 0,
    }
    assert set(payload["rows"][0]) == {
        "task",
        "comparator",
        "model",
        "baseline",
        "difference",
        "standard_error",
        "lower_bound",
        "lists",
        "passed",
        "failures",
        "comparator_failed",
        "floor_name",
        "floor",
    }
    assert payload["failed_comparators"] == [] and not any(
        row["comparator_failed"] for row in payload["rows"]
    )
    # The same model against a threshold it does not clear, absolute then relative.
    strict = gate.decide(model, comparators, min_improvement=0.2)
    assert not strict.blessed
    assert {row.comparator for row in strict.rows if not row.passed} == {gate.LAST_BLESSED}
    assert all("needs lower bound > 0 and difference > 0.2" in r for r in strict.reasons)
    relative = gate.decide(model, comparators, min_relative_improvement=0.5)
    assert {(row.task, row.comparator) for row in relative.rows if not row.passed} == {
        ("rec", gate.LAST_BLESSED),
        ("search", gate.LAST_BLESSED),
    }
    assert "0.5 x last blessed" in relative.reason


def test_refusing_outside_the_rows_and_confidence_zero():
    rng = np.random.default_rng(5)
    model = {"rec": scores_with_ranks(hit_or_miss(rng, 0.06, 50))}
    noisy = gate.decide(model, {})
    loose = gate.decide(model, {}, confidence=0.0)  # thresholds only
    assert loose.rows[0].lower_bound is None and loose.blessed
    # A negative threshold passes a worse model; the reason does not call that beating.
    tolerant = gate.decide(
        {"rec": scores_with_ranks(np.full(50, 20))}, {}, confidence=0.0, min_improvement=-0.5
    )
    assert tolerant.blessed and tolerant.rows[0].difference < 0
    assert tolerant.reason == (
        "rec: NDCG@10 0.0000 passes the gate against random 0.0454 " "(-0.0454)"
    )
    assert not noisy.blessed or noisy.rows[0].lower_bound > 0
    refused = loose.refuse("model 7 is already the last blessed model")
    assert not refused.blessed and refused.reason.startswith("model 7 is already")
    assert "lower bound (off)" in gate.comparison_table(loose)
    with pytest.raises(ValueError, match="same lists"):
        gate.decide(model, {"popularity": {"rec": model["rec"][:-1]}})
    with pytest.raises(ValueError, match="confidence"):
        gate.decide(model, {}, confidence=1.0)


# --------------------------------------------------------- comparators that failed to learn
RANDOM_100 = 0.0454  # random ranking's NDCG@10 on 1 + 99 candidates, to 4 places


def every(period, hits, size=N):
    """Ranks: 1 on `hits` lists of every `period` (NDCG@10 1), 50 elsewhere (0): a mean
    NDCG@10 of exactly hits / period."""
    return np.where(np.arange(size) % period < hits, 1, 50)


def test_a_comparator_below_random_is_flagged_not_beaten():
    """The issue-22 case: SASRec stopped early below random ranking (0.03 < 0.0454); the model
    beats everything else, so it is blessed, but it does not "beat" SASRec."""
    model = {"rec": scores_with_ranks(every(2, 1))}  # 0.5
    comparators = {
        "popularity": {"rec": scores_with_ranks(every(50, 1))},  # 0.02 < random
        "ItemKNN": {"rec": scores_with_ranks(every(10, 1))},  # 0.1
        "SASRec": {"rec": scores_with_ranks(every(100, 3))},
    }  # 0.03
    decision = gate.decide(model, comparators)
    rows = {row.comparator: row for row in decision.rows}
    sasrec = rows["SASRec"]
    assert sasrec.baseline == pytest.approx(0.03) and sasrec.comparator_failed
    assert (sasrec.floor_name, sasrec.floor) == ("random", gate.random_ndcg(C))
    assert not sasrec.passed and sasrec.failures == []
    # Random and popularity (below random here, by construction on popularity-sampled
    # negatives) are the floor, never flagged; ItemKNN is compared and beaten.
    for name in ("random", "popularity", "ItemKNN"):
        assert rows[name].passed and not rows[name].comparator_failed, name
    assert decision.blessed and decision.reasons == []
    note = (
        "rec: could not compare with SASRec: its NDCG@10 0.0300 is at or below random's "
        f"{RANDOM_100:.4f} (the comparator failed; not counted as beaten)"
    )
    assert decision.failed_comparators == [note]
    assert decision.reason == (
        "rec: NDCG@10 0.5000 beats random 0.0454 (+0.4546), popularity "
        "0.0200 (+0.4800), ItemKNN 0.1000 (+0.4000); " + note
    )
    payload = json.loads(json.dumps(decision.to_dict()))
    assert payload["failed_comparators"] == [note] and payload["reason"] == decision.reason
    assert [row["comparator_failed"] for row in payload["rows"]] == [False, False, False, True]
    table = gate.comparison_table(payload)
    assert "| rec | SASRec | 0.5000 | 0.0300 | +0.4700 |" in table
    assert [line.rsplit("|", 2)[1].strip() for line in table.splitlines()[2:]] == [
        "yes",
        "yes",
        "yes",
        "comparator failed",
    ]
    # The switch off: counted as any comparator, as before the rule.
    old = gate.decide(model, comparators, flag_failed=False)
    assert old.blessed and old.failed_comparators == [] and "SASRec 0.0300 (+0.4700)" in old.reason


def test_a_broken_comparator_at_the_floor_is_flagged_with_ties_against_it():
    """Constant scores (every candidate tied: the positive ranks last, NDCG@10 0) and a
    comparator exactly at popularity's NDCG@10 (above random): both flagged, on each task;
    the last blessed model is subject to the rule too."""
    model = {task: scores_with_ranks(every(2, 1)) for task in ("rec", "search")}
    popularity = {
        "rec": scores_with_ranks(every(10, 1)),  # 0.1, above random
        "search": np.zeros((N, C)),
    }  # 0, the floor all the same
    comparators = {
        "popularity": popularity,
        "query match": {"search": np.ones((N, C))},  # all tied: 0
        gate.LAST_BLESSED: {
            "rec": scores_with_ranks(every(10, 1)),  # = popularity
            "search": scores_with_ranks(every(20, 1)),
        },
    }  # 0.05
    decision = gate.decide(model, comparators)
    flagged = [
        (row.task, row.comparator, row.floor_name) for row in decision.rows if row.comparator_failed
    ]
    assert flagged == [
        ("rec", gate.LAST_BLESSED, "popularity"),
        ("search", "query match", "random"),
    ]
    assert decision.blessed
    assert decision.failed_comparators == [
        "rec: could not compare with last blessed: its NDCG@10 0.1000 is at or below "
        "popularity's 0.1000 (the comparator failed; not counted as beaten)",
        "search: could not compare with query match: its NDCG@10 0.0000 is at or below "
        "random's 0.0454 (the comparator failed; not counted as beaten)",
    ]
    # Beats names the healthy comparators only: not the last blessed model on rec, not query
    # match on search; search's last blessed (0.05, above random and popularity) is beaten.
    beats = decision.verdict
    assert (
        "rec: NDCG@10 0.5000 beats random 0.0454 (+0.4546), popularity 0.1000 (+0.4000)" in beats
        and "last blessed 0.1000" not in beats
        and "query match" not in beats
    )
    assert "last blessed 0.0500 (+0.4500)" in beats
    popularity_search = [
        row for row in decision.rows if row.task == "search" and row.comparator == "popularity"
    ]
    assert not popularity_search[0].comparator_failed  # 0 < random, still the floor


def test_a_weaker_but_learned_comparator_is_still_compared_and_must_be_beaten():
    """Above random and popularity, however weak: compared as ever, so a model that does not
    beat it is refused; and a failed comparator elsewhere does not bless a losing model."""
    popularity = {"rec": scores_with_ranks(every(50, 1))}  # 0.02
    weak = {"rec": scores_with_ranks(every(20, 1))}  # 0.05 > random 0.0454
    broken = {"rec": np.zeros((N, C))}  # 0
    healthy = {"rec": scores_with_ranks(every(5, 3))}  # 0.6
    good = {"rec": scores_with_ranks(every(2, 1))}  # 0.5
    decision = gate.decide(good, {"popularity": popularity, "SASRec": weak})
    [row] = [row for row in decision.rows if row.comparator == "SASRec"]
    assert decision.blessed and not row.comparator_failed and row.passed
    assert decision.failed_comparators == [] and "SASRec 0.0500 (+0.4500)" in decision.reason
    # A model between random and the weak comparator is refused because of it.
    middling = {"rec": scores_with_ranks(every(25, 1))}  # 0.04 < 0.05
    refused = gate.decide(middling, {"SASRec": weak}, confidence=0.0)
    assert not refused.blessed and any(
        "does not beat SASRec 0.0500" in reason for reason in refused.reasons
    )
    # Losing to a healthy comparator is refused, a broken one alongside notwithstanding.
    losing = gate.decide(good, {"popularity": popularity, "ItemKNN": broken, "SASRec": healthy})
    assert not losing.blessed
    assert [(row.comparator, row.passed, row.comparator_failed) for row in losing.rows] == [
        ("random", True, False),
        ("popularity", True, False),
        ("ItemKNN", False, True),
        ("SASRec", False, False),
    ]
    [reason] = losing.reasons
    assert reason.startswith("rec: NDCG@10 0.5000 does not beat SASRec 0.6000")
    assert losing.reason == reason + "; " + losing.failed_comparators[0]
    assert losing.failed_comparators[0].startswith("rec: could not compare with ItemKNN: ")


def test_failed_comparators_rule_by_hand():
    """The one rule, on mean NDCG@10s (numbers or metrics dicts), used by the gate and by the
    CLI report."""
    metrics = {
        "random": {"rec": 0.0454, "search": 0.0454},
        "popularity": {"rec": 0.02, "search": {"NDCG@10": 0.08, "HR@10": 0.2}},
        "SASRec": {"rec": 0.033},
        "ItemKNN": {"rec": 0.0454, "search": 0.08},
        "query match": {"search": 0.081},
        "last blessed": {"rec": 0.0455, "search": 0.05},
    }
    assert gate.failed_comparators(metrics, "rec") == {
        "SASRec": ("random", 0.0454, 0.033),
        "ItemKNN": ("random", 0.0454, 0.0454),
    }
    assert gate.failed_comparators(metrics, "search") == {
        "ItemKNN": ("popularity", 0.08, 0.08),
        "last blessed": ("popularity", 0.08, 0.05),
    }
    # The floors alone: popularity below random is never flagged.
    assert (
        gate.failed_comparators({"random": {"rec": 0.0454}, "popularity": {"rec": 0.0}}, "rec")
        == {}
    )
    assert gate.failed_comparators({"SASRec": {"rec": 0.0}}, "rec") == {}  # no floor given


def test_the_evaluator_report_says_it_could_not_compare():
    from pipeline.components import ranking_evaluator

    model = {"rec": scores_with_ranks(every(2, 1))}
    sasrec = {"rec": scores_with_ranks(every(100, 3))}
    decision = gate.decide(model, {"SASRec": sasrec})
    report = {
        "split": "test",
        "candidates": C,
        "baseline_model": None,
        "candidate": ranking_evaluator.metrics_of(model),
        "baselines": {"SASRec": ranking_evaluator.metrics_of(sasrec)},
        "blessed": decision.blessed,
        "reason": decision.reason,
        "reasons": decision.reasons,
        "failed_comparators": list(decision.failed_comparators),
        "gate": decision.to_dict(),
    }
    markdown = ranking_evaluator.report_markdown(report)
    verdict = markdown[markdown.index("**BLESSED**") :]
    note = (
        "- rec: could not compare with SASRec: its NDCG@10 0.0300 is at or below random's "
        "0.0454 (the comparator failed; not counted as beaten)\n"
    )
    assert verdict.startswith(
        "**BLESSED**: rec: NDCG@10 0.5000 beats random 0.0454 " "(+0.4546)\n\n**Could not compare**"
    )
    assert verdict.endswith(note) and "SASRec 0.0300 (+" not in markdown
    assert "| rec | SASRec | 0.5000 | 0.0300 | +0.4700 |" in markdown
    assert "| comparator failed |" in markdown
    # A refused model: the notes under the reasons.
    refused = gate.decide({"rec": scores_with_ranks(every(50, 1))}, {"SASRec": sasrec})
    report.update(
        blessed=refused.blessed,
        reason=refused.reason,
        reasons=refused.reasons,
        gate=refused.to_dict(),
    )
    del report["failed_comparators"]  # a report without the key: read from the gate's
    markdown = ranking_evaluator.report_markdown(report)
    assert "**NOT BLESSED**:\n- rec: NDCG@10 0.0200 does not beat random" in markdown
    assert "**Could not compare**" in markdown and "could not compare with SASRec" in markdown


def test_the_cli_report_flags_a_comparator_below_random_or_popularity():
    from unisar_tf.train.evaluation import failed_comparator_notes, report_markdown

    def metrics(ndcg):
        return {
            "HR@1": ndcg,
            "HR@5": ndcg,
            "HR@10": ndcg,
            "NDCG@5": ndcg,
            "NDCG@10": ndcg,
            "examples": 10,
        }

    report = {
        "split": "test",
        "best_epoch": 2,
        "validation_score": 0.3,
        "negatives_per_example": 99,
        "model": "unisar",
        "unisar": {"rec": metrics(0.2), "search": metrics(0.01)},
        "SASRec": {"rec": metrics(0.033)},
        "popularity": {"rec": metrics(0.02), "search": metrics(0.06)},
        "random": {"rec": metrics(0.0454), "search": metrics(0.0454)},
        "ItemKNN": {"rec": metrics(0.1), "search": metrics(0.06)},
        "query match": {"search": metrics(0.3)},
    }
    expected = [
        "SASRec on rec: NDCG@10 0.0330 is at or below random (0.0454): the comparator "
        "failed; it is not a result to compare with.",
        "ItemKNN on search: NDCG@10 0.0600 is at or below popularity (0.0600): the "
        "comparator failed; it is not a result to compare with.",
    ]
    assert failed_comparator_notes(report) == expected
    markdown = report_markdown(report)
    assert markdown.endswith("".join(f"- {line}\n" for line in expected))
    # The report's own model is not a comparator (a SASRec run's report), nor are the floors.
    report.update(model="SASRec", ItemKNN={"rec": metrics(0.1), "search": metrics(0.07)})
    assert failed_comparator_notes(report) == []
    assert "comparator failed" not in report_markdown(report)


def test_main_job_says_plainly_whether_it_was_blessed():
    from pipeline.main_job import blessing_verdict, verdict_reasons

    rng = np.random.default_rng(6)
    below = gate.decide(
        {task: scores_with_ranks(hit_or_miss(rng, 0.03)) for task in ("rec", "search")}, {}
    )
    report = {"blessed": below.blessed, "reason": below.reason, "reasons": below.reasons}
    text = blessing_verdict(report, None)
    assert text.startswith("NOT BLESSED: nothing pushed") and "2 reason(s)" in text
    assert [line.strip()[2:] for line in text.splitlines()[1:]] == below.reasons
    assert verdict_reasons(report) == below.reasons
    better = gate.decide({"rec": scores_with_ranks(hit_or_miss(rng, 0.5))}, {})
    report = {"blessed": better.blessed, "reason": better.reason, "reasons": better.reasons}
    assert blessing_verdict(report, "/srv/unisar/7") == (
        f"BLESSED: {better.reason}\npushed to /srv/unisar/7"
    )
    assert verdict_reasons(report) == []
    # A refusal also lists the comparators it could not compare with.
    report = {
        "blessed": False,
        "reason": "r",
        "reasons": ["rec: loses to ItemKNN"],
        "failed_comparators": ["rec: could not compare with SASRec"],
    }
    assert blessing_verdict(report, None).splitlines()[1:] == [
        "  - rec: loses to ItemKNN",
        "  - rec: could not compare with SASRec",
    ]


# ----------------------------------------------------------------- pairing in the evaluator
@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A small Amazon-format dataset built by the data job with 3 files per split, so a
    reader that interleaves files would see the lists in another order."""
    return build_amazon_examples(tmp_path_factory.mktemp("sharded"), num_users=40, num_shards=3)


def test_model_and_baseline_scores_pair_up_list_by_list(sharded):
    """Row i is the same test list for the serialized records a SavedModel scores
    (evaluate.saved_model_scores reads them file after file), for the feature readers
    (reader.read_examples / load_arrays / read_feature) and for the baselines' scores."""
    import tensorflow as tf

    from feature_specs import CANDIDATE_ITEMS
    from pipeline.components.ranking_evaluator import compute_baseline_scores
    from unisar_tf.data import reader
    from unisar_tf.train.inputs import training_item_counts

    out, manifest = sharded
    width = manifest["shapes"]["eval_candidates"]
    num_items = manifest["vocab_sizes"]["items"] + 1
    baselines = compute_baseline_scores(out, "test", manifest, num_items, ("rec", "search"))
    counts = training_item_counts(out, manifest, num_items)
    for task in ("rec", "search"):
        files = reader.example_files(out, "test", task)
        assert len(files) == 3
        # What serving_default is given, in the evaluator's order.
        records = tf.data.TFRecordDataset(files, compression_type="GZIP")
        served = np.array(
            [
                tf.train.Example.FromString(record.numpy())
                .features.feature[CANDIDATE_ITEMS]
                .int64_list.value
                for record in records
            ]
        )
        assert len(served) > 10 and len(np.unique(served[:, 0])) > 3
        assert not np.array_equal(served[:, 0], np.sort(served[:, 0]))
        read = reader.load_arrays(out, "test", task, manifest)[CANDIDATE_ITEMS]
        np.testing.assert_array_equal(read, served)
        np.testing.assert_array_equal(
            reader.read_feature(out, "test", task, CANDIDATE_ITEMS, width, manifest), served
        )
        # Popularity's row i scores list i's candidates, positive first.
        np.testing.assert_array_equal(baselines["popularity"][task], counts[served])
        for name, per_task in baselines.items():
            if task in per_task:
                assert per_task[task].shape == served.shape, name
