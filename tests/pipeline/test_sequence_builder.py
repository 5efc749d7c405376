"""Golden tests of the per-user example construction (pipeline/sequence_builder.py).

Every log is hand-built from `Event`s with a hand-made `Vocabularies` (letter items A=1, B=2, ...,
words w1=1, ...), so each expected array below is written out by hand from the module's rules.
Small shapes (rec_len=3, search_len=2, query_len=4, clicks_per_session=2) make truncation visible.
"""

import collections
import os
import random
import string
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO
from helpers.event_logs import Log, long_log, mixed_log, small_options, wide_vocab

from feature_specs import example_schema as fs
from feature_specs.event_schema import SCENARIO_SEARCH, Event
from pipeline import sequence_builder as sb

REC, SEARCH, PAD = fs.TYPE_REC, fs.TYPE_SEARCH, fs.TYPE_PAD
NUM_ITEMS = 40  # ids 1..40: letters A..Z are 1..26, then x27..x40
ZERO_CLICK_ITEMS = frozenset(range(31, 36))  # in the catalogue, never clicked by anyone
ITEMS = {
    **{letter: i + 1 for i, letter in enumerate(string.ascii_uppercase)},
    **{f"x{i}": i for i in range(27, NUM_ITEMS + 1)},
}
WORDS = {f"w{i}": i for i in range(1, 9)}
USERS = {"u": 7, "v": 8}
A, B, C, D, E, F, G, H, I, J, K, L = range(1, 13)  # noqa: E741 (items named by letter)


def item_clicks(num_items=NUM_ITEMS, zero=ZERO_CLICK_ITEMS):
    clicks = np.array([0] + [1 + i % 4 for i in range(1, num_items + 1)], np.int64)
    clicks[sorted(zero)] = 0
    return clicks


def make_vocab(items=None, words=None, users=None, clicks=None):
    return sb.Vocabularies(
        users=dict(USERS if users is None else users),
        items=dict(ITEMS if items is None else items),
        words=dict(WORDS if words is None else words),
        item_clicks=item_clicks() if clicks is None else clicks,
    )


def build(log, options=None, vocab=None, sampler=None, stats=None, last_day=None, events=None):
    options = options or small_options()
    vocab = vocab or make_vocab()
    sampler = sampler or sb.NegativeSampler(vocab.item_clicks, options.negative_sampler)
    stats = collections.Counter() if stats is None else stats
    return list(
        sb.build_user_examples(
            log.user,
            log.events if events is None else events,
            vocab,
            sampler,
            options,
            stats,
            last_day,
        )
    )


def check(
    example,
    split,
    scenario,
    rec,
    types,
    queries,
    clicks,
    positive,
    num_candidates,
    query=None,
    user=7,
):
    """Exact comparison of one (split, scenario, features) output with hand-written arrays."""
    got_split, got_scenario, features = example
    assert (got_split, got_scenario) == (split, scenario)
    expected = {
        fs.USER_ID: np.array(user),
        fs.REC_HISTORY_ITEMS: np.array(rec),
        fs.HISTORY_TYPES: np.array(types),
        fs.SEARCH_HISTORY_QUERY_TOKENS: np.array(queries),
        fs.SEARCH_HISTORY_CLICKED_ITEMS: np.array(clicks),
    }
    if query is not None:
        expected[fs.QUERY_TOKENS] = np.array(query)
    assert set(features) == set(expected) | {fs.CANDIDATE_ITEMS}
    for name, value in expected.items():
        assert features[name].dtype == np.int64, name
        assert features[name].shape == value.shape, name
        np.testing.assert_array_equal(features[name], value, err_msg=name)
    candidates = features[fs.CANDIDATE_ITEMS]
    assert candidates.dtype == np.int64 and candidates.shape == (num_candidates,)
    assert candidates[0] == positive


def negatives(example):
    return example[2][fs.CANDIDATE_ITEMS][1:]


# --- histories ------------------------------------------------------------------------------


Q0 = [0, 0, 0, 0]
C0 = [0, 0]


def test_histories_order_truncation_padding_types_and_loo_splits():
    stats = collections.Counter()
    out = build(long_log(), stats=stats)
    assert len(out) == 7
    q_s1, q_s2, q_s3 = [1, 2, 0, 0], [3, 0, 0, 0], [1, 2, 3, 4]  # s3's 5 words cut to 4
    c_s1, c_s2, c_s3 = [B, 0], [E, F], [I, J]  # s3's 3 clicks cut to 2
    check(
        out[0],
        "train",
        "rec",
        rec=[A, 0, 0],
        types=[REC, SEARCH, PAD, PAD, PAD],
        queries=[q_s1, Q0],
        clicks=[c_s1, C0],
        positive=C,
        num_candidates=3,
    )
    check(
        out[1],
        "train",
        "rec",
        rec=[A, C, 0],
        types=[REC, SEARCH, REC, PAD, PAD],
        queries=[q_s1, Q0],
        clicks=[c_s1, C0],
        positive=D,
        num_candidates=3,
    )
    check(
        out[2],
        "valid",
        "search",
        rec=[A, C, D],
        types=[REC, SEARCH, REC, REC, PAD],
        queries=[q_s1, Q0],
        clicks=[c_s1, C0],
        positive=E,
        num_candidates=4,
        query=q_s2,
    )
    check(
        out[3],
        "train",
        "rec",
        rec=[A, C, D],
        types=[REC, SEARCH, REC, REC, SEARCH],
        queries=[q_s1, q_s2],
        clicks=[c_s1, c_s2],
        positive=G,
        num_candidates=3,
    )
    # Four prior rec behaviours: only the last three (C, D, G) are kept; A's slot disappears
    # from the merged types as well.
    check(
        out[4],
        "valid",
        "rec",
        rec=[C, D, G],
        types=[SEARCH, REC, REC, SEARCH, REC],
        queries=[q_s1, q_s2],
        clicks=[c_s1, c_s2],
        positive=H,
        num_candidates=4,
    )
    check(
        out[5],
        "test",
        "search",
        rec=[D, G, H],
        types=[SEARCH, REC, SEARCH, REC, REC],
        queries=[q_s1, q_s2],
        clicks=[c_s1, c_s2],
        positive=I,
        num_candidates=4,
        query=q_s3,
    )
    # Three prior searches: only the last two (s2, s3) are kept.
    check(
        out[6],
        "test",
        "rec",
        rec=[D, G, H],
        types=[REC, SEARCH, REC, REC, SEARCH],
        queries=[q_s2, q_s3],
        clicks=[c_s2, c_s3],
        positive=L,
        num_candidates=4,
    )
    assert stats == collections.Counter(
        {
            "rec_targets_below_min_history": 1,
            "search_targets_below_min_history": 1,
            "search_sessions": 3,
            "queries_truncated_to_query_len": 1,
            "search_sessions_clicks_truncated": 1,
            "examples/train/rec": 3,
            "examples/valid/rec": 1,
            "examples/test/rec": 1,
            "examples/valid/search": 1,
            "examples/test/search": 1,
        }
    )


def test_tie_in_time_puts_rec_before_search():
    # s2 and C share timestamp 50 and s2 comes first in the input: rec still goes first.
    log = (
        Log()
        .rec(10, "A")
        .search(20, "s1", "w1", ("B", 1))
        .search(50, "s2", "w2", ("E", 1))
        .rec(50, "C")
        .rec(60, "D")
    )
    out = build(log)
    assert [(s, sc, f[fs.CANDIDATE_ITEMS][0]) for s, sc, f in out] == [
        ("valid", "rec", C),
        ("test", "search", E),
        ("test", "rec", D),
    ]
    # C is before s2: C's history does not hold s2 ...
    check(
        out[0],
        "valid",
        "rec",
        rec=[A, 0, 0],
        types=[REC, SEARCH, PAD, PAD, PAD],
        queries=[[1, 0, 0, 0], Q0],
        clicks=[[B, 0], C0],
        positive=C,
        num_candidates=4,
    )
    # ... and s2's history holds C.
    check(
        out[1],
        "test",
        "search",
        rec=[A, C, 0],
        types=[REC, SEARCH, REC, PAD, PAD],
        queries=[[1, 0, 0, 0], Q0],
        clicks=[[B, 0], C0],
        positive=E,
        num_candidates=4,
        query=[2, 0, 0, 0],
    )
    check(
        out[2],
        "test",
        "rec",
        rec=[A, C, 0],
        types=[REC, SEARCH, REC, SEARCH, PAD],
        queries=[[1, 0, 0, 0], [2, 0, 0, 0]],
        clicks=[[B, 0], [E, 0]],
        positive=D,
        num_candidates=4,
    )


def test_no_leakage_history_is_strictly_earlier_and_own_query_only_in_query_tokens():
    # Unique items and words per behaviour, so each history slot names its behaviour.
    log = Log()
    time_of_item, query_of_session = {}, {}
    for step in range(8):
        ts = 100 * (step + 1)
        rec_item, search_item = string.ascii_uppercase[2 * step : 2 * step + 2]
        log.rec(ts, rec_item)
        log.search(ts + 50, f"s{step}", f"w{step + 1}", (search_item, 1))
        time_of_item[ITEMS[rec_item]] = ts
        time_of_item[ITEMS[search_item]] = ts + 50
        query_of_session[ITEMS[search_item]] = step + 1
    out = build(
        log, small_options(rec_len=30, search_len=30, min_rec_history=0, min_search_history=0)
    )
    assert len(out) == 16
    for index, (_, scenario, f) in enumerate(out):
        positive = f[fs.CANDIDATE_ITEMS][0]
        target_time = time_of_item[positive]
        history_items = [i for i in f[fs.REC_HISTORY_ITEMS] if i] + [
            row[0] for row in f[fs.SEARCH_HISTORY_CLICKED_ITEMS] if row[0]
        ]
        # Every earlier behaviour is there, nothing at or after the target.
        assert sorted(time_of_item[i] for i in history_items) == sorted(
            t for t in time_of_item.values() if t < target_time
        )
        assert positive not in history_items
        assert np.count_nonzero(f[fs.HISTORY_TYPES]) == index
        if scenario == "search":
            own_word = query_of_session[positive]
            np.testing.assert_array_equal(f[fs.QUERY_TOKENS], [own_word, 0, 0, 0])
            assert own_word not in f[fs.SEARCH_HISTORY_QUERY_TOKENS]
        else:
            assert fs.QUERY_TOKENS not in f


def test_impressions_unclicked_sessions_and_click_truncation():
    log = (
        Log()
        .search(5, "s0", "w4", ("R", 0))  # returned R, nothing clicked: history, not target
        .rec(10, "A")
        .rec(15, "X", click=0)  # impression: neither behaviour nor target
        .rec(20, "C")
        # Clicked rows Q, S, T in input order: kept Q, S; the positive is Q.
        .search(30, "s1", "w1", ("P", 0), ("Q", 1), ("S", 2), ("T", 1))
        .rec(40, "D")
    )
    P, Q, R, S, T, X = (ITEMS[k] for k in "PQRSTX")
    stats = collections.Counter()
    out = build(log, stats=stats)
    assert len(out) == 3
    check(
        out[0],
        "valid",
        "rec",
        rec=[A, 0, 0],
        types=[SEARCH, REC, PAD, PAD, PAD],
        queries=[[4, 0, 0, 0], Q0],
        clicks=[C0, C0],
        positive=C,
        num_candidates=4,
    )
    check(
        out[1],
        "test",
        "search",
        rec=[A, C, 0],
        types=[SEARCH, REC, REC, PAD, PAD],
        queries=[[4, 0, 0, 0], Q0],
        clicks=[C0, C0],
        positive=Q,
        num_candidates=4,
        query=[1, 0, 0, 0],
    )
    check(
        out[2],
        "test",
        "rec",
        rec=[A, C, 0],
        types=[SEARCH, REC, REC, SEARCH, PAD],
        queries=[[4, 0, 0, 0], [1, 0, 0, 0]],
        clicks=[C0, [Q, S]],
        positive=D,
        num_candidates=4,
    )
    assert stats == collections.Counter(
        {
            "rec_impressions_without_click": 1,
            "search_sessions_without_click": 1,
            "search_sessions": 1,
            "search_sessions_clicks_truncated": 1,
            "rec_targets_below_min_history": 1,
            "examples/valid/rec": 1,
            "examples/test/rec": 1,
            "examples/test/search": 1,
        }
    )
    for example in out:  # the impression and the unclicked rows are still the user's items
        assert not set(negatives(example)) & {A, C, D, P, Q, R, S, T, X}


def test_search_session_rows_are_ordered_by_time_then_line_not_by_argument_order():
    # The session's rows arrive out of order; its time is its earliest row and its clicks
    # follow (timestamp, source, line).
    log = Log().rec(10, "A").search(20, "s0", "w1", ("B", 1))
    rows = [
        Event("u", 31, SCENARIO_SEARCH, "F", 1, "s1", ("w2",), "log.csv", 9),
        Event("u", 30, SCENARIO_SEARCH, "G", 1, "s1", ("w2",), "log.csv", 8),
        Event("u", 31, SCENARIO_SEARCH, "E", 1, "s1", ("w2",), "log.csv", 7),
    ]
    log.events += rows
    log.rec(30, "C")  # same time as s1's first row: rec first
    out = build(log)
    check(
        out[-1],
        "test",
        "search",
        rec=[A, C, 0],
        types=[REC, SEARCH, REC, PAD, PAD],
        queries=[[1, 0, 0, 0], Q0],
        clicks=[[B, 0], C0],
        positive=G,
        num_candidates=4,
        query=[2, 0, 0, 0],
    )
    check(
        out[0],
        "test",
        "rec",
        rec=[A, 0, 0],
        types=[REC, SEARCH, PAD, PAD, PAD],
        queries=[[1, 0, 0, 0], Q0],
        clicks=[[B, 0], C0],
        positive=C,
        num_candidates=4,
    )
    log.rec(40, "D")
    check(
        build(log)[-1],
        "test",
        "rec",
        rec=[A, C, 0],
        types=[REC, SEARCH, REC, SEARCH, PAD],
        queries=[[1, 0, 0, 0], [2, 0, 0, 0]],
        clicks=[[B, 0], [G, E]],
        positive=D,
        num_candidates=4,
    )


# --- minimum history ------------------------------------------------------------------------


def min_history_log():
    return (
        Log()
        .rec(10, "A")
        .rec(20, "C")
        .search(30, "s1", "w1", ("B", 1))
        .rec(40, "D")
        .search(50, "s2", "w2", ("E", 1))
    )


def test_min_history_default_needs_one_prior_rec_and_one_prior_search():
    stats = collections.Counter()
    out = build(min_history_log(), stats=stats)
    check(
        out[0],
        "test",
        "rec",
        rec=[A, C, 0],
        types=[REC, REC, SEARCH, PAD, PAD],
        queries=[[1, 0, 0, 0], Q0],
        clicks=[[B, 0], C0],
        positive=D,
        num_candidates=4,
    )
    check(
        out[1],
        "test",
        "search",
        rec=[A, C, D],
        types=[REC, REC, SEARCH, REC, PAD],
        queries=[[1, 0, 0, 0], Q0],
        clicks=[[B, 0], C0],
        positive=E,
        num_candidates=4,
        query=[2, 0, 0, 0],
    )
    assert len(out) == 2
    assert stats["rec_targets_below_min_history"] == 2  # A (0 rec, 0 search), C (1 rec, 0)
    assert stats["search_targets_below_min_history"] == 1  # s1 (2 rec, 0 search)


def test_min_history_zero_keeps_every_target_even_with_empty_history():
    stats = collections.Counter()
    out = build(
        min_history_log(), small_options(min_rec_history=0, min_search_history=0), stats=stats
    )
    assert len(out) == 5
    zeros_q, zeros_c = [Q0, Q0], [C0, C0]
    check(
        out[0],
        "train",
        "rec",
        rec=[0, 0, 0],
        types=[PAD] * 5,
        queries=zeros_q,
        clicks=zeros_c,
        positive=A,
        num_candidates=3,
    )
    check(
        out[1],
        "valid",
        "rec",
        rec=[A, 0, 0],
        types=[REC, PAD, PAD, PAD, PAD],
        queries=zeros_q,
        clicks=zeros_c,
        positive=C,
        num_candidates=4,
    )
    check(
        out[2],
        "valid",
        "search",
        rec=[A, C, 0],
        types=[REC, REC, PAD, PAD, PAD],
        queries=zeros_q,
        clicks=zeros_c,
        positive=B,
        num_candidates=4,
        query=[1, 0, 0, 0],
    )
    check(
        out[3],
        "test",
        "rec",
        rec=[A, C, 0],
        types=[REC, REC, SEARCH, PAD, PAD],
        queries=[[1, 0, 0, 0], Q0],
        clicks=[[B, 0], C0],
        positive=D,
        num_candidates=4,
    )
    check(
        out[4],
        "test",
        "search",
        rec=[A, C, D],
        types=[REC, REC, SEARCH, REC, PAD],
        queries=[[1, 0, 0, 0], Q0],
        clicks=[[B, 0], C0],
        positive=E,
        num_candidates=4,
        query=[2, 0, 0, 0],
    )
    assert "rec_targets_below_min_history" not in stats
    assert "search_targets_below_min_history" not in stats


def test_min_history_two_rec_zero_search():
    stats = collections.Counter()
    out = build(
        min_history_log(), small_options(min_rec_history=2, min_search_history=0), stats=stats
    )
    assert [(s, sc, f[fs.CANDIDATE_ITEMS][0]) for s, sc, f in out] == [
        ("valid", "search", B),
        ("test", "rec", D),
        ("test", "search", E),
    ]
    assert stats["rec_targets_below_min_history"] == 2
    assert stats["search_targets_below_min_history"] == 0


def test_unclicked_session_counts_as_prior_search_history():
    log = Log().search(5, "s0", "w3").rec(10, "A").rec(20, "C")  # s0 returned nothing
    stats = collections.Counter()
    out = build(log, stats=stats)
    check(
        out[0],
        "test",
        "rec",
        rec=[A, 0, 0],
        types=[SEARCH, REC, PAD, PAD, PAD],
        queries=[[3, 0, 0, 0], Q0],
        clicks=[C0, C0],
        positive=C,
        num_candidates=4,
    )
    assert len(out) == 1
    assert stats["rec_targets_below_min_history"] == 1
    assert stats["search_sessions_without_click"] == 1


# --- splits ---------------------------------------------------------------------------------


def test_loo_split_with_a_single_target_per_scenario_is_test_only():
    out = build(
        Log()
        .rec(1, "A")
        .search(2, "s1", "w1", ("B", 1))
        .rec(3, "C")
        .search(4, "s2", "w2", ("D", 1))
    )
    assert [(s, sc, f[fs.CANDIDATE_ITEMS][0]) for s, sc, f in out] == [
        ("test", "rec", C),
        ("test", "search", D),
    ]


def day(n, ms=0):
    return n * sb.DAY_MS + ms


TIME = small_options(split="time")


def time_log():
    return (
        Log()
        .rec(day(5, 1), "A")
        .search(day(6), "s1", "w1", ("B", 1))
        .rec(day(7), "C")
        .rec(day(8, 5), "D")
        .search(day(9, 1), "s2", "w2", ("E", 1))
        .rec(day(9, 2), "F")
        .rec(day(10), "G")
        .search(day(10, 3), "s3", "w3", ("H", 1))
        .rec(day(11) - 1, "I")
    )


def test_time_split_uses_the_utc_day_against_last_day():
    out = build(time_log(), TIME, last_day=10)
    assert [(s, sc, f[fs.CANDIDATE_ITEMS][0], len(f[fs.CANDIDATE_ITEMS])) for s, sc, f in out] == [
        ("train", "rec", C, 3),
        ("train", "rec", D, 3),
        ("valid", "search", E, 4),
        ("valid", "rec", F, 4),
        ("test", "rec", G, 4),
        ("test", "search", H, 4),
        ("test", "rec", I, 4),
    ]
    # The last example sees every earlier behaviour (no holdout filtering in eval).
    check(
        out[-1],
        "test",
        "rec",
        rec=[D, F, G],
        types=[REC, SEARCH, REC, REC, SEARCH],
        queries=[[2, 0, 0, 0], [3, 0, 0, 0]],
        clicks=[[E, 0], [H, 0]],
        positive=I,
        num_candidates=4,
    )


def test_time_split_last_day_after_the_log_is_all_train_and_needs_last_day():
    assert {s for s, _, _ in build(time_log(), TIME, last_day=20)} == {"train"}
    assert [s for s, _, _ in build(time_log(), TIME, last_day=9)] == [
        "train",
        "valid",
        "test",
        "test",
        "test",
        "test",
        "test",
    ]
    with pytest.raises(ValueError, match="last day"):
        build(time_log(), small_options(split="time"))


def strict_log():
    return (
        Log()
        .rec(10, "A")
        .search(20, "s1", "w1", ("B", 1))
        .rec(30, "C")
        .search(40, "s2", "w2", ("E", 1))
        .search(50, "s3", "w3", ("F", 1))
        .rec(60, "D")
        .rec(70, "G")
        .rec(80, "H")
    )


def check_strict_log_eval_and_first_train(out):
    """Outputs shared by strict and non-strict holdout on strict_log()."""
    assert [(s, sc) for s, sc, _ in out] == [
        ("train", "rec"),
        ("valid", "search"),
        ("test", "search"),
        ("train", "rec"),
        ("valid", "rec"),
        ("test", "rec"),
    ]
    q1, q2, q3 = [1, 0, 0, 0], [2, 0, 0, 0], [3, 0, 0, 0]
    check(
        out[0],
        "train",
        "rec",
        rec=[A, 0, 0],
        types=[REC, SEARCH, PAD, PAD, PAD],
        queries=[q1, Q0],
        clicks=[[B, 0], C0],
        positive=C,
        num_candidates=3,
    )
    check(
        out[1],
        "valid",
        "search",
        rec=[A, C, 0],
        types=[REC, SEARCH, REC, PAD, PAD],
        queries=[q1, Q0],
        clicks=[[B, 0], C0],
        positive=E,
        num_candidates=4,
        query=q2,
    )
    check(
        out[2],
        "test",
        "search",
        rec=[A, C, 0],
        types=[REC, SEARCH, REC, SEARCH, PAD],
        queries=[q1, q2],
        clicks=[[B, 0], [E, 0]],
        positive=F,
        num_candidates=4,
        query=q3,
    )
    # Eval histories keep the held-out searches s2 (valid) and s3 (test).
    check(
        out[4],
        "valid",
        "rec",
        rec=[A, C, D],
        types=[REC, REC, SEARCH, SEARCH, REC],
        queries=[q2, q3],
        clicks=[[E, 0], [F, 0]],
        positive=G,
        num_candidates=4,
    )
    check(
        out[5],
        "test",
        "rec",
        rec=[C, D, G],
        types=[REC, SEARCH, SEARCH, REC, REC],
        queries=[q2, q3],
        clicks=[[E, 0], [F, 0]],
        positive=H,
        num_candidates=4,
    )


def test_without_strict_holdout_training_history_contains_held_out_searches():
    out = build(strict_log(), small_options(strict_holdout=False))
    check_strict_log_eval_and_first_train(out)
    # D is a training target after s2 (valid) and s3 (test): both are in its history.
    check(
        out[3],
        "train",
        "rec",
        rec=[A, C, 0],
        types=[REC, REC, SEARCH, SEARCH, PAD],
        queries=[[2, 0, 0, 0], [3, 0, 0, 0]],
        clicks=[[E, 0], [F, 0]],
        positive=D,
        num_candidates=3,
    )


def test_strict_holdout_training_history_skips_held_out_behaviours():
    out = build(strict_log(), small_options(strict_holdout=True))
    check_strict_log_eval_and_first_train(out)
    check(
        out[3],
        "train",
        "rec",
        rec=[A, C, 0],
        types=[REC, SEARCH, REC, PAD, PAD],
        queries=[[1, 0, 0, 0], Q0],
        clicks=[[B, 0], C0],
        positive=D,
        num_candidates=3,
    )


# --- negatives ------------------------------------------------------------------------------


def heavy_vocab():
    """The user's own items are by far the most popular: exclusion matters."""
    clicks = item_clicks()
    for letter in "ABCDEFGHIJKLPQRSTX":
        clicks[ITEMS[letter]] = 1000
    return make_vocab(clicks=clicks)


def user_items(log):
    return {ITEMS[e.item_id] for e in log.events if e.item_id}


@pytest.mark.parametrize("kind", ["popularity", "uniform"])
def test_negatives_avoid_user_items_and_positive_without_duplicates(kind):
    log = mixed_log()
    mine = user_items(log)
    assert {ITEMS[k] for k in "XPQRT"} <= mine  # impressions and unclicked rows included
    for seed in range(5):
        options = small_options(
            negative_sampler=kind, num_train_negatives=5, num_eval_negatives=12, seed=seed
        )
        out = build(log, options, vocab=heavy_vocab())
        # Targets C, D, s2, G, H, s3, s5, L (s4 has no click): H, s3 valid; s5, L test.
        assert [(s, sc) for s, sc, _ in out] == [
            ("train", "rec"),
            ("train", "rec"),
            ("train", "search"),
            ("train", "rec"),
            ("valid", "rec"),
            ("valid", "search"),
            ("test", "search"),
            ("test", "rec"),
        ]
        for split, _, f in out:
            candidates = f[fs.CANDIDATE_ITEMS]
            negs = candidates[1:]
            assert len(negs) == (5 if split == "train" else 12)
            assert len(set(negs.tolist())) == len(negs)
            assert not set(negs.tolist()) & mine
            assert candidates[0] not in negs
            assert negs.min() >= 1 and negs.max() <= NUM_ITEMS


def test_popularity_sampler_never_draws_an_item_without_clicks():
    log = mixed_log()
    drawn = set()
    for seed in range(20):
        out = build(log, small_options(num_train_negatives=6, num_eval_negatives=10, seed=seed))
        for example in out:
            drawn.update(negatives(example).tolist())
    assert not drawn & ZERO_CLICK_ITEMS
    # Every other non-user item was reachable (the draws are not stuck on a few items).
    assert drawn == set(range(1, NUM_ITEMS + 1)) - ZERO_CLICK_ITEMS - user_items(log)


def test_uniform_sampler_can_draw_items_without_clicks():
    log = mixed_log()
    # 22 items are not the user's, 5 of them never clicked: 20 distinct negatives must
    # include at least 3 of those 5.
    assert len(user_items(log)) == 18
    out = build(log, small_options(negative_sampler="uniform", num_eval_negatives=20))
    assert [s for s, _, _ in out].count("train") == 4
    for split, _, f in out:
        if split != "train":
            assert len(set(f[fs.CANDIDATE_ITEMS][1:].tolist()) & ZERO_CLICK_ITEMS) >= 3


def test_sampler_directly_respects_exclusion_and_zero_weights():
    clicks = np.array([0, 5, 0, 3, 0, 1, 1, 2], np.int64)
    sampler = sb.NegativeSampler(clicks, "popularity")
    rng = np.random.default_rng(3)
    for _ in range(50):
        draw = sampler.sample(rng, 3, np.array([1, 7]))
        assert draw.dtype == np.int64
        assert sorted(draw.tolist()) == [3, 5, 6]  # the only allowed items with clicks
    uniform = sb.NegativeSampler(clicks, "uniform")
    seen = set()
    for _ in range(50):
        draw = uniform.sample(rng, 5, np.array([1]))
        assert len(set(draw.tolist())) == 5 and 0 not in draw and 1 not in draw
        seen.update(draw.tolist())
    assert seen == {2, 3, 4, 5, 6, 7}


def test_popularity_sampler_fallback_never_draws_items_without_clicks():
    clicks = np.zeros(21, np.int64)
    clicks[1] = 10_000  # the user's item
    clicks[2:7] = 1  # five clicked items the user does not own; 7..20 never clicked
    sampler = sb.NegativeSampler(clicks, "popularity")
    for seed in range(5):
        draw = sampler.sample(np.random.default_rng(seed), 4, np.array([1]))
        assert set(draw.tolist()) <= {2, 3, 4, 5, 6}


def test_sampler_too_small_catalogue_raises_clear_value_error():
    clicks = np.array([0, 1, 1, 1, 1], np.int64)
    for kind in ("popularity", "uniform"):
        sampler = sb.NegativeSampler(clicks, kind)
        with pytest.raises(ValueError, match=r"cannot draw 3 negatives: only 2 of 4 items"):
            sampler.sample(np.random.default_rng(0), 3, np.array([1, 2]))
        assert sorted(sampler.sample(np.random.default_rng(0), 2, np.array([1, 2]))) == [3, 4]


def test_user_owning_the_catalogue_raises_not_enough_negatives_naming_the_user():
    items = {k: ITEMS[k] for k in "ABCDE"}
    vocab = make_vocab(items=items, clicks=np.array([0, 1, 1, 1, 1, 1], np.int64))
    log = Log().rec(1, "A").search(2, "s1", "w1", ("B", 1)).rec(3, "C").rec(4, "D")
    # C (valid) is the first target; it needs 3 negatives but only E is not the user's.
    # Raised before any example is made, so the Beam job can skip the user (beam_job).
    with pytest.raises(
        sb.NotEnoughNegatives, match="user 'u': an example needs 3 negatives, but only 1 of the 5"
    ):
        build(log, small_options(), vocab=vocab)


def test_sampler_construction_errors():
    with pytest.raises(ValueError, match="no item has a positive interaction"):
        sb.NegativeSampler(np.array([5, 0, 0]), "popularity")  # padding's count is ignored
    with pytest.raises(ValueError, match="'zipf'"):
        sb.NegativeSampler(np.array([0, 1, 1]), "zipf")
    uniform = sb.NegativeSampler(np.array([0, 0, 0]), "uniform")  # uniform needs no clicks
    assert sorted(uniform.sample(np.random.default_rng(0), 2, np.zeros(0, np.int64))) == [1, 2]


# --- determinism ----------------------------------------------------------------------------


def as_comparable(out):
    return [(s, sc, {k: v.tolist() for k, v in f.items()}) for s, sc, f in out]


def without_candidates(out):
    return [
        (s, sc, {k: v for k, v in f.items() if k != fs.CANDIDATE_ITEMS})
        for s, sc, f in as_comparable(out)
    ]


def test_same_seed_same_output_other_seed_other_negatives_and_order_independent():
    log = mixed_log()
    options = small_options(seed=11, num_eval_negatives=6)
    stats1, stats2 = collections.Counter(), collections.Counter()
    first = as_comparable(build(log, options, stats=stats1))
    assert first == as_comparable(build(log, options))
    shuffled = list(log.events)
    for shuffle_seed in range(3):
        random.Random(shuffle_seed).shuffle(shuffled)
        assert shuffled != log.events
        assert as_comparable(build(log, options, events=shuffled, stats=stats2)) == first
    assert stats2 == collections.Counter({k: 3 * v for k, v in stats1.items()})
    other = build(log, small_options(seed=12, num_eval_negatives=6))
    assert without_candidates(other) == without_candidates(build(log, options))
    assert [f[fs.CANDIDATE_ITEMS][0] for _, _, f in other] == [
        f[fs.CANDIDATE_ITEMS][0] for _, _, f in build(log, options)
    ]
    # Another seed: every example draws other negatives (same positive, same histories).
    assert all(
        negatives(x).tolist() != negatives(y).tolist() for x, y in zip(other, build(log, options))
    )


def test_random_stream_depends_on_user_id_not_on_other_users():
    # Two users with the same log get their own negatives; a user's negatives do not change
    # with what was built before.
    options = small_options(num_eval_negatives=8)
    sampler = sb.NegativeSampler(item_clicks(), "popularity")
    u_alone = as_comparable(build(long_log("u"), options, sampler=sampler))
    v_out = as_comparable(build(long_log("v"), options, sampler=sampler))
    u_after_v = as_comparable(build(long_log("u"), options, sampler=sampler))
    assert u_alone == u_after_v
    assert without_candidates(build(long_log("v"), options)) == [
        (s, sc, {**f, fs.USER_ID: 8})
        for s, sc, f in without_candidates(build(long_log("u"), options))
    ]
    assert all(v[2][fs.CANDIDATE_ITEMS] != u[2][fs.CANDIDATE_ITEMS] for v, u in zip(v_out, u_alone))


def test_stable_hash_is_the_same_in_another_process_with_another_hash_seed():
    code = (
        "from pipeline.sequence_builder import stable_hash;"
        "print(stable_hash('u'), stable_hash('user 42', 7))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=True
    )
    assert result.stdout.split() == [str(sb.stable_hash("u")), str(sb.stable_hash("user 42", 7))]
    assert 0 <= sb.stable_hash("u") < 2**64
    assert sb.stable_hash("u") != sb.stable_hash("v")


def test_frequency_vocabulary_most_frequent_first_ties_by_raw_id_from_one():
    assert sb.frequency_vocabulary({"b": 3, "a": 3, "c": 5, "d": 1}) == {
        "c": 1,
        "a": 2,
        "b": 3,
        "d": 4,
    }
    assert sb.frequency_vocabulary({}) == {}
    assert make_vocab().num_items == NUM_ITEMS + 1


# --- tf.Example bytes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        small_options(),
        small_options(
            strict_holdout=True,
            num_eval_negatives=5,
            min_rec_history=0,
            min_search_history=0,
            seed=3,
        ),
        sb.BuildOptions(
            rec_len=5,
            search_len=4,
            query_len=3,
            clicks_per_session=3,
            num_train_negatives=4,
            num_eval_negatives=20,
            negative_sampler="uniform",
        ),
    ],
    ids=["small", "strict-min0", "wider"],
)
def test_tf_example_bytes_parse_to_the_arrays(options):
    import tensorflow as tf

    from pipeline.tf_example import encode_int64_example

    vocab = wide_vocab()
    for user in ("user1", "user16384", "user20000"):
        log = mixed_log(user)
        sampler = sb.NegativeSampler(vocab.item_clicks, options.negative_sampler)
        stats_arrays, stats_bytes = collections.Counter(), collections.Counter()
        arrays = list(
            sb.build_user_examples(user, log.events, vocab, sampler, options, stats_arrays)
        )
        serialized = list(
            sb.build_user_tf_examples(user, log.events, vocab, sampler, options, stats_bytes)
        )
        assert stats_arrays == stats_bytes
        assert len(arrays) == len(serialized) >= 7
        for (split, scenario, features), (b_split, b_scenario, data) in zip(arrays, serialized):
            assert (split, scenario) == (b_split, b_scenario)
            assert features[fs.USER_ID] == vocab.users[user]
            assert data == encode_int64_example(features)
            proto = tf.train.Example.FromString(data)
            assert set(proto.features.feature) == set(features)
            for name, value in features.items():
                assert (
                    list(proto.features.feature[name].int64_list.value)
                    == value.reshape(-1).tolist()
                ), name
            spec = {
                name: tf.io.FixedLenFeature(value.shape, tf.int64)
                for name, value in features.items()
            }
            parsed = tf.io.parse_single_example(data, spec)
            for name, value in features.items():
                np.testing.assert_array_equal(parsed[name].numpy(), value, err_msg=name)
        # Multi-byte ids really went through: s1's query w1 w2 is (3, 200), s2's w3 is 16384,
        # the user id and the positives span one to three varint bytes.
        queries = [f[fs.QUERY_TOKENS][:2].tolist() for _, sc, f in arrays if sc == "search"]
        assert [3, 200] in queries or [16_384, 0] in queries
        positives = {f[fs.CANDIDATE_ITEMS][0] for _, _, f in arrays}
        assert {16_500, 16_383, 16_384, 20_000} & positives


# --- options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(split="random"), "split='random'"),
        (dict(negative_sampler="zipf"), "negative_sampler='zipf'"),
        (dict(rec_len=0), "rec_len must be >= 1, got 0"),
        (dict(search_len=-1), "search_len must be >= 1, got -1"),
        (dict(query_len=-3), "query_len must be >= 1"),
        (dict(clicks_per_session=0), "clicks_per_session must be >= 1"),
        (dict(num_train_negatives=0), "num_train_negatives must be >= 1"),
        (dict(num_eval_negatives=-5), "num_eval_negatives must be >= 1"),
        (dict(min_rec_history=-1), "min_rec_history must be >= 0, got -1"),
        (dict(min_search_history=-2), "min_search_history must be >= 0"),
        (dict(max_users=-1), "max_users must be >= 0"),
    ],
)
def test_build_options_validation(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        sb.BuildOptions(**overrides)


def test_build_options_defaults_and_shapes():
    options = sb.BuildOptions()
    assert (options.split, options.negative_sampler, options.strict_holdout) == (
        "loo",
        "popularity",
        False,
    )
    assert (options.min_rec_history, options.min_search_history) == (1, 1)
    assert small_options().shapes == fs.SequenceShapes(
        rec_len=3, search_len=2, query_len=4, clicks_per_session=2
    )
    sb.BuildOptions(
        min_rec_history=0,
        min_search_history=0,
        max_users=0,
        split="time",
        negative_sampler="uniform",
    )  # valid edge values
