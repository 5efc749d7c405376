"""Time-to-quality benchmark: wall time and epochs until validation reaches 99% of the best.

    python -m unisar_tf.tools.time_to_quality --data_dir out/beauty --model_dir out/ttq/default \
        [--preset default] [--max_epochs 8] [--fraction 0.99] [--set name=value ...]

Trains one configuration with the project's Trainer (full validation split after every
epoch, its own early stopping), then reads the run's history.jsonl and prints a Markdown
table: per epoch the cumulative wall time (set-up included: reading the data's tables,
building the model), the validation score (mean NDCG@5 over the tasks) and NDCG@10 per task;
then the first epoch whose score reaches `fraction` of the run's best, and its time. The
machine's cores, load average and the date are printed with it, since the numbers mean
little without them. `--from_model_dir` re-reads a finished run instead of training.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from typing import List, Optional, Sequence

from unisar_tf import logs
from unisar_tf.config import preset
from unisar_tf.train.trainer import Trainer, TrainerOptions


def read_history(model_dir: str) -> List[dict]:
    with open(os.path.join(model_dir, "history.jsonl")) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def time_to_quality(history: Sequence[dict], setup_seconds: float, fraction: float) -> dict:
    """{"best", "epoch", "seconds", "rows"}: the first epoch with score >= fraction * best."""
    if not history:
        raise ValueError("the run has no finished epoch")
    best = max(row["validation_score"] for row in history)
    elapsed, rows, reached = setup_seconds, [], None
    for row in history:
        elapsed += row["seconds"]
        rows.append(dict(row, elapsed=elapsed))
        if reached is None and row["validation_score"] >= fraction * best:
            reached = rows[-1]
    return {
        "best": best,
        "epoch": reached["epoch"],
        "seconds": reached["elapsed"],
        "rows": rows,
        "setup_seconds": setup_seconds,
    }


def format_table(result: dict, fraction: float, header: str) -> str:
    tasks = sorted(result["rows"][0]["validation"])
    lines = [
        header,
        "",
        "| epoch | cumulative s | score (mean NDCG@5) | "
        + " | ".join(f"{task} NDCG@10" for task in tasks)
        + " |",
        "|---|---|---|" + "---|" * len(tasks),
    ]
    for row in result["rows"]:
        cells = " | ".join(f"{row['validation'][task]['NDCG@10']:.4f}" for task in tasks)
        mark = " (reached)" if row["epoch"] == result["epoch"] else ""
        lines.append(
            f"| {row['epoch']}{mark} | {row['elapsed']:.0f} | "
            f"{row['validation_score']:.4f} | {cells} |"
        )
    setup = (
        f"set-up ({result['setup_seconds']:.0f} s) included"
        if result["setup_seconds"]
        else "set-up not recorded (a re-read run)"
    )
    lines += [
        "",
        f"Best score {result['best']:.4f}; {fraction:.0%} of it reached after epoch "
        f"{result['epoch']}, {result['seconds']:.0f} s ({result['seconds'] / 60:.1f} min) "
        f"from the start, {setup}.",
    ]
    return "\n".join(lines) + "\n"


def machine_line() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"load average at the end {load}"
    )


def main(argv: Optional[Sequence[str]] = None) -> dict:
    logs.setup(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--max_epochs", type=int, default=8)
    parser.add_argument("--fraction", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a UniSARConfig override (JSON value), e.g. --set batch_size=512",
    )
    parser.add_argument(
        "--from_model_dir", action="store_true", help="only re-read the finished run in --model_dir"
    )
    logs.add_verbose_flag(parser)
    args = parser.parse_args(argv)

    setup_seconds = 0.0
    if not args.from_model_dir:
        if os.path.exists(os.path.join(args.model_dir, "history.jsonl")):
            raise SystemExit(
                f"{args.model_dir} already holds a run: a resumed run would not "
                "be timed from its start; give a new --model_dir"
            )
        overrides = {}
        for assignment in args.set:
            name, _, value = assignment.partition("=")
            try:
                overrides[name] = json.loads(value)
            except json.JSONDecodeError:
                overrides[name] = value
        started = time.time()
        trainer = Trainer(
            preset(args.preset, seed=args.seed, **overrides),
            TrainerOptions(
                args.data_dir, args.model_dir, max_epochs=args.max_epochs, seed=args.seed, verbose=1
            ),
        )
        setup_seconds = time.time() - started
        trainer.fit()
        with open(os.path.join(args.model_dir, "setup_seconds.json"), "w") as out:
            json.dump({"setup_seconds": setup_seconds}, out)
    else:
        path = os.path.join(args.model_dir, "setup_seconds.json")
        if os.path.exists(path):
            with open(path) as handle:
                setup_seconds = json.load(handle)["setup_seconds"]
    result = time_to_quality(read_history(args.model_dir), setup_seconds, args.fraction)
    header = (
        f"`{args.data_dir}`, preset `{args.preset}`"
        + (f" with {', '.join(args.set)}" if args.set else "")
        + f", seed {args.seed}; {machine_line()}"
    )
    print(format_table(result, args.fraction, header), flush=True)
    return result


if __name__ == "__main__":
    main()
