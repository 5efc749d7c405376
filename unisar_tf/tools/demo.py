"""The demo: planted-structure synthetic data through the project's own Trainer and report.

    python -m unisar_tf.tools.demo [--users 1500 --epochs 6 --out_dir out/demo ...]

Writes the synthetic data (unisar_tf.data.synthetic) in the data job's layout, trains UniSAR
on it with `unisar_tf.train.trainer.Trainer` (the same training path as
`python -m unisar_tf.train` and the TFX Trainer), and prints the best checkpoint's test
metrics next to the baselines on the same lists (`unisar_tf.train.evaluation.evaluate_best`:
popularity, random, ItemKNN, query match).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Dict, List, Optional

from feature_specs.data_spec import DataSpec
from unisar_tf import logs
from unisar_tf.config import DataFacts, kuaisar_preset
from unisar_tf.data.synthetic import generate_synthetic_data, write_data_dir
from unisar_tf.flags import deprecated_alias
from unisar_tf.metrics import metrics_table
from unisar_tf.train.evaluation import evaluate_best
from unisar_tf.train.trainer import Trainer, TrainerOptions

MODEL_ROWS = ("unisar", "popularity", "random", "ItemKNN", "query match")


def run_demo(
    num_users: int = 1500,
    num_items: int = 400,
    num_words: int = 100,
    epochs: int = 6,
    batch_size: int = 128,
    seed: int = 0,
    verbose: int = 1,
    out_dir: Optional[str] = None,
    **config_overrides,
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Writes, trains and scores; returns {"unisar" | baseline: {task: metrics}} on test.

    out_dir: where the data (`data/`) and the run (`model/`) go; default a temporary
    directory, removed afterwards.
    """
    # Synthetic queries have at most 3 words and sessions at most 2 clicks: shorter padding
    # than the spec's 50 / 5 keeps the demo fast without changing the model.
    facts = DataFacts(
        num_users=num_users + 1,
        num_items=num_items,
        num_words=num_words,
        rec_len=30,
        search_len=30,
        query_len=8,
        clicks_per_session=2,
    )
    overrides = dict(batch_size=batch_size, num_relevance_negatives=256, seed=seed)
    overrides.update(config_overrides)
    config = kuaisar_preset(**overrides)
    data = generate_synthetic_data(
        facts,
        num_train_negatives=config.training.num_train_negatives,
        num_eval_negatives=config.training.num_eval_negatives,
        seed=seed,
    )
    with tempfile.TemporaryDirectory() as scratch:
        root = out_dir or scratch
        data_dir, model_dir = os.path.join(root, "data"), os.path.join(root, "model")
        manifest = write_data_dir(data, facts, data_dir, seed=seed)
        if verbose:
            counts = DataSpec.of(manifest).examples
            print(
                f"synthetic data in {data_dir}: {counts.count('train', 'rec')} rec + "
                f"{counts.count('train', 'search')} search training examples, "
                f"{counts.count('test', 'rec')} + {counts.count('test', 'search')} test "
                "examples (1 "
                f"positive + {config.training.num_eval_negatives} negatives)",
                flush=True,
            )
        Trainer(
            config,
            TrainerOptions(
                data_dir, model_dir, max_epochs=epochs, seed=seed, verbose=1 if verbose else 0
            ),
        ).fit()
        report = evaluate_best(model_dir, data_dir, "test", write=out_dir is not None)
    return {name: report[name] for name in MODEL_ROWS if name in report}


def main(argv: Optional[List[str]] = None) -> int:
    logs.setup(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--max_epochs", type=int, default=6)
    deprecated_alias(parser, "--epochs", "--max_epochs")
    parser.add_argument("--batch_size", type=int, default=128)
    deprecated_alias(parser, "--batch-size", "--batch_size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out_dir",
        default=None,
        help="keep the data and the run here (default: a temporary directory)",
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    logs.add_verbose_flag(parser)
    args = parser.parse_args(argv)

    results = run_demo(
        args.users,
        args.items,
        args.words,
        args.max_epochs,
        args.batch_size,
        args.seed,
        out_dir=args.out_dir,
    )
    print("\nTest metrics on held-out synthetic data:")
    print(metrics_table(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
