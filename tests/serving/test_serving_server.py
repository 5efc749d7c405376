"""The TF Serving stand-in (serving/server.py) against a tiny hand-made SavedModel.

The toy model takes exactly the UniSAR signature contract (docs/serving.md) and scores
  recommend: score[b, c] = value(candidate) + n_rec + 10 * n_search + bias
  search:    recommend score + 100 * n_clicked + 1000 * words(query)
where value() comes from a vocabulary asset through a StaticHashTable (item_a 1, item_b 2,
item_c 3, anything else 0), n_rec / n_search count history entries within the length inputs
and n_clicked the non-empty clicked ids of those searches. Negative timestamps fail an
in-graph assertion (a TF error raised by session.run).
"""

import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from helpers import REPO
from helpers.serving import REC_SPECS, SEARCH_SPECS, _spec, save_toy_model
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from serving import server as server_lib


# One user's request: histories as the client builds them (padded, explicit lengths). The
# padded rec slot and the padded search slot lie beyond the lengths and must not count.
def example_inputs(query=None):
    inputs = {
        "user_id": np.array([b"u1"], dtype=object),
        "candidate_item_ids": np.array([[b"item_c", b"item_a", b"unknown"]], dtype=object),
        "rec_history_item_ids": np.array([[b"item_a", b"item_b", b""]], dtype=object),
        "rec_history_timestamps": np.array([[10, 20, 0]], dtype=np.int64),
        "rec_history_length": np.array([2], dtype=np.int64),
        "search_history_queries": np.array([[b"red shoes", b""]], dtype=object),
        "search_history_clicked_item_ids": np.array(
            [[[b"item_a", b"item_c"], [b"", b""]]], dtype=object
        ),
        "search_history_timestamps": np.array([[15, 0]], dtype=np.int64),
        "search_history_length": np.array([1], dtype=np.int64),
    }
    if query is not None:
        inputs["query"] = np.array([query.encode()], dtype=object)
    return inputs


# value + n_rec (2) + 10 * n_search (1): item_c 3, item_a 1, unknown 0 (out of vocabulary).
EXPECTED_RECOMMEND = [15.0, 13.0, 12.0]
# + 100 * n_clicked (2) + 1000 * words("red running shoes") (3)
EXPECTED_SEARCH = [3215.0, 3213.0, 3212.0]


def make_request(signature, inputs, model_name="unisar", version=None, output_filter=()):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    return request


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models") / "unisar")
    save_toy_model(os.path.join(base, "1"))
    server = server_lib.StandInServer(base, port=0)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield (
        server,
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )
    channel.close()
    server.stop()


@pytest.mark.slow
def test_predict_returns_hand_computed_scores_for_both_signatures(served):
    _, stub, _ = served
    response = stub.Predict(make_request("recommend", example_inputs()), timeout=10)
    scores = tf.make_ndarray(response.outputs["scores"])
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, [EXPECTED_RECOMMEND])
    assert (
        response.model_spec.name,
        response.model_spec.version.value,
        response.model_spec.signature_name,
    ) == ("unisar", 1, "recommend")

    response = stub.Predict(
        make_request("search", example_inputs("red running shoes"), version=1), timeout=10
    )
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]), [EXPECTED_SEARCH])
    assert response.model_spec.signature_name == "search"


@pytest.mark.slow
def test_empty_signature_name_means_serving_default(served):
    _, stub, _ = served
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "candidate_item_ids": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[b"item_b", b"nope"])
                )
            }
        )
    )
    inputs = {"examples": np.array([example.SerializeToString()], dtype=object)}
    response = stub.Predict(make_request("", inputs), timeout=10)
    assert response.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]), [[2.0, 0.0]])


@pytest.mark.slow
def test_output_filter(served):
    _, stub, _ = served
    response = stub.Predict(
        make_request("recommend", example_inputs(), output_filter=["scores"]), timeout=10
    )
    assert list(response.outputs) == ["scores"]
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(
            make_request("recommend", example_inputs(), output_filter=["logits"]), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "logits" in info.value.details()


@pytest.mark.slow
def test_metadata_lists_signatures_with_contract_inputs(served):
    _, stub, _ = served
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "unisar"
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("unisar", 1)
    assert response.metadata["signature_def"].type_url.endswith(
        "tensorflow.serving.SignatureDefMap"
    )
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    signatures = signature_map.signature_def
    assert {"recommend", "search", "serving_default"} <= set(signatures)
    rec_inputs = {
        k: (tf.dtypes.as_dtype(v.dtype).name, len(v.tensor_shape.dim))
        for k, v in signatures["recommend"].inputs.items()
    }
    assert rec_inputs == {
        "user_id": ("string", 1),
        "candidate_item_ids": ("string", 2),
        "rec_history_item_ids": ("string", 2),
        "rec_history_timestamps": ("int64", 2),
        "rec_history_length": ("int64", 1),
        "search_history_queries": ("string", 2),
        "search_history_clicked_item_ids": ("string", 3),
        "search_history_timestamps": ("int64", 2),
        "search_history_length": ("int64", 1),
    }
    assert set(signatures["search"].inputs) == set(rec_inputs) | {"query"}
    assert tf.dtypes.as_dtype(signatures["search"].outputs["scores"].dtype) == tf.float32

    request.metadata_field[:] = ["nonsense"]
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelMetadata(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.slow
def test_model_status_available(served):
    _, _, model_stub = served
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "unisar"
    response = model_stub.GetModelStatus(request, timeout=10)
    [status] = response.model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    request.model_spec.version.value = 2
    with pytest.raises(grpc.RpcError) as info:
        model_stub.GetModelStatus(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def _bad_requests():
    def changed(**changes):
        inputs = example_inputs()
        for name, value in changes.items():
            if value is None:
                del inputs[name]
            else:
                inputs[name] = value
        return make_request("recommend", inputs)

    wrong_version = make_request("recommend", example_inputs(), version=7)
    return {
        "wrong dtype": (
            changed(rec_history_length=np.array([2], dtype=np.int32)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "rec_history_length",
        ),
        "wrong rank": (
            changed(candidate_item_ids=np.array([b"item_a"], dtype=object)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "candidate_item_ids",
        ),
        "missing input": (
            changed(search_history_length=None),
            grpc.StatusCode.INVALID_ARGUMENT,
            "search_history_length",
        ),
        "extra input": (
            changed(bogus=np.array([1], dtype=np.int64)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "bogus",
        ),
        # History lengths that differ across inputs: TF's own error from session.run.
        "shapes disagree": (
            changed(rec_history_timestamps=np.array([[10, 20]], np.int64)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Incompatible shapes",
        ),
        "in-graph assertion": (
            changed(search_history_timestamps=np.array([[-5, 0]], np.int64)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "search_history_timestamps",
        ),
        # TF Serving answers FAILED_PRECONDITION for a signature the model does not have.
        "unknown signature": (
            make_request("rank_everything", example_inputs()),
            grpc.StatusCode.FAILED_PRECONDITION,
            "rank_everything",
        ),
        "init op is no signature": (
            make_request("__saved_model_init_op", {}),
            grpc.StatusCode.FAILED_PRECONDITION,
            "__saved_model_init_op",
        ),
        "wrong model name": (
            make_request("recommend", example_inputs(), model_name="other"),
            grpc.StatusCode.NOT_FOUND,
            "other",
        ),
        "wrong version": (wrong_version, grpc.StatusCode.NOT_FOUND, "7"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", list(_bad_requests()))
def test_malformed_request_is_rejected_and_server_keeps_serving(served, case):
    _, stub, _ = served
    request, code, named = _bad_requests()[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=10)
    assert info.value.code() == code
    assert named in info.value.details()
    good = stub.Predict(make_request("recommend", example_inputs()), timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(good.outputs["scores"]), [EXPECTED_RECOMMEND])


@pytest.mark.slow
def test_other_rpcs_are_unimplemented(served):
    _, stub, _ = served
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "unisar"
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_parse_input_checks_fixed_dimensions():
    info = meta_graph_pb2.TensorInfo(name="x:0", dtype=tf.int64.as_datatype_enum)
    info.tensor_shape.dim.add(size=-1)
    info.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(
        server_lib.parse_input("x", tf.make_tensor_proto(np.ones((2, 3), np.int64)), info),
        np.ones((2, 3)),
    )
    with pytest.raises(server_lib.RpcError, match=r"'x'.*\(None, 3\).*\(2, 4\)"):
        server_lib.parse_input("x", tf.make_tensor_proto(np.ones((2, 4), np.int64)), info)


def test_latest_numeric_version_is_served(tmp_path):
    source = save_toy_model(str(tmp_path / "source"))
    base = tmp_path / "unisar"
    for version in ["1", "3", "9", "10"]:
        shutil.copytree(source, base / version)
    (base / "99").mkdir()  # no saved_model.pb yet (export still being written)
    (base / "tmp-11").mkdir()  # not a version
    assert server_lib.list_versions(str(base)) == [1, 3, 9, 10]
    shutil.rmtree(base / "9")
    shutil.rmtree(base / "10")
    with server_lib.StandInServer(str(base), port=0) as server:
        assert server.version == 3


def test_poll_swaps_in_a_new_version(tmp_path):
    base = tmp_path / "unisar"
    save_toy_model(str(base / "9"))
    with server_lib.StandInServer(str(base), port=0, poll_seconds=0.1) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        first = stub.Predict(make_request("recommend", example_inputs()), timeout=10)
        assert first.model_spec.version.value == 9
        # Written under a temporary name and renamed, as an exporter should.
        save_toy_model(str(base / "tmp-10"), bias=1000.0)
        os.rename(base / "tmp-10", base / "10")
        deadline = time.time() + 20
        while server.version != 10 and time.time() < deadline:
            time.sleep(0.05)
        assert server.version == 10
        second = stub.Predict(make_request("recommend", example_inputs()), timeout=10)
        assert second.model_spec.version.value == 10
        np.testing.assert_allclose(
            tf.make_ndarray(second.outputs["scores"]), [np.add(EXPECTED_RECOMMEND, 1000.0)]
        )
        channel.close()


def test_concurrent_requests_during_swap_all_succeed(tmp_path):
    base = tmp_path / "unisar"
    save_toy_model(str(base / "1"))
    shutil.copytree(base / "1", base / "tmp")
    with server_lib.StandInServer(str(base), port=0, max_workers=4) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        errors, stop = [], threading.Event()

        def hammer():
            while not stop.is_set():
                try:
                    stub.Predict(make_request("recommend", example_inputs()), timeout=10)
                except grpc.RpcError as e:
                    errors.append(e)

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        os.rename(base / "tmp", base / "2")
        assert server.poll_once()
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join()
        channel.close()
    assert not errors
    assert server.version is None  # stopped: sessions closed


def write_warmup(export_dir, requests):
    os.makedirs(os.path.join(export_dir, "assets.extra"), exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(export_dir, server_lib.WARMUP_FILE)) as writer:
        for request in requests:
            writer.write(
                prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request)
                ).SerializeToString()
            )


def test_warmup_requests_are_replayed_and_a_failing_one_fails_the_load(tmp_path):
    base = tmp_path / "unisar"
    save_toy_model(str(base / "1"))
    write_warmup(
        str(base / "1"),
        [make_request("recommend", example_inputs()), make_request("search", example_inputs("q"))],
    )
    shutil.copytree(base / "1", base / "tmp")
    missing = example_inputs()
    del missing["rec_history_length"]
    write_warmup(str(base / "tmp"), [make_request("recommend", missing)])
    with server_lib.StandInServer(str(base), port=0) as server:
        assert server.version == 1
        os.rename(base / "tmp", base / "2")
        # Version 2 fails its warmup: not served, version 1 stays available.
        assert not server.poll_once()
        assert server.version == 1
    shutil.rmtree(base / "1")
    with pytest.raises(RuntimeError, match="warmup request 0 failed.*rec_history_length"):
        server_lib.StandInServer(str(base), port=0).start()


@pytest.mark.slow  # a subprocess that imports TensorFlow
def test_default_bind_is_localhost(tmp_path):
    assert server_lib.StandInServer(str(tmp_path)).host == "127.0.0.1"
    base = tmp_path / "unisar"
    save_toy_model(str(base / "1"))
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--model_base_path", str(base), "--port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "version 1 at 127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1])
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(make_request("recommend", example_inputs()), timeout=10)
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs["scores"]), [EXPECTED_RECOMMEND]
        )
        channel.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_missing_model_fails_to_start(tmp_path):
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        server_lib.StandInServer(str(tmp_path / "nothing"), port=0).start()


# --- bad requests (issue 15) -----------------------------------------------------------------


def batch_of_two(query=None):
    """example_inputs for two identical users: B = 2."""
    return {name: np.concatenate([value, value]) for name, value in example_inputs(query).items()}


def assert_still_serving(stub):
    good = stub.Predict(make_request("recommend", example_inputs()), timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(good.outputs["scores"]), [EXPECTED_RECOMMEND])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["query", "rec_history_length", "user_id"])
def test_inconsistent_batch_sizes_are_rejected_not_broadcast(served, name):
    """Issue 15 item 7: a (1,) input next to B = 2 ones was broadcast over the batch (row 0's
    value applied to every row) and answered OK; TF Serving's batching refuses it."""
    _, stub, _ = served
    inputs = batch_of_two("red running shoes")
    response = stub.Predict(make_request("search", inputs), timeout=10)
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["scores"]), [EXPECTED_SEARCH, EXPECTED_SEARCH]
    )
    inputs[name] = inputs[name][:1]
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(make_request("search", inputs), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{name} 1" in info.value.details() and "0th-dimension" in info.value.details()
    assert_still_serving(stub)


@pytest.mark.slow
def test_a_tiny_request_declaring_a_huge_tensor_is_refused_before_allocating(served):
    """Issue 15 item 8: ~60 bytes declaring (1, 100000000) int64 used to be expanded to
    800 MB (twice) before anything said no: +1.8 GB and 7 s."""
    _, stub, _ = served
    request = make_request("recommend", example_inputs())
    huge = request.inputs["rec_history_timestamps"]
    huge.Clear()
    huge.dtype = tf.int64.as_datatype_enum
    huge.tensor_shape.dim.add(size=1)
    huge.tensor_shape.dim.add(size=100_000_000)
    huge.int64_val.append(5)
    assert huge.ByteSize() < 64
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB
    start = time.time()
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rec_history_timestamps" in info.value.details()
    assert "--max_request_elements" in info.value.details()
    assert time.time() - start < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100_000
    assert_still_serving(stub)


def test_request_caps_are_configurable(tmp_path):
    """max_request_elements and max_request_bytes (expanded strings too, and the message
    size gRPC checks); each answer is RESOURCE_EXHAUSTED and the server keeps serving."""
    base = tmp_path / "unisar"
    save_toy_model(str(base / "1"))
    with server_lib.StandInServer(
        str(base), port=0, max_request_bytes=4096, max_request_elements=200
    ) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert_still_serving(stub)  # 20 elements, a few hundred bytes
        cases = {
            "elements": dict(candidate_item_ids=np.array([[b"item_a"] * 300], dtype=object)),
            # 3,000 bytes sent once, repeated to fill (1, 2): 6,000 bytes once expanded.
            "expanded bytes": dict(candidate_item_ids=np.array([[b"x" * 3000]], dtype=object)),
            "message size": dict(candidate_item_ids=np.array([[b"x" * 5000]], dtype=object)),
        }
        for case, change in cases.items():
            request = make_request("recommend", dict(example_inputs(), **change))
            if case == "expanded bytes":
                request.inputs["candidate_item_ids"].tensor_shape.dim[1].size = 2
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, case
            assert_still_serving(stub)
        channel.close()


def test_a_restart_serves_the_newest_version_that_loads(tmp_path):
    """A corrupt newest version used to keep the server from starting; TF Serving serves
    what loads. The corrupt version is not retried by the poller either."""
    base = tmp_path / "unisar"
    save_toy_model(str(base / "1"))
    save_toy_model(str(base / "2"), bias=1000.0)
    (base / "3").mkdir()
    (base / "3" / "saved_model.pb").write_bytes(b"\x00 not a SavedModel")
    with server_lib.StandInServer(str(base), port=0, poll_seconds=0) as server:
        assert server.version == 2
        assert not server.poll_once()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(make_request("recommend", example_inputs()), timeout=10)
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs["scores"]), [np.add(EXPECTED_RECOMMEND, 1000.0)]
        )
        channel.close()


@pytest.mark.slow
@pytest.mark.parametrize("garbage", [b"\xff\xfe\x00garbage", b"hello", bytes(range(256))])
def test_garbage_bytes_to_serving_default_get_a_clear_invalid_argument(served, garbage):
    """They used to get "'utf-8' codec can't decode byte ..." (TensorFlow's own error
    message quotes the bytes)."""
    _, stub, _ = served
    start = time.time()
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(make_request("", {"examples": np.array([garbage], dtype=object)}), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'examples': element 0" in info.value.details()
    assert "not a serialized tf.train.Example" in info.value.details()
    assert time.time() - start < 1.0
    assert_still_serving(stub)


# Property: whatever a PredictRequest holds, the answer is OK or one of these, fast, and the
# server answers the next good request.
EXPECTED_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_EXAMPLES = int(os.environ.get("BAD_INPUT_EXAMPLES", "0"))  # see tests/pipeline/test_bad_input.py
PREDICT_SETTINGS = settings(
    max_examples=_EXAMPLES or 100,
    derandomize=not _EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
SIGNATURE_INPUTS = {
    "recommend": {spec.name: spec for spec in REC_SPECS},
    "search": {spec.name: spec for spec in SEARCH_SPECS},
    "serving_default": {"examples": _spec([None], tf.string, "examples")},
}
DTYPES = [
    types_pb2.DT_STRING,
    types_pb2.DT_INT64,
    types_pb2.DT_INT32,
    types_pb2.DT_FLOAT,
    types_pb2.DT_INVALID,
    types_pb2.DT_RESOURCE,
    types_pb2.DT_VARIANT,
    999,
]
DIMS = st.one_of(st.integers(0, 3), st.integers(-2, 2**62))


@st.composite
def any_tensor(draw):
    """A TensorProto with any dtype, any dims (negative, huge) and any content."""
    tensor = tensor_pb2.TensorProto(dtype=draw(st.sampled_from(DTYPES)))
    for size in draw(st.lists(DIMS, max_size=4)):
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_shape.unknown_rank = draw(st.booleans()) and draw(st.booleans())
    content = draw(st.sampled_from(["none", "bytes", "strings", "int64", "float"]))
    if content == "bytes":
        tensor.tensor_content = draw(st.binary(max_size=64))
    elif content == "strings":
        tensor.string_val.extend(draw(st.lists(st.binary(max_size=20), max_size=6)))
    elif content == "int64":
        tensor.int64_val.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6)))
    elif content == "float":
        tensor.float_val.extend(draw(st.lists(st.floats(width=32), max_size=6)))
    return tensor


@st.composite
def plausible_tensor(draw, spec, batch):
    """The signature's dtype and rank with small random sizes (mostly the request's batch
    size first) and random values (bytes that need not be UTF-8 nor tf.Examples, negative
    ints), or now and then any tensor at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(any_tensor())
    shape = [draw(st.integers(0, 3)) for _ in spec.shape]
    if shape and draw(st.integers(0, 9)):
        shape[0] = batch
    count = int(np.prod(shape))
    if spec.dtype == tf.string:
        if spec.name == "examples" and draw(st.booleans()):
            values = [
                tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            draw(
                                st.sampled_from(["candidate_item_ids", "other"])
                            ): tf.train.Feature(
                                bytes_list=tf.train.BytesList(
                                    value=draw(
                                        st.lists(
                                            st.sampled_from([b"item_a", b"item_c", b"\xff"]),
                                            max_size=3,
                                        )
                                    )
                                )
                            )
                        }
                    )
                ).SerializeToString()
                for _ in range(count)
            ]
        else:
            values = draw(st.lists(st.binary(max_size=12), min_size=count, max_size=count))
        array = np.array(values, dtype=object).reshape(shape)
    else:
        values = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=count, max_size=count))
        array = np.array(values, dtype=np.int64).reshape(shape)
    return tf.make_tensor_proto(array, dtype=spec.dtype, shape=shape)


@st.composite
def any_request(draw):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "other" if draw(st.integers(0, 9)) == 0 else "unisar"
    if draw(st.integers(0, 19)) == 0:
        request.model_spec.version.value = draw(st.integers(0, 3))
    signature = draw(
        st.sampled_from(
            ["recommend", "search", "serving_default", "", "nope", "__saved_model_init_op"]
        )
    )
    request.model_spec.signature_name = signature
    specs = SIGNATURE_INPUTS.get(signature or "serving_default", {})
    if specs and draw(st.integers(0, 4)):  # mostly the right inputs, to reach the model
        batch = draw(st.integers(0, 3))
        for name, spec in specs.items():
            request.inputs[name].CopyFrom(draw(plausible_tensor(spec, batch)))
        if draw(st.integers(0, 4)) == 0:
            del request.inputs[draw(st.sampled_from(sorted(specs)))]
    else:
        names = st.sampled_from(sorted(set(SIGNATURE_INPUTS["search"]) | {"examples", "x"}))
        for name in draw(st.lists(names, max_size=4, unique=True)):
            request.inputs[name].CopyFrom(draw(any_tensor()))
    if draw(st.integers(0, 9)) == 0:
        request.output_filter.extend(
            draw(st.lists(st.sampled_from(["scores", "logits"]), max_size=2))
        )
    return request


@pytest.mark.slow
@PREDICT_SETTINGS
@given(request=any_request())
@example(
    request=make_request("search", dict(batch_of_two("q"), query=np.array([b"q"], dtype=object)))
)
def test_any_predict_request_gets_ok_or_a_client_error_and_the_server_keeps_serving(
    served, request
):
    _, stub, _ = served
    start = time.time()
    try:
        stub.Predict(request, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in EXPECTED_CODES, (error.code(), error.details())
    assert time.time() - start < 5.0
    assert_still_serving(stub)


# Property (issue 23 item 1): request shapes. Every input has its signature's dtype and rank and
# one value that fills whatever shape it declares (up to 15,000,000 candidates, history slots
# or clicks, text up to 128 KiB, batches up to 2^24): the answer is OK or
# RESOURCE_EXHAUSTED (INVALID_ARGUMENT when the model refuses the sizes), fast, and the server
# (in this process) never grows by more than its memory budget.
BUDGET = 32 << 20
SIZES = st.one_of(st.sampled_from([1000, 100_000, 1_000_000, 15_000_000]), st.integers(1, 1 << 24))
LONG_TEXT = st.integers(0, 1 << 16).map(lambda n: b"a " * n)


def _vm(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field))


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    """The toy model behind a server with a small memory budget, and this process's RSS and
    peak RSS when it started."""
    base = str(tmp_path_factory.mktemp("budgeted") / "unisar")
    save_toy_model(os.path.join(base, "1"))
    with server_lib.StandInServer(
        base, port=0, max_request_memory=BUDGET, max_memory=BUDGET
    ) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        yield (
            prediction_service_pb2_grpc.PredictionServiceStub(channel),
            _vm("VmRSS"),
            _vm("VmHWM"),
        )
        channel.close()


@st.composite
def declared_shape_request(draw):
    signature = draw(st.sampled_from(["recommend", "search"]))
    # Each size mostly small, now and then huge; one text now and then long.
    batch, candidates, rec, search, clicks = (
        draw(SIZES) if draw(st.integers(0, 3)) == 0 else draw(st.integers(1, 3)) for _ in range(5)
    )
    rec_times = rec if draw(st.integers(0, 9)) else draw(SIZES)  # now and then inconsistent
    dims = {
        "user_id": [batch],
        "candidate_item_ids": [batch, candidates],
        "rec_history_item_ids": [batch, rec],
        "rec_history_timestamps": [batch, rec_times],
        "rec_history_length": [batch],
        "search_history_queries": [batch, search],
        "search_history_clicked_item_ids": [batch, search, clicks],
        "search_history_timestamps": [batch, search],
        "search_history_length": [batch],
        "query": [batch],
    }
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "unisar"
    request.model_spec.signature_name = signature
    for spec in SIGNATURE_INPUTS[signature].values():
        tensor = request.inputs[spec.name]
        for size in dims[spec.name]:
            tensor.tensor_shape.dim.add(size=size)
        if spec.dtype == tf.string:
            tensor.dtype = types_pb2.DT_STRING
            tensor.string_val.append(
                draw(LONG_TEXT) if draw(st.integers(0, 19)) == 0 else draw(st.binary(max_size=8))
            )
        else:
            tensor.dtype = types_pb2.DT_INT64
            limit = {"rec_history_length": rec, "search_history_length": search}
            tensor.int64_val.append(draw(st.integers(0, min(limit.get(spec.name, 99), 3))))
    return request


@PREDICT_SETTINGS
@given(request=declared_shape_request())
def test_any_declared_shape_is_scored_or_refused_within_the_memory_budget(budgeted, request):
    stub, rss_at_start, peak_at_start = budgeted
    start = time.time()
    try:
        response = stub.Predict(request, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in {
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.INVALID_ARGUMENT,
        }, (error.code(), error.details())
    else:
        dims = request.inputs["candidate_item_ids"].tensor_shape.dim
        assert tf.make_ndarray(response.outputs["scores"]).shape == (dims[0].size, dims[1].size)
    assert time.time() - start < 5.0
    # 64 MiB for the test's own allocations (hypothesis, the response) on top of the budget.
    assert _vm("VmHWM") <= max(peak_at_start, rss_at_start + BUDGET + (64 << 20))
