"""Co-occurrence quality against K: the data job's tables pruned to the top K per item.

    python -m pipeline.build_examples --dataset amazon_beauty --output out/beauty_k0 \\
        --cooccurrence_top_k 0
    python -m unisar_tf.tools.cooccurrence_top_k --data_dir out/beauty_k0 --ks 10,20,50,100,0

No training: each K's tables (unisar_tf.data.cooccurrence.top_k_pairs, the job's own pruning,
applied to the unpruned artifact; item totals stay the full row sums, as in the model) score
the validation candidates of both tasks two ways, as the model's features read them:
- pairs: ItemKNN's sum over the distinct history items h of cooc(h, c) / sqrt(n(h) n(c));
- transitions: trans(last, c) / n(last), from the most recent behaviour's item.
Printed per K: pairs and transitions kept, the model's table bytes (int64 key + float32
count a pair, float32 totals), and HR@10 / NDCG@10 per task (pessimistic ties, as every
report). The split is "valid" unless --split says otherwise; choose K on validation only.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Dict, List, Sequence

import numpy as np
import scipy.sparse as sp

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
)
from unisar_tf import flags
from unisar_tf.data import reader
from unisar_tf.data.cooccurrence import (
    PAIRS,
    TRANSITIONS,
    history_items,
    id_sets,
    last_history_items,
    top_k_pairs,
)
from unisar_tf.metrics import ranking_metrics
from unisar_tf.train.baselines import sampled_product

TASKS = ("rec", "search")


def _load(data_dir: str, files, name: str):
    rows = np.load(os.path.join(data_dir, files[name]), allow_pickle=False)
    totals = np.load(os.path.join(data_dir, files[f"{name}_totals"]), allow_pickle=False)
    return rows, totals


def _scaled(rows: np.ndarray, totals: np.ndarray, symmetric: bool) -> sp.csr_matrix:
    """(N, N): cooc(h, c) / sqrt(n(h) n(c)), or trans(h, c) / n(h) (directed); n = the
    full totals (N,)."""
    n = len(totals)
    left, right, count = rows[:, 0], rows[:, 1], rows[:, 2].astype(np.float64)
    totals = totals.astype(np.float64)
    if symmetric:
        norm = np.sqrt(totals[left] * totals[right])
    else:
        norm = totals[left]
    values = np.divide(count, norm, out=np.zeros_like(count), where=norm > 0)
    return sp.csr_matrix((values, (left, right)), shape=(n, n))


def measure(data_dir: str, ks: Sequence[int], split: str = "valid") -> List[Dict]:
    """One row per K: {"K", "pairs", "transitions", "model_bytes", "<task> HR@10", ...}."""
    spec = reader.load_spec(data_dir)
    block = spec.cooccurrence
    if block is None:
        raise ValueError(f"{data_dir}: no co-occurrence artifact (build it with this data job)")
    if block.top_k and any(k == 0 or k > block.top_k for k in ks):
        raise ValueError(
            f"{data_dir} keeps the top {block.top_k}: K above that cannot be measured "
            "(build with --cooccurrence_top_k 0)"
        )
    tables = {name: _load(data_dir, block.files, name) for name in (PAIRS, TRANSITIONS)}
    examples = {
        task: _read(data_dir, split, task, spec) for task in spec.tasks_with_examples(split, TASKS)
    }
    results = []
    for k in ks:
        row: Dict = {"K": k}
        pruned = {}
        for name, (rows, totals) in tables.items():
            kept = np.stack(top_k_pairs(rows[:, 0], rows[:, 1], rows[:, 2], k), axis=1)
            pruned[name] = _scaled(kept, totals, symmetric=name == PAIRS)
            row[name] = len(kept)
        num_items = len(tables[PAIRS][1])
        row["model_bytes"] = 12 * (row[PAIRS] + row[TRANSITIONS]) + 8 * num_items
        for task, features in examples.items():
            candidates = features[CANDIDATE_ITEMS]
            history = id_sets(history_items(features), num_items)
            last = id_sets(last_history_items(features)[:, None], num_items)
            for name, matrix, source in (
                ("pairs", pruned[PAIRS], history),
                ("transitions", pruned[TRANSITIONS], last),
            ):
                metrics = ranking_metrics(sampled_product(source, matrix, candidates))
                row[f"{task} {name} HR@10"] = metrics["HR@10"]
                row[f"{task} {name} NDCG@10"] = metrics["NDCG@10"]
        results.append(row)
    return results


def _read(data_dir: str, split: str, task: str, spec) -> Dict[str, np.ndarray]:
    from unisar_tf.data.cooccurrence import read_split

    return read_split(
        data_dir,
        split,
        task,
        spec,
        (HISTORY_TYPES, REC_HISTORY_ITEMS, SEARCH_HISTORY_CLICKED_ITEMS, CANDIDATE_ITEMS),
    )


def table_markdown(results: List[Dict]) -> str:
    metrics = [key for key in results[0] if "@" in key]
    header = ["K", "pairs", "transitions", "model MB"] + metrics
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results:
        cells = [
            "all" if row["K"] == 0 else str(row["K"]),
            f"{row[PAIRS]:,}",
            f"{row[TRANSITIONS]:,}",
            f"{row['model_bytes'] / 1e6:.1f}",
        ] + [f"{row[key]:.4f}" for key in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True, help="a data job output built with K=0")
    parser.add_argument(
        "--ks",
        type=flags.comma_separated(int),
        default=(10, 20, 50, 100, 0),
        help="K values, comma-separated (0 = all)",
    )
    parser.add_argument("--split", default="valid", choices=("valid", "test"))
    args = parser.parse_args(argv)
    start = time.time()
    results = measure(args.data_dir, args.ks, args.split)
    print(f"{args.data_dir}, split {args.split}, {time.time() - start:.0f} s")
    print(table_markdown(results))


if __name__ == "__main__":
    main()
