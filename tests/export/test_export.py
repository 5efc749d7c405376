"""The serving export: raw-input signatures equal the model on the same ids, unknown ids score,
bad lengths fail clearly, serving_default parses data-job examples, warmup file, versioning."""

import os

import numpy as np
import pytest
import tensorflow as tf
from helpers.model import SMALL_MODEL as SMALL
from helpers.model import config_and_data, small_model, write_vocabularies

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    QUERY_TOKENS,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    SEARCH_HISTORY_QUERY_TOKENS,
    TYPE_REC,
    TYPE_SEARCH,
    USER_ID,
)
from feature_specs.serving import EXAMPLES_SIGNATURE, RAW_INPUTS, WARMUP_FILE
from unisar_tf.data.synthetic import random_feature_batch
from unisar_tf.data.vocab import DataJobVocabularies, read_vocabularies
from unisar_tf.export.push import export_serving_model, next_version, push
from unisar_tf.export.requests import RawFeatureMapper, raw_request_from_features
from unisar_tf.model import build_model

pytestmark = pytest.mark.slow  # every test here builds, trains, exports or serves


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    _, model, vocab_dir = small_model(root, seed=20)
    path = export_serving_model(model, vocab_dir, str(root / "unisar" / "1"))
    return model.data, model, vocab_dir, path, tf.saved_model.load(path)


def _as_tensors(arrays):
    tensors = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        tensors[name] = tf.constant(value.astype(np.int64) if value.dtype.kind == "i" else value)
    return tensors


def test_raw_signatures_score_like_the_model_on_the_same_ids(exported):
    data, model, vocab_dir, _, reloaded = exported
    vocabularies = read_vocabularies(vocab_dir)
    features = random_feature_batch(data, 6, 7, True, np.random.default_rng(21))
    expected = model(features)
    raw = raw_request_from_features(features, vocabularies)
    search = reloaded.signatures["search"](**_as_tensors(raw))["scores"].numpy()
    del raw["query"]
    recommend = reloaded.signatures["recommend"](**_as_tensors(raw))["scores"].numpy()
    np.testing.assert_allclose(recommend, expected["rec"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(search, expected["search"].numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(recommend, search)


def test_mapper_rebuilds_the_data_jobs_id_features(exported):
    data, _, vocab_dir, _, _ = exported
    features = random_feature_batch(data, 5, 3, True, np.random.default_rng(3))
    raw = raw_request_from_features(features, read_vocabularies(vocab_dir))
    mapped = RawFeatureMapper(DataJobVocabularies(vocab_dir), data.sequence_shapes)(
        _as_tensors(raw)
    )
    for name, value in features.items():
        np.testing.assert_array_equal(mapped[name].numpy(), value, err_msg=name)


def test_history_is_ordered_by_time_and_truncated_to_the_latest(exported):
    """Hand-built request: 8 rec (keep last 6), 2 search; sent out of time order."""
    data, _, vocab_dir, _, _ = exported
    mapper = RawFeatureMapper(DataJobVocabularies(vocab_dir), data.sequence_shapes)
    rec_items = [f"i{k}" for k in (8, 1, 2, 3, 4, 5, 6, 7)]
    rec_times = [80, 10, 20, 30, 40, 50, 60, 70]  # slot 0 is the newest
    request = {
        "user_id": [b"u3"],
        "candidate_item_ids": [[b"i9", b"nope"]],
        "rec_history_item_ids": [rec_items + ["ignored"]],
        "rec_history_timestamps": [rec_times + [0]],
        "rec_history_length": [8],
        "search_history_queries": [["w1 w2 w3 w4 w5", "w7 unknown w8", ""]],
        "search_history_clicked_item_ids": [
            [["i11", "i12", "i13"], ["i14", "", ""], ["x", "y", "z"]]
        ],
        "search_history_timestamps": [[35, 65, 0]],
        "search_history_length": [2],
        "query": [b"w2 zzz"],
    }
    features = {k: v.numpy() for k, v in mapper(_as_tensors(request)).items()}
    np.testing.assert_array_equal(features[REC_HISTORY_ITEMS], [[3, 4, 5, 6, 7, 8]])
    # times 30 40 | 35 | 50 60 | 65 | 70 80, then padding.
    r, s = TYPE_REC, TYPE_SEARCH
    np.testing.assert_array_equal(features[HISTORY_TYPES][0], [r, s, r, r, r, s, r, r] + [0] * 3)
    np.testing.assert_array_equal(
        features[SEARCH_HISTORY_QUERY_TOKENS][0],
        [[1, 2, 3, 4], [7, 0, 8, 0], [0, 0, 0, 0], [0] * 4, [0] * 4],
    )
    np.testing.assert_array_equal(
        features[SEARCH_HISTORY_CLICKED_ITEMS][0], [[11, 12], [14, 0], [0, 0], [0, 0], [0, 0]]
    )
    np.testing.assert_array_equal(features[CANDIDATE_ITEMS], [[9, 0]])
    np.testing.assert_array_equal(features[USER_ID], [3])
    np.testing.assert_array_equal(features[QUERY_TOKENS], [[2, 0, 0, 0]])


def test_equal_timestamps_put_rec_first(exported):
    data, _, vocab_dir, _, _ = exported
    mapper = RawFeatureMapper(DataJobVocabularies(vocab_dir), data.sequence_shapes)
    request = _request(rec=[("i1", 5), ("i2", 7)], search=[("w1", ["i3"], 5)])
    types = mapper(_as_tensors(request))[HISTORY_TYPES].numpy()[0]
    np.testing.assert_array_equal(types[:3], [TYPE_REC, TYPE_SEARCH, TYPE_REC])


def test_rec_behaviours_on_unknown_items_are_left_out(exported):
    data, _, vocab_dir, _, _ = exported
    mapper = RawFeatureMapper(DataJobVocabularies(vocab_dir), data.sequence_shapes)
    request = _request(
        rec=[("i1", 1), ("ghost", 2), ("i2", 3)], search=[("w1 ghostword", ["ghost", "i4"], 2)]
    )
    features = {k: v.numpy()[0] for k, v in mapper(_as_tensors(request)).items()}
    np.testing.assert_array_equal(features[REC_HISTORY_ITEMS][:3], [1, 2, 0])
    np.testing.assert_array_equal(features[HISTORY_TYPES][:4], [TYPE_REC, TYPE_SEARCH, TYPE_REC, 0])
    np.testing.assert_array_equal(features[SEARCH_HISTORY_QUERY_TOKENS][0], [1, 0, 0, 0])
    np.testing.assert_array_equal(features[SEARCH_HISTORY_CLICKED_ITEMS][0], [0, 4])


def _request(rec=(), search=(), user="u1", candidates=("i1", "i2", "i3"), query=None):
    """One request row; empty histories are sent as one padding slot with length 0."""
    rec = list(rec) or [("", 0)]
    search = list(search) or [("", [""], 0)]
    width = max(len(clicks) for _, clicks, _ in search)
    request = {
        "user_id": [user.encode()],
        "candidate_item_ids": [[c.encode() for c in candidates]],
        "rec_history_item_ids": [[item.encode() for item, _ in rec]],
        "rec_history_timestamps": [[t for _, t in rec]],
        "rec_history_length": [sum(1 for item, _ in rec if item)],
        "search_history_queries": [[q.encode() for q, _, _ in search]],
        "search_history_clicked_item_ids": [
            [
                [c.encode() for c in clicks] + [b""] * (width - len(clicks))
                for _, clicks, _ in search
            ]
        ],
        "search_history_timestamps": [[t for _, _, t in search]],
        "search_history_length": [sum(1 for q, _, _ in search if q)],
    }
    if query is not None:
        request["query"] = [query.encode()]
    return {k: np.asarray(v) for k, v in request.items()}


def test_unknown_ids_and_empty_histories_score_without_nan(exported):
    _, _, _, _, reloaded = exported
    cold = _request(user="never-seen", candidates=("i1", "not-an-item", ""), query="no such words")
    scores = reloaded.signatures["search"](**_as_tensors(cold))["scores"].numpy()
    assert scores.shape == (1, 3) and np.all(np.isfinite(scores))
    # A known candidate gets a model score; unknown ones (and "") rank last with 0.
    assert 0 < scores[0, 0] < 1 and scores[0, 1] == 0 and scores[0, 2] == 0
    del cold["query"]
    rec = reloaded.signatures["recommend"](**_as_tensors(cold))["scores"].numpy()
    assert rec.shape == (1, 3) and np.all(np.isfinite(rec))
    assert 0 < rec[0, 0] < 1 and rec[0, 1] == 0 and rec[0, 2] == 0


def test_history_changes_the_scores(exported):
    _, _, _, _, reloaded = exported
    empty = reloaded.signatures["recommend"](**_as_tensors(_request()))["scores"].numpy()
    with_history = reloaded.signatures["recommend"](
        **_as_tensors(_request(rec=[("i5", 1), ("i6", 2)], search=[("w3 w4", ["i7"], 3)]))
    )["scores"].numpy()
    assert not np.allclose(empty, with_history)


@pytest.mark.parametrize(
    "length, message", [(3, "rec_history_length exceeds"), (-1, "rec_history_length must be >= 0")]
)
def test_bad_lengths_fail_with_the_input_named(exported, length, message):
    _, _, _, _, reloaded = exported
    request = _request(rec=[("i1", 1), ("i2", 2)])
    request["rec_history_length"] = np.array([length])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        reloaded.signatures["recommend"](**_as_tensors(request))


def test_signature_specs_are_the_documented_contract(exported):
    _, _, _, _, reloaded = exported
    for name, with_query in (("recommend", False), ("search", True)):
        _, inputs = reloaded.signatures[name].structured_input_signature
        expected = dict(RAW_INPUTS, **({"query": (tf.string, 1)} if with_query else {}))
        assert {k: (v.dtype, v.shape.rank) for k, v in inputs.items()} == expected
        assert all(dim is None for v in inputs.values() for dim in v.shape.as_list())
        outputs = reloaded.signatures[name].structured_outputs
        assert list(outputs) == ["scores"] and outputs["scores"].dtype == tf.float32
        assert outputs["scores"].shape.as_list() == [None, None]
    _, inputs = reloaded.signatures[EXAMPLES_SIGNATURE].structured_input_signature
    assert {k: (v.dtype, v.shape.as_list()) for k, v in inputs.items()} == {
        "examples": (tf.string, [None])
    }


def _serialize(features, row):
    example = tf.train.Example()
    for name, value in features.items():
        example.features.feature[name].int64_list.value.extend(np.asarray(value[row]).ravel())
    return example.SerializeToString()


def test_serving_default_scores_data_job_examples_by_their_task(exported):
    data, model, _, _, reloaded = exported
    rng = np.random.default_rng(8)
    rec = random_feature_batch(data, 3, 4, False, rng)
    search = random_feature_batch(data, 2, 4, True, rng)
    records = [
        _serialize(rec, 0),
        _serialize(search, 0),
        _serialize(rec, 1),
        _serialize(search, 1),
        _serialize(rec, 2),
    ]
    scores = reloaded.signatures[EXAMPLES_SIGNATURE](examples=tf.constant(records))["scores"]
    rec_expected = model(rec)["rec"].numpy()
    search_expected = model(search)["search"].numpy()
    expected = np.stack(
        [rec_expected[0], search_expected[0], rec_expected[1], search_expected[1], rec_expected[2]]
    )
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_warmup_requests_replay_against_the_export(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    _, _, _, path, reloaded = exported
    records = list(tf.data.TFRecordDataset(os.path.join(path, WARMUP_FILE)).as_numpy_iterator())
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in records]
    assert sorted(log.predict_log.request.model_spec.signature_name for log in logs) == [
        "recommend",
        "search",
    ]
    for log in logs:
        request = log.predict_log.request
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        scores = reloaded.signatures[request.model_spec.signature_name](**inputs)["scores"]
        assert scores.shape == (1, 100)


def test_vocabularies_travel_inside_the_saved_model(exported):
    _, _, _, path, _ = exported
    assert sorted(os.listdir(os.path.join(path, "assets"))) == [
        "items.txt",
        "users.txt",
        "words.txt",
    ]


def test_the_online_files_give_the_models_tasks_shapes_and_items(exported):
    """What the online path reads from a version (serving/online_features.read_online_files)
    is what the export wrote: the model's tasks and shapes, the vocabulary's items."""
    from serving.online_features import read_online_files

    data, model, vocab_dir, path, _ = exported
    tasks, shapes, items = read_online_files(path)
    assert tasks == tuple(model.config.tasks)
    assert shapes == data.sequence_shapes
    assert items == {f"i{k}" for k in range(1, data.num_items)}
    assert set(read_vocabularies(vocab_dir)["items"][1:]) == items


@pytest.mark.slow  # exports two SavedModels
def test_push_writes_the_next_version_and_never_overwrites(tmp_path):
    tf.keras.utils.set_random_seed(1)
    config, data = config_and_data(**dict(SMALL, tasks=("rec",)))
    model = build_model(config, data)
    vocab_dir = write_vocabularies(tmp_path / "vocab", data)
    serving_dir = tmp_path / "serving"
    os.makedirs(serving_dir / "unisar" / "9")
    os.makedirs(serving_dir / "unisar" / "10")
    os.makedirs(serving_dir / "unisar" / "not-a-version")
    assert next_version(str(serving_dir / "unisar")) == 11
    path = push(model, vocab_dir, str(serving_dir))
    assert path == str(serving_dir / "unisar" / "11")
    assert not any(name.startswith(".tmp") for name in os.listdir(serving_dir / "unisar"))
    reloaded = tf.saved_model.load(path)
    assert set(reloaded.signatures) == {"recommend", EXAMPLES_SIGNATURE}  # a rec-only model
    with pytest.raises(FileExistsError, match="11"):
        export_serving_model(model, vocab_dir, path)
