"""Ablation runner's table and chart from hand-made reports (no training here)."""

import pytest

from unisar_tf.config import ABLATIONS, BASELINES
from unisar_tf.tools import ablation


def metrics(ndcg5, ndcg10):
    return {"HR@1": 0.0, "HR@5": 0.0, "HR@10": 0.0, "NDCG@5": ndcg5, "NDCG@10": ndcg10}


def report(rec=None, search=None, best_epoch=3, epochs_run=8):
    per_task = {}
    if rec is not None:
        per_task["rec"] = metrics(*rec)
    if search is not None:
        per_task["search"] = metrics(*search)
    return {"unisar": per_task, "best_epoch": best_epoch, "epochs_run": epochs_run}


REPORTS = {
    "UniSAR": report((0.30, 0.40), (0.60, 0.70)),
    "w/o r2r": report((0.25, 0.35), (0.61, 0.72)),
    "w/o joint training (rec)": report(rec=(0.28, 0.38), best_epoch=4, epochs_run=9),
    "w/o joint training (search)": report(search=(0.50, 0.55), best_epoch=5, epochs_run=10),
    "no history": report((0.10, 0.15), (0.40, 0.45)),
}
BASELINE_METRICS = {"popularity": {"rec": metrics(0.02, 0.03), "search": metrics(0.01, 0.02)}}


def test_rows_merge_the_two_single_task_models_into_one_row():
    rows = ablation.table_rows(REPORTS, BASELINE_METRICS)
    names = [row["name"] for row in rows]
    # Spec-12 variants first (joint training last among them), then baselines.
    assert names == ["UniSAR", "w/o r2r", "w/o joint training", "no history", "popularity"]
    joint = rows[2]
    assert joint["rec"]["NDCG@10"] == 0.38 and joint["search"]["NDCG@10"] == 0.55
    assert joint["best_epoch"] == "4/5" and joint["epochs_run"] == "9/10"


def test_markdown_has_hand_computed_deltas_against_unisar():
    rows = ablation.table_rows(REPORTS, BASELINE_METRICS)
    text = ablation.ablation_markdown(rows, "header")
    lines = {
        line.split(" | ")[0].lstrip("| "): line
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| variant")
    }
    assert lines["UniSAR"] == "| UniSAR | 0.3000 / 0.4000 | 0.6000 / 0.7000 |  |  | 3 | 8 |"
    assert "| -0.0500 | +0.0200 |" in lines["w/o r2r"]  # 0.35 - 0.40, 0.72 - 0.70
    assert "| -0.0200 | -0.1500 |" in lines["w/o joint training"]
    assert "| -0.3700 | -0.6800 |" in lines["popularity"]
    assert text.startswith("header\n")


def test_bar_chart_writes_a_png(tmp_path):
    path = tmp_path / "ablation.png"
    ablation.bar_chart(ablation.table_rows(REPORTS, BASELINE_METRICS), str(path), "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


def test_variants_cover_spec_12_and_the_baselines_and_reject_unknown_names():
    everything = ablation.variant_overrides()
    assert set(everything) == set(ABLATIONS) | set(BASELINES)
    assert everything["no history"] == {"use_history": False}
    assert ablation.variant_overrides(["w/o r2r"]) == {"w/o r2r": {"use_r2r": False}}
    with pytest.raises(ValueError, match="unknown variants"):
        ablation.variant_overrides(["w/o everything"])
    assert len({ablation.slug(name) for name in everything}) == len(everything)


def test_set_overrides_are_parsed_as_json_with_strings_as_fallback():
    args = ablation.parse_args(
        [
            "--data_dir",
            "d",
            "--out_dir",
            "o",
            "--set",
            "batch_size=256",
            "--set",
            "tower_units=[16,8]",
            "--set",
            "use_mmoe=false",
            "--set",
            "embedding_l2_mode=batch_rows",
            "--variants",
            "UniSAR, no history",
        ]
    )
    assert args.base_overrides == {
        "batch_size": 256,
        "tower_units": [16, 8],
        "use_mmoe": False,
        "embedding_l2_mode": "batch_rows",
    }
    assert args.variants == ["UniSAR", "no history"]
