"""A real UniSAR export behind the stand-in (and behind TF Serving when its binary is on PATH):
client -> server -> scores equal the in-process model's, for both signatures."""

import os
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

from serving import profile_request as profile
from serving.client import ScoringRequestError, UniSARClient
from serving.server import StandInServer

pytestmark = pytest.mark.slow  # exports a model and serves it from a server process


@pytest.fixture(scope="module")
def pushed(small_export):
    """(model_base_path, raw, expected): conftest.small_export, shared with other modules."""
    return small_export


@pytest.fixture(scope="module")
def stand_in(pushed):
    server = StandInServer(pushed[0], port=0)
    port = server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


def _check_parity(target, raw, expected):
    with UniSARClient(target, timeout_seconds=10) as client:
        search = client.predict("search", raw)["scores"]
        rec_inputs = {k: v for k, v in raw.items() if k != "query"}
        recommend = client.predict("recommend", rec_inputs)["scores"]
    np.testing.assert_allclose(search, expected["search"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(recommend, expected["rec"], rtol=1e-5, atol=1e-6)


def test_stand_in_scores_equal_the_in_process_model(pushed, stand_in):
    _, raw, expected = pushed
    _check_parity(stand_in, raw, expected)


def test_unknown_user_items_and_words_score_through_the_server(stand_in):
    with UniSARClient(stand_in, timeout_seconds=10) as client:
        scores = client.search(
            "nobody",
            "words nobody typed",
            ["i3", "no-such-item", "i4"],
            rec_history=[("ghost-item", 1)],
            search_history=[("w1 unknown", ["i2", "ghost"], 2)],
        )
        rec = client.recommend("nobody", ["no-such-item"])
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    assert scores[0] > 0 and scores[1] == 0 and scores[2] > 0  # unknown item ranks last
    assert rec.shape == (1,) and rec[0] == 0


def test_inconsistent_lengths_are_invalid_argument_and_the_server_keeps_serving(pushed, stand_in):
    _, raw, expected = pushed
    bad = dict(raw, rec_history_length=raw["rec_history_length"] + 100)
    with UniSARClient(stand_in, timeout_seconds=10) as client:
        with pytest.raises(ScoringRequestError, match="rec_history_length exceeds"):
            client.predict("search", bad)
    _check_parity(stand_in, raw, expected)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    shutil.which("tensorflow_model_server") is None,
    reason="tensorflow_model_server is not on PATH (it cannot be installed on "
    "these machines; production images have it)",
)
def test_real_tf_serving_scores_equal_the_in_process_model(pushed):
    base_path, raw, expected = pushed
    port = _free_port()
    process = subprocess.Popen(
        [
            "tensorflow_model_server",
            f"--port={port}",
            "--model_name=unisar",
            f"--model_base_path={os.path.abspath(base_path)}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 60
        while True:  # ready once a request succeeds; UNAVAILABLE is retried by the client
            try:
                _check_parity(f"127.0.0.1:{port}", raw, expected)
                break
            except Exception:
                if time.time() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow  # exports and loads a SavedModel
def test_profile_of_an_export_names_its_layers_and_serving_parts(pushed):
    model_base_path, raw, _ = pushed
    session, signatures = profile.load_session(os.path.join(model_base_path, "1"), threads=1)
    signature = signatures["recommend"]
    rows = len(raw["user_id"])
    requests = [
        {name: value[row : row + 1] for name, value in raw.items() if name in signature.inputs}
        for row in range(rows)
    ]
    result = profile.profile_signature(session, signature, requests, traced=2)
    assert len(result["wall_ms"]) == rows and min(result["wall_ms"]) > 0
    components = result["components"]
    # The small model's layers show up by name, next to the serving parts around them.
    assert {"experts", "rec_encoder", profile.VOCABULARY, profile.EXECUTOR} <= set(components)
    assert all(c["nodes"] >= 1 and c["ms"] >= 0 for c in components.values())
    table = profile.markdown("recommend", result)
    total_nodes = sum(c["nodes"] for c in components.values())
    assert f"### recommend: {total_nodes:.0f} nodes run per request" in table
    assert table.count("\n| ") == len(components) + 1  # header + one row per component
    shares = [float(line.rsplit("|", 2)[1].strip(" %")) for line in table.splitlines()[4:]]
    assert sum(shares) == pytest.approx(100.0, abs=0.1 * len(shares))
    assert np.all(np.diff(shares) <= 0)  # largest first
