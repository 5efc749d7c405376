"""fit_vs_loop on 2 epochs of 3 steps, stopped after step 4: a well-formed table, and the
project loop's resume is exact (issue 23's invariant, measured the tool's way).

Cost: six models are built and traced (three loop runs, three fit runs): minutes on 2 cores.
"""

import math

import pytest

from unisar_tf.tools import fit_vs_loop

pytestmark = pytest.mark.slow

EPOCHS, STEPS, STOP = 2, 3, 4


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("fit_vs_loop")
    data_dir = str(scratch / "data")
    fit_vs_loop.write_synthetic_data(data_dir, seed=0)
    return fit_vs_loop.measure(
        data_dir, str(scratch), EPOCHS, STEPS, interrupt_at=STOP, save_freq=1, warmup=1, rounds=2
    )


def test_the_loop_resumes_from_its_epoch_checkpoint_exactly(results):
    loop = results["loop"]
    assert loop["restored_at_step"] == STEPS  # epoch 1's checkpoint
    assert loop["steps_redone"] == STOP - STEPS
    assert loop["steps_at_end"] == EPOCHS * STEPS
    assert loop["same_batches_after_resume"] is True
    assert loop["max_weight_difference"] == 0.0


def test_fit_resumes_from_its_backup_and_the_table_is_well_formed(results):
    for column in ("fit", "fit_skip"):
        row = results[column]
        assert row["restored_at_step"] == STOP  # save_freq 1: the stopped step's backup
        assert row["steps_redone"] == 0 and row["steps_at_end"] == EPOCHS * STEPS
        assert math.isfinite(row["max_weight_difference"]) and row["max_weight_difference"] >= 0
    # Skipping what the backup trained on gives the uninterrupted run's batches.
    assert results["fit_skip"]["same_batches_after_resume"] is True
    for column in ("loop", "fit"):
        milliseconds, intervals = results[column]["ms_per_step"]
        assert milliseconds > 0 and intervals >= 1
    assert math.isfinite(results["fit"]["vs_loop_uninterrupted"])
    assert results["fit"]["same_batches_as_loop"] is True
    short = results["short"]
    assert short["steps_expected"] == EPOCHS * STEPS
    assert 0 < short["steps_run"] < EPOCHS * STEPS

    class Args:
        interrupt_at = STOP

    lines = fit_vs_loop.table(results, Args).splitlines()
    assert lines[0].count("|") == 5 and set(lines[1]) == {"|", "-"}
    rows = [line for line in lines[2:] if line.startswith("|")]
    assert len(rows) == 8 and all(line.count("|") == 5 for line in rows)
    assert any(line.startswith("fit on a dataset one batch short") for line in lines)
