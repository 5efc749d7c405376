"""Transform: vocabularies by tensorflow-transform, used to read raw-id examples and inside
the serving signatures (pipeline/transform_module.py, unisar_tf/data/transform.py).

Hand-computed vocabularies on two examples; then the KuaiSAR fixture built in both id
formats: reading the raw examples through the Transform graph gives the id examples
(re-keyed to Transform's vocabularies), and a model trained with `--transform_dir` exports
signatures that carry the graph (same scores from raw examples, from raw requests, and after
the Transform output is deleted).
"""

import collections
import os
import shutil
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from helpers.model import TINY_FLAGS

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    ID_FEATURE_VOCABULARIES,
    NEGATIVE_POOL,
    QUERY_TOKENS,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    SEARCH_HISTORY_QUERY_TOKENS,
    USER_ID,
)
from feature_specs.serving import EXAMPLES_SIGNATURE, SIGNATURE_NAMES
from pipeline import transform_module
from unisar_tf.data import reader
from unisar_tf.data.transform import TransformIds, transform_ids
from unisar_tf.data.vocab import read_vocabularies
from unisar_tf.export.requests import raw_request_from_features

pytestmark = pytest.mark.slow  # every test here builds, trains, exports or serves

SCENARIOS = ("rec", "search")
SPLITS = ("train", "valid", "test")


# --- preprocessing_fn by hand ------------------------------------------------------------------


def analyze_in_memory(instances, feature_spec, output_dir):
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(feature_spec))
    with (
        beam.Pipeline(argv=["--runner=DirectRunner"]) as pipeline,
        tft_beam.Context(temp_dir=tempfile.mkdtemp()),
    ):
        transform_fn = (pipeline | beam.Create(instances), metadata) | tft_beam.AnalyzeDataset(
            transform_module.preprocessing_fn
        )
        _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
    transform_module.write_raw_metadata(metadata.schema, output_dir)


@pytest.mark.slow  # runs tf.Transform's Beam analysis
def test_vocabularies_and_ids_by_hand(tmp_path):
    spec = {
        USER_ID: tf.io.FixedLenFeature([], tf.string),
        HISTORY_TYPES: tf.io.FixedLenFeature([3], tf.int64),
        REC_HISTORY_ITEMS: tf.io.FixedLenFeature([2], tf.string),
        SEARCH_HISTORY_QUERY_TOKENS: tf.io.FixedLenFeature([1, 2], tf.string),
        SEARCH_HISTORY_CLICKED_ITEMS: tf.io.FixedLenFeature([1, 1], tf.string),
        CANDIDATE_ITEMS: tf.io.VarLenFeature(tf.string),
        QUERY_TOKENS: tf.io.VarLenFeature(tf.string),
        NEGATIVE_POOL: tf.io.VarLenFeature(tf.string),
    }
    examples = [
        {
            USER_ID: b"u1",
            HISTORY_TYPES: [1, 1, 2],
            REC_HISTORY_ITEMS: [b"a", b"b"],
            SEARCH_HISTORY_QUERY_TOKENS: [[b"x", b"y"]],
            SEARCH_HISTORY_CLICKED_ITEMS: [[b"a"]],
            CANDIDATE_ITEMS: [b"a", b"c"],
            QUERY_TOKENS: [b"x", b""],
            NEGATIVE_POOL: [b"c", b"d"],
        },
        {
            USER_ID: b"u2",
            HISTORY_TYPES: [1, 2, 0],
            REC_HISTORY_ITEMS: [b"a", b""],
            SEARCH_HISTORY_QUERY_TOKENS: [[b"y", b"x"]],
            SEARCH_HISTORY_CLICKED_ITEMS: [[b"a"]],
            CANDIDATE_ITEMS: [b"b", b"a", b"c"],
            QUERY_TOKENS: [],
            NEGATIVE_POOL: [],
        },
    ]
    # Items: a 6 times, c 3, b 2, d 1 -> ids 1..4; words: x 3, y 2 -> 1, 2; "" -> 0.
    out = str(tmp_path / "transform")
    analyze_in_memory(examples, spec, out)
    ids = TransformIds(out)
    assert ids.vocabularies()["items"].tolist() == ["", "a", "c", "b", "d"]
    assert ids.vocabularies()["words"].tolist() == ["", "x", "y"]
    assert ids.vocabulary_sizes() == {"users": 2, "items": 4, "words": 2}

    # The whole graph on the two examples, dense and padded with "" (TransformIds makes the
    # VarLen features sparse again).
    def padded(name, width):
        return [list(example[name]) + [b""] * (width - len(example[name])) for example in examples]

    batch = {
        name: tf.constant([example[name] for example in examples])
        for name in (
            USER_ID,
            REC_HISTORY_ITEMS,
            SEARCH_HISTORY_QUERY_TOKENS,
            SEARCH_HISTORY_CLICKED_ITEMS,
        )
    }
    batch[HISTORY_TYPES] = tf.constant([e[HISTORY_TYPES] for e in examples], tf.int64)
    for name, width in ((CANDIDATE_ITEMS, 3), (QUERY_TOKENS, 2), (NEGATIVE_POOL, 2)):
        batch[name] = tf.constant(padded(name, width))
    out = {name: value.numpy().tolist() for name, value in ids(batch).items()}
    assert out[REC_HISTORY_ITEMS] == [[1, 3], [1, 0]]
    assert out[SEARCH_HISTORY_QUERY_TOKENS] == [[[1, 2]], [[2, 1]]]
    assert out[SEARCH_HISTORY_CLICKED_ITEMS] == [[[1]], [[1]]]
    assert out[CANDIDATE_ITEMS] == [[1, 2, 0], [3, 1, 2]]
    assert out[QUERY_TOKENS] == [[1, 0], [0, 0]]
    assert out[NEGATIVE_POOL] == [[2, 4], [0, 0]]
    assert out[HISTORY_TYPES] == [[1, 1, 2], [1, 2, 0]]  # passes through
    assert sorted(out[USER_ID]) == [1, 2]
    # Out of vocabulary -> 0, like padding; lookup takes any shape.
    looked_up = ids.lookup("items", tf.constant([[[b"d", b"zz"], [b"", b"a"]]]))
    assert looked_up.numpy().tolist() == [[[4, 0], [0, 1]]]
    assert ids.lookup("users", tf.constant([b"nobody"])).numpy().tolist() == [0]
    assert ids.lookup("words", tf.constant([[b"y", b"q"]])).numpy().tolist() == [[2, 0]]
    # Several kinds and shapes in one run of the graph: each comes back in its own shape,
    # with the ids one lookup per tensor gives; a tensor without values stays empty.
    together = ids.lookup_together(
        {
            "users": [tf.constant([b"nobody", b"nobody"])],
            "items": [
                tf.constant([[[b"d", b"zz"], [b"", b"a"]], [[b"a", b"a"], [b"c", b"b"]]]),
                tf.constant([[b"b"], [b"zz"]]),
                tf.zeros([2, 0], tf.string),
            ],
            "words": [tf.constant([[b"y", b"q", b"x"], [b"", b"x", b"y"]])],
        }
    )
    assert {kind: [t.numpy().tolist() for t in v] for kind, v in together.items()} == {
        "users": [[0, 0]],
        "items": [[[[4, 0], [0, 1]], [[1, 1], [2, 3]]], [[3], [0]], [[], []]],
        "words": [[[2, 0, 1], [0, 1, 2]]],
    }


# --- the KuaiSAR fixture in both formats ------------------------------------------------------


def raw_records(data_dir, split, scenario):
    return [
        r.numpy()
        for r in tf.data.TFRecordDataset(
            reader.example_files(data_dir, split, scenario), compression_type="GZIP"
        )
    ]


def test_vocabularies_are_the_training_splits_values_most_frequent_first(kuaisar_formats):
    _, raw_dir, transform_dir = kuaisar_formats
    counts = {kind: collections.Counter() for kind in ("users", "items", "words")}
    for scenario in SCENARIOS:
        for record in raw_records(raw_dir, "train", scenario):
            features = tf.train.Example.FromString(record).features.feature
            for name, kind in ID_FEATURE_VOCABULARIES.items():
                if name in features:
                    counts[kind].update(v.decode() for v in features[name].bytes_list.value if v)
    vocabularies = transform_ids(transform_dir).vocabularies()
    for kind, counter in counts.items():
        words = list(vocabularies[kind][1:])
        assert sorted(words) == sorted(counter), kind
        frequencies = [counter[w] for w in words]
        assert frequencies == sorted(frequencies, reverse=True), kind


def test_reading_raw_examples_through_transform_gives_the_id_examples(kuaisar_formats):
    ids_dir, raw_dir, transform_dir = kuaisar_formats
    job = read_vocabularies(os.path.join(ids_dir, "vocab"))
    tft_vocab = transform_ids(transform_dir).vocabularies()
    raw_manifest = reader.load_manifest(raw_dir, transform_dir)
    assert raw_manifest["vocab_sizes"] == transform_ids(transform_dir).vocabulary_sizes()
    unknown = 0
    for split in SPLITS:
        for scenario in SCENARIOS:
            by_ids = reader.load_arrays(ids_dir, split, scenario)
            by_transform = reader.load_arrays(raw_dir, split, scenario, manifest=raw_manifest)
            assert sorted(by_ids) == sorted(by_transform)
            # Rows as strings (the job's shards may hold them in another order).
            rows_ids, rows_transform = [], []
            for name in sorted(by_ids):
                values, mapped = by_ids[name], by_transform[name]
                assert mapped.shape == values.shape and mapped.dtype == np.int64, name
                if name not in ID_FEATURE_VOCABULARIES:
                    rows_ids.append(values.reshape(len(values), -1).astype(str))
                    rows_transform.append(mapped.reshape(len(mapped), -1).astype(str))
                    continue
                kind = ID_FEATURE_VOCABULARIES[name]
                strings = job[kind][values]
                known = np.isin(strings, tft_vocab[kind][1:])
                unknown += int((strings[~known] != "").sum())
                if split == "train":  # analyzed: nothing unknown there
                    assert known[strings != ""].all(), name
                # Transform's id of a value it knows; 0 (padding / unknown) otherwise.
                expected = np.where(known, strings, "")
                rows_ids.append(expected.reshape(len(values), -1))
                rows_transform.append(tft_vocab[kind][mapped].reshape(len(mapped), -1))

            def as_rows(parts):
                return sorted(map(tuple, np.concatenate(parts, axis=1).tolist()))

            assert as_rows(rows_ids) == as_rows(rows_transform), (split, scenario)
    assert unknown > 0  # the time split holds values the training days never saw


def test_raw_examples_need_the_transform_graph(kuaisar_formats):
    _, raw_dir, _ = kuaisar_formats
    with pytest.raises(ValueError, match="raw string ids.*id_format='raw'.*transform_dir"):
        reader.load_manifest(raw_dir)


def test_analyze_refuses_id_examples(kuaisar_formats, tmp_path):
    ids_dir, _, _ = kuaisar_formats
    with pytest.raises(ValueError, match="id_format is 'ids'.*--id_format raw"):
        transform_module.analyze(ids_dir, str(tmp_path / "t"))


@pytest.fixture(scope="module")
def trained(kuaisar_formats, tmp_path_factory):
    """A 1-epoch KuaiSAR model (side features on) trained on the raw examples with the
    Transform graph, exported by the CLI: (model_dir, result, transform_dir). It trains with
    its own copy of the Transform output, which a test deletes (the shared one is read-only)."""
    from unisar_tf.train import cli

    _, raw_dir, shared_transform_dir = kuaisar_formats
    root = tmp_path_factory.mktemp("trained")
    transform_dir = str(root / "transform")
    shutil.copytree(shared_transform_dir, transform_dir)
    result = cli.run(
        cli.build_parser().parse_args(
            [
                "--data_dir",
                raw_dir,
                "--model_dir",
                str(root / "model"),
                "--transform_dir",
                transform_dir,
                "--preset",
                "kuaisar",
                "--max_epochs",
                "1",
                "--steps_per_epoch",
                "2",
                "--serving_dir",
                str(root / "serving"),
                "--quiet",
                "--sasrec_max_epochs",
                "1",
            ]
            + TINY_FLAGS
        )
    )
    return str(root / "model"), result, transform_dir


def test_training_with_transform_sizes_the_model_by_transform_and_uses_side_features(
    kuaisar_formats, trained
):
    _, raw_dir, transform_dir = kuaisar_formats
    model_dir, result, _ = trained
    from feature_specs.data_spec import DataSpec
    from unisar_tf.data.side_features import load_side_features
    from unisar_tf.train.run_dir import load_trained_model, run_side_features

    model = load_trained_model(model_dir, raw_dir)
    sizes = transform_ids(transform_dir).vocabulary_sizes()
    assert (model.data.num_items, model.data.num_users) == (
        sizes["items"] + 1,
        sizes["users"] + 1,
    )
    assert model.data.uses_side_features
    assert result["test"]["unisar"]["rec"]["examples"] == 3
    # The side tables (written keyed by the data job's ids) are re-keyed to Transform's.
    ids_dir = kuaisar_formats[0]
    by_job = load_side_features(ids_dir, 100, 100, model.data.query_len)
    by_transform = run_side_features(
        raw_dir, transform_dir, DataSpec.of(reader.load_manifest(raw_dir, transform_dir))
    )
    job_vocab = read_vocabularies(os.path.join(ids_dir, "vocab"))
    tft_vocab = transform_ids(transform_dir).vocabularies()
    job_item = {w: i for i, w in enumerate(job_vocab["items"]) if i}
    tft_word = {w: i for i, w in enumerate(tft_vocab["words"]) if i}
    checked = 0
    for tft_id, item in enumerate(tft_vocab["items"]):
        if not tft_id:
            continue
        job_id = job_item[item]
        assert len(by_transform.item_categories) == len(tft_vocab["items"])
        np.testing.assert_array_equal(
            by_transform.item_categories[tft_id], by_job.item_categories[job_id]
        )
        words = [job_vocab["words"][w] for w in by_job.item_captions[job_id] if w]
        expected = [tft_word.get(w, 0) for w in words]
        # Unknown words map to 0 (padding); the table keeps the columns that hold any word.
        row = by_transform.item_captions[tft_id].tolist()
        assert row == (expected + [0] * len(row))[: len(row)]
        assert not any(expected[len(row) :])
        checked += bool(by_job.item_categories[job_id].any())
    assert checked > 0


def exported_scores(export_dir, raw_dir, split, scenario):
    model = tf.saved_model.load(export_dir)
    records = tf.constant(raw_records(raw_dir, split, scenario))
    return model, model.signatures[EXAMPLES_SIGNATURE](examples=records)["scores"].numpy()


def test_exported_model_carries_the_transform_graph(kuaisar_formats, trained, tmp_path):
    from unisar_tf.export.signatures import known_candidates_only
    from unisar_tf.train.evaluation import evaluate_model
    from unisar_tf.train.run_dir import load_trained_model

    _, raw_dir, _ = kuaisar_formats
    model_dir, result, transform_dir = trained  # the copy the model was trained with
    export_dir = result["export"]
    manifest = reader.load_manifest(raw_dir, transform_dir)
    model = load_trained_model(model_dir, raw_dir)
    vocabularies = transform_ids(transform_dir).vocabularies()
    # Served after the Transform output is gone: the graph and vocabularies are assets.
    moved = str(tmp_path / "moved")
    shutil.copytree(transform_dir, moved)
    shutil.rmtree(transform_dir)
    try:
        for scenario in SCENARIOS:
            features = reader.load_arrays(raw_dir, "test", scenario, manifest=manifest)
            expected = known_candidates_only(
                model(features, training=False)[scenario], features[CANDIDATE_ITEMS]
            ).numpy()
            served, scores = exported_scores(export_dir, raw_dir, "test", scenario)
            np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
            request = raw_request_from_features(features, vocabularies)
            raw_scores = served.signatures[SIGNATURE_NAMES[scenario]](
                **{name: tf.constant(value) for name, value in request.items()}
            )["scores"]
            # Rows whose rec history holds an item Transform does not know differ on purpose:
            # a served request drops such a behaviour (unisar_tf.export), an example keeps
            # its slot with id 0.
            rec_slots = features[REC_HISTORY_ITEMS] > 0
            whole = rec_slots.sum(axis=1) == (features[HISTORY_TYPES] == 1).sum(axis=1)
            assert whole.any()
            np.testing.assert_allclose(
                raw_scores.numpy()[whole], expected[whole], rtol=1e-5, atol=1e-6
            )
            # An item Transform never saw scores 0 (ranked last), like the padding id.
            request["candidate_item_ids"][:, -1] = b"never-seen-item"
            unseen = served.signatures[SIGNATURE_NAMES[scenario]](
                **{name: tf.constant(value) for name, value in request.items()}
            )["scores"]
            assert (unseen.numpy()[:, -1] == 0).all()
            np.testing.assert_allclose(
                unseen.numpy()[whole, :-1], expected[whole, :-1], rtol=1e-5, atol=1e-6
            )
    finally:
        shutil.copytree(moved, transform_dir)
    assert evaluate_model(model, raw_dir, "test", manifest)["rec"]["examples"] == 3


def test_query_matching_reads_either_id_format(kuaisar_formats):
    """The main job's query-attribute report reads the pipeline's raw examples as it reads
    id examples: the same lists of raw item ids and query words."""
    from pipeline.query_matching import search_lists

    ids_dir, raw_dir, _ = kuaisar_formats
    for split in SPLITS:
        from_ids = search_lists(ids_dir, split)
        from_raw = search_lists(raw_dir, split)

        def as_rows(lists):
            return sorted(zip(map(tuple, lists[0]), map(sorted, lists[1])))

        assert as_rows(from_ids) == as_rows(from_raw) and len(from_raw[0]) > 0


def test_a_last_blessed_model_of_the_id_format_is_refused_clearly(kuaisar_formats, tmp_path):
    """A model exported for id examples (before Transform owned the ids) cannot score the
    pipeline's raw examples: the evaluator says so instead of a parser error."""
    from feature_specs.data_spec import DataSpec
    from pipeline.components.ranking_evaluator import score_last_blessed
    from unisar_tf.config import DataFacts, kuaisar_preset
    from unisar_tf.export.push import export_serving_model
    from unisar_tf.model import build_model
    from unisar_tf.train.run_dir import run_side_features

    ids_dir, raw_dir, _ = kuaisar_formats
    config = kuaisar_preset(
        embedding_dim=8,
        raw_embedding_dim=4,
        feed_forward_dim=8,
        expert_units=4,
        tower_units=(8,),
        head_units=(8,),
    )
    spec = DataSpec.of(reader.load_manifest(ids_dir))
    side = run_side_features(ids_dir, None, spec)
    model = build_model(config, DataFacts.from_spec(spec, side), side_features=side)
    export = export_serving_model(
        model, os.path.join(ids_dir, "vocab"), str(tmp_path / "old"), warmup=False
    )
    scores = score_last_blessed(export, ids_dir, "test", ["rec"])["rec"]  # per-list scores
    assert scores.shape == (3, reader.load_manifest(ids_dir)["shapes"]["eval_candidates"])
    with pytest.raises(RuntimeError, match="cannot read the examples.*fresh pipeline root"):
        score_last_blessed(export, raw_dir, "test", ["rec"])
