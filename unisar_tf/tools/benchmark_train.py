"""Training throughput benchmark: positives per second, step time, peak memory, epoch time.

    python -m unisar_tf.tools.benchmark_train --data_dir out/amazon_beauty
    python -m unisar_tf.tools.benchmark_train --data_dir out/amazon_beauty --cases packed

Each case runs in its own process (so peak memory is that case's alone): the Amazon preset at
batch 1,024 on the real TFRecords through the trainer's own input pipeline and train step
(streaming parse, fresh relevance negatives, Adam). After `--warmup` steps (the first one
traces the graph) it times `--steps` steps. A "positive" is one training example (its 4
negatives included), rec and search together. The "vs first case" column divides by the
first case of the same run, so it compares figures measured on the same machine and load
(docs/results.md keeps the authors' PyTorch figure on 2 cores, measured another day).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from unisar_tf.config import amazon_preset
from unisar_tf.data.reader import query_bank
from unisar_tf.train.inputs import epoch_steps, search_batch_size, training_dataset
from unisar_tf.train.trainer import Trainer, TrainerOptions

# name -> (config overrides, TF threading (inter_op, intra_op) or None for TF's default)
CASES = {
    "padded (reference layout)": ({"pack_history": False}, None),
    "packed": ({}, None),
    "packed + sparse L2": ({"embedding_l2_mode": "batch_rows"}, None),
    "packed + threads 2 inter-op x 1 intra-op": ({}, (2, 1)),
}


def measure(
    data_dir: str,
    overrides: dict,
    threads,
    steps: int,
    warmup: int,
    seed: int,
    transform_dir: str = None,
) -> dict:
    """Runs in the case's own process; returns its numbers."""
    import resource

    import tensorflow as tf

    if threads:
        tf.config.threading.set_inter_op_parallelism_threads(threads[0])
        tf.config.threading.set_intra_op_parallelism_threads(threads[1])

    started = time.time()
    trainer = Trainer(
        amazon_preset(**overrides),
        TrainerOptions(
            data_dir=data_dir, model_dir="/tmp/unused", seed=seed, transform_dir=transform_dir
        ),
    )
    config, manifest = trainer.config, trainer.spec
    counts = manifest.examples.split("train")
    bank = query_bank(data_dir, manifest)
    dataset = training_dataset(config, data_dir, manifest, bank, seed, epoch=0)
    step = trainer._make_train_step(dataset.element_spec)
    batches = iter(dataset.repeat())
    first = time.time()
    for _ in range(warmup):
        step(next(batches))
    first_steps = time.time() - first
    timed = time.time()
    for _ in range(steps):
        logs = step(next(batches))
    elapsed = time.time() - timed
    rows = config.training.batch_size + search_batch_size(
        counts["rec"], counts["search"], config.training.batch_size
    )
    per_step = elapsed / steps
    return {
        "seconds_per_step": per_step,
        "positives_per_second": rows / per_step,
        "rows_per_step": rows,
        "warmup_seconds": first_steps,
        "setup_seconds": first - started,
        "epoch_seconds": per_step * epoch_steps(config, counts),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "final_loss": float(logs["loss"]),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="out/amazon_beauty")
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated subset of: {', '.join(CASES)}"
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--transform_dir",
        default=None,
        help="raw-id data (--id_format raw): read it through this Transform "
        "graph, as the TFX pipeline's Trainer does",
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--_case", help=argparse.SUPPRESS)  # internal: run one case here
    args = parser.parse_args(argv)

    if args._case:
        overrides, threads = CASES[args._case]
        print(
            json.dumps(
                measure(
                    args.data_dir,
                    overrides,
                    threads,
                    args.steps,
                    args.warmup,
                    args.seed,
                    args.transform_dir,
                )
            )
        )
        return

    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; choose from {list(CASES)}")
    results = {}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for name in names:
        command = [
            sys.executable,
            "-m",
            "unisar_tf.tools.benchmark_train",
            "--data_dir",
            args.data_dir,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--seed",
            str(args.seed),
            "--_case",
            name,
        ]
        if args.transform_dir:
            command += ["--transform_dir", args.transform_dir]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode:
            raise SystemExit(f"case {name!r} failed:\n{done.stderr[-3000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name}: {results[name]['seconds_per_step']:.2f} s/step", flush=True)

    through = f" through Transform {args.transform_dir}" if args.transform_dir else ""
    print(
        f"\nAmazon preset, batch 1,024 rec + matching search batch, {args.data_dir}{through}; "
        f"{args.steps} timed steps after {args.warmup} warm-up; {os.cpu_count()} CPUs, "
        f"{platform.machine()}, {time.strftime('%Y-%m-%d')}\n"
    )
    first = results[names[0]]["positives_per_second"]
    print(
        f"| case | s/step | positives/s | vs first case ({names[0]}) | epoch (training only) "
        "| peak RSS | warm-up (trace) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['seconds_per_step']:.2f} | {r['positives_per_second']:.0f} | "
            f"{r['positives_per_second'] / first:.2f}x | {r['epoch_seconds']:.0f} s | "
            f"{r['peak_rss_gb']:.2f} GB | {r['warmup_seconds']:.0f} s |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
