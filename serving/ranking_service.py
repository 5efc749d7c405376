"""The ranking service: a user's request -> history store -> the model's features -> TF Serving
-> the top k candidates with their scores.

    python -m serving.ranking_service --store sqlite:///out/online/history.db \
        --model_server 127.0.0.1:8500 --model_base_path out/serving/unisar \
        --http_port 8080 --grpc_port 8081 [--deadline_ms 300]

Library: `RankingService(store, scorer, model_base_path).rank(user_id, query, candidates, k)`
reads the user's events from the store (serving/history_store.py), builds the signature
inputs with the data job's rules (serving/online_features.py), scores them with TF Serving's
PredictionService (serving/client.py) and returns the top k. Without candidates, the served
version's retrieval index (serving/retrieval.py) chooses them.

Servers (RankingServer): HTTP/JSON on a ThreadingHTTPServer (POST /v1/rank, POST /v1/events,
GET /healthz, GET /readyz) and gRPC (serving/protos/ranking_service.proto: Rank,
RecordEvent, Health). Both bind 127.0.0.1 unless --host says otherwise. Request, response,
errors and deadlines: docs/online.md#ranking-service.

Which model: the version TF Serving reports as served (GetModelMetadata), whose
`assets.extra/online/` files under --model_base_path (written by unisar_tf.export.push) give
the tasks, the sequence shapes and the item vocabulary. It is re-checked every
--metadata_poll_seconds and whenever a Predict answer comes from another version.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from concurrent import futures
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

# As in serving/server.py and serving/client.py: the service imports TensorFlow only for the
# TF Serving protos; its C++ start-up chatter is not for the service's logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from feature_specs.event_schema import (  # noqa: E402
    SCENARIO_REC,
    SCENARIO_SEARCH,
    Event,
    RowError,
    check_id,
)
from feature_specs.example_schema import SequenceShapes  # noqa: E402
from feature_specs.serving import (  # noqa: E402,F401
    MODEL_NAME,
    ONLINE_DIR,
    ONLINE_ITEMS_FILE,
    ONLINE_METADATA_FILE,
    RETRIEVAL_DIR,
    SCORES_OUTPUT,
    SIGNATURE_NAMES,
)
from serving.client import ScoringError, ScoringRequestError, UniSARClient  # noqa: E402
from serving.history_store import HistoryStore, StoreUnavailable, open_store  # noqa: E402
from serving.online_features import (  # noqa: E402
    OnlineFeatureAssembler,
    QueryTooLong,
    read_online_files,
)
from serving.protos import ranking_service_pb2 as pb  # noqa: E402
from serving.protos import ranking_service_pb2_grpc as pb_grpc  # noqa: E402
from unisar_tf.data.example_rules import tokenize_query  # noqa: E402

log = logging.getLogger(__name__)


DEFAULT_K = 10
DEFAULT_DEADLINE_MS = 300
DEFAULT_MAX_K = 1000
DEFAULT_MAX_CANDIDATES = 1000
DEFAULT_RETRIEVE_COUNT = 100
MAX_BODY_BYTES = 1 << 20
# Longer query text is refused before it is split (a word cap alone would still split it).
MAX_QUERY_CHARS = 4096
EVENT_TYPES = {"click": 1, "impression": 0}


class RankingError(Exception):
    """A request that fails with a status. `code` is a grpc.StatusCode (HTTP status:
    HTTP_STATUS), `field` the request field at fault, if one is."""

    def __init__(self, code: grpc.StatusCode, detail: str, field: Optional[str] = None):
        super().__init__(f"{code.name}: {detail}")
        self.code = code
        self.detail = detail
        self.field = field

    def to_json(self) -> Dict[str, Any]:
        body = {"error": self.code.name.lower(), "detail": self.detail}
        if self.field:
            body["field"] = self.field
        return body


def _invalid(field: str, detail: str) -> RankingError:
    return RankingError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {detail}", field)


HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNIMPLEMENTED: 405,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# TF Serving's answers that mean "no model to score with right now" (down, restarting, the
# model not loaded, overloaded): the caller may retry later or elsewhere.
_MODEL_SERVER_DOWN = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
}


# ------------------------------------------------------------------------------ the model


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """What the service knows about the version TF Serving serves."""

    version: int
    export_dir: str
    tasks: Tuple[str, ...]
    shapes: SequenceShapes
    items: FrozenSet[str]
    assembler: OnlineFeatureAssembler
    retriever: Optional[Any]  # serving.retrieval.Retriever, or None: no index
    retriever_problem: str = ""  # why an index that exists did not load


def default_retriever_loader(export_dir: str):
    """serving.retrieval.Retriever for the version, or None if it has no retrieval index."""
    if not os.path.isdir(os.path.join(export_dir, RETRIEVAL_DIR)):
        return None
    from serving.retrieval import Retriever  # only versions with an index need it

    return Retriever.load(export_dir)


def version_dir(model_base_path: str, version: int) -> str:
    """<model_base_path>/<version>; TF Serving also reads "0003" as version 3."""
    try:
        names = os.listdir(model_base_path)
    except OSError as e:
        raise FileNotFoundError(f"--model_base_path {model_base_path}: {e.strerror}") from None
    for name in names:
        if name.isdigit() and int(name) == version:
            return os.path.join(model_base_path, name)
    raise FileNotFoundError(
        f"TF Serving serves version {version}, but {model_base_path} has "
        "no such directory: is --model_base_path the directory TF "
        "Serving watches?"
    )


def load_served_model(
    model_base_path: str,
    version: int,
    retriever_loader: Callable[[str], Any] = default_retriever_loader,
    max_query_words: int = 0,
) -> ServedModel:
    """Read a version's assets.extra/online files (and its retrieval index, if any).
    max_query_words: longer queries are refused (QueryTooLong); 0 = the model's query_len,
    the words it reads.

    Raises FileNotFoundError / ValueError naming the file when they are missing or wrong.
    """
    export_dir = version_dir(model_base_path, version)
    tasks, shapes, items = read_online_files(export_dir)
    retriever, problem = None, ""
    try:
        retriever = retriever_loader(export_dir)
    except Exception as e:  # given candidates still rank; say why retrieval is off
        log.exception("the retrieval index of %s did not load", export_dir)
        problem = f"{type(e).__name__}: {e}"
    return ServedModel(
        version=version,
        export_dir=export_dir,
        tasks=tasks,
        shapes=shapes,
        items=items,
        assembler=OnlineFeatureAssembler(
            shapes, items, max_query_words=max_query_words or shapes.query_len
        ),
        retriever=retriever,
        retriever_problem=problem,
    )


# ---------------------------------------------------------------------------- the service


@dataclasses.dataclass(frozen=True)
class RankResult:
    """items: (item_id, score) best first; user_known False = cold start (the store had no
    event for the user: ranked with an empty history)."""

    items: List[Tuple[str, float]]
    user_known: bool
    history_length: int
    retrieved: bool
    model_version: int
    task: str
    request_id: str

    def to_json(self) -> Dict[str, Any]:
        return {
            "items": [{"item_id": item, "score": score} for item, score in self.items],
            "user_known": self.user_known,
            "history_length": self.history_length,
            "retrieved": self.retrieved,
            "model_version": self.model_version,
            "task": self.task,
            "request_id": self.request_id,
        }

    def to_proto(self) -> pb.RankResponse:
        return pb.RankResponse(
            items=[pb.ScoredItem(item_id=item, score=score) for item, score in self.items],
            user_known=self.user_known,
            history_length=self.history_length,
            retrieved=self.retrieved,
            model_version=self.model_version,
            task=self.task,
            request_id=self.request_id,
        )


@dataclasses.dataclass(frozen=True)
class RecordedEvent:
    event: Event  # as stored: source "online", line = the user's sequence number
    known_item: bool  # False: the served model has no embedding for the item

    def to_json(self) -> Dict[str, Any]:
        return {
            "user_id": self.event.user_id,
            "scenario": self.event.scenario,
            "timestamp": self.event.timestamp,
            "line": self.event.line,
            "known_item": self.known_item,
        }

    def to_proto(self) -> pb.RecordEventResponse:
        return pb.RecordEventResponse(**self.to_json())


@dataclasses.dataclass(frozen=True)
class Health:
    ready: bool
    checks: Dict[str, str]  # name -> "ok" or the problem
    model_version: int  # 0: none loaded

    def to_json(self) -> Dict[str, Any]:
        return {
            "live": True,
            "ready": self.ready,
            "checks": self.checks,
            "model_version": self.model_version,
        }


class RankingService:
    """Store + feature assembler + scorer (+ the version's retriever). Thread-safe.

    store: a serving.history_store.HistoryStore. scorer: a serving.client.UniSARClient (or
    anything with its predict_inputs(signature, inputs, timeout_seconds) and
    metadata(timeout_seconds)). retriever_loader(export_dir) -> retriever or None, called
    for each served version (default: serving.retrieval.Retriever when the version has an
    index). deadline_seconds: every request's default and longest deadline.
    """

    def __init__(
        self,
        store: HistoryStore,
        scorer: UniSARClient,
        model_base_path: str,
        retriever_loader: Callable[[str], Any] = default_retriever_loader,
        deadline_seconds: float = DEFAULT_DEADLINE_MS / 1000,
        max_k: int = DEFAULT_MAX_K,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
        retrieve_count: int = DEFAULT_RETRIEVE_COUNT,
        max_query_words: int = 0,
        metadata_poll_seconds: float = 10.0,
    ):
        if deadline_seconds <= 0 or max_k < 1 or max_candidates < 1 or retrieve_count < 1:
            raise ValueError(
                "deadline_seconds, max_k, max_candidates and retrieve_count " "must be positive"
            )
        self.store = store
        self.scorer = scorer
        self.model_base_path = model_base_path
        self.retriever_loader = retriever_loader
        self.deadline_seconds = deadline_seconds
        self.max_k = max_k
        self.max_candidates = max_candidates
        self.retrieve_count = retrieve_count
        self.max_query_words = max_query_words
        self.metadata_poll_seconds = metadata_poll_seconds
        self._model: Optional[ServedModel] = None
        self._model_problem = "not checked yet"
        self._refresh_lock = threading.Lock()
        self._refresh_now = threading.Event()
        self._stopping = threading.Event()
        self._poller: Optional[threading.Thread] = None

    # -- the served version

    @property
    def model(self) -> Optional[ServedModel]:
        return self._model

    def refresh_model(self, timeout_seconds: float = 2.0) -> Optional[ServedModel]:
        """Ask TF Serving which version it serves; load that version's online files if it is
        not the one loaded. Returns the loaded model (None if none could be loaded; the
        reason is in health()). Never raises."""
        with self._refresh_lock:
            try:
                version = int(self.scorer.metadata(timeout_seconds=timeout_seconds)["version"])
            except ScoringError as e:
                self._model_problem = f"model server: {e}"
                return self._model
            current = self._model
            if current is not None and current.version == version:
                self._model_problem = ""
                return current
            try:
                model = load_served_model(
                    self.model_base_path, version, self.retriever_loader, self.max_query_words
                )
            except (OSError, ValueError) as e:
                log.error("cannot use served version %d: %s", version, e)
                self._model_problem = f"version {version}: {e}"
                return current
            self._model, self._model_problem = model, ""
            log.info(
                "ranking with model version %d (%s; retrieval %s)",
                version,
                model.export_dir,
                "on" if model.retriever else "off",
            )
            return model

    def start(self) -> "RankingService":
        """Load the served version now (if TF Serving answers) and keep following it."""
        self.refresh_model()
        if self.metadata_poll_seconds > 0 and self._poller is None:
            self._poller = threading.Thread(
                target=self._poll_loop, name="model-metadata", daemon=True
            )
            self._poller.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        self._refresh_now.set()
        if self._poller is not None:
            self._poller.join(timeout=5)

    def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            self._refresh_now.wait(self.metadata_poll_seconds)
            self._refresh_now.clear()
            if not self._stopping.is_set():
                self.refresh_model()

    def _require_model(self) -> ServedModel:
        model = self._model
        if model is None:
            self._refresh_now.set()
            raise RankingError(
                grpc.StatusCode.UNAVAILABLE, f"no model loaded yet ({self._model_problem})"
            )
        return model

    # -- requests

    def _deadline(self, deadline_seconds: Optional[float], received: Optional[float]) -> float:
        start = time.monotonic() if received is None else received
        if deadline_seconds is None:
            return start + self.deadline_seconds
        if not deadline_seconds > 0:
            raise _invalid("deadline_ms", f"must be positive, got {deadline_seconds * 1000:g}")
        return start + min(deadline_seconds, self.deadline_seconds)

    def _read_history(self, user_id: str, deadline: float) -> List[Event]:
        try:
            events = self.store.events(user_id)
        except StoreUnavailable as e:
            raise RankingError(grpc.StatusCode.UNAVAILABLE, f"history store: {e}") from None
        if time.monotonic() > deadline:
            raise RankingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the deadline passed while reading the history store",
            )
        return events

    def rank(
        self,
        user_id: str,
        query: Optional[str] = None,
        candidates: Optional[Sequence[str]] = None,
        k: int = DEFAULT_K,
        deadline_seconds: Optional[float] = None,
        received: Optional[float] = None,
    ) -> RankResult:
        """The top k of `candidates` (or of the retrieval stage's, if None or empty) for the
        user, by the model's score; with a query, the search task ranks them.

        Raises RankingError: INVALID_ARGUMENT naming the field (user_id, query, candidates,
        k, deadline_ms), UNAVAILABLE (model server, store, no model loaded),
        DEADLINE_EXCEEDED (within deadline_seconds, at most the service's deadline, counted
        from `received`, the time.monotonic() the request arrived, if it waited).
        """
        deadline = self._deadline(deadline_seconds, received)
        user_id = _check_user_id(user_id)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.max_k:
            raise _invalid("k", f"must be an integer in 1..{self.max_k}, got {k!r}")
        if query is not None:
            if not isinstance(query, str):
                raise _invalid("query", f"must be a string, got {type(query).__name__}")
            if not query.strip():
                raise _invalid("query", "is empty; leave it out to rank for recommendation")
            if len(query) > MAX_QUERY_CHARS:
                raise _invalid("query", f"{len(query)} characters; at most {MAX_QUERY_CHARS}")
        task = SCENARIO_SEARCH if query is not None else SCENARIO_REC
        given = _check_candidates(candidates, self.max_candidates)
        model = self._require_model()
        if task not in model.tasks:
            raise _invalid(
                "query",
                f"the served model (version {model.version}) has no "
                f"{task} task; its tasks are {list(model.tasks)}",
            )
        if given:
            unknown = [item for item in given if item not in model.items]
            if unknown:
                shown = ", ".join(repr(item) for item in unknown[:5])
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                raise _invalid(
                    "candidates",
                    f"unknown item {shown}{more}: not in the served model's "
                    f"vocabulary (version {model.version}), it has no score",
                )

        events = self._read_history(user_id, deadline)
        if given:
            ranked_items, retrieved = given, False
        else:
            if model.retriever is None:
                why = (
                    f": its index failed to load ({model.retriever_problem})"
                    if model.retriever_problem
                    else ""
                )
                raise _invalid(
                    "candidates",
                    "none given, and the served model (version "
                    f"{model.version}) has no retrieval index{why}; send the "
                    "candidates to rank",
                )
            ranked_items = list(model.retriever.retrieve(events, self.retrieve_count))
            retrieved = True
            if not ranked_items:
                raise RankingError(grpc.StatusCode.INTERNAL, "retrieval returned no items")
        try:
            assembled = model.assembler.assemble(user_id, events, ranked_items, query)
        except QueryTooLong as e:
            raise _invalid("query", str(e)) from None
        except ValueError as e:  # the data job's tokeniser refuses the query text
            if query is None:
                raise
            raise _invalid("query", str(e)) from None

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RankingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the deadline passed before the model server was called",
            )
        try:
            prediction = self.scorer.predict_inputs(
                SIGNATURE_NAMES[task], assembled.inputs, timeout_seconds=remaining
            )
        except ScoringRequestError as e:  # inputs this service built: its bug, not the caller's
            raise RankingError(
                grpc.StatusCode.INTERNAL, f"the model server rejected the assembled inputs: {e}"
            ) from None
        except ScoringError as e:
            if e.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise RankingError(e.code, f"model server: {e}") from None
            code = (
                grpc.StatusCode.UNAVAILABLE
                if e.code in _MODEL_SERVER_DOWN
                else grpc.StatusCode.INTERNAL
            )
            raise RankingError(code, f"model server: {e}") from None
        if prediction.model_version and prediction.model_version != model.version:
            self._refresh_now.set()  # TF Serving moved on: load the new version's files
        # TF Serving's batching may pad the candidates axis: keep this request's columns.
        scores = prediction.outputs[SCORES_OUTPUT][0, : len(ranked_items)].astype(np.float32)
        order = np.argsort(-scores, kind="stable")[:k]  # ties keep the candidates' order
        return RankResult(
            items=[(ranked_items[i], float(scores[i])) for i in order],
            user_known=bool(events),
            history_length=int(assembled.history_length),
            retrieved=retrieved,
            model_version=int(prediction.model_version or model.version),
            task=task,
            request_id=uuid.uuid4().hex,
        )

    def record_event(
        self,
        user_id: str,
        item_id: str,
        type: str,
        timestamp: Optional[int] = None,
        query: Optional[str] = None,
        search_session_id: Optional[str] = None,
    ) -> RecordedEvent:
        """Append an impression (type "impression") or a click ("click") to the user's
        history; the next rank() sees it. With a query it is a row of a search session
        (`search_session_id`, e.g. the rank response's request_id, groups the session's
        rows); without, a rec row. timestamp: milliseconds, default now."""
        user_id = _check_user_id(user_id)
        if not isinstance(item_id, str) or not item_id.strip():
            raise _invalid("item_id", "required: a non-empty string")
        item_id = _check_id_field("item_id", item_id.strip())
        if type not in EVENT_TYPES:
            raise _invalid("type", f"must be one of {sorted(EVENT_TYPES)}, got {type!r}")
        if timestamp is None:
            timestamp = int(time.time() * 1000)
        elif (
            isinstance(timestamp, bool)
            or not isinstance(timestamp, int)
            or not 0 <= timestamp < 2**63
        ):
            raise _invalid(
                "timestamp", f"must be a non-negative integer (ms), got " f"{timestamp!r}"
            )
        if query is None:
            if search_session_id:
                raise _invalid("search_session_id", "only for a search event (with query)")
            event = Event(
                user_id=user_id,
                timestamp=timestamp,
                scenario=SCENARIO_REC,
                item_id=item_id,
                click=EVENT_TYPES[type],
            )
        else:
            if not isinstance(query, str) or not query.strip():
                raise _invalid("query", "must be a non-empty string (or left out)")
            if len(query) > MAX_QUERY_CHARS:
                raise _invalid("query", f"{len(query)} characters; at most {MAX_QUERY_CHARS}")
            if not isinstance(search_session_id, str) or not search_session_id.strip():
                raise _invalid(
                    "search_session_id",
                    "required with query: the search session the event belongs "
                    "to (the rank response's request_id)",
                )
            session = _check_id_field("search_session_id", search_session_id.strip())
            model = self._model
            try:
                tokens = tuple(
                    model.assembler.query_tokens(query) if model else tokenize_query(query)
                )
            except ValueError as e:  # QueryTooLong too
                raise _invalid("query", str(e)) from None
            event = Event(
                user_id=user_id,
                timestamp=timestamp,
                scenario=SCENARIO_SEARCH,
                item_id=item_id,
                click=EVENT_TYPES[type],
                search_session_id=session,
                query_tokens=tokens,
            )
        try:
            stored = self.store.append(event)
        except StoreUnavailable as e:
            raise RankingError(grpc.StatusCode.UNAVAILABLE, f"history store: {e}") from None
        model = self._model
        return RecordedEvent(stored, known_item=bool(model and item_id in model.items))

    def health(self, timeout_seconds: float = 1.0) -> Health:
        """Readiness: the store answers a ping, TF Serving answers (and its served version's
        files are loaded: a new version is loaded here)."""
        checks = {}
        try:
            self.store.ping()
            checks["store"] = "ok"
        except StoreUnavailable as e:
            checks["store"] = f"unavailable: {e}"
        model = self.refresh_model(timeout_seconds)
        problem = self._model_problem
        checks["model_server"] = problem if problem.startswith("model server") else "ok"
        checks["metadata"] = "ok" if model is not None and not problem else problem or "not loaded"
        if model is not None:
            checks["retrieval"] = (
                "ok"
                if model.retriever
                else f"failed: {model.retriever_problem}"
                if model.retriever_problem
                else "no index in this version"
            )
        ready = all(checks[name] == "ok" for name in ("store", "model_server", "metadata"))
        return Health(ready=ready, checks=checks, model_version=model.version if model else 0)


def _check_id_field(field: str, value: str) -> str:
    try:
        return check_id(field, value)
    except RowError as e:
        raise _invalid(field, e.detail) from None


def _check_user_id(user_id: Any) -> str:
    if not isinstance(user_id, str) or not user_id.strip():
        raise _invalid("user_id", "required: a non-empty string")
    return _check_id_field("user_id", user_id.strip())


def _check_candidates(candidates: Any, max_candidates: int) -> List[str]:
    """[] for None / empty (retrieval chooses), else the ids, checked."""
    if candidates is None:
        return []
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
        raise _invalid("candidates", "must be a list of item ids")
    if len(candidates) > max_candidates:
        raise _invalid("candidates", f"{len(candidates)} given; at most {max_candidates}")
    seen = set()
    for index, item in enumerate(candidates):
        if not isinstance(item, str) or not item:
            raise _invalid("candidates", f"entry {index} ({item!r}) is not a non-empty string")
        if item in seen:
            raise _invalid("candidates", f"item {item!r} is given twice")
        seen.add(item)
    return list(candidates)


# ------------------------------------------------------------------------------ HTTP/JSON

_RANK_FIELDS = {"user_id", "query", "candidates", "k", "deadline_ms"}
_EVENT_FIELDS = {"user_id", "item_id", "type", "timestamp", "query", "search_session_id"}


def _json_fields(body: Any, allowed: set, required: Sequence[str]) -> Dict[str, Any]:
    if not isinstance(body, dict):
        raise _invalid("body", "must be a JSON object")
    extra = sorted(set(body) - allowed)
    if extra:  # a misspelt "candidate" must not silently mean "retrieve"
        raise _invalid(extra[0], f"unknown field; the fields are {sorted(allowed)}")
    for name in required:
        if body.get(name) is None:
            raise _invalid(name, "required")
    return body


def _deadline_ms(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _invalid("deadline_ms", f"must be a positive number, got {value!r}")
    return value / 1000


def rank_json(
    service: RankingService, body: Any, received: Optional[float] = None
) -> Dict[str, Any]:
    """POST /v1/rank: {user_id, query?, candidates?, k?, deadline_ms?} -> RankResult JSON."""
    fields = _json_fields(body, _RANK_FIELDS, ["user_id"])
    return service.rank(
        fields["user_id"],
        query=fields.get("query"),
        candidates=fields.get("candidates"),
        k=fields.get("k", DEFAULT_K),
        deadline_seconds=_deadline_ms(fields.get("deadline_ms")),
        received=received,
    ).to_json()


def event_json(
    service: RankingService, body: Any, received: Optional[float] = None
) -> Dict[str, Any]:
    """POST /v1/events: {user_id, item_id, type, timestamp?, query?, search_session_id?}."""
    fields = _json_fields(body, _EVENT_FIELDS, ["user_id", "item_id", "type"])
    return service.record_event(
        fields["user_id"],
        fields["item_id"],
        fields["type"],
        timestamp=fields.get("timestamp"),
        query=fields.get("query"),
        search_session_id=fields.get("search_session_id"),
    ).to_json()


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection per client
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls on small responses
    server_version = "unisar-ranking/1"
    server: "_HttpServer"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        log.debug("%s " + format, self.address_string(), *args)

    def _reply(self, status: int, body: Dict[str, Any], close: bool = False) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, error: RankingError, close: bool = False) -> None:
        self._reply(HTTP_STATUS.get(error.code, 500), error.to_json(), close)

    def do_GET(self):  # noqa: N802 - http.server's naming
        service = self.server.service
        if self.path == "/healthz":
            self._reply(200, {"live": True})
        elif self.path == "/readyz":
            health = service.health()
            self._reply(200 if health.ready else 503, health.to_json())
        else:
            self._error(
                RankingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"no such path {self.path!r}; GET /healthz or /readyz",
                )
            )

    def do_POST(self):  # noqa: N802
        received = time.monotonic()
        handlers = {"/v1/rank": rank_json, "/v1/events": event_json}
        handler = handlers.get(self.path)
        if handler is None:
            self._error(
                RankingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"no such path {self.path!r}; POST {sorted(handlers)}",
                ),
                close=True,
            )
            return
        try:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise _invalid("body", "a JSON body with a Content-Length header is required")
            if int(length) > MAX_BODY_BYTES:
                raise RankingError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"body of {length} bytes; at most {MAX_BODY_BYTES}",
                    "body",
                )
            raw = self.rfile.read(int(length))
        except RankingError as e:
            self._error(e, close=True)  # the unread body would be read as the next request
            return
        try:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise _invalid("body", f"not JSON: {e}") from None
            # The work runs on the server's fixed pool, not on this connection's thread:
            # bounded concurrency towards TF Serving, and thread-bound resources (the SQLite
            # store's per-thread connection) stay as many as the pool's threads however many
            # connections come and go. Time waiting there counts against the deadline.
            self._reply(
                200, self.server.pool.submit(handler, self.server.service, body, received).result()
            )
        except RankingError as e:
            self._error(e)
        except Exception as e:  # keep serving; the log has the traceback
            log.exception("%s failed", self.path)
            self._error(RankingError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"))

    def do_PUT(self):  # noqa: N802
        self._error(RankingError(grpc.StatusCode.UNIMPLEMENTED, "use POST or GET"), close=True)

    do_DELETE = do_PATCH = do_PUT


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the listen backlog: bursts of new connections wait, not fail
    service: RankingService
    pool: futures.ThreadPoolExecutor


# ----------------------------------------------------------------------------------- gRPC


class _GrpcServicer(pb_grpc.RankingServiceServicer):
    def __init__(self, service: RankingService):
        self._service = service

    def _call(self, context, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except RankingError as e:
            context.abort(e.code, e.detail)
        except Exception as e:
            log.exception("gRPC %s failed", function.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    def Rank(self, request, context):  # noqa: N802 - gRPC's naming
        deadline = self._service.deadline_seconds
        remaining = context.time_remaining()
        if remaining is not None:
            deadline = min(deadline, remaining)
        if request.deadline_ms < 0:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"deadline_ms: must be positive, got {request.deadline_ms}",
            )
        if request.deadline_ms:
            deadline = min(deadline, request.deadline_ms / 1000)
        result = self._call(
            context,
            self._service.rank,
            request.user_id,
            query=request.query if request.HasField("query") else None,
            candidates=list(request.candidates) or None,
            k=request.k or DEFAULT_K,
            deadline_seconds=max(deadline, 1e-6),
        )
        return result.to_proto()

    def RecordEvent(self, request, context):  # noqa: N802
        result = self._call(
            context,
            self._service.record_event,
            request.user_id,
            request.item_id,
            request.type,
            timestamp=request.timestamp or None,
            query=request.query if request.HasField("query") else None,
            search_session_id=request.search_session_id or None,
        )
        return result.to_proto()

    def Health(self, request, context):  # noqa: N802
        health = self._service.health()
        return pb.HealthResponse(
            live=True, ready=health.ready, checks=health.checks, model_version=health.model_version
        )


# -------------------------------------------------------------------------------- servers


class RankingServer:
    """The HTTP and gRPC servers around one RankingService. start() binds (port 0 = any
    free port) and returns (http_port, grpc_port); a port of None is not served. Requests
    run on `workers` threads per protocol (HTTP connections each have a thread that only
    reads and writes)."""

    def __init__(
        self,
        service: RankingService,
        host: str = "127.0.0.1",
        http_port: Optional[int] = 8080,
        grpc_port: Optional[int] = 8081,
        workers: int = 8,
    ):
        self.service = service
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.workers = workers
        self._pool: Optional[futures.ThreadPoolExecutor] = None
        self._http: Optional[_HttpServer] = None
        self._http_thread: Optional[threading.Thread] = None
        self._grpc: Optional[grpc.Server] = None

    def start(self) -> Tuple[Optional[int], Optional[int]]:
        if self.http_port is not None:
            self._http = _HttpServer((self.host, self.http_port), _HttpHandler)
            self._http.service = self.service
            self._pool = futures.ThreadPoolExecutor(
                max_workers=self.workers, thread_name_prefix="ranking-http"
            )
            self._http.pool = self._pool
            self.http_port = self._http.server_address[1]
            self._http_thread = threading.Thread(
                target=self._http.serve_forever, name="ranking-http", daemon=True
            )
            self._http_thread.start()
        if self.grpc_port is not None:
            self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers))
            pb_grpc.add_RankingServiceServicer_to_server(_GrpcServicer(self.service), self._grpc)
            host = f"[{self.host}]" if ":" in self.host else self.host
            try:
                bound = self._grpc.add_insecure_port(f"{host}:{self.grpc_port}")
            except RuntimeError:  # newer gRPC raises instead of returning 0
                bound = 0
            if not bound:
                self.stop()
                raise OSError(f"cannot bind gRPC {host}:{self.grpc_port}")
            self.grpc_port = bound
            self._grpc.start()
        return self.http_port, self.grpc_port

    def stop(self, grace: float = 1.0) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "RankingServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.ranking_service",
        description="The UniSAR ranking service: HTTP/JSON and gRPC in front of TF Serving "
        "and the history store (docs/online.md#ranking-service).",
    )
    parser.add_argument(
        "--store", required=True, help="history store URL: sqlite:///path.db or redis://host:6379/0"
    )
    parser.add_argument(
        "--model_server",
        default="127.0.0.1:8500",
        help="TF Serving's gRPC host:port (or the stand-in's)",
    )
    parser.add_argument(
        "--model_base_path",
        required=True,
        help="the directory TF Serving serves (<serving_dir>/unisar): the "
        "served version's assets.extra/online files are read from it",
    )
    parser.add_argument("--model_name", default=MODEL_NAME)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: local only)"
    )
    parser.add_argument(
        "--http_port", type=int, default=8080, help="0 = any free port, " "-1 = no HTTP server"
    )
    parser.add_argument(
        "--grpc_port", type=int, default=8081, help="0 = any free port, " "-1 = no gRPC server"
    )
    parser.add_argument(
        "--deadline_ms",
        type=float,
        default=DEFAULT_DEADLINE_MS,
        help="every request's deadline (a request may ask for less)",
    )
    parser.add_argument("--max_k", type=int, default=DEFAULT_MAX_K)
    parser.add_argument("--max_candidates", type=int, default=DEFAULT_MAX_CANDIDATES)
    parser.add_argument(
        "--retrieve_count",
        type=int,
        default=DEFAULT_RETRIEVE_COUNT,
        help="candidates the retrieval stage gives when a request has none",
    )
    parser.add_argument(
        "--max_query_words",
        type=int,
        default=0,
        help="longer queries get 400 / INVALID_ARGUMENT (0 = the model's "
        "query_len, the words it reads)",
    )
    parser.add_argument(
        "--metadata_poll_seconds",
        type=float,
        default=10.0,
        help="how often to ask TF Serving which version it serves",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=8,
        help="threads that run requests, per protocol (HTTP, gRPC)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="retries of a model server call that got UNAVAILABLE (within " "the deadline)",
    )
    parser.add_argument("--log_level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")

    try:
        store = open_store(args.store)
    except (StoreUnavailable, ValueError, OSError) as e:
        print(f"error: --store {args.store}: {e}", file=sys.stderr)
        return 2
    scorer = UniSARClient(
        args.model_server,
        model_name=args.model_name,
        timeout_seconds=args.deadline_ms / 1000,
        retries=args.retries,
        backoff_seconds=0.02,
    )
    service = RankingService(
        store,
        scorer,
        args.model_base_path,
        deadline_seconds=args.deadline_ms / 1000,
        max_k=args.max_k,
        max_candidates=args.max_candidates,
        retrieve_count=args.retrieve_count,
        max_query_words=args.max_query_words,
        metadata_poll_seconds=args.metadata_poll_seconds,
    )
    service.start()
    server = RankingServer(
        service,
        host=args.host,
        http_port=None if args.http_port < 0 else args.http_port,
        grpc_port=None if args.grpc_port < 0 else args.grpc_port,
        workers=args.workers,
    )
    try:
        http_port, grpc_port = server.start()
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    model = service.model
    # One line with the bound ports, for scripts (serving/benchmark_online.py reads it).
    print(
        f"ranking service: http {args.host}:{http_port} grpc {args.host}:{grpc_port} "
        f"model version {model.version if model else 'none yet'}",
        flush=True,
    )
    while not done.wait(1.0):  # a timed wait keeps the main thread responsive to signals
        pass
    server.stop()
    service.close()
    scorer.close()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
