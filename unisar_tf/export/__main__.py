"""Export a trained run's best checkpoint as a versioned serving SavedModel.

    python -m unisar_tf.export --model_dir out/models/unisar --data_dir out/amazon_beauty \
        --serving_dir out/serving
"""
from __future__ import annotations

import argparse
import os

from feature_specs.layout import VOCAB_DIR
from unisar_tf.export.push import push
from unisar_tf.train.run_dir import load_trained_model, run_transform_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Export a trained run's best checkpoint as a versioned serving SavedModel.")
    parser.add_argument("--model_dir", required=True, help="the trainer's --model_dir")
    parser.add_argument("--data_dir", required=True, help="the data job's output (vocab/)")
    parser.add_argument("--serving_dir", default="out/serving",
                        help="writes <serving_dir>/unisar/<version>")
    parser.add_argument("--version", type=int, default=None)
    args = parser.parse_args(argv)
    model = load_trained_model(args.model_dir, args.data_dir)
    # A run trained through a Transform graph (options.json) serves with that graph.
    transform_dir = run_transform_dir(args.model_dir)
    vocab_dir = None if transform_dir else os.path.join(args.data_dir, VOCAB_DIR)
    path = push(model, vocab_dir, args.serving_dir, args.version, transform_dir)
    print(f"exported {path}")


if __name__ == "__main__":
    main()
