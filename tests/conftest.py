"""Shared fixtures and the `slow` marking (pytest.ini registers the marker).

Helpers shared as plain code are in tests/helpers/ (tests/ is on sys.path).
"""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# Session-scoped and read-only (built once per run, shared by every module: helpers/datasets.py).
from helpers.datasets import amazon_examples, kuaisar_builds, kuaisar_formats  # noqa: E402,F401

# Fixtures that run the Beam data job, Transform, a training run, the TFX pipeline or a server
# process: a test that uses one (directly or through another fixture) is marked slow, so
# `pytest -m "not slow"` is the quick loop. Whole modules and subprocess tests say so
# themselves (`pytestmark = pytest.mark.slow`, `@pytest.mark.slow`).
SLOW_FIXTURES = frozenset({
    "amazon_examples", "kuaisar_builds", "kuaisar_formats",      # helpers/datasets.py
    "kuaisar_run", "event_log_run", "cli_run", "amazon_runs",    # data job, trainer CLI
    "bad_input_run", "previous_output", "both_formats", "kuaisar_build", "built",
    "trained", "policy_run", "resumed", "datasets", "run_on_a",  # training runs
    "exported", "pushed", "stand_in", "served", "base_path",     # exports, server processes
    "good_run",                                                  # the TFX pipeline
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
