"""Training throughput side by side with the authors' PyTorch UniSAR, on the same examples.

    python -m unisar_tf.tools.benchmark_reference --data_dir out/amazon_beauty_pool20 \
        --reference_dir /work/unisar-ref --reference_python /work/unisar-ref/.venv/bin/python \
        --steps 10 --warmup 3 --rounds 2

The reference is the authors' code exported outside this repository (e.g. `git archive` of
their repository into --reference_dir) with its own venv (CPU torch); none of it is copied
here. `reference_driver.py` (run by path with --reference_python: stdlib, numpy, torch and
their modules only) calls their model, optimizer, datasets and collate functions.

Same examples: the build's training examples (rec and search) are converted once into the
reference's input format (cached in --work_dir, redone when the build's manifest changes):
  - `rec_train` / `src_train` rows: user_id, item_id = candidate_items[0], neg_items =
    candidate_items[1:] (the build's 4 fixed training negatives), rec_his / src_session_his =
    the prefix counts their sampler slices the user's history lists with, and for search the
    query (`keyword`, the query's word ids without padding);
  - `user_vocab[user]`: the history lists (`rec_his`, `src_session_his`) and their timestamps.
    Each example owns a block of rec_len items and one of search_len sessions in its user's
    lists, (len - n) zeros with timestamp inf, then its n history entries with timestamp = its
    slot in the build's mixed history; its prefix count ends at its block (identical blocks of
    one user are shared). Their sampler takes list[:count][-len:] and sorts the rec and search
    entries by timestamp, stably, with its own padding (timestamp inf) appended: so every
    example gets exactly the build's history, in the build's mixed order, padding last (the
    build has no timestamps; only the order matters to their model);
  - search sessions: one id per distinct (query tokens, clicked items), with their
    `keyword` and `pos_items` arrays (row 0 = padding); `query_vocab` = [[]] + the distinct
    training search queries (the project's relevance-negative bank); vocabulary sizes and
    sequence lengths from the manifest.

Same batches: 1,024 rec examples per step plus the search batch of the reference's own
formula (search // (rec // 1,024 + 1) + 1, which the project's `search_batch_size` also
uses: 996 on Beauty), and 1,024 relevance negatives, on both sides. A "positive" is one
training example with its negatives, rec and search together: 1,024 + 996 = 2,020 per step.
The default preset uses the same batches with 20 negatives per example.

Cases, each in its own process, run alternately for --rounds rounds (the reference twice,
the project's paper preset, its default preset, then again), so background load hits them
alike:
  - reference: their code with their `config/UniSAR_Amazon.yaml` (the paper's Amazon
    settings), torch's default threads (one per core), `--reference_workers` DataLoader
    worker processes per loader;
  - reference, 1 torch thread: the same with torch.set_num_threads(1) (on a loaded 2-core
    machine torch's second OpenMP thread mostly waits, spinning, for the first);
  - project paper: `amazon_preset` through benchmark_train.measure (the trainer's input
    pipeline and train step, fresh negatives from the pool);
  - project default: `preset("default")` through the same measure (20 negatives,
    co-occurrence and interaction features, softmax loss).
Columns: s/step and positives/s (wall), ms CPU per positive (CPU seconds of all the case's
processes over the timed steps / positives: the main process and, for the reference, its
loader workers), vs reference (positives/s over the reference case's, each as total
positives over total timed seconds of all rounds), peak RSS (largest over the rounds of the
sum over the case's processes), and each round's positives/s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    QUERY_TOKENS,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    SEARCH_HISTORY_QUERY_TOKENS,
    TYPE_REC,
    TYPE_SEARCH,
    USER_ID,
)

CONVERTER_VERSION = 2  # 2: the hand-off file is JSON
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_driver.py")

# Case names (--cases takes a comma-separated subset): the reference's paper (Amazon)
# settings with torch's default threads and with 1 thread, the project's two presets.
REFERENCE = "reference paper"
REFERENCE_1T = "reference paper 1 thread"
PROJECT_PAPER = "project paper"
PROJECT_DEFAULT = "project default"
CASES = (REFERENCE, REFERENCE_1T, PROJECT_PAPER, PROJECT_DEFAULT)
REFERENCE_THREADS = {REFERENCE: 0, REFERENCE_1T: 1}  # 0: torch's default (one per core)
PROJECT_PRESETS = {PROJECT_PAPER: "paper", PROJECT_DEFAULT: "default"}
# The build's features the conversion reads (query_tokens: search examples only).
CONVERTED_FEATURES = (
    USER_ID,
    HISTORY_TYPES,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_QUERY_TOKENS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    CANDIDATE_ITEMS,
    QUERY_TOKENS,
)
HANDOFF_FILE = "reference_input.json"  # the converted examples, read by reference_driver


# --- conversion to the reference's input format ------------------------------------------


class ReferenceFormat:
    """Accumulates examples (dicts of numpy arrays, one row per example) into the reference's
    structures; see the module docstring for the layout."""

    def __init__(self, rec_len: int, search_len: int):
        self.rec_len, self.search_len = rec_len, search_len
        self.user_vocab: Dict[int, dict] = {}
        self.sessions: Dict[Tuple[tuple, tuple], int] = {}
        self.rows: Dict[str, Dict[str, list]] = {
            "rec": {
                "user_id": [],
                "item_id": [],
                "neg_items": [],
                "rec_his": [],
                "src_session_his": [],
            },
            "search": {
                "user_id": [],
                "item_id": [],
                "neg_items": [],
                "rec_his": [],
                "src_session_his": [],
                "keyword": [],
            },
        }
        self.queries: Dict[tuple, None] = {}
        self._blocks: Dict[Tuple[int, str, tuple], int] = {}

    def _session_id(self, query: np.ndarray, clicks: np.ndarray) -> int:
        key = (tuple(int(t) for t in query), tuple(int(c) for c in clicks))
        return self.sessions.setdefault(key, len(self.sessions) + 1)

    def _block(self, user: int, name: str, entries: List[int], stamps: List[float], length: int):
        """Prefix count of the user's list `name` ending at a block holding `entries`."""
        pad = length - len(entries)
        block = [0] * pad + list(entries)
        times = [float("inf")] * pad + list(stamps)
        key = (user, name, tuple(block), tuple(times))
        if key not in self._blocks:
            lists = self.user_vocab.setdefault(
                user,
                {"rec_his": [], "rec_his_ts": [], "src_session_his": [], "src_session_his_ts": []},
            )
            lists[name] += block
            lists[name + "_ts"] += times
            self._blocks[key] = len(lists[name])
        return self._blocks[key]

    def add(self, scenario: str, batch: Mapping[str, np.ndarray]) -> None:
        """scenario "rec" or "search"; batch: the build's features for some examples."""
        rows = self.rows[scenario]
        for i in range(len(batch[USER_ID])):
            user = int(batch[USER_ID][i])
            types = np.asarray(batch[HISTORY_TYPES][i])
            rec_slots = np.flatnonzero(types == TYPE_REC)
            search_slots = np.flatnonzero(types == TYPE_SEARCH)
            rec_items = [int(item) for item in batch[REC_HISTORY_ITEMS][i][: len(rec_slots)]]
            sessions = [
                self._session_id(
                    batch[SEARCH_HISTORY_QUERY_TOKENS][i][j],
                    batch[SEARCH_HISTORY_CLICKED_ITEMS][i][j],
                )
                for j in range(len(search_slots))
            ]
            candidates = [int(item) for item in batch[CANDIDATE_ITEMS][i]]
            rows["user_id"].append(user)
            rows["item_id"].append(candidates[0])
            rows["neg_items"].append(candidates[1:])
            rows["rec_his"].append(
                self._block(user, "rec_his", rec_items, [float(s) for s in rec_slots], self.rec_len)
            )
            rows["src_session_his"].append(
                self._block(
                    user,
                    "src_session_his",
                    sessions,
                    [float(s) for s in search_slots],
                    self.search_len,
                )
            )
            if scenario == "search":
                query = [int(t) for t in batch[QUERY_TOKENS][i] if t != 0]
                rows["keyword"].append(query)
                self.queries.setdefault(tuple(query), None)

    def session_arrays(self, query_len: int, clicks: int) -> Dict[str, np.ndarray]:
        """Their src_session_vocab_np: `keyword` (sessions + 1, query_len) and `pos_items`
        (sessions + 1, clicks), row 0 the padding session."""
        keyword = np.zeros((len(self.sessions) + 1, query_len), np.int64)
        pos_items = np.zeros((len(self.sessions) + 1, clicks), np.int64)
        for (query, clicked), session in self.sessions.items():
            keyword[session] = query
            pos_items[session] = clicked
        return {"keyword": keyword, "pos_items": pos_items}

    def query_vocab(self) -> List[List[int]]:
        """Their query_vocab: index 0 padding, then the distinct training search queries."""
        return [[]] + [list(query) for query in self.queries]


def merged_history(lists: dict, rec_count: int, src_count: int, rec_len: int, src_len: int):
    """The (entry, type) sequence a converted example stands for: the last rec_len / src_len
    entries before the prefix counts, padded at the end with (0, type), ordered by timestamp
    (stable, rec before search) - the rule the reference's sampler applies, for checking."""
    entries = []
    for name, count, length, kind in (
        ("rec_his", rec_count, rec_len, TYPE_REC),
        ("src_session_his", src_count, src_len, TYPE_SEARCH),
    ):
        values = lists[name][:count][-length:]
        times = lists[name + "_ts"][:count][-length:]
        pad = length - len(values)
        entries += list(zip(values + [0] * pad, times + [float("inf")] * pad, [kind] * length))
    ordered = sorted(entries, key=lambda entry: entry[1])
    return [(value, kind) for value, _, kind in ordered]


def convert(data_dir: str, work_dir: str) -> dict:
    """Writes work_dir/reference_input.json and sizes.json from the build's training examples
    (skipped when they are there for this build); returns the sizes."""
    from unisar_tf.data import reader

    manifest_path = os.path.join(data_dir, "manifest.json")
    with open(manifest_path, "rb") as handle:
        stamp = {
            "data_dir": os.path.abspath(data_dir),
            "manifest_sha256": hashlib.sha256(handle.read()).hexdigest(),
            "converter_version": CONVERTER_VERSION,
        }
    sizes_path = os.path.join(work_dir, "sizes.json")
    if os.path.exists(sizes_path) and os.path.exists(os.path.join(work_dir, HANDOFF_FILE)):
        with open(sizes_path) as handle:
            sizes = json.load(handle)
        if sizes.get("source") == stamp:
            return sizes
    spec = reader.load_spec(data_dir)
    if spec.id_format != "ids":
        raise SystemExit(f"{data_dir}: id_format {spec.id_format!r}; build with --id_format ids")
    shapes = spec.shapes
    converted = ReferenceFormat(shapes.rec_len, shapes.search_len)
    for scenario in ("rec", "search"):
        for batch in reader.read_examples(data_dir, "train", scenario, 4096, spec):
            converted.add(
                scenario,
                {name: batch[name].numpy() for name in CONVERTED_FEATURES if name in batch},
            )
    vocab = spec.vocab_sizes
    sizes = {
        "users": int(vocab.users),
        "items": int(vocab.items),
        "words": int(vocab.words),
        "rec_len": shapes.rec_len,
        "search_len": shapes.search_len,
        "query_len": shapes.query_len,
        "clicks_per_session": shapes.clicks_per_session,
        "examples": {name: len(rows["user_id"]) for name, rows in converted.rows.items()},
        "sessions": len(converted.sessions),
        "source": stamp,
    }
    os.makedirs(work_dir, exist_ok=True)
    # JSON, not pickle: plain ints, floats (inf timestamps) and lists; the driver turns
    # user ids back into ints and writes the pickles their code reads.
    with open(os.path.join(work_dir, HANDOFF_FILE), "w") as handle:
        json.dump(
            {
                "rows": converted.rows,
                "user_vocab": converted.user_vocab,
                "sessions": {
                    name: array.tolist()
                    for name, array in converted.session_arrays(
                        shapes.query_len, shapes.clicks_per_session
                    ).items()
                },
                "query_vocab": converted.query_vocab(),
            },
            handle,
        )
    with open(sizes_path, "w") as handle:
        json.dump(sizes, handle, indent=2)
    return sizes


# --- the project's cases ----------------------------------------------------------------


def preset_overrides(name: str) -> dict:
    """Overrides that turn benchmark_train.measure's amazon_preset into preset `name`: every
    field of that preset (so "paper" gives {} and "default" the whole default config)."""
    from unisar_tf.config import preset

    if name == "paper":
        return {}
    return preset(name).to_dict()


def measure_project(data_dir: str, preset_name: str, steps: int, warmup: int, seed: int) -> dict:
    """benchmark_train.measure for a preset, plus the CPU seconds of the timed steps (read
    after each call of the train step: the timed steps are the calls after the warm-up)."""
    from unisar_tf.tools import benchmark_train
    from unisar_tf.train.trainer import Trainer

    cpu_after_call: List[float] = []
    make_step = Trainer._make_train_step

    def timed_make_step(self, element_spec):
        step = make_step(self, element_spec)

        def counted(batch):
            logs = step(batch)
            cpu_after_call.append(time.process_time())
            return logs

        return counted

    Trainer._make_train_step = timed_make_step
    try:
        result = benchmark_train.measure(
            data_dir, preset_overrides(preset_name), None, steps, warmup, seed
        )
    finally:
        Trainer._make_train_step = make_step
    result["cpu_seconds"] = cpu_after_call[warmup + steps - 1] - cpu_after_call[warmup - 1]
    return result


# --- the table ----------------------------------------------------------------------------


def summarise(rounds: Sequence[Mapping[str, Mapping[str, float]]]) -> Dict[str, dict]:
    """Per case over the rounds: mean s/step, positives/s (total positives / total time), ms
    CPU per positive, the ratio to the reference's positives/s and the largest peak RSS."""
    summary = {}
    names = [name for name in CASES if all(name in results for results in rounds)]
    for name in names:
        runs = [results[name] for results in rounds]
        positives = sum(r["rows_per_step"] for r in runs)  # per step, summed over rounds
        seconds = sum(r["seconds_per_step"] for r in runs)
        summary[name] = {
            "seconds_per_step": seconds / len(runs),
            "positives_per_second": positives / seconds,
            "cpu_ms_per_positive": 1000
            * sum(r["cpu_seconds"] / r["steps"] for r in runs)
            / positives,
            "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
            "per_round_positives_per_second": [r["positives_per_second"] for r in runs],
        }
    for key, name in (("ratio", REFERENCE), ("ratio_1_thread", REFERENCE_1T)):
        if name in summary:
            reference = summary[name]["positives_per_second"]
            for row in summary.values():
                row[key] = row["positives_per_second"] / reference
    return summary


def format_table(summary: Mapping[str, Mapping[str, float]]) -> str:
    lines = [
        "| case | s/step | positives/s | ms CPU per positive | vs reference "
        "| vs reference, 1 thread | peak RSS | positives/s per round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        ratios = [f"{row[key]:.2f}x" if key in row else "-" for key in ("ratio", "ratio_1_thread")]
        rounds = ", ".join(f"{value:.0f}" for value in row["per_round_positives_per_second"])
        lines.append(
            f"| {name} | {row['seconds_per_step']:.2f} | {row['positives_per_second']:.0f} | "
            f"{row['cpu_ms_per_positive']:.2f} | {ratios[0]} | {ratios[1]} | "
            f"{row['peak_rss_gb']:.2f} GB | {rounds} |"
        )
    return "\n".join(lines)


def _commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(
            ["git", "-C", here, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _run_json(command: List[str], env: dict, what: str) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="out/amazon_beauty_pool20")
    parser.add_argument("--reference_dir", default="/work/unisar-ref")
    parser.add_argument(
        "--reference_python", default=None, help="default: REFERENCE_DIR/.venv/bin/python"
    )
    parser.add_argument("--work_dir", default=None, help="default: out/benchmark_reference/<data>")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reference_workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", default=",".join(CASES), help=f"subset of: {', '.join(CASES)}")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--_case", help=argparse.SUPPRESS)  # internal: one project case here
    args = parser.parse_args(argv)
    if args.warmup < 1:
        raise SystemExit("--warmup must be at least 1 (the first step traces the graph)")

    if args._case:
        result = measure_project(
            args.data_dir, PROJECT_PRESETS[args._case], args.steps, args.warmup, args.seed
        )
        print(json.dumps(result))
        return

    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; choose from {list(CASES)}")
    work_dir = args.work_dir or os.path.join(
        "out", "benchmark_reference", os.path.basename(os.path.normpath(args.data_dir))
    )
    reference_python = args.reference_python or os.path.join(
        args.reference_dir, ".venv", "bin", "python"
    )
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    commit = _commit()  # at the start: the cases run the code checked out now
    load_start = os.getloadavg()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    driver = [reference_python, DRIVER]
    where = ["--reference_dir", args.reference_dir, "--work_dir", os.path.abspath(work_dir)]
    if set(names) & set(REFERENCE_THREADS):
        sizes = convert(args.data_dir, work_dir)
        print(f"converted: {sizes['examples']} examples, {sizes['sessions']} sessions", flush=True)
        _run_json(driver + ["prepare"] + where, env, "the reference's data files")

    timing = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    rounds = []
    for number in range(1, args.rounds + 1):
        results = {}
        for name in names:
            if name in REFERENCE_THREADS:
                command = driver + ["measure"] + where + timing
                command += ["--workers", str(args.reference_workers)]
                command += ["--threads", str(REFERENCE_THREADS[name])]
            else:
                command = [sys.executable, "-m", "unisar_tf.tools.benchmark_reference"]
                command += ["--data_dir", args.data_dir, "--seed", str(args.seed), "--_case", name]
                command += timing
            result = _run_json(command, env, f"round {number}, {name}")
            result["steps"] = args.steps
            results[name] = result
            print(
                f"round {number}, {name}: {result['seconds_per_step']:.2f} s/step, "
                f"{result['positives_per_second']:.0f} positives/s",
                flush=True,
            )
        rounds.append(results)
    load_end = os.getloadavg()
    summary = summarise(rounds)
    torch_version = next((r["torch"] for r in rounds[0].values() if "torch" in r), "-")
    print(
        f"\n{args.data_dir}; {args.rounds} rounds of {', '.join(names)}, each "
        f"{args.steps} timed steps after {args.warmup} warm-up, alternately; "
        f"{os.cpu_count()} CPUs, {platform.machine()}; load average "
        f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end; {started}; commit {commit}; "
        f"torch {torch_version}, {args.reference_workers} loader worker(s) per reference loader\n"
    )
    print(format_table(summary))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rounds": rounds, "summary": summary}, handle, indent=2)


if __name__ == "__main__":
    main()
