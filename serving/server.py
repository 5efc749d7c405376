"""Local stand-in for TF Serving's gRPC API, for development and tests only.

Production serves the model with the official TF Serving images (docs/deployment.md). No
`tensorflow_model_server` binary can be installed on the development machines, so this
module implements the part of TF Serving's API that UniSAR clients use, with the
tensorflow-serving-api protos:

- PredictionService.Predict and PredictionService.GetModelMetadata ("signature_def"),
- ModelService.GetModelStatus;
every other RPC answers UNIMPLEMENTED.

It loads a SavedModel the way TF Serving does: the MetaGraph tagged "serve" goes into its
own graph and TF1 session (running the init op that fills lookup tables from vocabulary
assets), signature tensors are fed and fetched by the names in the SignatureDef, and the
export's warmup requests (assets.extra/tf_serving_warmup_requests) are replayed, a failing
one failing the load. A model that TF Serving would reject therefore fails here too. It
serves the highest numeric version under `<model_base_path>/<version>/saved_model.pb` that
loads, the layout TF Serving watches.

Requests are checked before anything is expanded: dtypes and shapes against the signature,
one batch size across the batched inputs, request size caps, and the memory the model will
build for them (RequestLimits; RESOURCE_EXHAUSTED past them): each version's cost per
candidate, history slot, click and text byte is measured when it loads
(serving/request_cost.py), a request whose estimate is over --max_request_memory is refused
at once, and requests run only while the estimates of those in flight fit --max_memory, so
no request, whatever shape it declares, takes the server past its bounds; every bad request
gets a status and the server keeps serving.

Usage: python -m serving.server --model_base_path out/serving/unisar [--port 8500]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import threading
import warnings
from concurrent import futures
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

# oneDNN's kernels cost more than they save on one request's small tensors: the stand-in
# scores a 100-candidate request in ~3.3 ms without them and ~5.8 ms with them (p50,
# docs/benchmarks.md). Only effective if TensorFlow is not imported yet.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf import message as message_lib  # noqa: E402
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from feature_specs.serving import EXAMPLES_SIGNATURE, WARMUP_FILE  # noqa: E402
from serving import request_cost  # noqa: E402
from serving.request_cost import (  # noqa: E402
    BudgetExhausted,
    MemoryBudget,
    SignatureCost,
    format_bytes,
)

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = EXAMPLES_SIGNATURE
# TF2 SavedModels carry their table-initialisation op as a pseudo-signature. It is listed in
# the metadata (TF Serving lists it too) but must never be run by a Predict call.
INIT_OP_SIGNATURE = "__saved_model_init_op"
_SIGNATURE_DEF_FIELD = "signature_def"
# TF Serving's cap on replayed warmup requests (WARMUP_FILE: feature_specs.serving).
_MAX_WARMUP_RECORDS = 1000


class RpcError(Exception):
    """A request that fails with a gRPC status; the server keeps serving."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# TensorFlow's error codes are numerically the gRPC status codes (both come from Google's
# canonical codes), which is how TF Serving passes session errors through unchanged.
_GRPC_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _dtype_name(enum_value: int) -> str:
    try:
        return tf.dtypes.as_dtype(enum_value).name
    except TypeError:  # DT_INVALID (an unset dtype) or a number outside the enum
        return (
            types_pb2.DataType.Name(enum_value)
            if enum_value in types_pb2.DataType.values()
            else str(enum_value)
        )


def _shape_text(dims: Sequence[int]) -> str:
    return "(" + ", ".join("None" if d == -1 else str(d) for d in dims) + ")"


# Request caps. TF Serving's one cap is gRPC's message size (2 GB); the stand-in also bounds
# what a request's tensors expand to, because a TensorProto of a few bytes may declare any
# shape, and TensorFlow fills it with copies of its last value (a 60-byte request declaring
# (1, 100000000) cost 1.8 GB and 7 s before this check), and what the model will build for
# them (a 420-byte request declaring 15,000,000 candidates: 19.6 GB, the server killed).
# All answer RESOURCE_EXHAUSTED, the code gRPC (and so TF Serving) gives a message over its
# size cap, before anything is allocated. Flags: --max_request_bytes,
# --max_request_elements, --max_request_memory, --max_memory, --memory_wait_seconds
# (docs/serving.md, "Memory limits").
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_REQUEST_ELEMENTS = 1 << 24
DEFAULT_MAX_REQUEST_MEMORY = 1 << 30
DEFAULT_MAX_MEMORY = 2 << 30
DEFAULT_MEMORY_WAIT_SECONDS = 10.0
# The input of tf.Example-parsing signatures (serving_default); checked to be tf.Examples.
EXAMPLES_INPUT = "examples"
# The C++ protobuf parser warns on a stray end-group tag in the bytes it is given; for
# check_examples that is a client's bad input, answered with INVALID_ARGUMENT, not a warning.
warnings.filterwarnings("ignore", message="Unexpected end-group tag", category=RuntimeWarning)


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """max_bytes: the serialized request (gRPC's receive cap) and the size its input tensors
    expand to (numbers: elements x item size; strings: their bytes); max_elements: elements
    of all input tensors together; max_request_memory: the estimated bytes the server will
    hold to score one request (serving.request_cost); max_memory: those estimates summed
    over the requests in flight, server-wide, which wait up to memory_wait_seconds (or their
    deadline) for room."""

    max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_elements: int = DEFAULT_MAX_REQUEST_ELEMENTS
    max_request_memory: int = DEFAULT_MAX_REQUEST_MEMORY
    max_memory: int = DEFAULT_MAX_MEMORY
    memory_wait_seconds: float = DEFAULT_MEMORY_WAIT_SECONDS

    def __post_init__(self):
        if (
            min(self.max_bytes, self.max_elements, self.max_request_memory, self.max_memory) < 1
            or self.memory_wait_seconds < 0
        ):
            raise ValueError(
                f"request limits must be >= 1 (memory_wait_seconds >= 0), " f"got {self}"
            )

    @property
    def per_request_memory(self) -> int:
        """One request may not take more than all of them together."""
        return min(self.max_request_memory, self.max_memory)


def check_input(
    alias: str, tensor: tensor_pb2.TensorProto, info: meta_graph_pb2.TensorInfo
) -> List[int]:
    """Check one request tensor's dtype and shape against the SignatureDef's TensorInfo;
    return its dimensions. Nothing is expanded.

    Raises RpcError(INVALID_ARGUMENT) naming the input on a dtype, rank or dimension mismatch
    (-1 in the signature matches any size) or a negative dimension in the request.
    """
    if tensor.dtype != info.dtype:
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input '{alias}': expected dtype {_dtype_name(info.dtype)}, "
            f"got {_dtype_name(tensor.dtype)}",
        )
    if tensor.tensor_shape.unknown_rank:
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input '{alias}': the tensor's shape is marked unknown_rank",
        )
    got = [d.size for d in tensor.tensor_shape.dim]
    if any(d < 0 for d in got):
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT, f"input '{alias}': negative dimension in shape {got}"
        )
    if not info.tensor_shape.unknown_rank:
        want = [d.size for d in info.tensor_shape.dim]
        if len(got) != len(want) or any(w not in (-1, g) for w, g in zip(want, got)):
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input '{alias}': expected shape {_shape_text(want)}, " f"got {_shape_text(got)}",
            )
    return got


def expanded_size(tensor: tensor_pb2.TensorProto, dims: Sequence[int]) -> Tuple[int, int]:
    """(elements, bytes) a checked tensor takes once expanded, computed from the proto alone."""
    elements = math.prod(dims)
    if tensor.dtype == types_pb2.DT_STRING:
        values = tensor.string_val
        given = min(len(values), elements)
        size = sum(len(values[i]) for i in range(given))
        if values and elements > given:  # the last value repeats to fill the shape
            size += (elements - given) * len(values[-1])
        return elements, size
    try:
        itemsize = tf.dtypes.as_dtype(tensor.dtype).size
    except (TypeError, ValueError):
        itemsize = 8
    return elements, elements * max(itemsize, 1)


def to_ndarray(alias: str, tensor: tensor_pb2.TensorProto) -> np.ndarray:
    """A checked tensor as a numpy array; RpcError(INVALID_ARGUMENT) if it does not parse."""
    try:
        return tf.make_ndarray(tensor)
    except Exception as e:  # malformed content, e.g. fewer values than the shape needs
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT, f"input '{alias}': cannot parse tensor: {e}"
        ) from e


def parse_input(
    alias: str,
    tensor: tensor_pb2.TensorProto,
    info: meta_graph_pb2.TensorInfo,
    limits: Optional[RequestLimits] = None,
) -> np.ndarray:
    """check_input, the size limits for this one tensor, then to_ndarray."""
    dims = check_input(alias, tensor, info)
    check_request_size({alias: (tensor, dims)}, limits or RequestLimits())
    return to_ndarray(alias, tensor)


def check_request_size(
    checked: Dict[str, Tuple[tensor_pb2.TensorProto, List[int]]], limits: RequestLimits
) -> None:
    """RpcError(RESOURCE_EXHAUSTED) when the inputs would expand past the limits."""
    elements = size = 0
    for alias, (tensor, dims) in sorted(checked.items()):
        count, nbytes = expanded_size(tensor, dims)
        elements += count
        size += nbytes
        if elements > limits.max_elements or size > limits.max_bytes:
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"input '{alias}' (shape {_shape_text(dims)}) takes the request to "
                f"{elements} elements / {size} bytes once expanded; the server "
                f"accepts {limits.max_elements} elements and {limits.max_bytes} "
                "bytes per request (--max_request_elements, --max_request_bytes)",
            )


def check_batch_sizes(
    signature_name: str,
    signature: meta_graph_pb2.SignatureDef,
    checked: Dict[str, Tuple[tensor_pb2.TensorProto, List[int]]],
) -> None:
    """RpcError(INVALID_ARGUMENT) unless every batched input (the signature's first dimension
    is -1) has the same 0th dimension. TF Serving's batching session refuses such requests;
    without this a (1,) input next to (2, ...) ones would be broadcast over the batch."""
    sizes = {}
    for alias, info in signature.inputs.items():
        shape = info.tensor_shape
        if not shape.unknown_rank and shape.dim and shape.dim[0].size == -1:
            sizes[alias] = checked[alias][1][0]
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{alias} {size}" for alias, size in sorted(sizes.items()))
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"signature '{signature_name}': input tensors must have equal 0th-"
            f"dimension (batch) size, got {listed}",
        )


def check_examples(
    alias: str, tensor: tensor_pb2.TensorProto, rows: Optional[int] = None
) -> request_cost.ExampleCounts:
    """RpcError(INVALID_ARGUMENT) naming the first element of an `examples` input that is not
    a serialized tf.train.Example (TensorFlow's own error quotes the bytes, which need not be
    text); else what the examples hold (their most values per feature), for the memory
    estimate. rows: the declared batch size (default: the values sent)."""
    parsed = []
    for index, value in enumerate(tensor.string_val):
        problem = None
        example = tf.train.Example()
        try:
            consumed = example.MergeFromString(value)
        except message_lib.DecodeError as e:
            problem = str(e)
        else:
            if consumed != len(value):  # the parser stopped at a stray end-group tag
                problem = f"parsing stops at byte {consumed}"
        if problem:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input '{alias}': element {index} ({len(value)} bytes, starting "
                f"{value[:16]!r}) is not a serialized tf.train.Example: {problem}",
            )
        counts = request_cost.count_example_values([example], 1)
        parsed.append(counts)  # keep the counts, not the parsed messages
    most: Dict[str, int] = {}
    for counts in parsed:
        for name, count in counts.most_values.items():
            most[name] = max(most.get(name, 0), count)
    return request_cost.ExampleCounts(
        len(tensor.string_val) if rows is None else rows,
        max((counts.most_candidates for counts in parsed), default=0),
        most,
    )


class LoadedModel:
    """One version of the SavedModel in its own graph and TF1 session, as TF Serving holds it."""

    def __init__(
        self,
        export_dir: str,
        version: int,
        session_config: Optional[tf.compat.v1.ConfigProto] = None,
        limits: Optional[RequestLimits] = None,
    ):
        self.export_dir = export_dir
        self.version = version
        self.limits = limits or RequestLimits()
        graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=graph, config=session_config)
        try:
            # The TF1 loader works inside an explicit graph even with TF2 eager on; it
            # restores variables and runs the init op (tables from vocabulary assets).
            with graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(
                    self.session, [tf.saved_model.SERVING], export_dir
                )
            self.signature_defs = dict(meta_graph.signature_def)
            # What each signature builds per candidate, history slot, click, text byte.
            self.costs: Dict[str, SignatureCost] = request_cost.measure_costs(
                self.session, self.signature_defs, export_dir, skip=[INIT_OP_SIGNATURE]
            )
            self._warm_up()
        except Exception:
            self.session.close()
            raise
        # Reference count of in-flight requests; a model replaced by a newer version is
        # closed only when the last request using it has finished.
        self.in_flight = 0
        self.retired = False

    def _warm_up(self) -> None:
        """Replay the export's warmup requests; like TF Serving, a failing one fails the load."""
        path = os.path.join(self.export_dir, WARMUP_FILE)
        if not os.path.exists(path):
            return
        for i, record in enumerate(tf.data.TFRecordDataset(path).take(_MAX_WARMUP_RECORDS)):
            log_entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log_entry.WhichOneof("log_type") != "predict_log":
                # TF Serving also replays Classify/Regress/...; the stand-in serves Predict only.
                log.warning(
                    "warmup record %d is a %s, skipped", i, log_entry.WhichOneof("log_type")
                )
                continue
            try:
                self.predict(log_entry.predict_log.request, "warmup")
            except RpcError as e:
                raise RuntimeError(
                    f"{path}: warmup request {i} failed: " f"{e.code.name}: {e.message}"
                ) from e

    def close(self) -> None:
        self.session.close()

    def estimate_memory(
        self,
        signature_name: str,
        signature: meta_graph_pb2.SignatureDef,
        request: predict_pb2.PredictRequest,
        checked: Dict[str, Tuple[tensor_pb2.TensorProto, List[int]]],
    ) -> request_cost.Estimate:
        """What scoring the request will hold (request_cost.Estimate: .total bytes), from its
        checked protos; checks `examples` inputs on the way (check_examples)."""
        dims, strings, elements = request_cost.request_string_bytes(checked, expanded_size)
        kind = request_cost.kind_of(signature)
        if kind == "raw":
            measures = request_cost.raw_measures(dims, strings)
            outputs = measures[request_cost.CANDIDATES]
        elif kind == "examples":
            tensor, shape = checked[EXAMPLES_INPUT]
            counts = check_examples(EXAMPLES_INPUT, tensor, shape[0] if shape else 1)
            measures = counts.measures()
            outputs = measures[request_cost.CANDIDATES]
        else:
            measures = request_cost.generic_measures(dims, strings)
            outputs = elements
        cost = self.costs.get(signature_name) or request_cost.fallback_cost(kind)
        return request_cost.Estimate(
            cost, measures, request.ByteSize(), elements, sum(strings.values()), outputs
        )

    def _memory_refusal(self, signature_name: str, estimate: request_cost.Estimate) -> RpcError:
        limits = self.limits
        cap = limits.per_request_memory
        parts = "; ".join(estimate.cost.terms(estimate.measures)) or "its base cost"
        text = (
            f"signature '{signature_name}': scoring this request would take about "
            f"{format_bytes(estimate.total)} of memory ({parts}); the server accepts "
            f"{format_bytes(cap)} per request (--max_request_memory "
            f"{limits.max_request_memory}, --max_memory {limits.max_memory})"
        )
        fit = estimate.most_candidates(cap)
        if fit is not None:
            text += (
                f": send at most about {fit:,} candidates per row with this batch and " "history"
            )
        return RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, text)

    def predict(
        self,
        request: predict_pb2.PredictRequest,
        model_name: str,
        budget: Optional[MemoryBudget] = None,
        wait_seconds: float = 0.0,
    ) -> predict_pb2.PredictResponse:
        """Score a request. The estimate of what it will take (estimate_memory) must be
        within limits.max_request_memory, and is held in `budget` (the server's) while it
        runs, waiting up to wait_seconds for room."""
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = self.signature_defs.get(signature_name)
        if signature is None or signature_name == INIT_OP_SIGNATURE:
            # FAILED_PRECONDITION and this wording are what TF Serving answers here.
            raise RpcError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{signature_name}" not found.',
            )
        missing = sorted(set(signature.inputs) - set(request.inputs))
        extra = sorted(set(request.inputs) - set(signature.inputs))
        if missing or extra:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"signature '{signature_name}': missing inputs {missing}, "
                f"unexpected inputs {extra}; expected {sorted(signature.inputs)}",
            )
        # Everything that needs only the protos first: nothing is expanded before the sizes
        # are known to be within the limits.
        checked = {
            alias: (request.inputs[alias], check_input(alias, request.inputs[alias], info))
            for alias, info in signature.inputs.items()
        }
        check_request_size(checked, self.limits)
        check_batch_sizes(signature_name, signature, checked)
        for alias, info in signature.inputs.items():
            if (
                alias == EXAMPLES_INPUT
                and info.dtype == types_pb2.DT_STRING
                and request_cost.kind_of(signature) != "examples"
            ):
                check_examples(alias, request.inputs[alias])

        aliases = list(request.output_filter) or sorted(signature.outputs)
        for alias in aliases:
            if alias not in signature.outputs:
                raise RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: '{alias}'; "
                    f"outputs are {sorted(signature.outputs)}",
                )
        if len(set(aliases)) != len(aliases):
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias in {aliases}"
            )

        estimate = self.estimate_memory(signature_name, signature, request, checked)
        if estimate.total > self.limits.per_request_memory:
            raise self._memory_refusal(signature_name, estimate)
        try:
            with (
                budget.reserve(estimate.total, wait_seconds) if budget else contextlib.nullcontext()
            ):
                return self._run(request, model_name, signature_name, signature, aliases)
        except BudgetExhausted as e:
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"signature '{signature_name}': this request needs about "
                f"{format_bytes(e.needed)} of memory and the requests in flight "
                f"hold {format_bytes(e.in_use)} of the server's "
                f"{format_bytes(e.limit)} (--max_memory {e.limit}); waited "
                f"{e.waited:.1f} s (--memory_wait_seconds, or the request's "
                "deadline). Retry later, or send smaller requests",
            ) from e

    def _run(
        self,
        request: predict_pb2.PredictRequest,
        model_name: str,
        signature_name: str,
        signature: meta_graph_pb2.SignatureDef,
        aliases: List[str],
    ) -> predict_pb2.PredictResponse:
        feeds = {
            info.name: to_ndarray(alias, request.inputs[alias])
            for alias, info in signature.inputs.items()
        }
        try:
            values = self.session.run([signature.outputs[a].name for a in aliases], feeds)
        except tf.errors.OpError as e:
            # Kept as TF's own code, as TF Serving does: bad inputs (e.g. candidate counts
            # that differ across inputs) raise INVALID_ARGUMENT; a broken model does not.
            raise RpcError(
                _GRPC_CODE_BY_NUMBER.get(e.error_code, grpc.StatusCode.UNKNOWN),
                f"signature '{signature_name}': {e.message}",
            ) from e
        except UnicodeDecodeError as e:
            # TensorFlow's error message quoted request bytes that are not UTF-8, and could
            # not be turned into a Python exception: show it with those bytes escaped.
            text = (
                e.object.decode("utf-8", "backslashreplace")
                if isinstance(e.object, bytes)
                else str(e)
            )
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT, f"signature '{signature_name}': {text[:2000]}"
            ) from e
        except (TypeError, ValueError) as e:  # rejected by the Python session before running
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT, f"signature '{signature_name}': {e}"
            ) from e

        response = predict_pb2.PredictResponse()
        response.model_spec.name = model_name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = signature_name
        for alias, value in zip(aliases, values):
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
        return response


def list_versions(model_base_path: str) -> List[int]:
    """Numeric version directories that hold a SavedModel, ascending (10 sorts after 9)."""
    if not os.path.isdir(model_base_path):
        return []
    versions = []
    for name in os.listdir(model_base_path):
        path = os.path.join(model_base_path, name)
        if name.isdigit() and (
            os.path.isfile(os.path.join(path, "saved_model.pb"))
            or os.path.isfile(os.path.join(path, "saved_model.pbtxt"))
        ):
            versions.append(int(name))
    return sorted(versions)


def _version_dir(model_base_path: str, version: int) -> str:
    # Directory names like "0003" are version 3 for TF Serving too; find the actual name.
    for name in os.listdir(model_base_path):
        if name.isdigit() and int(name) == version:
            return os.path.join(model_base_path, name)
    raise FileNotFoundError(f"version {version} not found under {model_base_path}")


class _Servicer(
    prediction_service_pb2_grpc.PredictionServiceServicer,
    model_service_pb2_grpc.ModelServiceServicer,
):
    """Predict, GetModelMetadata, GetModelStatus; the base classes answer UNIMPLEMENTED."""

    def __init__(self, server: "StandInServer"):
        self._server = server

    def Predict(self, request, context):
        try:
            with self._server.acquire(request.model_spec) as model:
                # Wait for memory no longer than the client waits for the answer.
                wait = min(
                    self._server.limits.memory_wait_seconds,
                    max(context.time_remaining() or 0.0, 0.0),
                )
                return model.predict(request, self._server.model_name, self._server.budget, wait)
        except RpcError as e:
            context.abort(e.code, e.message)

    def GetModelMetadata(self, request, context):
        try:
            fields = list(request.metadata_field)
            if fields != [_SIGNATURE_DEF_FIELD]:
                raise RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"metadata_field must be ['{_SIGNATURE_DEF_FIELD}'], " f"got {fields}",
                )
            with self._server.acquire(request.model_spec) as model:
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.name = self._server.model_name
                response.model_spec.version.value = model.version
                signature_map = get_model_metadata_pb2.SignatureDefMap()
                for name, signature in model.signature_defs.items():
                    signature_map.signature_def[name].CopyFrom(signature)
                response.metadata[_SIGNATURE_DEF_FIELD].Pack(signature_map)
                return response
        except RpcError as e:
            context.abort(e.code, e.message)

    def GetModelStatus(self, request, context):
        try:
            with self._server.acquire(request.model_spec) as model:
                response = get_model_status_pb2.GetModelStatusResponse()
                status = response.model_version_status.add()
                status.version = model.version
                status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
                return response
        except RpcError as e:
            context.abort(e.code, e.message)


class StandInServer:
    """The stand-in server: start() loads the latest version and binds; stop() shuts down.

    Usable from tests: `StandInServer(base_path, port=0).start()` returns the bound port.
    With poll_seconds > 0 a background thread loads a newer version when one appears and
    swaps it in atomically; requests already running finish on the old version.
    """

    def __init__(
        self,
        model_base_path: str,
        model_name: str = "unisar",
        host: str = "127.0.0.1",
        port: int = 8500,
        max_workers: int = 4,
        poll_seconds: float = 0.0,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_request_elements: int = DEFAULT_MAX_REQUEST_ELEMENTS,
        max_request_memory: int = DEFAULT_MAX_REQUEST_MEMORY,
        max_memory: int = DEFAULT_MAX_MEMORY,
        memory_wait_seconds: float = DEFAULT_MEMORY_WAIT_SECONDS,
    ):
        self.limits = RequestLimits(
            max_request_bytes,
            max_request_elements,
            max_request_memory,
            max_memory,
            memory_wait_seconds,
        )
        # The estimated bytes of the requests in flight, across versions.
        self.budget = MemoryBudget(self.limits.max_memory)
        self.model_base_path = model_base_path
        self.model_name = model_name
        self.host = host
        self.port = port
        self.max_workers = max_workers
        self.poll_seconds = poll_seconds
        # 0 lets TensorFlow choose, as TF Serving's --tensorflow_*_op_parallelism flags do.
        self._session_config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=intra_op_threads,
            inter_op_parallelism_threads=inter_op_threads,
        )
        self._lock = threading.Lock()
        self._model: Optional[LoadedModel] = None
        self._failed_versions = set()
        self._grpc_server: Optional[grpc.Server] = None
        self._stopping = threading.Event()
        self._poller: Optional[threading.Thread] = None

    @property
    def version(self) -> Optional[int]:
        model = self._model
        return model.version if model else None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> int:
        """Load the latest version, bind host:port (0 = any free port); return the port."""
        versions = list_versions(self.model_base_path)
        if not versions:
            raise FileNotFoundError(
                f"no version directory with a saved_model.pb under {self.model_base_path!r} "
                f"(expected <model_base_path>/<version>/saved_model.pb)"
            )
        self._model = self._load_newest_good(versions)
        self._grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_workers),
            # gRPC's default cap is 4 MB; TF Serving raises it (to 2 GB), the stand-in to
            # max_request_bytes. A bigger message gets RESOURCE_EXHAUSTED from gRPC itself.
            options=[
                ("grpc.max_receive_message_length", min(self.limits.max_bytes, 2**31 - 1)),
                ("grpc.max_send_message_length", -1),
            ],
        )
        servicer = _Servicer(self)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            servicer, self._grpc_server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, self._grpc_server)
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            bound = self._grpc_server.add_insecure_port(f"{host}:{self.port}")
        except RuntimeError as e:  # newer gRPC raises instead of returning 0
            bound = 0
            reason = str(e)
        else:
            reason = "address in use or not available"
        if not bound:
            self._model.close()
            raise OSError(f"cannot bind {host}:{self.port}: {reason}")
        self.port = bound
        self._grpc_server.start()
        if self.poll_seconds > 0:
            self._poller = threading.Thread(
                target=self._poll_loop, name="version-poller", daemon=True
            )
            self._poller.start()
        log.info("serving model %s version %d at %s", self.model_name, self.version, self.address)
        return bound

    def stop(self, grace: Optional[float] = 1.0) -> None:
        """Stop accepting requests, let running ones finish for `grace` s, close the session."""
        self._stopping.set()
        if self._poller is not None:
            self._poller.join()
        if self._grpc_server is not None:
            self._grpc_server.stop(grace).wait()
        with self._lock:
            model, self._model = self._model, None
        if model is not None:
            model.close()

    def wait(self) -> None:
        if self._grpc_server is not None:
            self._grpc_server.wait_for_termination()

    def __enter__(self) -> "StandInServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def poll_once(self) -> bool:
        """Load and swap in a newer version if one exists; True if the served version changed."""
        current = self.version
        versions = [
            v for v in list_versions(self.model_base_path) if v not in self._failed_versions
        ]
        if current is None or self._stopping.is_set() or not versions or versions[-1] <= current:
            return False
        try:
            new = self._load(versions[-1])
        except Exception:
            # Like TF Serving, keep serving the old version if the new one does not load.
            # Not retried: a broken export stays broken; push a higher version instead.
            log.exception("version %d failed to load; still serving %s", versions[-1], self.version)
            self._failed_versions.add(versions[-1])
            return False
        with self._lock:
            old, self._model = self._model, new
            old.retired = True
            close_old = old.in_flight == 0
        if close_old:
            old.close()
        log.info("now serving version %d (was %d)", new.version, old.version)
        return True

    @contextlib.contextmanager
    def acquire(self, model_spec) -> Iterator[LoadedModel]:
        """The served model for a request's ModelSpec; NOT_FOUND like TF Serving otherwise."""
        with self._lock:
            model = self._model
            if model is None or model_spec.name != self.model_name:
                raise RpcError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: Latest({model_spec.name})",
                )
            if model_spec.HasField("version") and model_spec.version.value != model.version:
                raise RpcError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: Specific({model_spec.name}, "
                    f"{model_spec.version.value}); serving version {model.version}",
                )
            if model_spec.HasField("version_label"):
                raise RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Unrecognized servable version label: "
                    f"{model_spec.version_label} (the stand-in has no labels)",
                )
            model.in_flight += 1
        try:
            yield model
        finally:
            with self._lock:
                model.in_flight -= 1
                close = model.retired and model.in_flight == 0
            if close:
                model.close()

    def _load(self, version: int) -> LoadedModel:
        export_dir = _version_dir(self.model_base_path, version)
        log.info("loading %s", export_dir)
        return LoadedModel(export_dir, version, self._session_config, self.limits)

    def _load_newest_good(self, versions: Sequence[int]) -> LoadedModel:
        """The newest version that loads, as TF Serving serves what loads: a broken newest
        export (e.g. pushed just before a restart) does not keep the server down while an
        older one is fine. Versions that fail are not retried by the poller either. If none
        loads, the newest one's error is raised."""
        errors = []
        for version in sorted(versions, reverse=True):
            try:
                return self._load(version)
            except Exception as e:
                log.exception("version %d failed to load; trying the next older version", version)
                self._failed_versions.add(version)
                errors.append(e)
        raise errors[0]

    def _poll_loop(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # e.g. the base path vanished for a moment; try next time
                log.exception("polling %s failed", self.model_base_path)


def serve(model_base_path: str, **kwargs) -> StandInServer:
    """Start a StandInServer (keyword arguments as its constructor) and return it."""
    server = StandInServer(model_base_path, **kwargs)
    server.start()
    return server


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.server",
        description="Local stand-in for TF Serving's gRPC API (development and tests; "
        "production uses TF Serving, see docs/deployment.md).",
    )
    parser.add_argument(
        "--model_base_path",
        required=True,
        help="directory holding <version>/saved_model.pb; the highest " "numeric version is served",
    )
    parser.add_argument("--model_name", default="unisar")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: local only)"
    )
    parser.add_argument("--port", type=int, default=8500, help="0 = any free port")
    parser.add_argument(
        "--poll_seconds",
        type=float,
        default=0.0,
        help="check for a newer version every N seconds (0 = never)",
    )
    parser.add_argument("--max_workers", type=int, default=4, help="gRPC handler threads")
    parser.add_argument(
        "--intra_op_threads",
        type=int,
        default=0,
        help="TF session intra-op threads (0 = TensorFlow's choice)",
    )
    parser.add_argument(
        "--inter_op_threads",
        type=int,
        default=0,
        help="TF session inter-op threads (0 = TensorFlow's choice)",
    )
    parser.add_argument(
        "--max_request_bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="largest request message, and largest size its input tensors "
        "may expand to (bigger: RESOURCE_EXHAUSTED)",
    )
    parser.add_argument(
        "--max_request_elements",
        type=int,
        default=DEFAULT_MAX_REQUEST_ELEMENTS,
        help="most tensor elements one request's inputs may declare " "(more: RESOURCE_EXHAUSTED)",
    )
    parser.add_argument(
        "--max_request_memory",
        type=int,
        default=DEFAULT_MAX_REQUEST_MEMORY,
        help="most bytes the server may hold to score one request, as "
        "estimated from its shape with the model's measured cost per "
        "candidate, history slot and text byte (more: "
        "RESOURCE_EXHAUSTED at once)",
    )
    parser.add_argument(
        "--max_memory",
        type=int,
        default=DEFAULT_MAX_MEMORY,
        help="most bytes all requests in flight may hold together (same "
        "estimates); a request waits for room, then RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--memory_wait_seconds",
        type=float,
        default=DEFAULT_MEMORY_WAIT_SECONDS,
        help="longest wait for room under --max_memory (the request's " "deadline if sooner)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    try:
        RequestLimits(
            args.max_request_bytes,
            args.max_request_elements,
            args.max_request_memory,
            args.max_memory,
            args.memory_wait_seconds,
        )
    except ValueError as e:
        parser.error(str(e))
    server = StandInServer(
        args.model_base_path,
        model_name=args.model_name,
        host=args.host,
        port=args.port,
        max_workers=args.max_workers,
        poll_seconds=args.poll_seconds,
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
        max_request_bytes=args.max_request_bytes,
        max_request_elements=args.max_request_elements,
        max_request_memory=args.max_request_memory,
        max_memory=args.max_memory,
        memory_wait_seconds=args.memory_wait_seconds,
    )
    try:
        server.start()
    except Exception as e:  # no version, version fails to load, port taken: say which
        print(f"error: {e}", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(
        f"serving model {server.model_name} version {server.version} at {server.address}",
        flush=True,
    )
    # Waiting on an Event with a timeout keeps the main thread responsive to signals.
    while not done.wait(1.0):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
