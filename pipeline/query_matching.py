"""How well does plain query-attribute matching rank the clicked item? (Amazon data)

A semi-synthetic search task is only meaningful if the query does not give the answer away.
This scores every candidate of the built search examples by the number of query words among
its attributes (no learning at all) and reports HR/NDCG of the positive, two ways:
- pessimistic ties (the positive ranks below every candidate with an equal score; the
  convention of unisar_tf.metrics), and
- expected ties (the mean over random orderings of tied candidates).
For contrast it repeats the count with the old rule "the query is all the item's attributes"
(brand and every category level) on the same candidates.

    python -m pipeline.query_matching --data out/amazon_beauty \\
        --attributes ../shared/data/amazon_beauty/Beauty_item2attributes.json
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from feature_specs import ID_FORMAT_RAW
from feature_specs.layout import MANIFEST_FILE, vocab_path
from pipeline.adapters.amazon import load_attributes

KS = (1, 5, 10)


def _read_vocab(path: str) -> List[str]:
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as handle:
        return [""] + [line.rstrip("\n") for line in handle]  # index = dense id


def rank_metrics(scores: np.ndarray) -> Dict[str, float]:
    """scores (n, C), positive in column 0 -> HR@k / NDCG@k, pessimistic and expected ties."""
    positive = scores[:, :1]
    higher = (scores[:, 1:] > positive).sum(axis=1)
    ties = (scores[:, 1:] == positive).sum(axis=1)
    out: Dict[str, float] = {}
    pessimistic = higher + ties + 1
    for k in KS:
        out[f"HR@{k}"] = float(np.mean(pessimistic <= k))
    for k in (5, 10):
        out[f"NDCG@{k}"] = float(
            np.mean(np.where(pessimistic <= k, 1.0 / np.log2(pessimistic + 1), 0.0))
        )
    # Expected over uniform tie orders: the positive's rank is higher + 1 + U{0..ties}.
    for k in KS:
        hits = np.clip(k - higher, 0, ties + 1) / (ties + 1)
        out[f"HR@{k} (expected ties)"] = float(np.mean(hits))
    for k in (5, 10):
        gains = np.zeros(len(scores))
        for offset in range(int(ties.max()) + 1 if len(ties) else 0):
            rank = higher + 1 + offset
            valid = (offset <= ties) & (rank <= k)
            gains += np.where(valid, 1.0 / np.log2(rank + 1), 0.0) / (ties + 1)
        out[f"NDCG@{k} (expected ties)"] = float(np.mean(gains))
    return out


def search_lists(
    data_dir: str, split: str = "test", limit: int = 0
) -> Tuple[List[List[str]], List[set]]:
    """A split's search examples as raw strings: (candidate item ids per list, query words
    per list), from either id format (raw ids as they are, ids through vocab/)."""
    import tensorflow as tf

    from unisar_tf.data import reader

    with tf.io.gfile.GFile(os.path.join(data_dir, MANIFEST_FILE)) as handle:
        raw = json.load(handle).get("id_format") == ID_FORMAT_RAW
    if not raw:
        items = _read_vocab(vocab_path(data_dir, "items"))
        words = _read_vocab(vocab_path(data_dir, "words"))
        arrays = reader.load_arrays(
            data_dir,
            split,
            "search",
            features=["candidate_items", "query_tokens"],
            limit=limit or None,
        )
        return (
            [[items[i] for i in row] for row in arrays["candidate_items"]],
            [{words[w] for w in row if w} for row in arrays["query_tokens"]],
        )
    spec = {name: tf.io.VarLenFeature(tf.string) for name in ("candidate_items", "query_tokens")}
    records = tf.data.TFRecordDataset(
        reader.example_files(data_dir, split, "search"), compression_type="GZIP"
    )
    if limit:
        records = records.take(limit)
    candidates, queries = [], []
    for batch in records.batch(4096).map(lambda r: tf.io.parse_example(r, spec)):
        for name, out in (("candidate_items", candidates), ("query_tokens", queries)):
            dense = tf.sparse.to_dense(batch[name], default_value=b"").numpy()
            out.extend([[v.decode("utf-8") for v in row if v] for row in dense])
    return candidates, [set(words) for words in queries]


def matching_report(
    data_dir: str, attributes_path: str, split: str = "test", limit: int = 0
) -> Dict[str, Dict[str, float]]:
    attributes = load_attributes(attributes_path)
    candidates, queries = search_lists(data_dir, split, limit)
    candidate_attrs = [[set(attributes.get(item, ())) for item in row] for row in candidates]
    rule = np.array(
        [[len(q & attrs) for attrs in row] for q, row in zip(queries, candidate_attrs)], np.float64
    )
    full = np.array([[len(row[0] & attrs) for attrs in row] for row in candidate_attrs], np.float64)
    return {
        "this_rule": rank_metrics(rule),
        "all_attributes_query": rank_metrics(full),
        "examples": {"count": len(rule)},
    }


def format_report(report: Dict[str, Dict[str, float]]) -> str:
    metrics = [key for key in report["this_rule"]]
    lines = ["| query rule | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name in ("this_rule", "all_attributes_query"):
        lines.append(f"| {name} | " + " | ".join(f"{report[name][m]:.3f}" for m in metrics) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="output directory of build_examples")
    parser.add_argument("--attributes", required=True, help="item -> attribute ids JSON")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
    parser.add_argument("--limit", type=int, default=0, help="first N examples only (0 = all)")
    args = parser.parse_args(argv)
    report = matching_report(args.data, args.attributes, args.split, args.limit)
    print(
        f"query-attribute matching on {report['examples']['count']} {args.split} search "
        "examples (1 positive + negatives each):"
    )
    print(format_report(report))
    print(json.dumps(report, sort_keys=True))
    return report


if __name__ == "__main__":
    main()
