"""Export a trained run's best checkpoint as a versioned serving SavedModel.

    python -m unisar_tf.export --model_dir out/models/unisar --data_dir out/amazon_beauty \
        --serving_dir out/serving

Exits 1 with "error: ..." (nothing written) when the run does not fit the data, has no
finished epoch, or its checkpoint is damaged (the file is named).
"""

from __future__ import annotations

import argparse
import os
import sys

import tensorflow as tf

from feature_specs.layout import VOCAB_DIR
from unisar_tf.export.checkpoint import DamagedCheckpointError, check_checkpoint
from unisar_tf.export.push import push
from unisar_tf.train.run_dir import DataMismatchError, load_trained_model, run_transform_dir

BEST_DIR = "best"  # the run's best validation checkpoint (unisar_tf.train.run_dir)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Export a trained run's best checkpoint as a versioned serving SavedModel."
    )
    parser.add_argument("--model_dir", required=True, help="the trainer's --model_dir")
    parser.add_argument("--data_dir", required=True, help="the data job's output (vocab/)")
    parser.add_argument(
        "--serving_dir", default="out/serving", help="writes <serving_dir>/unisar/<version>"
    )
    parser.add_argument("--version", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        best = tf.train.latest_checkpoint(os.path.join(args.model_dir, BEST_DIR))
        if best is not None:  # load_trained_model says when there is none
            check_checkpoint(best)
        model = load_trained_model(args.model_dir, args.data_dir)
    except (DamagedCheckpointError, DataMismatchError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    # A run trained through a Transform graph (options.json) serves with that graph.
    transform_dir = run_transform_dir(args.model_dir)
    vocab_dir = None if transform_dir else os.path.join(args.data_dir, VOCAB_DIR)
    path = push(model, vocab_dir, args.serving_dir, args.version, transform_dir)
    print(f"exported {path}")


if __name__ == "__main__":
    main()
