"""The README's main job: raw Amazon Beauty logs -> TFRecords -> UniSAR -> test HR/NDCG.

    python -m pipeline.main_job [--output out/amazon_beauty --epochs 2 --batch_size 256]

1. Builds the sequence examples with the Beam job (pipeline/build_examples.py; DirectRunner,
   2 processes), printing the manifest.
2. Reports how well plain query-attribute matching ranks the clicked item of the test search
   examples (the semi-synthetic search task's difficulty, pipeline/query_matching.py).
3. Trains UniSAR (Amazon preset) with the trainer (unisar_tf/train.py: streaming TFRecords,
   validation every epoch, checkpoints) for a short budget, and prints the test metrics of
   the best validation epoch for both tasks next to item popularity and random ranking on
   the same examples. A short, honest end-to-end run, not a converged model: the full run
   is `python -m unisar_tf.train` without an epoch cap (docs/training.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "out", "amazon_beauty"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=256,
                        help="rec examples per step (the preset's 1,024 gives 34 steps an epoch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model_dir",
                        default=os.path.join(REPO_ROOT, "out", "models", "main_job"))
    parser.add_argument("--serving_dir", default=os.path.join(REPO_ROOT, "out", "serving"),
                        help="the trained model is exported to <serving_dir>/unisar/<version>")
    parser.add_argument("--skip_build", action="store_true",
                        help="reuse the examples already in --output")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    from pipeline import build_examples

    if not args.skip_build:
        print("== 1/3 building sequence examples from ../shared/data/amazon_beauty", flush=True)
        # A pool of 20 negatives per training example: the trainer draws 4 fresh ones from it
        # every epoch (fixed negatives let the model memorise them; docs/training.md).
        build_examples.main(["--dataset", "amazon_beauty", "--output", args.output,
                             "--seed", str(args.seed), "--train_negative_pool", "20"])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipeline import query_matching

    print("\n== 2/3 query-attribute matching on the test search examples", flush=True)
    attributes = os.path.join(build_examples.DEFAULT_SHARED_DATA, "amazon_beauty",
                              "Beauty_item2attributes.json")
    matching = query_matching.matching_report(args.output, attributes)
    print(query_matching.format_report(matching))

    print(f"\n== 3/3 training UniSAR (Amazon preset, batch {args.batch_size}) for "
          f"{args.epochs} epoch(s) with the trainer", flush=True)
    import shutil

    from unisar_tf import train

    if not args.skip_build and os.path.isdir(args.model_dir):
        shutil.rmtree(args.model_dir)  # new examples: a checkpoint of old ones must not resume
    started = time.time()
    outcome = train.run(train.build_parser().parse_args([
        "--data_dir", args.output, "--model_dir", args.model_dir,
        "--max_epochs", str(args.epochs), "--batch_size", str(args.batch_size),
        "--seed", str(args.seed), "--serving_dir", args.serving_dir, "--quiet"]))
    print(f"({time.time() - started:.0f}s of training, validation and test scoring; "
          "1 positive + 99 popularity-sampled negatives per example)")
    print(f"\nexamples, vocabularies and manifest: {args.output}")
    print(f"checkpoints, TensorBoard logs and reports: {args.model_dir}")
    print(f"serving SavedModel (recommend / search / serving_default): {outcome['export']}")
    print("serve it locally: python -m serving.server --model_base_path "
          f"{os.path.dirname(outcome['export'])}  (docs/serving.md)")
    report = outcome["test"]
    results = {name: report[name] for name in ("unisar", "popularity", "random")}
    summary = {"metrics": results, "query_matching": matching, "export": outcome["export"]}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
