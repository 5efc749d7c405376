"""The data job's co-occurrence tables (pipeline/cooccurrence_tables.py): the Trainer's
training_tables counted in Beam, top K per item, one deterministic artifact the Trainer reads.

The Beam checks reuse the session builds (tests/helpers/datasets.py); their fixtures have 30
(Amazon) and a handful (KuaiSAR) of items, fewer neighbours per item than the default K, so
the job's tables there are the unpruned ones and must equal training_tables exactly.
"""

import copy
import glob
import json
import logging
import os
import random
import shutil

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from helpers.data_job import IN_MEMORY
from helpers.model import TINY

from feature_specs.data_spec import CooccurrenceTables, DataSpec
from pipeline import beam_job, build_examples, cooccurrence_tables
from unisar_tf.config import default_preset
from unisar_tf.data import cooccurrence, reader
from unisar_tf.data.cooccurrence import (
    item_cooccurrence,
    last_history_items,
    pair_counts,
    table_from_counts,
    top_k_pairs,
    transition_counts,
)
from unisar_tf.layers.cooccurrence import ItemCooccurrence


def _assert_same_table(got, want):
    np.testing.assert_array_equal(got.pair_keys, want.pair_keys)
    np.testing.assert_array_equal(got.pair_counts, want.pair_counts)
    np.testing.assert_array_equal(got.item_totals, want.item_totals)


# --- the counting and pruning rules (NumPy, no job) ------------------------------------------


def test_top_k_keeps_each_items_largest_counts_ties_to_the_smaller_id():
    # Item 1: counts 3 (to 9), 2 (to 4), 2 (to 6), 2 (to 5), 1 (to 2); item 2: one pair.
    left = np.array([1, 1, 1, 1, 1, 2])
    right = np.array([9, 6, 4, 5, 2, 7])
    count = np.array([3, 2, 2, 2, 1, 1])
    # K = 2: 9 (3), then the tie at 2 goes to the smallest id, 4; sorted by (left, right).
    assert [a.tolist() for a in top_k_pairs(left, right, count, 2)] == [
        [1, 1, 2],
        [4, 9, 7],
        [2, 3, 1],
    ]
    # K = 3: 9, 4, 5 (ties 4 < 5 < 6); K = 0 and K >= 5 keep all.
    assert top_k_pairs(left, right, count, 3)[1].tolist() == [4, 5, 9, 7]
    for k in (0, 5, 9):
        assert top_k_pairs(left, right, count, k)[1].tolist() == [2, 4, 5, 6, 9, 7]


def test_batch_counts_equal_the_trainers_scipy_counts():
    rng = np.random.default_rng(0)
    histories = rng.integers(0, 12, size=(200, 7))  # repeats and padding (0) included
    positives = rng.integers(1, 12, size=200)
    want = table_from_counts(item_cooccurrence(histories, positives, 12), 12)
    # Counted in three batches and summed, as the job's CombinePerKey does.
    parts = [pair_counts(histories[i : i + 70], positives[i : i + 70]) for i in (0, 70, 140)]
    left, right, count = (np.concatenate([p[j] for p in parts]) for j in range(3))
    keys, inverse = np.unique(left * 12 + right, return_inverse=True)
    np.testing.assert_array_equal(keys, want.pair_keys)
    np.testing.assert_array_equal(np.bincount(inverse, weights=count), want.pair_counts)
    lasts = np.array([3, 0, 3, 5])
    assert [a.tolist() for a in transition_counts(lasts, np.array([4, 9, 4, 3]))] == [
        [3, 5],
        [4, 3],
        [2, 1],
    ]


def test_training_with_a_pruned_pair_takes_out_nothing_below_zero():
    """cooc(1, 3) = 2 was pruned from item 1's row (its totals stay full): an example with
    history [1] and positive 3 sees 0 in training, not -1, and n(1) - 1 stays >= 0."""
    num_items = 6
    keys = np.array([1 * num_items + 2, 3 * num_items + 1], np.int64)  # (1,3) pruned
    layer = ItemCooccurrence(num_items, 2)
    layer.build(None)
    layer.set_table(keys, np.array([5.0, 2.0], np.float32), np.array([0, 7, 5, 2, 0, 0], "f4"))
    features = layer(
        tf.constant([[1, 0]]),
        tf.constant([1]),
        tf.constant([0]),
        tf.constant([[3, 2]]),
        exclude_own_pair=True,
    ).numpy()
    assert np.all(features >= 0)
    np.testing.assert_array_equal(features[0, 0, :4], 0.0)  # the pruned own pair
    np.testing.assert_allclose(features[0, 1, 0], 5.0 / np.sqrt(6.0 * 5.0), rtol=1e-6)


def test_manifest_block_round_trips_and_older_manifests_load():
    spec = DataSpec.from_manifest(
        {
            "vocab_sizes": {"users": 2, "items": 3, "words": 1},
            "shapes": {
                "rec_len": 2,
                "search_len": 2,
                "query_len": 2,
                "clicks_per_session": 1,
                "train_candidates": 2,
                "eval_candidates": 3,
            },
        }
    )
    assert spec.cooccurrence is None and "cooccurrence" not in spec.to_manifest()
    block = CooccurrenceTables(top_k=5, pairs=7, transitions=3, files={"pairs": "c/p.npy"})
    manifest = spec.replace(cooccurrence=block).to_manifest()
    assert manifest["cooccurrence"] == {
        "top_k": 5,
        "pairs": 7,
        "transitions": 3,
        "files": {"pairs": "c/p.npy"},
    }
    assert DataSpec.from_manifest(manifest).cooccurrence == block
    manifest["cooccurrence"] = {"top_k": 5}
    with pytest.raises(ValueError, match=r"m\.json: the manifest's cooccurrence block"):
        DataSpec.from_manifest(manifest, "m.json")


def test_a_negative_top_k_is_refused_before_the_job():
    args, _ = build_examples.parse_args(
        ["--dataset", "amazon_beauty", "--output", "x", "--cooccurrence_top_k", "-1"]
    )
    with pytest.raises(ValueError, match="--cooccurrence_top_k -1"):
        build_examples.job(args)


# --- the job's artifact ---------------------------------------------------------------------


def _max_neighbours(data_dir, spec):
    rows = np.load(os.path.join(data_dir, spec.cooccurrence.files["pairs"]))
    return int(np.bincount(rows[:, 0]).max())


@pytest.mark.slow
def test_job_tables_equal_training_tables_ids(amazon_examples, kuaisar_builds):
    for data_dir in (amazon_examples[0], kuaisar_builds["ids"][0]):
        spec = reader.load_spec(data_dir)
        assert spec.cooccurrence.top_k == cooccurrence_tables.DEFAULT_TOP_K
        assert _max_neighbours(data_dir, spec) < spec.cooccurrence.top_k  # nothing pruned
        num_items = spec.vocab_sizes.item_table
        got = cooccurrence.load_artifact_tables(data_dir, spec, num_items)
        want = cooccurrence.training_tables(data_dir, spec, num_items)
        for table, expected in zip(got, want):
            _assert_same_table(table, expected)
        assert (spec.cooccurrence.pairs, spec.cooccurrence.transitions) == (
            want[0].num_pairs,
            want[1].num_pairs,
        )
        assert want[0].num_pairs and want[1].num_pairs


@pytest.mark.slow
def test_job_tables_equal_training_tables_raw_through_transform(kuaisar_formats):
    _, raw_dir, transform_dir = kuaisar_formats
    spec = reader.load_spec(raw_dir, transform_dir)
    num_items = spec.vocab_sizes.item_table
    table, transitions, note = cooccurrence.tables_for_training(raw_dir, spec, num_items)
    assert note is None
    want = cooccurrence.training_tables(raw_dir, spec, num_items)
    _assert_same_table(table, want[0])
    _assert_same_table(transitions, want[1])


class _Vocab:  # what the counting reads of sb.Vocabularies
    def __init__(self, items):
        self.items = items


@pytest.mark.slow
def test_artifact_is_the_same_bytes_whatever_the_order_and_batching(amazon_examples, tmp_path):
    """The job's counting on the fixture's training examples, shuffled, in small batches,
    twice: byte for byte the files the job wrote."""
    data_dir, manifest = amazon_examples
    spec = DataSpec.from_manifest(manifest)
    records = [
        (split, "rec", record.numpy())
        for split in ("train", "valid")
        for record in tf.data.TFRecordDataset(
            sorted(glob.glob(beam_job.example_pattern(data_dir, split, "rec")))
            + sorted(glob.glob(beam_job.example_pattern(data_dir, split, "search"))),
            compression_type="GZIP",
        )
    ]
    with open(os.path.join(data_dir, "vocab", "items.txt"), encoding="utf-8") as handle:
        items = {raw: i for i, raw in enumerate(handle.read().splitlines(), 1)}
    options = build_examples.build_options(
        build_examples.parse_args(
            ["--dataset", "amazon_beauty", "--output", "x", "--rec_len", "5", "--search_len", "5"]
        )[0]
    )
    for run in range(2):
        random.Random(run).shuffle(records)
        out = str(tmp_path / str(run))
        with beam.Pipeline(argv=IN_MEMORY) as pipeline:
            cooccurrence_tables.add_tables(
                pipeline | "Examples" >> beam.Create(records),
                pipeline | "Vocab" >> beam.Create([_Vocab(items)]),
                options,
                out,
                spec.cooccurrence.top_k,
            )
        for path in spec.cooccurrence.files.values():
            with open(os.path.join(out, path), "rb") as ours:
                with open(os.path.join(data_dir, path), "rb") as jobs:
                    assert ours.read() == jobs.read(), path


@pytest.mark.slow
def test_trainer_reads_the_artifact_not_the_training_split(
    amazon_examples, tmp_path, monkeypatch, caplog
):
    from unisar_tf.train.trainer import Trainer, TrainerOptions

    data_dir = str(tmp_path / "data")
    shutil.copytree(amazon_examples[0], data_dir)
    config = default_preset(seed=0, **TINY)

    def no_read(*args, **kwargs):
        raise AssertionError("the Trainer read the training split for its tables")

    monkeypatch.setattr(cooccurrence, "training_tables", no_read)
    trainer = Trainer(config, TrainerOptions(data_dir, str(tmp_path / "m1"), verbose=1))
    spec = reader.load_spec(data_dir)
    want = cooccurrence.load_artifact_tables(data_dir, spec, spec.vocab_sizes.item_table)
    layer = trainer.model.cooccurrence
    np.testing.assert_array_equal(layer.pair_keys.numpy(), want[0].pair_keys)
    np.testing.assert_array_equal(layer.item_totals.numpy(), want[0].item_totals)
    assert trainer.data.cooccurrence_pairs == spec.cooccurrence.pairs
    assert trainer.data.transition_pairs == spec.cooccurrence.transitions
    monkeypatch.undo()

    # An older build (no artifact in its manifest): counted in memory, with a note.
    with open(os.path.join(data_dir, "manifest.json"), encoding="utf-8") as handle:
        older = json.load(handle)
    del older["cooccurrence"]
    with open(os.path.join(data_dir, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump(copy.deepcopy(older), handle)
    shutil.rmtree(os.path.join(data_dir, "cooccurrence"))
    with caplog.at_level(logging.INFO, logger="unisar_tf.train.trainer"):
        older_trainer = Trainer(config, TrainerOptions(data_dir, str(tmp_path / "m2"), verbose=1))
    assert "no co-occurrence artifact" in caplog.text
    np.testing.assert_array_equal(
        older_trainer.model.cooccurrence.pair_keys.numpy(), want[0].pair_keys
    )


def test_last_history_items_is_shared_with_the_jobs_counting():
    # The job's workers import the rules without TensorFlow; the Trainer's module re-exports.
    from unisar_tf.data import cooccurrence_counts

    assert last_history_items is cooccurrence_counts.last_history_items


@pytest.mark.slow
def test_top_k_tool_prints_pairs_and_validation_metrics_per_k(amazon_examples, capsys):
    from unisar_tf.tools import cooccurrence_top_k as tool

    data_dir, manifest = amazon_examples
    rows = tool.measure(data_dir, (2, 500))
    assert [row["pairs"] for row in rows] == [
        len(top_k_pairs(*np.load(os.path.join(data_dir, "cooccurrence/pairs.npy")).T, 2)[0]),
        manifest["cooccurrence"]["pairs"],
    ]
    assert rows[0]["pairs"] < rows[1]["pairs"]
    assert 0 < rows[1]["rec pairs NDCG@10"] <= 1
    with pytest.raises(ValueError, match="keeps the top 500"):
        tool.measure(data_dir, (0,))
    tool.main(["--data_dir", data_dir, "--ks", "2,500"])
    assert "| 500 |" in capsys.readouterr().out
