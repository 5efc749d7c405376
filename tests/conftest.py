"""Shared fixtures and the check that slow tests are marked (pytest.ini registers `slow`).

Helpers shared as plain code are in tests/helpers/ (tests/ is on sys.path).
"""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# Session-scoped and read-only (built once per run, shared by every module: helpers/datasets.py).
from helpers.datasets import amazon_examples, kuaisar_builds, kuaisar_formats  # noqa: E402,F401

# Slow tests say so themselves: `@pytest.mark.slow` on the test or `pytestmark =
# pytest.mark.slow` on the module, so `pytest -m "not slow"` is the quick loop. These fixtures
# run the Beam data job, Transform, a training run, the TFX pipeline or a server process; a
# test that uses one (directly or through another fixture) and is not marked is an error at
# collection, so the quick loop cannot grow a slow test by accident.
SLOW_FIXTURES = frozenset(
    {
        "amazon_examples",
        "kuaisar_builds",
        "kuaisar_formats",  # helpers/datasets.py
        "kuaisar_run",
        "event_log_run",
        "cli_run",
        "amazon_runs",  # data job, trainer CLI
        "bad_input_run",
        "previous_output",
        "both_formats",
        "kuaisar_build",
        "built",
        "trained",
        "policy_run",
        "resumed",
        "datasets",
        "run_on_a",  # training runs
        "exported",
        "pushed",
        "stand_in",
        "served",
        "base_path",  # exports, server processes
        "good_run",  # the TFX pipeline
    }
)


def pytest_collection_modifyitems(config, items):
    unmarked = [
        item.nodeid
        for item in items
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests use a slow fixture but are not marked @pytest.mark.slow: "
            + ", ".join(unmarked)
        )
