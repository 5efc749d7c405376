"""Validation curve of the two-tower retrieval model: how many epochs, which settings.

    python -m unisar_tf.tools.two_tower_retrieval --data_dir out/beauty_q8 --epochs 5 \
        [--logq 1 --dim 64 ...]

Trains unisar_tf.train.two_tower (TwoTowerParams; flags override them) and after every
epoch prints Recall@50/100/200 and NDCG@100 of the validation positives over the whole
catalogue (a seeded `--validation_examples` subset), scored as
unisar_tf.tools.retrieval_recall scores (history left out, ties by popularity). This is how
TwoTowerParams' defaults were chosen (docs/online.md#retrieval).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Optional, Sequence

from unisar_tf.data.retrieval_index import TwoTowerParams, catalogue_from_vocab, read_sequences
from unisar_tf.tools.retrieval_recall import method_ranks, metrics_from_ranks, subsample


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--validation_examples", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    for field in dataclasses.fields(TwoTowerParams):
        parser.add_argument(
            f"--{field.name}",
            type=type(field.default),
            default=None,
            help=f"TwoTowerParams.{field.name} (default {field.default})",
        )
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from unisar_tf.train.two_tower import train_two_tower

    params = TwoTowerParams().replace(
        **{
            field.name: getattr(args, field.name)
            for field in dataclasses.fields(TwoTowerParams)
            if getattr(args, field.name) is not None
        }
    )
    catalogue = catalogue_from_vocab(args.data_dir)
    train = read_sequences(args.data_dir, "train", catalogue)
    valid = subsample(
        read_sequences(args.data_dir, "valid", catalogue), args.validation_examples, args.seed
    )
    print(f"{args.data_dir}: {params}", flush=True)
    started = time.time()

    def report(epoch, index):
        result = metrics_from_ranks(method_ranks(index.scores, index.popularity, valid))
        print(
            f"epoch {epoch}: "
            + "  ".join(f"{m} {v:.4f}" for m, v in result.items())
            + f"  ({time.time() - started:.0f} s)",
            flush=True,
        )

    train_two_tower(train, catalogue, params, args.seed, on_epoch=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
