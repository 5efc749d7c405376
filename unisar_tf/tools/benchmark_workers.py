"""Step time of the trainer on 1 process against N local workers (MultiWorkerMirroredStrategy).

    python -m unisar_tf.tools.benchmark_workers --data_dir out/beauty_q8 --workers 1,2

Each case runs `python -m unisar_tf.train` for 2 epochs of `--steps` steps at the same global
batch: 1 worker with the default strategy, N workers as N processes on loopback ports with
TF_CONFIG. The second epoch's training time (history.jsonl `train_seconds`; the first epoch
traces the step) divided by its steps is the step time. Validation is capped at
`--validation_rows` per task. Prints a Markdown table; on one machine the workers share its
cores, so this measures the all-reduce and coordination overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from unisar_tf.train.distribution import local_cluster


def run_case(
    data_dir: str, workers: int, steps: int, validation_rows: int, extra_flags: List[str], root: str
) -> Dict[str, float]:
    """Trains one case; {"seconds_per_step", "workers", "global_batch_examples_per_s"}."""
    model_dir = os.path.join(root, f"workers-{workers}")
    command = [
        sys.executable,
        "-m",
        "unisar_tf.train",
        "--data_dir",
        data_dir,
        "--model_dir",
        model_dir,
        "--max_epochs",
        "2",
        "--steps_per_epoch",
        str(steps),
        "--validation_rows",
        str(validation_rows),
        "--quiet",
        "--skip_test",
        "--sasrec_baseline",
        "false",
    ] + extra_flags
    base_env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    if workers == 1:
        processes = [
            subprocess.Popen(
                command + ["--distribution", "default"],
                env=base_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        ]
    else:
        processes = [
            subprocess.Popen(
                command + ["--distribution", "multi_worker"],
                env=dict(base_env, TF_CONFIG=tf_config),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for tf_config in local_cluster(workers)
        ]
    for process in processes:
        _, errors = process.communicate()
        if process.returncode:
            raise SystemExit(f"{workers} worker(s) failed:\n{errors.decode()[-3000:]}")
    with open(os.path.join(model_dir, "history.jsonl")) as handle:
        second = [json.loads(line) for line in handle][-1]
    with open(os.path.join(model_dir, "config.json")) as handle:
        batch = json.load(handle)["batch_size"]
    per_step = second["train_seconds"] / steps
    return {
        "workers": workers,
        "seconds_per_step": per_step,
        "rec_examples_per_second": batch / per_step,
    }


def main(argv: Optional[List[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--steps", type=int, default=20, help="training steps per epoch")
    parser.add_argument("--validation_rows", type=int, default=512)
    parser.add_argument(
        "--train_flag",
        action="append",
        default=[],
        help="a flag for unisar_tf.train, repeatable, e.g. --train_flag=--preset"
        " --train_flag=paper",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.workers.split(",") if part.strip()]
    results = []
    with tempfile.TemporaryDirectory() as root:
        for workers in counts:
            started = time.time()
            results.append(
                run_case(
                    args.data_dir, workers, args.steps, args.validation_rows, args.train_flag, root
                )
            )
            print(
                f"{workers} worker(s): {results[-1]['seconds_per_step']:.2f} s/step "
                f"({time.time() - started:.0f} s with start-up)",
                flush=True,
            )
    first = results[0]["seconds_per_step"]
    print(
        f"\n{args.data_dir}, {args.steps} timed steps (epoch 2), {os.cpu_count()} CPUs, "
        f"{platform.machine()}, {time.strftime('%Y-%m-%d')}\n"
    )
    print(f"| workers | s/step | rec examples/s (global batch) | step time vs {counts[0]} |")
    print("|---|---|---|---|")
    for row in results:
        print(
            f"| {row['workers']} | {row['seconds_per_step']:.3f} | "
            f"{row['rec_examples_per_second']:.0f} | {row['seconds_per_step'] / first:.2f}x |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
