"""Runs the authors' PyTorch UniSAR on converted examples and times its training steps.

Run by path with the reference's own Python (never imported by the project, never with
TensorFlow): `benchmark_reference` calls

    REF_PYTHON unisar_tf/tools/reference_driver.py prepare --reference_dir R --work_dir W
    REF_PYTHON unisar_tf/tools/reference_driver.py measure --reference_dir R --work_dir W \
        --steps N --warmup M

This file imports only the standard library, numpy, torch and the authors' modules (from
--reference_dir, put first on sys.path); pandas is reached through their sampler module, which
imports it. Nothing of their code is copied here: it is called.

`prepare` turns `W/reference_input.json` (written by benchmark_reference in the project's venv:
plain lists and dicts, no pickle crosses the two environments) into
the files their `utils/const.py` names: `W/Amazon/vocab/{user_vocab, query_vocab,
user_vocab_np, item_vocab_np, src_session_vocab_np}.pkl` and `W/Amazon/dataset/{rec,src}_
train.pkl` (DataFrames written by their pandas).

`measure` is the shim their code needs to be timed step by step on a CPU:
- their constants: `const.init_setting_Amazon()`, then the paths set to W/Amazon and the
  vocabulary sizes and sequence lengths set to the build's (theirs are for their data);
- their arguments: their parsers' defaults, then their `config/UniSAR_Amazon.yaml` (as their
  main.py does), device CPU; their seed setup (`utils.setup_seed`);
- their model (`UniSAR(args)`), optimizer (`BaseRunner._build_optimizer`: Adam with coupled
  weight decay), datasets (`RecDataSet`, `SrcDataSet`, `InfoNCEDataset`) and collate
  functions, and their batch sizes: 1,024 rec examples, their search batch size formula, 1,024
  relevance negatives (`infoNCE_neg_sample`);
- one training step as their `SarRunner.train_epoch` does it: the rec loss, the search loss,
  total = rec + src_loss_weight * search, zero_grad, backward, step, the `.item()` reads;
- torch's intra-op threads: its default (one per core) or `--threads`;
- DataLoaders built here with `--workers` worker processes per loader and prefetch 2 (their
  `getDataLoader` uses 10 workers and a prefetch of batch_size // workers + 1 batches per
  worker: on 2 cores a short timing would measure that prefill rather than training).

It prints one JSON line: seconds per step, positives (rec + search examples) per second, CPU
seconds of the main process and of the loader workers over the timed steps, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import sys
import time

import numpy as np

DATA_NAME = "Amazon"  # their dataset name whose config (UniSAR_Amazon.yaml) is the paper's


def _their_modules(reference_dir: str):
    """Imports their const, utils, dataset and model modules from reference_dir."""
    reference_dir = os.path.abspath(reference_dir)
    if reference_dir not in sys.path:
        sys.path.insert(0, reference_dir)
    os.chdir(reference_dir)  # their load_hyperparam reads config/ relative to the cwd
    from models.UniSAR import UniSAR
    from utils import Runner, const, dataset, sampler, utils

    return UniSAR, Runner, const, dataset, sampler, utils


def _layout(work_dir: str) -> dict:
    root = os.path.join(os.path.abspath(work_dir), DATA_NAME)
    vocab, data = os.path.join(root, "vocab"), os.path.join(root, "dataset")
    return {
        "load_path": root,
        "user_vocab": os.path.join(vocab, "user_vocab.pkl"),
        "query_vocab": os.path.join(vocab, "query_vocab.pkl"),
        "user_map_vocab": os.path.join(vocab, "user_vocab_np.pkl"),
        "item_map_vocab": os.path.join(vocab, "item_vocab_np.pkl"),
        "session_map_vocab": os.path.join(vocab, "src_session_vocab_np.pkl"),
        "rec_train": os.path.join(data, "rec_train.pkl"),
        "src_train": os.path.join(data, "src_train.pkl"),
    }


def prepare(reference_dir: str, work_dir: str) -> None:
    """Writes their files from reference_input.json (once; skipped when they are newer)."""
    source = os.path.join(work_dir, "reference_input.json")
    paths = _layout(work_dir)
    done = paths["src_train"]
    if os.path.exists(done) and os.path.getmtime(done) >= os.path.getmtime(source):
        return
    _, _, _, _, sampler, _ = _their_modules(reference_dir)
    pd = sampler.pd  # their requirement (pandas), as their sampler imports it
    with open(source) as handle:
        converted = json.load(handle)
    # JSON keys are strings; their code looks users up by int id.
    user_vocab = {int(user): lists for user, lists in converted["user_vocab"].items()}
    sessions = {name: np.asarray(rows, np.int64) for name, rows in converted["sessions"].items()}
    for path in paths.values():
        os.makedirs(os.path.dirname(path) if path.endswith(".pkl") else path, exist_ok=True)

    def dump(obj, path):
        with open(path, "wb") as handle:
            pickle.dump(obj, handle)

    dump(user_vocab, paths["user_vocab"])
    dump(converted["query_vocab"], paths["query_vocab"])
    dump({}, paths["user_map_vocab"])  # ids only: their Amazon feature lists are the ids
    dump({}, paths["item_map_vocab"])
    dump(sessions, paths["session_map_vocab"])
    pd.DataFrame(converted["rows"]["rec"]).to_pickle(paths["rec_train"])
    pd.DataFrame(converted["rows"]["search"]).to_pickle(paths["src_train"])


def _set_constants(const, work_dir: str, sizes: dict) -> None:
    const.init_setting_Amazon()
    for name, path in _layout(work_dir).items():
        setattr(const, name, path)
    const.item_id_num = sizes["items"] + 1
    const.user_id_num = sizes["users"] + 1
    const.word_id_num = sizes["words"] + 1
    const.max_rec_his_len = sizes["rec_len"]
    const.max_src_session_his_len = sizes["search_len"]
    const.max_session_item_len = sizes["clicks_per_session"]
    const.max_query_word_len = sizes["query_len"]


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_gb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6
    return 0.0


def measure(
    reference_dir: str, work_dir: str, steps: int, warmup: int, workers: int, seed: int, threads=0
):
    UniSAR, Runner, const, dataset, _, utils = _their_modules(reference_dir)
    import torch
    from torch.utils.data import DataLoader

    if threads:
        torch.set_num_threads(threads)

    with open(os.path.join(work_dir, "sizes.json")) as handle:
        sizes = json.load(handle)
    _set_constants(const, work_dir, sizes)

    parser = argparse.ArgumentParser()
    parser = UniSAR.parse_model_args(parser)
    parser = Runner.SarRunner.parse_runner_args(parser)
    args = parser.parse_args([])
    args.model, args.data, args.model_path = "UniSAR", DATA_NAME, "/tmp/unused"
    args.device = torch.device("cpu")
    utils.load_hyperparam(args)
    utils.setup_seed(seed)

    started = time.time()
    model = UniSAR(args)
    runner = Runner.BaseRunner(args)
    runner._build_optimizer(model)
    user_vocab = utils.load_pickle(const.user_vocab)
    rec_data = dataset.RecDataSet("train", user_vocab)
    src_data = dataset.SrcDataSet("train", user_vocab)
    # their SarRunner.set_dataloader's search batch size
    src_batch = len(src_data) // (len(rec_data) // args.batch_size + 1) + 1
    align_data = dataset.InfoNCEDataset(query_vocab=utils.load_pickle(const.query_vocab))

    def loader(data, batch_size, shuffle):
        options = dict(num_workers=workers)
        if workers:
            options.update(prefetch_factor=2, persistent_workers=True)
            options.update(worker_init_fn=utils.worker_init_fn)
        return DataLoader(
            data, batch_size=batch_size, shuffle=shuffle, collate_fn=data.collate_batch, **options
        )

    rec_loader = loader(rec_data, args.batch_size, True)
    src_loader = loader(src_data, src_batch, True)
    align_loader = loader(align_data, args.infoNCE_neg_sample, False)
    iterators = {"rec": iter(rec_loader), "src": iter(src_loader), "align": iter(align_loader)}
    model.train()

    def next_batch(name):
        try:
            return next(iterators[name])
        except StopIteration:  # a new epoch of that loader
            iterators[name] = iter({"rec": rec_loader, "src": src_loader}[name])
            return next(iterators[name])

    def step():
        rec_batch, src_batch_ = next_batch("rec"), next_batch("src")
        if model.query_item_alignment:
            align = next_batch("align")
            rec_batch.update(align)
            src_batch_.update(align)
        rows = rec_batch["batch_size"] + src_batch_["batch_size"]
        rec_loss = model.loss(utils.batch_to_gpu(rec_batch, model.device))
        src_loss = model.src_loss(utils.batch_to_gpu(src_batch_, model.device))
        for key in rec_loss:
            rec_loss[key].item(), src_loss[key].item()
        total = rec_loss["total_loss"] + src_loss["total_loss"] * args.src_loss_weight
        runner.optimizer.zero_grad()
        total.backward()
        runner.optimizer.step()
        return rows, total.item()

    first = time.time()
    for _ in range(warmup):
        step()
    warmup_seconds = time.time() - first
    worker_pids = [
        process.pid
        for iterator in iterators.values()
        for process in getattr(iterator, "_workers", [])
    ]
    workers_cpu = sum(_cpu_seconds(pid) for pid in worker_pids)
    main_cpu = time.process_time()
    timed = time.time()
    rows = 0
    for _ in range(steps):
        step_rows, loss = step()
        rows += step_rows
    elapsed = time.time() - timed
    main_cpu = time.process_time() - main_cpu
    workers_cpu = sum(_cpu_seconds(pid) for pid in worker_pids) - workers_cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    peak += sum(_peak_rss_gb(pid) for pid in worker_pids)
    return {
        "seconds_per_step": elapsed / steps,
        "positives_per_second": rows / elapsed,
        "rows_per_step": rows / steps,
        "cpu_seconds": main_cpu + workers_cpu,
        "main_cpu_seconds": main_cpu,
        "worker_cpu_seconds": workers_cpu,
        "warmup_seconds": warmup_seconds,
        "setup_seconds": first - started,
        "peak_rss_gb": peak,
        "final_loss": loss,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loader_workers": workers,
        "search_batch_size": src_batch,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("prepare", "measure"))
    parser.add_argument("--reference_dir", required=True)
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: its default")
    parser.add_argument("--seed", type=int, default=20230601)  # their main.py's default
    args = parser.parse_args(argv)
    work_dir = os.path.abspath(args.work_dir)
    if args.action == "prepare":
        prepare(args.reference_dir, work_dir)
        print(json.dumps({"prepared": _layout(work_dir)["load_path"]}))
        return
    result = measure(args.reference_dir, work_dir, args.steps, args.warmup, args.workers, args.seed)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
