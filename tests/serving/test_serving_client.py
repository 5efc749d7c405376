"""serving/client.py: request building, scoring through the stand-in server, retries, CLI.

Uses the toy SavedModel of tests/serving/test_serving_server.py (scores are hand-computable there).
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from helpers import REPO
from helpers.serving import save_toy_model

from serving import client as client_lib
from serving import server as server_lib
from serving.client import ScoringError, ScoringRequestError, UniSARClient, build_inputs

REC_HISTORY = [("item_b", 20), ("item_a", 10)]  # given newest first on purpose
SEARCH_HISTORY = [("red shoes", ["item_a", "item_c"], 15)]
CANDIDATES = ["item_c", "item_a", "unknown"]
# See test_serving_server: value + n_rec + 10 n_search [+ 100 n_clicked + 1000 query words].
EXPECTED_RECOMMEND = [15.0, 13.0, 12.0]
EXPECTED_SEARCH = [3215.0, 3213.0, 3212.0]


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models") / "unisar")
    save_toy_model(os.path.join(base, "1"))
    return base


@pytest.fixture(scope="module")
def target(base_path):
    server = server_lib.StandInServer(base_path, port=0)
    server.start()
    yield f"127.0.0.1:{server.port}"
    server.stop()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_build_inputs_pads_sorts_and_counts():
    inputs = build_inputs(
        "u1", ["x", "y"], REC_HISTORY, [("b", ["i1"], 7), ("a", ["i2", "i3", "i4"], 5)], query="q"
    )
    assert inputs["rec_history_item_ids"].tolist() == [[b"item_a", b"item_b"]]
    assert inputs["rec_history_timestamps"].tolist() == [[10, 20]]
    assert inputs["rec_history_length"].tolist() == [2]
    assert inputs["search_history_queries"].tolist() == [[b"a", b"b"]]
    assert inputs["search_history_clicked_item_ids"].tolist() == [
        [[b"i2", b"i3", b"i4"], [b"i1", b"", b""]]
    ]
    assert inputs["search_history_timestamps"].tolist() == [[5, 7]]
    assert inputs["query"].tolist() == [b"q"]
    assert inputs["candidate_item_ids"].tolist() == [[b"x", b"y"]]
    assert inputs["rec_history_timestamps"].dtype == np.int64

    empty = build_inputs("u1", ["x"])
    assert "query" not in empty
    assert empty["rec_history_item_ids"].tolist() == [[b""]]
    assert empty["rec_history_length"].tolist() == [0]
    assert empty["search_history_clicked_item_ids"].shape == (1, 1, 1)
    assert empty["search_history_length"].tolist() == [0]
    with pytest.raises(ValueError, match="candidates"):
        build_inputs("u1", [])


@pytest.mark.slow
def test_recommend_and_search_scores(target):
    with UniSARClient(target, timeout_seconds=10) as client:
        scores = client.recommend("u1", CANDIDATES, REC_HISTORY, SEARCH_HISTORY)
        assert scores.dtype == np.float32 and scores.shape == (3,)
        np.testing.assert_allclose(scores, EXPECTED_RECOMMEND)
        np.testing.assert_allclose(
            client.search("u1", "red running shoes", CANDIDATES, REC_HISTORY, SEARCH_HISTORY),
            EXPECTED_SEARCH,
        )
        # Empty histories: (1, 1) padded tensors with length 0 still score.
        np.testing.assert_allclose(client.recommend("u2", ["item_b"]), [2.0])


@pytest.mark.slow
def test_metadata(target):
    with UniSARClient(target, timeout_seconds=10) as client:
        meta = client.metadata()
    assert (meta["model_name"], meta["version"]) == ("unisar", 1)
    assert set(meta["signatures"]) == {"recommend", "search", "serving_default"}
    search = meta["signatures"]["search"]
    assert search["inputs"]["query"] == {"dtype": "string", "shape": [-1]}
    assert search["inputs"]["search_history_clicked_item_ids"]["shape"] == [-1, -1, -1]
    assert search["outputs"]["scores"] == {"dtype": "float32", "shape": [-1, -1]}


@pytest.mark.slow
def test_rejected_requests_raise_scoring_request_error(target):
    with UniSARClient(target, timeout_seconds=10) as client:
        inputs = build_inputs("u1", CANDIDATES)
        del inputs["rec_history_length"]
        with pytest.raises(ScoringRequestError, match="rec_history_length") as info:
            client.predict("recommend", inputs)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert isinstance(info.value, ValueError)
        with pytest.raises(ScoringRequestError, match="nope"):
            client.predict("nope", build_inputs("u1", CANDIDATES))
    with UniSARClient(target, model_name="other", timeout_seconds=10) as client:
        with pytest.raises(ScoringError, match="NOT_FOUND") as info:
            client.recommend("u1", CANDIDATES)
        assert not isinstance(info.value, ScoringRequestError)


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return "fake"


class _FailingStub:
    """Stands in for the gRPC stub: fails with `code` and records each call's timeout."""

    def __init__(self, code):
        self.code, self.timeouts = code, []

    def Predict(self, request, timeout):
        self.timeouts.append(timeout)
        raise _FakeRpcError(self.code)


@pytest.mark.parametrize(
    "code, calls",
    [
        (grpc.StatusCode.UNAVAILABLE, 4),  # 1 + 3 retries
        (grpc.StatusCode.DEADLINE_EXCEEDED, 1),  # server is slow: do not add load
        (grpc.StatusCode.INVALID_ARGUMENT, 1),
        (grpc.StatusCode.INTERNAL, 1),
    ],
)
def test_only_unavailable_is_retried_with_backoff(monkeypatch, code, calls):
    sleeps = []
    monkeypatch.setattr(client_lib.time, "sleep", sleeps.append)
    client = UniSARClient("127.0.0.1:1", timeout_seconds=0.7, retries=3, backoff_seconds=0.05)
    client._stub = stub = _FailingStub(code)
    with pytest.raises(ScoringError) as info:
        client.recommend("u1", CANDIDATES)
    client.close()
    assert info.value.code == code and code.name in str(info.value)
    assert stub.timeouts == [0.7] * calls
    assert sleeps == pytest.approx([0.05, 0.1, 0.2][: calls - 1])


def test_dead_port_without_retries_fails_fast_with_unavailable():
    client = UniSARClient(f"127.0.0.1:{free_port()}", timeout_seconds=2.0, retries=0)
    start = time.monotonic()
    with pytest.raises(ScoringError) as info:
        client.recommend("u1", CANDIDATES)
    client.close()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - start < 2.0


@pytest.mark.slow
def test_retries_reach_a_server_that_starts_late(base_path):
    port = free_port()
    servers = []

    def start_late():
        time.sleep(0.3)
        servers.append(server_lib.serve(base_path, port=port))

    thread = threading.Thread(target=start_late)
    # 8 retries back off 12.75 s in all: a server that loads its model on a loaded machine
    # (a fresh-clone suite beside a training run) took more than 5 retries' 1.55 s.
    client = UniSARClient(f"127.0.0.1:{port}", timeout_seconds=5.0, retries=8, backoff_seconds=0.05)
    start = time.monotonic()
    thread.start()
    try:
        scores = client.recommend("u1", CANDIDATES, REC_HISTORY, SEARCH_HISTORY)
    finally:
        thread.join()
        client.close()
        for server in servers:
            server.stop()
    np.testing.assert_allclose(scores, EXPECTED_RECOMMEND)
    assert time.monotonic() - start >= 0.3


def test_history_syntax_parsers():
    assert client_lib.parse_rec_history("i@1, j@k@2,") == [("i", 1), ("j@k", 2)]
    assert client_lib.parse_search_history("red shoes>i1 i2@5;socks>@6") == [
        ("red shoes", ["i1", "i2"], 5),
        ("socks", [], 6),
    ]
    for bad in ["i1", "i1@soon"]:
        with pytest.raises(ValueError):
            client_lib.parse_rec_history(bad)
    for bad in ["red shoes@5", ">i1@5", "q>i1@x"]:
        with pytest.raises(ValueError):
            client_lib.parse_search_history(bad)


@pytest.mark.slow
def test_cli_prints_scores_sorted(target, capsys, tmp_path):
    code = client_lib.main(
        [
            "--target",
            target,
            "--user",
            "u1",
            "--candidates",
            "unknown,item_a,item_c",
            "--rec_history",
            "item_b@20,item_a@10",
            "--search_history",
            "red shoes>item_a item_c@15",
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [line.split()[1:] for line in out[1:]] == [
        ["item_c", "15.000000"],
        ["item_a", "13.000000"],
        ["unknown", "12.000000"],
    ]

    history = tmp_path / "history.json"
    history.write_text(
        json.dumps(
            {
                "rec": [{"item": "item_a", "timestamp": 10}, {"item": "item_b", "timestamp": 20}],
                "search": [
                    {"query": "red shoes", "clicked": ["item_a", "item_c"], "timestamp": 15}
                ],
            }
        )
    )
    code = client_lib.main(
        [
            "--target",
            target,
            "--signature",
            "search",
            "--query",
            "red running shoes",
            "--user",
            "u1",
            "--candidates",
            ",".join(CANDIDATES),
            "--history_json",
            str(history),
            "--json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [(s["item"], s["score"]) for s in result["scores"]] == list(
        zip(CANDIDATES, EXPECTED_SEARCH)
    )


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--user", "u1"], "--candidates"),
        (["--user", "u1", "--candidates", "a", "--signature", "search"], "--query"),
        (["--user", "u1", "--candidates", "a", "--rec_history", "a@soon"], "soon"),
        (["--user", "u1", "--candidates", "a", "--search_history", "no arrow@5"], "no arrow"),
        (
            ["--user", "u1", "--candidates", "a", "--history_json", "/nonexistent.json"],
            "nonexistent",
        ),
    ],
)
def test_cli_bad_arguments_exit_2(capsys, argv, named):
    with pytest.raises(SystemExit) as info:
        client_lib.main(argv)
    assert info.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.slow
def test_cli_request_rejected_by_server_exits_2(target, capsys):
    # The toy model asserts non-negative timestamps in its graph: INVALID_ARGUMENT.
    code = client_lib.main(
        ["--target", target, "--user", "u1", "--candidates", "item_a", "--rec_history", "item_a@-3"]
    )
    assert code == 2
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_cli_unreachable_server_exits_1(capsys):
    code = client_lib.main(
        [
            "--target",
            f"127.0.0.1:{free_port()}",
            "--user",
            "u1",
            "--candidates",
            "a",
            "--retries",
            "1",
            "--timeout",
            "1",
        ]
    )
    assert code == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_subprocess(target):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.client",
            "--target",
            target,
            "--user",
            "u1",
            "--candidates",
            "item_a,item_c",
            "--json",
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["scores"] == [
        {"item": "item_c", "score": 3.0},
        {"item": "item_a", "score": 1.0},
    ]


def test_scores_padded_by_server_side_batching_are_dropped(monkeypatch):
    """TF Serving's batching pads candidates to the widest request in the batch; a request
    of 2 candidates batched with one of 5 gets 5 scores back and must keep its own 2."""
    client = UniSARClient("127.0.0.1:1")
    padded = {"scores": np.array([[0.9, 0.1, 0.9, 0.9, 0.9]], np.float32)}
    monkeypatch.setattr(client, "predict", lambda signature, inputs: padded)
    np.testing.assert_array_equal(client.recommend("u", ["a", "b"]), padded["scores"][0, :2])
    np.testing.assert_array_equal(client.search("u", "q", ["a", "b", "c"]), padded["scores"][0, :3])
    client.close()
