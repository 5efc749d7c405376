"""The data job's TFRecords feed the model: reader shapes, config sizes, one training step."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers.datasets import build_amazon_examples

from feature_specs import CANDIDATE_ITEMS, HISTORY_TYPES, QUERY_TOKENS, TYPE_SEARCH
from feature_specs.data_spec import DataSpec
from pipeline import beam_job
from pipeline import sequence_builder as sb
from pipeline.adapters import amazon
from pipeline.query_matching import rank_metrics
from unisar_tf.config import DataFacts, amazon_preset
from unisar_tf.data import reader
from unisar_tf.model import build_model
from unisar_tf.train.inputs import training_dataset

IN_MEMORY = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small Amazon-format dataset (40 users, 30 items, 3 category terms) built by the job."""
    return build_amazon_examples(tmp_path_factory.mktemp("amazon"), num_users=40)


@pytest.mark.slow
def test_reader_shapes_and_config_sizes(built):
    out, manifest = built
    assert manifest["vocab_sizes"] == {"users": 40, "items": 30, "words": 3}
    data = DataFacts.from_spec(DataSpec.of(manifest))
    assert (data.num_users, data.num_items, data.num_words) == (41, 31, 4)
    assert (data.query_len, data.clicks_per_session, data.rec_len) == (4, 1, 5)

    test_search = reader.load_arrays(out, "test", "search", manifest)
    assert test_search[CANDIDATE_ITEMS].shape == (manifest["examples"]["test"]["search"], 10)
    assert test_search["search_history_query_tokens"].shape[1:] == (5, 4)
    # Every search query is exactly one category word (brands have frequency 1 < 5).
    assert np.all((test_search[QUERY_TOKENS] > 0).sum(axis=1) == 1)
    # Min history 1 + 1: every example has at least one search behaviour in its history.
    assert np.all((test_search[HISTORY_TYPES] == TYPE_SEARCH).sum(axis=1) >= 1)
    train_rec = reader.load_arrays(out, "train", "rec", manifest)
    assert train_rec[CANDIDATE_ITEMS].shape[1] == 5 and QUERY_TOKENS not in train_rec


@pytest.mark.slow
def test_model_trains_one_step_on_built_tfrecords(built):
    out, manifest = built
    config = amazon_preset(batch_size=16, num_relevance_negatives=8)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, DataFacts.from_spec(DataSpec.of(manifest)))
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    dataset = training_dataset(
        config, out, manifest, reader.query_bank(out, manifest), seed=0, epoch=0
    )
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(dataset.take(1), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = [not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert sum(changed) > len(changed) // 2
    batch = next(iter(reader.read_examples(out, "test", "search", batch_size=8, manifest=manifest)))
    scores = model(batch, training=False)["search"].numpy()
    assert scores.shape == (min(8, manifest["examples"]["test"]["search"]), 10)
    assert np.all(np.isfinite(scores))


def test_missing_split_files_raise_naming_the_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        reader.load_manifest(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train/rec"):
        reader.example_files(str(tmp_path), "train", "rec")


def test_example_files_follow_the_manifests_layout(tmp_path):
    """A TFX Examples artifact keeps splits in Split-<name>/; the manifest says where."""
    os.makedirs(tmp_path / "Split-train_rec")
    (tmp_path / "Split-train_rec" / "data_tfrecord-00000-of-00001.gz").write_bytes(b"")
    (tmp_path / "manifest.json").write_text(
        json.dumps({"files": {"train/rec": "Split-train_rec/data_tfrecord-*.gz"}})
    )
    assert reader.example_files(str(tmp_path), "train", "rec") == [
        str(tmp_path / "Split-train_rec" / "data_tfrecord-00000-of-00001.gz")
    ]
    with pytest.raises(FileNotFoundError, match="train/search"):  # not in the manifest
        reader.example_files(str(tmp_path), "train", "search")


def test_query_matching_rank_metrics_by_hand():
    # Row 1: positive strictly best -> rank 1. Row 2: 1 higher, 2 tied -> pessimistic rank 4,
    # expected HR@1 0, HR@5 1. Row 3: 11 candidates above -> rank 12, outside every cutoff.
    scores = np.array([[3, 1, 1, 0] + [0] * 8, [2, 3, 2, 2] + [0] * 8, [0] + [1] * 11], dtype=float)
    m = rank_metrics(scores)
    assert m["HR@1"] == pytest.approx(1 / 3)
    assert m["HR@5"] == pytest.approx(2 / 3)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / np.log2(5)) / 3)
    # Row 2 expected ranks 2, 3, 4 with probability 1/3 each.
    assert m["HR@1 (expected ties)"] == pytest.approx(1 / 3)
    assert m["NDCG@5 (expected ties)"] == pytest.approx(
        (1 + (1 / np.log2(3) + 1 / np.log2(4) + 1 / np.log2(5)) / 3) / 3
    )


def _write_ten_user_dataset(root):
    """10 users x 6 of 12 items (user u has items u..u+5 mod 12), 2 categories."""
    (root / "seq.txt").write_text(
        "".join(f"u{u} " + " ".join(f"i{(u + k) % 12}" for k in range(6)) + "\n" for u in range(10))
    )
    (root / "attrs.json").write_text(json.dumps({f"i{i}": [f"c{i % 2}"] for i in range(12)}))


def test_rerun_into_the_same_output_replaces_every_shard(tmp_path):
    _write_ten_user_dataset(tmp_path)
    inputs = amazon.AmazonInputs(
        str(tmp_path / "seq.txt"), str(tmp_path / "attrs.json"), query_min_item_frequency=2
    )
    options = sb.BuildOptions(
        clicks_per_session=1, num_eval_negatives=3, min_rec_history=0, min_search_history=0
    )
    out = str(tmp_path / "out")

    def build(shards):
        return beam_job.run(
            lambda p: amazon.read(p, inputs),
            options,
            out,
            "amazon",
            {},
            IN_MEMORY,
            num_shards=shards,
        )

    first = build(3)
    assert len(reader.example_files(out, "train", "rec")) == 3
    second = build(1)
    assert first["examples"] == second["examples"]
    for split in ("train", "valid", "test"):
        for scenario in ("rec", "search"):
            files = reader.example_files(out, split, scenario)
            assert len(files) == 1, files  # the three shards of the first run are gone
            count = sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))
            assert count == second["examples"][split][scenario]


def test_max_rows_per_file_reads_the_first_lines_and_counts_the_rest(tmp_path):
    _write_ten_user_dataset(tmp_path)
    inputs = amazon.AmazonInputs(
        str(tmp_path / "seq.txt"),
        str(tmp_path / "attrs.json"),
        query_min_item_frequency=2,
        max_rows_per_file=4,
    )
    manifest = beam_job.run(
        lambda p: amazon.read(p, inputs),
        sb.BuildOptions(clicks_per_session=1, num_eval_negatives=3),
        str(tmp_path / "out"),
        "amazon",
        {},
        IN_MEMORY,
    )
    assert manifest["vocab_sizes"]["users"] == 4
    assert manifest["counters"]["events"] == 4 * 6
    assert manifest["counters"]["rows_not_used_beyond_max_rows_per_file"] == 6


def test_training_negative_pool_for_fresh_negatives(tmp_path):
    rng = np.random.default_rng(5)
    user_items = {
        f"u{u}": [f"i{i}" for i in rng.choice(30, size=8, replace=False)] for u in range(12)
    }
    (tmp_path / "seq.txt").write_text(
        "".join(f"{u} {' '.join(items)}\n" for u, items in user_items.items())
    )
    (tmp_path / "attrs.json").write_text(json.dumps({f"i{i}": [f"c{i % 3}"] for i in range(30)}))
    inputs = amazon.AmazonInputs(
        str(tmp_path / "seq.txt"), str(tmp_path / "attrs.json"), query_min_item_frequency=2
    )
    options = sb.BuildOptions(
        clicks_per_session=1, num_eval_negatives=5, query_len=3, train_negative_pool=7
    )
    out = str(tmp_path / "out")
    manifest = beam_job.run(lambda p: amazon.read(p, inputs), options, out, "amazon", {}, IN_MEMORY)
    assert manifest["shapes"]["train_negative_pool"] == 7
    items = [""] + (tmp_path / "out" / "vocab" / "items.txt").read_text().split()
    users = [""] + (tmp_path / "out" / "vocab" / "users.txt").read_text().split()
    for scenario in ("rec", "search"):
        train = reader.load_arrays(out, "train", scenario, manifest)
        pool, candidates = train["negative_pool"], train[CANDIDATE_ITEMS]
        assert pool.shape == (len(candidates), 7)
        np.testing.assert_array_equal(candidates[:, 1:], pool[:, :4])
        for user, row in zip(train["user_id"], pool):
            raw = {items[i] for i in row}
            assert len(raw) == 7 and not raw & set(user_items[users[user]])
        assert "negative_pool" not in reader.load_arrays(out, "test", scenario, manifest)
    with pytest.raises(ValueError, match="train_negative_pool"):
        sb.BuildOptions(train_negative_pool=2)
