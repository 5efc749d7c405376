"""The main job for now: generate planted-structure data, train UniSAR briefly, report HR/NDCG.

    python -m unisar_tf.demo [--users 1500 --epochs 6 ...]

Prints the test metrics of both tasks next to two references computed on the same examples:
random ranking (the expectation, exact) and item popularity in the training data.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np

METRIC_NAMES = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10")


def random_ranking_metrics(num_candidates: int) -> Dict[str, float]:
    """Exact expectation of each metric when the positive's rank is uniform on 1..C."""
    ranks = np.arange(1, num_candidates + 1)
    from unisar_tf.metrics import ranking_metrics_from_ranks
    return ranking_metrics_from_ranks(ranks)


def popularity_scores(train_features: List[dict], candidates: np.ndarray, num_items: int
                      ) -> np.ndarray:
    """Score candidates (n, C) by how often each item is a training positive."""
    from feature_specs import CANDIDATE_ITEMS
    counts = np.zeros(num_items, dtype=np.float64)
    for features in train_features:
        np.add.at(counts, features[CANDIDATE_ITEMS][:, 0], 1.0)
    return counts[candidates]


def run_demo(num_users: int = 1500, num_items: int = 400, num_words: int = 100,
             epochs: int = 6, batch_size: int = 128, seed: int = 0, verbose: int = 1,
             **config_overrides) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Train on synthetic data; returns {"unisar"|"popularity"|"random": {task: metrics}}."""
    import tensorflow as tf

    from feature_specs import CANDIDATE_ITEMS
    from unisar_tf.config import kuaisar_preset
    from unisar_tf.metrics import ranking_metrics
    from unisar_tf.model import build_model
    from unisar_tf.synthetic import generate_synthetic_data
    from unisar_tf.training import evaluate_tasks, joint_training_dataset

    tf.keras.utils.set_random_seed(seed)
    # Synthetic queries have at most 3 words and sessions at most 2 clicks: shorter padding
    # than the spec's 50 / 5 keeps the demo fast without changing the model.
    overrides = dict(num_users=num_users + 1, num_items=num_items, num_words=num_words,
                     batch_size=batch_size, query_length=8, clicks_per_session=2,
                     num_relevance_negatives=256, seed=seed)
    overrides.update(config_overrides)
    config = kuaisar_preset(**overrides)
    data = generate_synthetic_data(config, seed=seed)
    model = build_model(config)
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    train = joint_training_dataset(config, data.train_rec, data.train_search,
                                   data.train_queries, seed=seed)
    if verbose:
        print(f"synthetic data: {len(data.train_rec[CANDIDATE_ITEMS])} rec + "
              f"{len(data.train_search[CANDIDATE_ITEMS])} search training examples, "
              f"{len(data.test_rec[CANDIDATE_ITEMS])} + {len(data.test_search[CANDIDATE_ITEMS])}"
              f" test examples (1 positive + {config.num_eval_negatives} negatives)", flush=True)
    for epoch in range(epochs):
        started = time.time()
        model.fit(train, epochs=1, verbose=0)
        valid = evaluate_tasks(model, {"rec": data.valid_rec, "search": data.valid_search})
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: {time.time() - started:.1f}s, validation "
                  f"NDCG@5 rec {valid['rec']['NDCG@5']:.4f} search "
                  f"{valid['search']['NDCG@5']:.4f}", flush=True)

    results = {"unisar": evaluate_tasks(model, {"rec": data.test_rec,
                                                "search": data.test_search})}
    train_sets = [data.train_rec, data.train_search]
    results["popularity"] = {
        task: ranking_metrics(popularity_scores(train_sets, test[CANDIDATE_ITEMS],
                                                config.num_items))
        for task, test in (("rec", data.test_rec), ("search", data.test_search))}
    random = random_ranking_metrics(config.num_eval_negatives + 1)
    results["random"] = {"rec": random, "search": random}
    return results


def format_table(results: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    lines = ["| model | task | " + " | ".join(METRIC_NAMES) + " |",
             "|---|---|" + "---|" * len(METRIC_NAMES)]
    for model_name, per_task in results.items():
        for task, metrics in per_task.items():
            values = " | ".join(f"{metrics[name]:.4f}" for name in METRIC_NAMES)
            lines.append(f"| {model_name} | {task} | {values} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    results = run_demo(args.users, args.items, args.words, args.epochs, args.batch_size,
                       args.seed)
    print()
    print("Test metrics on held-out synthetic data:")
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
