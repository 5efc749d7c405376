"""Benchmark of the sequence-example build: wall time, events/s and peak memory.

    python -m pipeline.benchmark_build [--runs 2] [-- extra build_examples arguments]

Runs `python -m pipeline.build_examples --dataset amazon_beauty` as a child process (the Beam
start-up and worker processes included, as a user would see it), samples the resident memory
of the whole process tree every 0.1 s, and prints a Markdown table. Peak memory is the largest
sum over the driver and its worker processes at one instant; the driver's own peak and the
workers' peak sum are printed too, to show where the memory is (the local runner's driver
holds every shuffle's data).

Other data: `-- --dataset amazon --sequences <file> --attributes <file>` (the last --dataset
wins), e.g. Sports and Outdoors.
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
from typing import List, Sequence

import psutil


def _tree_rss(process: psutil.Process) -> tuple:
    """(resident bytes of `process`, of its descendants together), at one instant."""
    try:
        children = process.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    sizes = []
    for member in [process] + children:
        try:
            sizes.append(member.memory_info().rss)
        except psutil.NoSuchProcess:
            sizes.append(0)
    return sizes[0], sum(sizes[1:])


def run_once(output: str, extra: Sequence[str]) -> dict:
    command = [
        sys.executable,
        "-m",
        "pipeline.build_examples",
        "--dataset",
        "amazon_beauty",
        "--output",
        output,
        *extra,
    ]
    started = time.time()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    watched = psutil.Process(child.pid)
    peak = driver_peak = workers_peak = 0
    while child.poll() is None:
        driver, workers = _tree_rss(watched)
        peak = max(peak, driver + workers)
        driver_peak = max(driver_peak, driver)
        workers_peak = max(workers_peak, workers)
        time.sleep(0.1)
    wall = time.time() - started
    stdout = child.stdout.read().decode("utf-8")
    if child.returncode != 0:
        raise RuntimeError(f"build failed with exit code {child.returncode}: {' '.join(command)}")
    manifest = json.loads(stdout[stdout.index("{") :])
    events = manifest["counters"]["events"]
    return {
        "wall_s": wall,
        "events": events,
        "events_per_s": events / wall,
        "examples": manifest["examples_total"],
        "peak_rss_mb": peak / 2**20,
        "driver_peak_mb": driver_peak / 2**20,
        "workers_peak_mb": workers_peak / 2**20,
        "job_wall_s": manifest["wall_seconds"],
    }


def main(argv: Sequence[str] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("extra", nargs="*", help="extra build_examples arguments (after --)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for run in range(args.runs):
            rows.append(run_once(os.path.join(scratch, f"run{run}"), args.extra))
    print(
        f"machine: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GB, "
        f"Python {platform.python_version()}; build args: {' '.join(args.extra) or '(defaults)'}"
    )
    print(
        "| run | wall s | events | events/s | examples | peak RSS (all processes) MB "
        "| driver peak MB | workers peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for index, row in enumerate(rows, start=1):
        print(
            f"| {index} | {row['wall_s']:.1f} | {row['events']:,} | {row['events_per_s']:,.0f} "
            f"| {row['examples']:,} | {row['peak_rss_mb']:,.0f} | {row['driver_peak_mb']:,.0f} "
            f"| {row['workers_peak_mb']:,.0f} |"
        )
    return rows


if __name__ == "__main__":
    main()
