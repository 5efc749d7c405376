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
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_log_pb2,
                                     prediction_service_pb2_grpc)

from serving import server as server_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = ["item_a", "item_b", "item_c"]


def _spec(shape, dtype, name):
    return tf.TensorSpec(shape, dtype, name=name)


HISTORY_SPECS = [
    _spec([None, None], tf.string, "rec_history_item_ids"),
    _spec([None, None], tf.int64, "rec_history_timestamps"),
    _spec([None], tf.int64, "rec_history_length"),
    _spec([None, None], tf.string, "search_history_queries"),
    _spec([None, None, None], tf.string, "search_history_clicked_item_ids"),
    _spec([None, None], tf.int64, "search_history_timestamps"),
    _spec([None], tf.int64, "search_history_length"),
]
REC_SPECS = [_spec([None], tf.string, "user_id"),
             _spec([None, None], tf.string, "candidate_item_ids")] + HISTORY_SPECS
SEARCH_SPECS = REC_SPECS + [_spec([None], tf.string, "query")]


class ToyModel(tf.Module):
    def __init__(self, vocab_path, bias):
        super().__init__()
        self.vocab = tf.saved_model.Asset(vocab_path)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                self.vocab, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER),
            default_value=-1)
        self.bias = bias

    def _base(self, candidate_item_ids, rec_history_item_ids, rec_history_timestamps,
              rec_history_length, search_history_queries, search_history_clicked_item_ids,
              search_history_timestamps, search_history_length):
        checks = [tf.debugging.assert_non_negative(rec_history_timestamps,
                                                   message="rec_history_timestamps"),
                  tf.debugging.assert_non_negative(search_history_timestamps,
                                                   message="search_history_timestamps")]
        with tf.control_dependencies(checks):
            value = tf.cast(self.table.lookup(candidate_item_ids) + 1, tf.float32)

        def within(length, like):  # (B, N) mask of positions < length
            return tf.range(tf.shape(like)[1])[None, :] < tf.cast(length, tf.int32)[:, None]

        # Elementwise ops over ids and timestamps: their shapes must agree, as in UniSAR.
        rec = within(rec_history_length, rec_history_item_ids) & (
            rec_history_timestamps >= 0) & (rec_history_item_ids != "")
        search = within(search_history_length, search_history_queries) & (
            search_history_timestamps >= 0)
        clicked = (search_history_clicked_item_ids != "") & search[:, :, None]
        n_rec = tf.reduce_sum(tf.cast(rec, tf.float32), axis=1)
        n_search = tf.reduce_sum(tf.cast(search, tf.float32), axis=1)
        n_clicked = tf.reduce_sum(tf.cast(clicked, tf.float32), axis=[1, 2])
        return value + (n_rec + 10.0 * n_search + self.bias)[:, None], n_clicked

    @tf.function(input_signature=REC_SPECS)
    def recommend(self, user_id, candidate_item_ids, *history):
        scores, _ = self._base(candidate_item_ids, *history)
        return {"scores": scores}

    @tf.function(input_signature=SEARCH_SPECS)
    def search(self, user_id, candidate_item_ids, *history_and_query):
        *history, query = history_and_query
        scores, n_clicked = self._base(candidate_item_ids, *history)
        words = tf.cast(tf.strings.split(query).row_lengths(), tf.float32)
        return {"scores": scores + (100.0 * n_clicked + 1000.0 * words)[:, None]}

    @tf.function(input_signature=[_spec([None], tf.string, "examples")])
    def serving_default(self, examples):
        parsed = tf.io.parse_example(
            examples, {"candidate_item_ids": tf.io.VarLenFeature(tf.string)})
        ids = tf.sparse.to_dense(parsed["candidate_item_ids"], default_value="")
        return {"scores": tf.cast(self.table.lookup(ids) + 1, tf.float32) + self.bias}


def save_toy_model(export_dir, bias=0.0):
    """Save the toy model to export_dir (e.g. <base>/<version>) and return export_dir.

    The vocabulary file is deleted after saving, so serving must use the asset copy inside
    the SavedModel, fed to the table initializer by the loader.
    """
    vocab_dir = tempfile.mkdtemp()
    vocab_path = os.path.join(vocab_dir, "items.txt")
    with open(vocab_path, "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    module = ToyModel(vocab_path, bias)
    tf.saved_model.save(module, export_dir, signatures={
        "recommend": module.recommend, "search": module.search,
        "serving_default": module.serving_default})
    shutil.rmtree(vocab_dir)
    return export_dir


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
            [[[b"item_a", b"item_c"], [b"", b""]]], dtype=object),
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
    yield server, prediction_service_pb2_grpc.PredictionServiceStub(channel), \
        model_service_pb2_grpc.ModelServiceStub(channel)
    channel.close()
    server.stop()


def test_predict_returns_hand_computed_scores_for_both_signatures(served):
    _, stub, _ = served
    response = stub.Predict(make_request("recommend", example_inputs()), timeout=10)
    scores = tf.make_ndarray(response.outputs["scores"])
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, [EXPECTED_RECOMMEND])
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("unisar", 1, "recommend")

    response = stub.Predict(make_request("search", example_inputs("red running shoes"),
                                         version=1), timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]), [EXPECTED_SEARCH])
    assert response.model_spec.signature_name == "search"


def test_empty_signature_name_means_serving_default(served):
    _, stub, _ = served
    example = tf.train.Example(features=tf.train.Features(feature={
        "candidate_item_ids": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[b"item_b", b"nope"]))}))
    inputs = {"examples": np.array([example.SerializeToString()], dtype=object)}
    response = stub.Predict(make_request("", inputs), timeout=10)
    assert response.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]), [[2.0, 0.0]])


def test_output_filter(served):
    _, stub, _ = served
    response = stub.Predict(make_request("recommend", example_inputs(),
                                         output_filter=["scores"]), timeout=10)
    assert list(response.outputs) == ["scores"]
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(make_request("recommend", example_inputs(), output_filter=["logits"]),
                     timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "logits" in info.value.details()


def test_metadata_lists_signatures_with_contract_inputs(served):
    _, stub, _ = served
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "unisar"
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("unisar", 1)
    assert response.metadata["signature_def"].type_url.endswith(
        "tensorflow.serving.SignatureDefMap")
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    signatures = signature_map.signature_def
    assert {"recommend", "search", "serving_default"} <= set(signatures)
    rec_inputs = {k: (tf.dtypes.as_dtype(v.dtype).name, len(v.tensor_shape.dim))
                  for k, v in signatures["recommend"].inputs.items()}
    assert rec_inputs == {
        "user_id": ("string", 1), "candidate_item_ids": ("string", 2),
        "rec_history_item_ids": ("string", 2), "rec_history_timestamps": ("int64", 2),
        "rec_history_length": ("int64", 1), "search_history_queries": ("string", 2),
        "search_history_clicked_item_ids": ("string", 3),
        "search_history_timestamps": ("int64", 2), "search_history_length": ("int64", 1)}
    assert set(signatures["search"].inputs) == set(rec_inputs) | {"query"}
    assert tf.dtypes.as_dtype(signatures["search"].outputs["scores"].dtype) == tf.float32

    request.metadata_field[:] = ["nonsense"]
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelMetadata(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


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
        "wrong dtype": (changed(rec_history_length=np.array([2], dtype=np.int32)),
                        grpc.StatusCode.INVALID_ARGUMENT, "rec_history_length"),
        "wrong rank": (changed(candidate_item_ids=np.array([b"item_a"], dtype=object)),
                       grpc.StatusCode.INVALID_ARGUMENT, "candidate_item_ids"),
        "missing input": (changed(search_history_length=None),
                          grpc.StatusCode.INVALID_ARGUMENT, "search_history_length"),
        "extra input": (changed(bogus=np.array([1], dtype=np.int64)),
                        grpc.StatusCode.INVALID_ARGUMENT, "bogus"),
        # History lengths that differ across inputs: TF's own error from session.run.
        "shapes disagree": (changed(rec_history_timestamps=np.array([[10, 20]], np.int64)),
                            grpc.StatusCode.INVALID_ARGUMENT, "Incompatible shapes"),
        "in-graph assertion": (changed(search_history_timestamps=np.array([[-5, 0]], np.int64)),
                               grpc.StatusCode.INVALID_ARGUMENT, "search_history_timestamps"),
        # TF Serving answers FAILED_PRECONDITION for a signature the model does not have.
        "unknown signature": (make_request("rank_everything", example_inputs()),
                              grpc.StatusCode.FAILED_PRECONDITION, "rank_everything"),
        "init op is no signature": (make_request("__saved_model_init_op", {}),
                                    grpc.StatusCode.FAILED_PRECONDITION, "__saved_model_init_op"),
        "wrong model name": (make_request("recommend", example_inputs(), model_name="other"),
                             grpc.StatusCode.NOT_FOUND, "other"),
        "wrong version": (wrong_version, grpc.StatusCode.NOT_FOUND, "7"),
    }


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
        np.ones((2, 3)))
    with pytest.raises(server_lib.RpcError, match=r"'x'.*\(None, 3\).*\(2, 4\)"):
        server_lib.parse_input("x", tf.make_tensor_proto(np.ones((2, 4), np.int64)), info)


def test_latest_numeric_version_is_served(tmp_path):
    source = save_toy_model(str(tmp_path / "source"))
    base = tmp_path / "unisar"
    for version in ["1", "3", "9", "10"]:
        shutil.copytree(source, base / version)
    (base / "99").mkdir()         # no saved_model.pb yet (export still being written)
    (base / "tmp-11").mkdir()     # not a version
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
        np.testing.assert_allclose(tf.make_ndarray(second.outputs["scores"]),
                                   [np.add(EXPECTED_RECOMMEND, 1000.0)])
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
            writer.write(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())


def test_warmup_requests_are_replayed_and_a_failing_one_fails_the_load(tmp_path):
    base = tmp_path / "unisar"
    save_toy_model(str(base / "1"))
    write_warmup(str(base / "1"), [make_request("recommend", example_inputs()),
                                   make_request("search", example_inputs("q"))])
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


def test_default_bind_is_localhost(tmp_path):
    assert server_lib.StandInServer(str(tmp_path)).host == "127.0.0.1"
    base = tmp_path / "unisar"
    save_toy_model(str(base / "1"))
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--model_base_path", str(base),
         "--port", "0"], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert "version 1 at 127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1])
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(make_request("recommend", example_inputs()), timeout=10)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]),
                                   [EXPECTED_RECOMMEND])
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
