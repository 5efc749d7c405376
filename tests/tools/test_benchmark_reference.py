"""benchmark_reference: the conversion to the reference's input format on hand-made examples,
and the table's arithmetic. No TensorFlow, no torch."""

import numpy as np

from feature_specs import QUERY_TOKENS
from unisar_tf.config import amazon_preset, preset
from unisar_tf.tools import benchmark_reference
from unisar_tf.tools.benchmark_reference import (
    PROJECT_DEFAULT,
    PROJECT_PAPER,
    REFERENCE,
    REFERENCE_1T,
    ReferenceFormat,
    format_table,
    merged_history,
    preset_overrides,
    summarise,
)

INF = float("inf")
REC_LEN, SEARCH_LEN = 3, 2


def _batch(rows, with_query=False):
    """Stacks hand-written examples into the build's feature arrays."""
    names = [n for n in benchmark_reference.CONVERTED_FEATURES if with_query or n != QUERY_TOKENS]
    return {name: np.array([row[name] for row in rows], np.int64) for name in names}


NO_SESSION = ([0, 0, 0, 0], [0])
SESSION_1 = ([5, 6, 0, 0], [11])  # query words 5 6, clicked item 11
SESSION_2 = ([7, 0, 0, 0], [12])


def _example(user, types, rec_items, sessions, candidates, query=None):
    row = {
        "user_id": user,
        "history_types": types,
        "rec_history_items": rec_items,
        "search_history_query_tokens": [query_tokens for query_tokens, _ in sessions],
        "search_history_clicked_items": [clicks for _, clicks in sessions],
        "candidate_items": candidates,
    }
    if query is not None:
        row["query_tokens"] = query
    return row


# user 7: a search session, then rec item 21 (example a), then rec item 22 (b), then a
# second session (c, a search example); user 9 has no history yet (d).
A = _example(7, [2, 1, 0, 0, 0], [21, 0, 0], [SESSION_1, NO_SESSION], [30, 31, 32])
B = _example(7, [2, 1, 1, 0, 0], [21, 22, 0], [SESSION_1, NO_SESSION], [33, 34, 35])
D = _example(9, [0, 0, 0, 0, 0], [0, 0, 0], [NO_SESSION, NO_SESSION], [50, 51, 52])
C = _example(7, [2, 1, 1, 2, 0], [21, 22, 0], [SESSION_1, SESSION_2], [40, 41, 42], [7, 5, 0, 0])


def _converted():
    converted = ReferenceFormat(REC_LEN, SEARCH_LEN)
    converted.add("rec", _batch([A, B, D]))
    converted.add("search", _batch([C], with_query=True))
    return converted


def test_rows_history_blocks_and_sessions_by_hand():
    converted = _converted()
    assert converted.rows["rec"] == {
        "user_id": [7, 7, 9],
        "item_id": [30, 33, 50],
        "neg_items": [[31, 32], [34, 35], [51, 52]],
        # a's block ends at 3; b and c share the block [0, 21, 22], ending at 6
        "rec_his": [3, 6, 3],
        "src_session_his": [2, 2, 2],
    }
    assert converted.rows["search"] == {
        "user_id": [7],
        "item_id": [40],
        "neg_items": [[41, 42]],
        "rec_his": [6],
        "src_session_his": [4],
        "keyword": [[7, 5]],
    }
    assert converted.user_vocab[7] == {
        "rec_his": [0, 0, 21, 0, 21, 22],
        "rec_his_ts": [INF, INF, 1.0, INF, 1.0, 2.0],
        "src_session_his": [0, 1, 1, 2],
        "src_session_his_ts": [INF, 0.0, 0.0, 3.0],
    }
    assert converted.user_vocab[9] == {
        "rec_his": [0, 0, 0],
        "rec_his_ts": [INF, INF, INF],
        "src_session_his": [0, 0],
        "src_session_his_ts": [INF, INF],
    }
    sessions = converted.session_arrays(query_len=4, clicks=1)
    np.testing.assert_array_equal(sessions["keyword"], [[0, 0, 0, 0], [5, 6, 0, 0], [7, 0, 0, 0]])
    np.testing.assert_array_equal(sessions["pos_items"], [[0], [11], [12]])
    assert converted.query_vocab() == [[], [7, 5]]


def test_every_example_reads_back_its_own_history_in_the_mixed_order():
    converted = _converted()
    session_of = {1: SESSION_1, 2: SESSION_2}
    for scenario, examples in (("rec", [A, B, D]), ("search", [C])):
        rows = converted.rows[scenario]
        for i, example in enumerate(examples):
            merged = merged_history(
                converted.user_vocab[example["user_id"]],
                rows["rec_his"][i],
                rows["src_session_his"][i],
                REC_LEN,
                SEARCH_LEN,
            )
            real = [(value, kind) for value, kind in merged if value != 0]
            types = [t for t in example["history_types"] if t]
            assert [kind for _, kind in real] == types  # the build's mixed order
            rec = [value for value, kind in real if kind == 1]
            assert rec == example["rec_history_items"][: len(rec)]
            searched = [
                session_of[value] for value, kind in real if kind == 2
            ]  # sessions by query and click
            assert [list(map(list, s)) for s in searched] == [
                [q, c]
                for q, c in zip(
                    example["search_history_query_tokens"][: len(searched)],
                    example["search_history_clicked_items"][: len(searched)],
                )
            ]
            assert merged[len(real) :] == [(0, kind) for _, kind in merged[len(real) :]]


def _run(rows, seconds, cpu, rss):
    return {
        "rows_per_step": rows,
        "seconds_per_step": seconds,
        "positives_per_second": rows / seconds,
        "cpu_seconds": cpu,
        "steps": 10,
        "peak_rss_gb": rss,
    }


def test_summary_ratios_and_cpu_per_positive():
    rounds = [
        {
            REFERENCE: _run(2020, 20.0, 300.0, 5.5),
            REFERENCE_1T: _run(2020, 10.0, 100.0, 5.0),
            PROJECT_PAPER: _run(2020, 2.0, 35.0, 3.0),
            PROJECT_DEFAULT: _run(2020, 4.0, 70.0, 3.5),
        },
        {
            REFERENCE: _run(2020, 30.0, 400.0, 5.6),
            REFERENCE_1T: _run(2020, 10.0, 100.0, 5.1),
            PROJECT_PAPER: _run(2020, 2.0, 40.0, 3.1),
            PROJECT_DEFAULT: _run(2020, 4.0, 90.0, 3.4),
        },
    ]
    summary = summarise(rounds)
    reference, paper = summary[REFERENCE], summary[PROJECT_PAPER]
    # total positives over total time: 4,040 / 50 s and 4,040 / 4 s
    assert abs(reference["positives_per_second"] - 80.8) < 1e-9
    assert abs(paper["positives_per_second"] - 1010.0) < 1e-9
    assert abs(paper["ratio"] - 12.5) < 1e-9
    assert abs(paper["ratio_1_thread"] - 1010.0 / 202.0) < 1e-9
    # CPU per positive: (30 + 40) s per step-pair over 4,040 positives, in ms
    assert abs(reference["cpu_ms_per_positive"] - 70_000 / 4040) < 1e-9
    assert abs(paper["cpu_ms_per_positive"] - 7_500 / 4040) < 1e-9
    assert reference["seconds_per_step"] == 25.0 and reference["peak_rss_gb"] == 5.6
    table = format_table(summary)
    assert "| project paper | 2.00 | 1010 | 1.86 | 12.50x | 5.00x | 3.10 GB | 1010, 1010 |" in table
    assert "| reference paper | 25.00 | 81 | 17.33 | 1.00x | 0.40x | 5.60 GB | 101, 67 |" in table


def test_summary_without_the_reference_has_no_ratio():
    summary = summarise([{PROJECT_PAPER: _run(2020, 2.0, 35.0, 3.0)}])
    assert "ratio" not in summary[PROJECT_PAPER]
    assert "| project paper | 2.00 | 1010 | 1.73 | - | - |" in format_table(summary)


def test_preset_overrides_turn_the_paper_preset_into_the_named_one():
    assert preset_overrides("paper") == {}
    assert amazon_preset(**preset_overrides("default")) == preset("default")
