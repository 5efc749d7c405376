"""The sizing model's arithmetic on hand-made constants and a hand-made build (no TensorFlow,
no Beam: the tool is NumPy and the standard library)."""

import gzip
import json
import struct

import numpy as np
import pytest

from unisar_tf.tools import sizing

# A build small enough to compute by hand.
TINY = sizing.BuildConstants(
    name="tiny",
    source="hand-made",
    users=10,
    items=100,
    words=5,
    events=100,
    train_examples=30,
    eval_examples=20,
    train_example_bytes=100.0,
    eval_example_bytes=200.0,
    gzip_ratio=0.5,
    train_id_slots=25,
    eval_id_slots=100,
    top_k=0,
    pairs_all=60,
    pair_increments=90,
    transitions_all=15,
    items_with_pairs=50,
    items_with_transitions=20,
    pair_shape=(),
    transition_shape=(),
)


def test_the_tool_imports_neither_tensorflow_nor_beam():
    import importlib

    source = importlib.util.find_spec("unisar_tf.tools.sizing").origin
    with open(source) as handle:
        top_level = [line for line in handle if line.startswith(("import ", "from "))]
    assert not [line for line in top_level if "tensorflow" in line or "apache_beam" in line]


def test_varint_widths():
    assert [sizing.varint_bytes(n) for n in (0, 1, 127, 128, 16383, 16384)] == [1, 1, 1, 2, 2, 3]
    assert sizing.varint_bytes(2_097_151) == 3
    assert sizing.varint_bytes(10_000_000) == 4


def test_distribution_shape_is_bin_means_over_the_mean():
    # mean 2: ratios 0.5, 0.5, 1, 2; zeros are not items with neighbours
    assert sizing.distribution_shape(np.array([0, 1, 1, 2, 4]), bins=4) == (0.5, 0.5, 1.0, 2.0)
    assert sizing.distribution_shape(np.array([1, 1, 2, 4]), bins=2) == (0.5, 1.5)
    assert sizing.distribution_shape(np.array([0, 0])) == ()


def test_kept_rows_caps_each_item_at_k():
    # 10 items, 1000 rows: mean 100 neighbours, half the items at 50, half at 150
    assert sizing.kept_rows(1000, 10, 50, (0.5, 1.5)) == 500  # 10 x 50
    assert sizing.kept_rows(1000, 10, 100, (0.5, 1.5)) == 750  # 10 x (50 + 100) / 2
    assert sizing.kept_rows(1000, 10, 200, (0.5, 1.5)) == 1000  # nobody above 200
    assert sizing.kept_rows(1000, 10, 0, (0.5, 1.5)) == 1000  # K = 0 keeps all
    assert sizing.kept_rows(1000, 10, 30, ()) == 300  # no shape: the bound items x K


def test_predict_by_hand():
    p = sizing.predict(20, 1000, TINY, sizing.Assumptions(top_k=500))
    assert (p.events, p.train_examples, p.eval_examples) == (200, 60, 40)
    assert p.example_bytes == 60 * 100 + 40 * 200 == 14_000
    assert p.file_bytes == 7_000
    assert p.shuffle_events == pytest.approx(200 * 90.3)
    # pairs and transitions double with the training examples (exponent 1)
    assert (p.pairs_all, p.pairs_kept, p.transitions_kept) == (120, 120, 30)
    assert p.pairs_bound == 1000 * 500
    # combine: 60 examples x (3 / 2 + 2) elements at 272 B, (180 increments + 60) x 16 B;
    # keyed items: 1000 x 0.5 with pairs and 1000 x 0.2 with transitions, capped at their
    # 120 and 30 rows; perfect combining: min(150, 210) elements, 150 distinct rows x 16 B
    assert p.shuffle_cooc_high == 210 * 272 + 240 * 16
    assert p.shuffle_cooc_low == 150 * 272 + 150 * 16
    assert p.shuffle_gather == 150 * 272 + 150 * 16
    assert p.artifact_bytes == 150 * 24 + 2 * 1001 * 8
    assert p.model_bytes == 150 * 12 + 2 * 1001 * 4
    assert p.memory_vocab == pytest.approx((20 + 1000 + 5) * 148.5)
    assert p.memory_process == pytest.approx((20 + 1000 + 5) * 148.5 + 1000 * 25)
    assert p.memory_writer == pytest.approx(150 * 74.8)


def test_assumptions_move_the_figures():
    base = sizing.predict(20, 1000, TINY)
    more = sizing.predict(20, 1000, TINY, sizing.Assumptions(events_per_user=20.0))
    assert (more.events, more.train_examples) == (400, 120)  # twice the events per user
    slower = sizing.predict(20, 1000, TINY, sizing.Assumptions(pair_growth_exponent=0.5))
    assert slower.pairs_all == pytest.approx(60 * 2**0.5)
    assert base.pairs_kept == 120  # K = 500 keeps all of them
    pruned = sizing.predict(20, 100, TINY, sizing.Assumptions(top_k=1))
    assert pruned.pairs_kept == 50  # 50 items with pairs x K = 1, below the 120 pairs
    wide = sizing.predict(20, 1_000_000, TINY, sizing.Assumptions(widest_ids=True))
    # 100 items: 1-byte ids; 1M items: 3 bytes, 2 more per candidate slot
    assert wide.example_bytes == 60 * (100 + 25 * 2) + 40 * (200 + 100 * 2)
    longer = sizing.predict(20, 1000, TINY, sizing.Assumptions(id_chars=14.5))
    assert longer.memory_vocab == pytest.approx((20 + 1000 + 5) * (148.5 + 10))


def test_epoch_hours_and_replicas():
    a = sizing.Assumptions(gpu_speedup=10, scaling_efficiency=0.5)
    assert sizing.epoch_hours(3.6e6, 100, 0, a) == pytest.approx(10.0)  # the CPU itself
    assert sizing.epoch_hours(3.6e6, 100, 2, a) == pytest.approx(1.0)  # 100 x 10 x 2 x 0.5
    b = sizing.Assumptions()
    assert [sizing.replicas(q, 228, b) for q in (1, 228, 229, 1000)] == [1, 1, 2, 5]
    assert sizing.replicas(1000, 228, sizing.Assumptions(headroom=0.5)) == 9  # 1000 / 114


def _tfrecord_gz(path, records):
    with gzip.open(path, "wb") as handle:
        for record in records:  # length, its CRC, record, its CRC (CRCs not checked here)
            handle.write(struct.pack("<Q", len(record)) + b"\0" * 4 + record + b"\0" * 4)


def _tiny_build(root):
    for split in ("train", "valid", "test"):
        (root / split).mkdir(parents=True)
    _tfrecord_gz(root / "train" / "rec-00000-of-00001.tfrecord.gz", [b"a" * 10, b"b" * 20])
    _tfrecord_gz(root / "valid" / "rec-00000-of-00001.tfrecord.gz", [b"c" * 30])
    _tfrecord_gz(root / "test" / "rec-00000-of-00001.tfrecord.gz", [b"d" * 50])
    (root / "cooccurrence").mkdir()
    pairs = np.array([[1, 2, 3], [1, 3, 1], [2, 1, 3], [3, 1, 1]], np.int64)
    np.save(root / "cooccurrence" / "pairs.npy", pairs)
    np.save(root / "cooccurrence" / "pairs_totals.npy", np.array([0, 4, 3, 1], np.int64))
    np.save(root / "cooccurrence" / "transitions.npy", np.array([[1, 2, 1]], np.int64))
    np.save(root / "cooccurrence" / "transitions_totals.npy", np.array([0, 1, 0, 0], np.int64))
    files = {f"{s}/rec": f"{s}/rec-*.tfrecord.gz" for s in ("train", "valid", "test")}
    manifest = {
        "vocab_sizes": {"users": 4, "items": 3, "words": 2},
        "counters": {"events": 12},
        "examples": {
            s: {"rec": n, "search": 0} for s, n in (("train", 2), ("valid", 1), ("test", 1))
        },
        "shapes": {
            "rec_len": 50,
            "search_len": 30,
            "query_len": 8,
            "clicks_per_session": 1,
            "train_candidates": 5,
            "train_negative_pool": 20,
            "eval_candidates": 100,
        },
        "files": files,
        "id_format": "ids",
        "cooccurrence": {
            "top_k": 0,
            "pairs": 4,
            "transitions": 1,
            "files": {
                "pairs": "cooccurrence/pairs.npy",
                "pairs_totals": "cooccurrence/pairs_totals.npy",
                "transitions": "cooccurrence/transitions.npy",
                "transitions_totals": "cooccurrence/transitions_totals.npy",
            },
        },
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_calibrate_reads_a_build(tmp_path):
    c = sizing.calibrate(str(_tiny_build(tmp_path / "tiny")))
    assert (c.users, c.items, c.words, c.events) == (4, 3, 2, 12)
    assert (c.train_examples, c.eval_examples) == (2, 2)
    assert c.train_example_bytes == 15.0  # (10 + 20) / 2
    assert c.eval_example_bytes == 40.0  # (30 + 50) / 2
    assert (c.train_id_slots, c.eval_id_slots) == (25, 100)
    assert (c.pairs_all, c.pair_increments, c.transitions_all) == (4, 8, 1)
    assert (c.items_with_pairs, c.items_with_transitions) == (3, 1)
    assert c.pair_shape == (0.75, 0.75, 1.5)  # neighbours 2, 1, 1 over their mean 4/3
    assert sizing.pruned_rows(str(tmp_path / "tiny"), "pairs", 1) == 3  # item 1 keeps 1 of 2
    assert sizing.pruned_rows(str(tmp_path / "tiny"), "pairs", 0) == 4


def test_check_of_a_build_against_its_own_constants_is_exact(tmp_path):
    root = str(_tiny_build(tmp_path / "tiny"))
    text = sizing.check(root, sizing.calibrate(root), sizing.Assumptions(top_k=500))
    errors = [
        line.split(" | ")[3] for line in text.splitlines() if line.startswith("| ") and "%" in line
    ]
    assert errors and all(e in ("+0.0%", "-0.0%") for e in errors), text


def test_default_report_names_its_constants_and_assumptions(capsys):
    assert sizing.main(["--users", "1e6", "--items", "1e5", "--qps", "1000", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    for needle in ("ASSUMPTIONS", "--gpu_speedup 10.0", "results.md 2026-11-27", "Serving latency",
                   "| 1M | 100k |", "8 GPU h", "1k QPS"):  # fmt: skip
        assert needle in out, needle
    # 1k QPS at the model server's measured 228 requests/s: 5 replicas
    assert "| model server, 8 clients | 228 | 50.9 | 5 |" in out


def test_a_given_rate_and_operating_point_are_added(capsys):
    argv = ["--users", "1e6", "--items", "1e5", "--qps", "1000", "--gpus", "8"]
    argv += ["--positives_per_s", "1000", "--requests_per_s", "400", "--p99_ms", "8"]
    assert sizing.main(argv) == 0
    out = capsys.readouterr().out
    # 1M users x 3.026 training examples = 3.03M positives: 0.84 h at 1,000/s, 0.0105 h at
    # 1,000/s x 10 (speedup) x 8 GPUs
    assert "| given | 1M | 3.03M | 1,000 | 0.84 | 0.0105 |" in out
    assert "| given | 400 | 8.0 | 3 |" in out  # 1,000 QPS / 400: 3 replicas


def test_human_units():
    assert sizing.human(1.5e9, "B") == "1.5 GB"
    assert sizing.human(2.5e12, "B") == "2.5 TB"
    assert sizing.human(999, "B") == "999 B"
    assert sizing.human(3.03e6) == "3.03M"
    assert sizing.human(5e9) == "5B"
