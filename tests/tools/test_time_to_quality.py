"""The time-to-quality arithmetic on a hand-made history."""

from unisar_tf.tools.time_to_quality import format_table, time_to_quality


def _row(epoch, seconds, score):
    return {
        "epoch": epoch,
        "seconds": seconds,
        "validation_score": score,
        "validation": {"rec": {"NDCG@10": score}, "search": {"NDCG@10": score + 0.1}},
    }


def test_first_epoch_within_the_fraction_of_the_best_and_its_cumulative_time():
    history = [_row(1, 100.0, 0.50), _row(2, 90.0, 0.596), _row(3, 95.0, 0.60), _row(4, 90.0, 0.55)]
    result = time_to_quality(history, setup_seconds=12.0, fraction=0.99)
    # 0.99 * 0.60 = 0.594: epoch 2 (0.596) reaches it, after 12 + 100 + 90 s.
    assert (result["best"], result["epoch"], result["seconds"]) == (0.60, 2, 202.0)
    assert [row["elapsed"] for row in result["rows"]] == [112.0, 202.0, 297.0, 387.0]
    strict = time_to_quality(history, setup_seconds=12.0, fraction=1.0)
    assert (strict["epoch"], strict["seconds"]) == (3, 297.0)
    table = format_table(result, 0.99, "header")
    assert "| 2 (reached) | 202 | 0.5960 | 0.5960 | 0.6960 |" in table
