"""The ranking service (serving/ranking_service.py) over HTTP and gRPC, against ONE stand-in
TF Serving on the toy model (tests/helpers/serving.py) and a SQLite history store in tmp.

The toy model scores candidate i<NNN> (its NNN-th vocabulary entry) as
  recommend: NNN + 1 + n_rec + 10 * n_search
  search:    recommend + 100 * n_clicked + 1000 * words(query)
so every expected score below is computed by hand from the user's stored events.
"""

import http.client
import json
import os
import re
import shutil
import socket
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from helpers import REPO
from helpers.serving import save_toy_model
from tensorflow_serving.apis import prediction_service_pb2_grpc

from feature_specs.event_schema import Event
from serving import ranking_service as rs
from serving.client import UniSARClient
from serving.history_store import StoreUnavailable, open_store
from serving.protos import ranking_service_pb2 as pb
from serving.protos import ranking_service_pb2_grpc as pb_grpc
from serving.server import StandInServer

ITEMS = [f"i{n:03d}" for n in range(150)]
SHAPES = {"rec_len": 5, "search_len": 5, "query_len": 4, "clicks_per_session": 3}


def value(item):  # the toy model's per-item score
    return ITEMS.index(item) + 1


# u1: two rec clicks, one search session (query "red shoes", i030 clicked, i031 only shown),
# one rec impression: history_length 3 (impressions and unclicked rows are no behaviours).
# u2: impressions only: known to the store, empty history.
EVENTS = [
    Event("u1", 100, "rec", "i010", 1, source="fixture", line=1),
    Event("u1", 150, "rec", "i020", 0, source="fixture", line=2),
    Event("u1", 200, "search", "i030", 1, "s1", ("red", "shoes"), source="fixture", line=3),
    Event("u1", 200, "search", "i031", 0, "s1", ("red", "shoes"), source="fixture", line=4),
    Event("u1", 300, "rec", "i040", 1, source="fixture", line=5),
    Event("u2", 100, "rec", "i050", 0, source="fixture", line=1),
]
U1_REC_BONUS = 2 + 10 * 1  # n_rec + 10 * n_search
U1_SEARCH_BONUS = U1_REC_BONUS + 100  # + 100 * n_clicked (i030); + 1000 * query words


def write_model(base, version=1):
    """A toy export with the online files unisar_tf.export.push writes."""
    export = os.path.join(base, str(version))
    save_toy_model(export, vocab=ITEMS)
    online = os.path.join(export, rs.ONLINE_DIR)
    os.makedirs(online)
    with open(os.path.join(online, rs.ONLINE_METADATA_FILE), "w") as f:
        json.dump({"tasks": ["rec", "search"], "shapes": SHAPES}, f)
    with open(os.path.join(online, rs.ONLINE_ITEMS_FILE), "w") as f:
        f.write("".join(item + "\n" for item in ITEMS))
    return export


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("ranking") / "unisar")
    write_model(base)
    return base


@pytest.fixture(scope="module")
def stand_in(model_base):
    server = StandInServer(model_base, port=0)
    server.start()
    yield server
    server.stop()


class FakeRetriever:
    """serving.retrieval.Retriever's interface; remembers what it was asked."""

    items = ["i005", "i100", "i050", "i007"]

    def __init__(self):
        self.calls = []

    def retrieve(self, events, k, exclude=()):
        self.calls.append((len(events), k))
        return self.items[:k]


def make_service(
    store, target, base, retriever_loader=lambda export_dir: None, deadline_seconds=10.0, retries=1
):
    scorer = UniSARClient(
        target, timeout_seconds=deadline_seconds, retries=retries, backoff_seconds=0.02
    )
    service = rs.RankingService(
        store,
        scorer,
        base,
        retriever_loader=retriever_loader,
        deadline_seconds=deadline_seconds,
        metadata_poll_seconds=0,
    )
    return service.start()


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'history.db'}"


@pytest.fixture(scope="module")
def store(store_url):
    store = open_store(store_url)
    store.append_many(EVENTS)
    yield store
    store.close()


@pytest.fixture(scope="module")
def ranking_server(store, stand_in, model_base):
    """The service (no retrieval index) behind HTTP and gRPC servers on free ports."""
    service = make_service(store, f"127.0.0.1:{stand_in.port}", model_base)
    with rs.RankingServer(service, http_port=0, grpc_port=0) as server:
        yield server
    service.close()
    service.scorer.close()


@pytest.fixture(scope="module")
def ranking(ranking_server):
    """(service, HTTP port, gRPC stub)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{ranking_server.grpc_port}")
    yield (ranking_server.service, ranking_server.http_port, pb_grpc.RankingServiceStub(channel))
    channel.close()


def call(port, method, path, body=None, raw=None):
    """(status, JSON body) of one HTTP request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    payload = raw if raw is not None else (None if body is None else json.dumps(body))
    connection.request(
        method, path, body=payload, headers={"Content-Type": "application/json"} if payload else {}
    )
    response = connection.getresponse()
    data = json.loads(response.read())
    connection.close()
    return response.status, data


def rank(port, **body):
    return call(port, "POST", "/v1/rank", body)


# --- ranking -------------------------------------------------------------------------------


@pytest.mark.slow
def test_rank_returns_the_top_k_candidates_sorted_with_hand_computed_scores(ranking):
    _, port, _ = ranking
    candidates = ["i003", "i120", "i007", "i001", "i090"]
    status, body = rank(port, user_id="u1", candidates=candidates, k=3)
    assert status == 200, body
    assert [item["item_id"] for item in body["items"]] == ["i120", "i090", "i007"]
    assert [item["score"] for item in body["items"]] == [
        value(item) + U1_REC_BONUS for item in ("i120", "i090", "i007")
    ]
    assert body["user_known"] is True and body["history_length"] == 3
    assert body["retrieved"] is False and body["task"] == "rec"
    assert body["model_version"] == 1 and len(body["request_id"]) == 32

    # k larger than the candidates: all of them, still sorted.
    status, body = rank(port, user_id="u1", candidates=candidates, k=10)
    scores = [item["score"] for item in body["items"]]
    assert status == 200 and len(scores) == 5 and scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_search_query_uses_the_search_signature(ranking):
    _, port, _ = ranking
    status, body = rank(port, user_id="u1", query="blue  shoes", candidates=["i002", "i004"])
    assert status == 200, body
    assert body["task"] == "search"
    assert [(item["item_id"], item["score"]) for item in body["items"]] == [
        ("i004", value("i004") + U1_SEARCH_BONUS + 2000),
        ("i002", value("i002") + U1_SEARCH_BONUS + 2000),
    ]


@pytest.mark.slow
def test_scores_equal_a_direct_model_server_call_with_the_same_inputs(ranking, stand_in, store):
    """Round trip: the service's scores are the stand-in's for the assembler's inputs, sent
    with the client's own tf.make_tensor_proto path (not the service's packing)."""
    service, port, _ = ranking
    candidates = ITEMS[::7]
    status, body = rank(port, user_id="u1", query="red", candidates=candidates, k=len(candidates))
    assert status == 200, body
    assembled = service.model.assembler.assemble("u1", store.events("u1"), candidates, "red")
    with UniSARClient(f"127.0.0.1:{stand_in.port}", timeout_seconds=10) as client:
        direct = client.predict("search", assembled.inputs)["scores"][0]
    served = {item["item_id"]: item["score"] for item in body["items"]}
    assert [served[item] for item in candidates] == direct.tolist()


@pytest.mark.slow
def test_unknown_user_is_a_cold_start_ranked_with_an_empty_history(ranking):
    _, port, stub = ranking
    status, body = rank(port, user_id="nobody", candidates=["i001", "i002"], k=1)
    assert status == 200, body
    assert body["user_known"] is False and body["history_length"] == 0
    assert body["items"] == [{"item_id": "i002", "score": value("i002")}]
    # Impressions only: the store knows the user, but the history is still empty.
    status, body = rank(port, user_id="u2", candidates=["i001"])
    assert body["user_known"] is True and body["history_length"] == 0
    reply = stub.Rank(pb.RankRequest(user_id="nobody", candidates=["i001"]), timeout=30)
    assert reply.user_known is False and reply.history_length == 0


@pytest.mark.slow
def test_http_and_grpc_give_the_same_answer(ranking):
    _, port, stub = ranking
    for query in (None, "red shoes"):
        _, body = rank(port, user_id="u1", query=query, candidates=ITEMS[40:60], k=7)
        request = pb.RankRequest(user_id="u1", candidates=ITEMS[40:60], k=7)
        if query is not None:
            request.query = query
        reply = stub.Rank(request, timeout=30)
        assert [(i.item_id, i.score) for i in reply.items] == [
            (i["item_id"], i["score"]) for i in body["items"]
        ]
        assert (
            reply.user_known,
            reply.history_length,
            reply.retrieved,
            reply.model_version,
            reply.task,
        ) == (
            body["user_known"],
            body["history_length"],
            body["retrieved"],
            body["model_version"],
            body["task"],
        )


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,field,words",
    [
        (dict(user_id="u1", candidates=["i001", "shoe-99"]), "candidates", "'shoe-99'"),
        (dict(user_id="u1", query="a b c d e", candidates=["i001"]), "query", "5 words"),
        (dict(user_id="u1", query="x" * 5000, candidates=["i001"]), "query", "5000 characters"),
        (dict(user_id="u1", query="red [shoes", candidates=["i001"]), "query", "flat token list"),
        (dict(user_id="u1", query="   ", candidates=["i001"]), "query", "empty"),
        (dict(candidates=["i001"]), "user_id", "required"),
        (dict(user_id="", candidates=["i001"]), "user_id", "non-empty"),
        (dict(user_id="u\n1", candidates=["i001"]), "user_id", "U+000A"),
        (dict(user_id="u1", candidates="i001"), "candidates", "list"),
        (dict(user_id="u1", candidates=["i001", "i001"]), "candidates", "twice"),
        (dict(user_id="u1", candidates=["i001", 7]), "candidates", "entry 1"),
        (dict(user_id="u1", candidates=["i001"], k=0), "k", "1..1000"),
        (dict(user_id="u1", candidates=["i001"], k=1001), "k", "1..1000"),
        (dict(user_id="u1", candidates=["i001"], k="3"), "k", "integer"),
        (dict(user_id="u1", candidates=["i001"], deadline_ms=-5), "deadline_ms", "positive"),
        (dict(user_id="u1", candidate=["i001"]), "candidate", "unknown field"),
        (dict(user_id="u1"), "candidates", "no retrieval index"),
    ],
)
@pytest.mark.slow
def test_bad_requests_get_400_naming_the_field(ranking, body, field, words):
    _, port, _ = ranking
    status, reply = rank(port, **body)
    assert status == 400, reply
    assert reply["error"] == "invalid_argument" and reply["field"] == field
    assert reply["detail"].startswith(field + ":") and words in reply["detail"], reply


@pytest.mark.slow
def test_malformed_bodies_and_paths(ranking):
    _, port, _ = ranking
    for raw, words in [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe", "not JSON"),
    ]:
        status, reply = call(port, "POST", "/v1/rank", raw=raw)
        assert (status, reply["field"]) == (400, "body") and words in reply["detail"]
    assert call(port, "POST", "/v1/nope", {})[0] == 404
    assert call(port, "GET", "/v1/rank")[0] == 404
    assert call(port, "PUT", "/v1/rank", {})[0] == 405
    # A body over the cap is refused from its Content-Length, before it is read.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.putrequest("POST", "/v1/rank")
    connection.putheader("Content-Length", str(rs.MAX_BODY_BYTES + 1))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["field"] == "body"
    connection.close()
    # The connection's next request still works after errors (keep-alive).
    assert rank(port, user_id="u1", candidates=["i001"])[0] == 200


@pytest.mark.slow
def test_grpc_errors_carry_the_status_code_and_the_field(ranking):
    _, _, stub = ranking
    with pytest.raises(grpc.RpcError) as info:
        stub.Rank(pb.RankRequest(user_id="u1", candidates=["nope"]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("candidates: unknown item 'nope'")
    with pytest.raises(grpc.RpcError) as info:
        stub.Rank(pb.RankRequest(user_id="u1", candidates=["i001"], k=-1), timeout=30)
    assert info.value.details().startswith("k:")


# --- retrieval -----------------------------------------------------------------------------


@pytest.mark.slow
def test_no_candidates_ranks_what_the_retriever_returns(store, stand_in, model_base):
    retriever = FakeRetriever()
    service = make_service(
        store,
        f"127.0.0.1:{stand_in.port}",
        model_base,
        retriever_loader=lambda export_dir: retriever,
    )
    try:
        result = service.rank("u1", k=2)
        assert result.retrieved is True
        assert [item for item, _ in result.items] == ["i100", "i050"]
        assert retriever.calls == [(len(store.events("u1")), rs.DEFAULT_RETRIEVE_COUNT)]
        # Given candidates skip retrieval.
        assert service.rank("u1", candidates=["i001"]).retrieved is False
        assert len(retriever.calls) == 1
    finally:
        service.close()


@pytest.mark.slow
def test_a_retrieval_index_that_fails_to_load_leaves_given_candidates_working(
    store, stand_in, model_base
):
    def broken(export_dir):
        raise ValueError("index.json: bad format")

    service = make_service(store, f"127.0.0.1:{stand_in.port}", model_base, retriever_loader=broken)
    try:
        result = service.rank("u1", candidates=["i001"])
        assert result.items == [("i001", value("i001") + U1_REC_BONUS)]
        with pytest.raises(rs.RankingError) as info:
            service.rank("u1")
        assert info.value.field == "candidates" and "bad format" in info.value.detail
        health = service.health()
        assert health.ready and health.checks["retrieval"].startswith("failed")
    finally:
        service.close()


@pytest.mark.slow
def test_no_candidates_ranks_the_versions_retrieval_index(store, stand_in, model_base, tmp_path):
    """The default loader finds a real index in the served version (serving/retrieval.py):
    the retrieved items, the user's own left out, ranked by the model."""
    from serving.retrieval import Retriever
    from unisar_tf.data.retrieval_index import (
        RETRIEVAL_DIR,
        RetrievalParams,
        Sequences,
        build_index,
    )

    base = tmp_path / "unisar"
    shutil.copytree(os.path.join(model_base, "1"), base / "1")
    catalogue = np.array([""] + ITEMS, dtype=object)
    ids = {item: i for i, item in enumerate(catalogue)}
    # Training: i040 -> i003 three times, i040 -> i002 once, i010 -> i001 five times.
    train = Sequences(
        recent=np.array([[ids["i040"]]] * 4 + [[ids["i010"]]] * 5),
        positives=np.array([ids["i003"]] * 3 + [ids["i002"]] + [ids["i001"]] * 5),
        tasks=np.array(["rec"] * 9),
    )
    build_index(train, catalogue, RetrievalParams(neighbours=3, transition_window=1)).write(
        str(base / "1" / RETRIEVAL_DIR)
    )
    service = make_service(
        store, f"127.0.0.1:{stand_in.port}", str(base), retriever_loader=rs.default_retriever_loader
    )
    try:
        assert service.health().checks["retrieval"] == "ok"
        expected = Retriever.load(str(base / "1")).retrieve(
            store.events("u1"), rs.DEFAULT_RETRIEVE_COUNT
        )
        # u1's items (i010, i030, i040) lead to these; its own are left out.
        assert set(expected[:3]) == {"i001", "i002", "i003"}
        assert not {"i010", "i030", "i040"} & set(expected)
        result = service.rank("u1", k=5)
        assert result.retrieved is True
        top = sorted(expected, key=lambda item: -value(item))[:5]
        assert result.items == [(item, value(item) + U1_REC_BONUS) for item in top]
    finally:
        service.close()


# --- feedback ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_recorded_click_is_in_the_next_requests_history(ranking):
    _, port, stub = ranking
    user = "feedback-user"
    _, before = rank(port, user_id=user, candidates=["i001"])
    assert (before["user_known"], before["history_length"]) == (False, 0)

    status, reply = call(
        port, "POST", "/v1/events", {"user_id": user, "item_id": "i009", "type": "impression"}
    )
    assert status == 200 and reply["known_item"] is True and reply["line"] == 1
    _, after_impression = rank(port, user_id=user, candidates=["i001"])
    assert (after_impression["user_known"], after_impression["history_length"]) == (True, 0)

    status, reply = call(
        port, "POST", "/v1/events", {"user_id": user, "item_id": "i009", "type": "click"}
    )
    assert status == 200 and reply["line"] == 2 and reply["scenario"] == "rec"
    _, after_click = rank(port, user_id=user, candidates=["i001"])
    assert after_click["history_length"] == 1
    assert after_click["items"][0]["score"] == before["items"][0]["score"] + 1  # + n_rec

    # A click on a search result, over gRPC, in the session of the search's request_id.
    search = stub.Rank(
        pb.RankRequest(user_id=user, query="lipstick", candidates=["i001"]), timeout=30
    )
    stub.RecordEvent(
        pb.RecordEventRequest(
            user_id=user,
            item_id="i001",
            type="click",
            query="lipstick",
            search_session_id=search.request_id,
        ),
        timeout=30,
    )
    _, after_search = rank(port, user_id=user, candidates=["i001"])
    assert after_search["history_length"] == 2
    assert after_search["items"][0]["score"] == after_click["items"][0]["score"] + 10


@pytest.mark.parametrize(
    "body,field",
    [
        ({"user_id": "u9", "item_id": "i001", "type": "like"}, "type"),
        ({"user_id": "u9", "type": "click"}, "item_id"),
        (
            {"user_id": "u9", "item_id": "i001", "type": "click", "query": "red"},
            "search_session_id",
        ),
        ({"user_id": "u9", "item_id": "i001", "type": "click", "timestamp": -1}, "timestamp"),
        (
            {"user_id": "u9", "item_id": "i001", "type": "click", "search_session_id": "s"},
            "search_session_id",
        ),
    ],
)
@pytest.mark.slow
def test_bad_events_get_400_naming_the_field(ranking, body, field):
    _, port, _ = ranking
    status, reply = call(port, "POST", "/v1/events", body)
    assert status == 400 and reply["field"] == field, reply


# --- health and outages --------------------------------------------------------------------


@pytest.mark.slow
def test_healthz_and_readyz(ranking):
    service, port, stub = ranking
    assert call(port, "GET", "/healthz") == (200, {"live": True})
    status, body = call(port, "GET", "/readyz")
    assert status == 200 and body["ready"] is True and body["model_version"] == 1
    assert body["checks"] == {
        "store": "ok",
        "model_server": "ok",
        "metadata": "ok",
        "retrieval": "no index in this version",
    }
    reply = stub.Health(pb.HealthRequest(), timeout=30)
    assert reply.live and reply.ready and dict(reply.checks) == body["checks"]


class DownStore:
    """A history store whose server is down."""

    def events(self, user_id):
        raise StoreUnavailable("redis://10.0.0.1:6379/0: connection refused")

    append = events

    def ping(self):
        self.events("")


@pytest.mark.slow
def test_store_outage_is_503_and_not_ready(stand_in, model_base):
    service = make_service(DownStore(), f"127.0.0.1:{stand_in.port}", model_base)
    with rs.RankingServer(service, http_port=0, grpc_port=None) as server:
        status, body = rank(server.http_port, user_id="u1", candidates=["i001"])
        assert status == 503 and "history store" in body["detail"], body
        status, body = call(
            server.http_port,
            "POST",
            "/v1/events",
            {"user_id": "u1", "item_id": "i001", "type": "click"},
        )
        assert status == 503
        status, body = call(server.http_port, "GET", "/readyz")
        assert status == 503 and body["checks"]["store"].startswith("unavailable")
        assert body["checks"]["model_server"] == "ok"
    service.close()


@pytest.mark.slow
def test_model_server_stopped_is_503_within_the_deadline(store, model_base):
    """A second stand-in, stopped under a service that has loaded its metadata."""
    stand_in = StandInServer(model_base, port=0)
    stand_in.start()
    service = make_service(
        store, f"127.0.0.1:{stand_in.port}", model_base, deadline_seconds=1.0, retries=5
    )
    with rs.RankingServer(service, http_port=0, grpc_port=0) as server:
        assert rank(server.http_port, user_id="u1", candidates=["i001"])[0] == 200
        stand_in.stop()
        start = time.monotonic()
        status, body = rank(server.http_port, user_id="u1", candidates=["i001"])
        elapsed = time.monotonic() - start
        assert status == 503 and body["error"] == "unavailable", body
        assert "model server" in body["detail"]
        assert elapsed < 1.0 + 0.5  # the deadline, plus HTTP on a loaded machine
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.RankingServiceStub(channel).Rank(
                pb.RankRequest(user_id="u1", candidates=["i001"]), timeout=30
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()
        status, body = call(server.http_port, "GET", "/readyz")
        assert status == 503 and body["checks"]["model_server"].startswith("model server")
    service.close()


class SlowPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """A model server that is up and never answers in time."""

    def Predict(self, request, context):  # noqa: N802
        time.sleep(3)
        context.abort(grpc.StatusCode.INTERNAL, "too late")


@pytest.mark.slow
def test_a_model_server_that_never_answers_is_504_at_the_deadline(store, stand_in, model_base):
    """The call ends at the request's deadline (deadline_ms), well before the service's own,
    whether the server is up and slow (504) or accepts TCP and never speaks HTTP/2 (gRPC
    gives up connecting: 503)."""
    slow = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        SlowPredictionService(), slow
    )
    slow_port = slow.add_insecure_port("127.0.0.1:0")
    slow.start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    service = make_service(store, f"127.0.0.1:{stand_in.port}", model_base)
    loaded_scorer = service.scorer
    try:
        for port, code in [
            (slow_port, grpc.StatusCode.DEADLINE_EXCEEDED),
            (silent.getsockname()[1], grpc.StatusCode.UNAVAILABLE),
        ]:
            service.scorer = UniSARClient(f"127.0.0.1:{port}", timeout_seconds=10)
            start = time.monotonic()
            with pytest.raises(rs.RankingError) as info:
                service.rank("u1", candidates=["i001"], deadline_seconds=0.3)
            assert info.value.code == code, info.value
            assert 0.25 < time.monotonic() - start < 1.0
            service.scorer.close()
        assert rs.HTTP_STATUS[grpc.StatusCode.DEADLINE_EXCEEDED] == 504
    finally:
        loaded_scorer.close()
        service.close()
        silent.close()
        slow.stop(0)


@pytest.mark.slow
def test_no_model_metadata_is_not_ready_and_503(store, stand_in, tmp_path):
    """TF Serving serves version 1, but --model_base_path has no such version."""
    service = make_service(store, f"127.0.0.1:{stand_in.port}", str(tmp_path))
    try:
        with pytest.raises(rs.RankingError) as info:
            service.rank("u1", candidates=["i001"])
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "version 1" in info.value.detail
        health = service.health()
        assert not health.ready and health.checks["model_server"] == "ok"
        assert "--model_base_path" in health.checks["metadata"]
    finally:
        service.close()


# --- benchmark -----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_online_benchmark_runs_on_the_fixtures(ranking_server, store_url, model_base, tmp_path):
    """serving/benchmark_online.py for a second per run against this module's service (in
    this process, so its memory is this process's)."""
    from serving import benchmark_online

    users = tmp_path / "users.txt"
    users.write_text("u1\nu2\nnobody\n")
    result = benchmark_online.main(
        [
            "--store",
            store_url,
            "--model_base_path",
            model_base,
            "--users",
            str(users),
            "--service_http",
            f"127.0.0.1:{ranking_server.http_port}",
            "--service_grpc",
            f"127.0.0.1:{ranking_server.grpc_port}",
            "--service_pid",
            str(os.getpid()),
            "--runs",
            "http:given,http:retrieved,grpc:given",
            "--clients",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--candidates",
            "20",
            "--search_fraction",
            "0.5",
            "--json",
            str(tmp_path / "result.json"),
        ]
    )
    assert set(result["runs"]) == {"http:given", "http:retrieved", "grpc:given"}
    assert "no retrieval index" in result["runs"]["http:retrieved"]["skipped"]
    for name in ("http:given", "grpc:given"):
        run = result["runs"][name]
        assert run["requests"] > 0 and run["errors"] == 0, run
        assert 0 < run["p50"] <= run["p99"]
        assert run["memory"]["start_mb"] > 0
    assert result["store_read"]["n"] == 3
    assert (
        json.loads((tmp_path / "result.json").read_text())["runs"].keys() == result["runs"].keys()
    )


# --- contracts -----------------------------------------------------------------------------


def test_generated_grpc_code_matches_the_proto():
    """Every message and field of ranking_service.proto (name, number) is in the committed
    _pb2.py, and the service's methods too: regenerate (the proto's header) after edits."""
    text = open(os.path.join(REPO, "serving", "protos", "ranking_service.proto")).read()
    text = re.sub(r"//[^\n]*", "", text)
    declared = {}
    for name, body in re.findall(r"message (\w+) \{([^}]*)\}", text):
        declared[name] = {
            (field, int(number)) for field, number in re.findall(r"(\w+) = (\d+);", body)
        }
    generated = {
        name: {(f.name, f.number) for f in message.fields}
        for name, message in pb.DESCRIPTOR.message_types_by_name.items()
    }
    assert generated == declared
    methods = set(re.findall(r"rpc (\w+)\(", text))
    service = pb.DESCRIPTOR.services_by_name["RankingService"]
    assert {m.name for m in service.methods} == methods == {"Rank", "RecordEvent", "Health"}
