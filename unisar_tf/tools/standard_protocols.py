"""The two standard rec-only protocols of sequential recommendation, beside published rows.

    python -m unisar_tf.tools.standard_protocols --protocol sampled --dataset amazon_beauty
    python -m unisar_tf.tools.standard_protocols --protocol full --dataset amazon_sports
    python -m unisar_tf.tools.standard_protocols --protocol both --dataset amazon_beauty \
        --out_dir out/protocols --max_epochs 6

One command builds the data (or reuses the build in `<out_dir>/<dataset>`), trains the
default preset and the SASRec baseline (or resumes / reuses their finished runs in
`<out_dir>/<dataset>_unisar`), scores the test split, and prints the project's rows next to
the published ones of S3-Rec (Zhou et al., CIKM 2020; unisar_tf.tools.published_tables),
also written to `<out_dir>/<dataset>_<protocol>.{json,md}`.

The data (both protocols): the S3-Rec files, rec only (`--search_fraction 0
--min_search_history 0`), leave-one-out, histories of up to 50 items (S3-Rec's
max_seq_length), 20 training negatives per example (the default preset's pool), each
evaluation list 1 positive + 99 negatives drawn **uniformly** from the items the user never
touched (`--negative_sampler uniform`). Validation picks the epoch; test is scored once.

- **sampled**: HR@1/5/10 and NDCG@5/10 of the positive in its 1 + 99 list (ties count against
  it), for UniSAR, SASRec, ItemKNN, popularity (training-positive counts) and random (exact
  expectation). The paper's own negative files are not published, so the comparison is
  with the same distribution; the standard error of each NDCG@10 (sd / sqrt(users)) says
  how far apart two rows must be to differ.
- **full**: the positive's rank among every item of the catalogue except the user's history
  items (the example's history, which holds the whole sequence up to 50 items; a positive
  that repeats a history item is a miss for every method, their share is printed). SASRec,
  ItemKNN and popularity score the whole catalogue; UniSAR is a ranking stage, so it runs
  behind the retrieval stage that ships with it (the two-tower index,
  unisar_tf.data.retrieval_index, trained on the training split): retrieve the top `--retrieve`
  items, rank them with UniSAR; a positive outside them is a miss. The retrieval stage's own
  order is a row too. Ties (ItemKNN and popularity score most items alike) are ordered by
  popularity then id, as the service orders them (unisar_tf.tools.retrieval_recall).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Dict, Optional, Sequence

import numpy as np

from feature_specs.data_spec import DataSpec
from unisar_tf import logs
from unisar_tf.tools.published_tables import METRICS, PUBLISHED, SOURCE

PROTOCOLS = ("sampled", "full")
UNISAR = "UniSAR (default preset)"
TWO_STAGE = "UniSAR (default preset) over two-tower top-{k}"
RETRIEVAL_ONLY = "two-tower retrieval alone"
SASREC_ROW = "SASRec (the project's baseline)"
ITEMKNN = "ItemKNN"
POPULARITY = "popularity"
RANDOM = "random"
FULL_KS = (5, 10, 20)
SAMPLED_KS = (1, 5, 10)

# The data job's flags of both protocols (module docstring).
PROTOCOL_BUILD_FLAGS = (
    "--search_fraction",
    "0",
    "--min_search_history",
    "0",
    "--negative_sampler",
    "uniform",
    "--num_eval_negatives",
    "99",
    "--train_negative_pool",
    "20",
    "--rec_len",
    "50",
    "--split",
    "loo",
)
DATASETS = {
    "amazon_beauty": ("amazon_beauty", "Beauty"),
    "amazon_sports": ("amazon_sports", "Sports_and_Outdoors"),
}


# ------------------------------------------------------------------------------------ metrics
def metrics_from_ranks(
    ranks: np.ndarray, hit_ks: Sequence[int], ndcg_ks: Sequence[int]
) -> Dict[str, float]:
    """HR@k and NDCG@k from 0-based ranks (N,) (inf = a miss); plus "NDCG@10 SE", the
    standard error of the per-user NDCG@10 (sd / sqrt(N)), and "users"."""
    ranks = np.asarray(ranks, np.float64).reshape(-1)
    if ranks.size == 0:
        raise ValueError("no ranks: the metrics of no users are undefined")
    out: Dict[str, float] = {}
    for k in sorted(set(hit_ks) | set(ndcg_ks)):
        if k in hit_ks:
            out[f"HR@{k}"] = float(np.mean(ranks < k))
        if k in ndcg_ks:
            out[f"NDCG@{k}"] = float(np.mean(ndcg_values(ranks, k)))
    values = ndcg_values(ranks, 10)
    out["NDCG@10 SE"] = (
        float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    )
    out["users"] = int(len(ranks))
    return out


def ndcg_values(ranks: np.ndarray, k: int) -> np.ndarray:
    """(N,) 1 / log2(rank + 2) for 0-based ranks below k, else 0 (one relevant item)."""
    ranks = np.asarray(ranks, np.float64)
    hit = ranks < k
    return np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 0.0) + 2.0), 0.0)


def sampled_ranks(scores: np.ndarray) -> np.ndarray:
    """(N, C) scores, positive at column 0 -> (N,) 0-based ranks, ties against the positive
    (unisar_tf.metrics.positive_rank_numpy)."""
    from unisar_tf.metrics import positive_rank_numpy

    return positive_rank_numpy(scores).astype(np.float64) - 1.0


def random_full_metrics(
    history_sizes: np.ndarray,
    reachable: np.ndarray,
    num_items: int,
    hit_ks: Sequence[int] = FULL_KS,
    ndcg_ks: Sequence[int] = FULL_KS,
) -> Dict[str, float]:
    """The exact expectation of a uniformly random order of the items left: a user with h
    history items ranks num_items - h items, the positive uniform among them; an unreachable
    positive (in its history) is a miss."""
    left = np.maximum(num_items - np.asarray(history_sizes, np.int64), 1)
    reachable = np.asarray(reachable, bool)
    out: Dict[str, float] = {}
    for k in sorted(set(hit_ks) | set(ndcg_ks)):
        if k in hit_ks:
            out[f"HR@{k}"] = float(np.mean(np.where(reachable, np.minimum(k, left) / left, 0)))
        if k in ndcg_ks:
            gains = np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))
            out[f"NDCG@{k}"] = float(
                np.mean(np.where(reachable, gains[np.minimum(k, left) - 1] / left, 0))
            )
    out["NDCG@10 SE"] = 0.0  # an exact expectation
    out["users"] = int(len(left))
    return out


def two_stage_ranks(
    retrieved: np.ndarray, ranker_scores: np.ndarray, positives: np.ndarray
) -> np.ndarray:
    """0-based ranks of a retrieve-then-rank stack: (N,) float, inf when the positive is not
    retrieved.

    retrieved (N, K) ids from the retrieval stage; ranker_scores (N, K) the ranker's score of
    each; positives (N,). A retrieved positive's rank is the number of retrieved items the
    ranker scores at least as high as it (ties count against it)."""
    retrieved = np.asarray(retrieved)
    ranker_scores = np.asarray(ranker_scores, np.float64)
    positives = np.asarray(positives).reshape(-1, 1)
    is_positive = retrieved == positives
    found = is_positive.any(axis=1)
    own = np.where(is_positive, ranker_scores, -np.inf).max(axis=1, keepdims=True)
    ahead = ((ranker_scores >= own) & ~is_positive).sum(axis=1).astype(np.float64)
    return np.where(found, ahead, np.inf)


# ------------------------------------------------------------------------- data and training
@dataclasses.dataclass
class ProtocolRun:
    """Where one dataset's protocol build and runs live."""

    dataset: str
    out_dir: str
    data_dir: str
    model_dir: str

    @classmethod
    def at(
        cls,
        dataset: str,
        out_dir: str,
        data_dir: Optional[str] = None,
        model_dir: Optional[str] = None,
    ) -> "ProtocolRun":
        return cls(
            dataset,
            out_dir,
            data_dir or os.path.join(out_dir, dataset),
            model_dir or os.path.join(out_dir, f"{dataset}_unisar"),
        )


def check_protocol_build(manifest: "dict | DataSpec", data_dir: str) -> None:
    """Refuses a build that is not the protocols' data (rec only, 99 uniform negatives)."""
    spec = DataSpec.of(manifest, os.path.join(data_dir, "manifest.json"))
    options = spec.build_options or {}
    problems = []
    if options.get("negative_sampler") != "uniform":
        problems.append(
            f"negative_sampler {options.get('negative_sampler')!r} (needs " "'uniform')"
        )
    if int(options.get("num_eval_negatives", -1)) != 99:
        problems.append(f"num_eval_negatives {options.get('num_eval_negatives')} (needs 99)")
    if options.get("split") != "loo":
        problems.append(f"split {options.get('split')!r} (needs 'loo')")
    if not spec.id_format_is_ids:
        problems.append(f"id_format {spec.id_format!r} (needs 'ids')")
    if any(
        spec.examples and spec.examples.count(split, "search")
        for split in ("train", "valid", "test")
    ):
        problems.append("search examples (needs --search_fraction 0: rec only)")
    if problems:
        raise ValueError(
            f"{data_dir} is not a standard-protocol build: "
            + "; ".join(problems)
            + ". Build it with this command (leave --data_dir out) or with "
            "pipeline.build_examples " + " ".join(PROTOCOL_BUILD_FLAGS)
        )


def ensure_build(run: ProtocolRun, data_root: str) -> dict:
    """The build's manifest; builds it first (the data job, Beam's DirectRunner) if missing."""
    from unisar_tf.data import reader

    manifest_path = os.path.join(run.data_dir, "manifest.json")
    if not os.path.exists(manifest_path):
        if run.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {run.dataset!r}: one of {sorted(DATASETS)}")
        from pipeline import build_examples

        folder, stem = DATASETS[run.dataset]
        inputs = [
            "--dataset",
            "amazon",
            "--sequences",
            os.path.join(data_root, folder, f"{stem}.txt"),
            "--attributes",
            os.path.join(data_root, folder, f"{stem}_item2attributes.json"),
        ]
        print(f"building {run.data_dir} from {os.path.join(data_root, folder)}", flush=True)
        build_examples.main([*inputs, "--output", run.data_dir, *PROTOCOL_BUILD_FLAGS])
    manifest = reader.load_manifest(run.data_dir)
    check_protocol_build(manifest, run.data_dir)
    return manifest


def ensure_trained(
    run: ProtocolRun,
    max_epochs: int,
    sasrec_max_epochs: Optional[int],
    seed: int = 0,
    validation_rows: Optional[int] = None,
) -> Dict[str, dict]:
    """Trains (or resumes, or re-reads) the default preset and the SASRec baseline beside it
    (model_dir/baselines/SASRec); {"unisar": summary, "sasrec": summary}."""
    from unisar_tf.config import preset
    from unisar_tf.train.learned_baseline import train_sasrec
    from unisar_tf.train.trainer import Trainer, TrainerOptions

    options = TrainerOptions(
        data_dir=run.data_dir,
        model_dir=run.model_dir,
        max_epochs=max_epochs,
        seed=seed,
        verbose=1,
        validation_rows=validation_rows,
    )
    unisar = Trainer(preset("default", seed=seed), options).fit()
    sasrec = train_sasrec(options, "default", sasrec_max_epochs)
    return {"unisar": unisar, "sasrec": sasrec}


# ---------------------------------------------------------------------------------- scoring
def _test_batches(data_dir: str, manifest: dict, batch_size: int):
    from unisar_tf.data import reader

    return reader.read_examples(data_dir, "test", "rec", batch_size, manifest)


def sampled_protocol(run: ProtocolRun, manifest: dict) -> Dict[str, Dict[str, float]]:
    """{row: metrics} on the test split's 1 + 99 uniform lists."""
    from unisar_tf.metrics import random_ranking_metrics
    from unisar_tf.train.baselines import baseline_scores
    from unisar_tf.train.evaluation import score_split
    from unisar_tf.train.run_dir import load_trained_model, sasrec_run_dir

    spec = DataSpec.of(manifest)
    rows: Dict[str, Dict[str, float]] = {}
    for name, model_dir in ((UNISAR, run.model_dir), (SASREC_ROW, sasrec_run_dir(run.model_dir))):
        model = load_trained_model(model_dir, run.data_dir)
        scores = score_split(model, run.data_dir, "test", "rec", manifest)
        rows[name] = metrics_from_ranks(sampled_ranks(scores), SAMPLED_KS, (5, 10))
    counted = baseline_scores(run.data_dir, "test", manifest, spec.vocab_sizes.item_table, ("rec",))
    rows[ITEMKNN] = metrics_from_ranks(
        sampled_ranks(counted["ItemKNN"]["rec"]), SAMPLED_KS, (5, 10)
    )
    rows[POPULARITY] = metrics_from_ranks(
        sampled_ranks(counted["popularity"]["rec"]), SAMPLED_KS, (5, 10)
    )
    width = spec.candidates.eval
    rows[RANDOM] = dict(
        random_ranking_metrics(width), **{"NDCG@10 SE": 0.0, "users": rows[UNISAR]["users"]}
    )
    return rows


def _catalogue_ranks(
    score_block, popularity: np.ndarray, recent: np.ndarray, positives: np.ndarray, block: int = 256
) -> np.ndarray:
    """0-based ranks over the catalogue (unisar_tf.tools.retrieval_recall.positive_ranks)
    of score_block(start, stop) -> (rows, N + 1) scores, in blocks of users."""
    from unisar_tf.tools.retrieval_recall import positive_ranks

    parts = []
    for start in range(0, len(positives), block):
        stop = min(start + block, len(positives))
        parts.append(
            positive_ranks(
                score_block(start, stop), popularity, recent[start:stop], positives[start:stop]
            )
        )
    return np.concatenate(parts)


def full_protocol(
    run: ProtocolRun, manifest: dict, retrieve: int = 200, seed: int = 0, batch_size: int = 64
) -> Dict[str, Dict[str, float]]:
    """{row: metrics} of the test positives ranked over the whole catalogue."""
    import tensorflow as tf

    from feature_specs import CANDIDATE_ITEMS
    from unisar_tf.data.cooccurrence import id_sets
    from unisar_tf.data.retrieval_index import (
        catalogue_from_vocab,
        cooccurrence_counts,
        cosine_normalized,
        read_sequences,
    )
    from unisar_tf.train.run_dir import load_trained_model, sasrec_run_dir
    from unisar_tf.train.two_tower import train_two_tower

    catalogue = catalogue_from_vocab(run.data_dir)
    num_ids = len(catalogue)  # ids 1..N, 0 = padding
    train = read_sequences(run.data_dir, "train", catalogue)
    test = read_sequences(run.data_dir, "test", catalogue, tasks=("rec",))
    positives, recent = test.positives, test.recent
    popularity = np.bincount(train.positives[train.positives > 0], minlength=num_ids).astype(
        np.float64
    )
    rows: Dict[str, Dict[str, float]] = {}

    def add(name: str, ranks: np.ndarray) -> None:
        rows[name] = metrics_from_ranks(ranks, FULL_KS, FULL_KS)
        print(f"  {name}: NDCG@10 {rows[name]['NDCG@10']:.4f}", flush=True)

    # Test examples as the models read them, in the same (file) order as `test`.
    batches = list(_test_batches(run.data_dir, manifest, batch_size))
    first = np.concatenate([b[CANDIDATE_ITEMS].numpy()[:, 0] for b in batches])
    if not np.array_equal(first, positives):
        raise RuntimeError("the test examples and their sequences are not in the same order")
    everything = np.arange(1, num_ids, dtype=np.int64)

    from unisar_tf.tools.retrieval_recall import positive_ranks

    sasrec = load_trained_model(sasrec_run_dir(run.model_dir), run.data_dir)
    score_sasrec = rec_logit_function(sasrec)
    sasrec_ranks, row = [], 0
    for batch in batches:  # (batch, N) scores at a time: the whole matrix would be GBs
        count = len(first_of(batch))
        features = dict(batch)
        features[CANDIDATE_ITEMS] = tf.constant(np.tile(everything, (count, 1)))
        scores = np.pad(score_sasrec(features).numpy(), ((0, 0), (1, 0)))  # column 0: padding
        sasrec_ranks.append(
            positive_ranks(
                scores, popularity, recent[row : row + count], positives[row : row + count]
            )
        )
        row += count
    add(SASREC_ROW, np.concatenate(sasrec_ranks))

    knn = cosine_normalized(cooccurrence_counts(train.recent, train.positives, num_ids))
    add(
        ITEMKNN,
        _catalogue_ranks(
            lambda a, b: np.asarray((id_sets(recent[a:b], num_ids) @ knn).todense()),
            popularity,
            recent,
            positives,
        ),
    )
    add(
        POPULARITY,
        _catalogue_ranks(lambda a, b: np.zeros((b - a, num_ids)), popularity, recent, positives),
    )

    started = time.time()
    index = train_two_tower(train, catalogue, seed=seed)
    print(f"  two-tower retrieval trained in {time.time() - started:.0f} s", flush=True)
    add(
        RETRIEVAL_ONLY,
        _catalogue_ranks(
            lambda a, b: index.scores(recent[a:b]), index.popularity, recent, positives
        ),
    )
    retrieved = np.zeros((len(positives), retrieve), np.int64)
    for start in range(0, len(positives), 256):
        block_scores = index.scores(recent[start : start + 256])
        for offset, row_scores in enumerate(block_scores):
            ids = index.top_ids(row_scores, retrieve, recent[start + offset])
            retrieved[start + offset, : len(ids)] = ids
    unisar = load_trained_model(run.model_dir, run.data_dir)
    score_unisar = rec_logit_function(unisar)
    unisar_scores, row = [], 0
    for batch in batches:
        count = len(first_of(batch))
        features = dict(batch)
        features[CANDIDATE_ITEMS] = tf.constant(retrieved[row : row + count])
        unisar_scores.append(score_unisar(features).numpy())
        row += count
    unisar_matrix = np.concatenate(unisar_scores)
    # Padding slots (fewer than `retrieve` items left) never outrank a retrieved positive.
    unisar_matrix = np.where(retrieved > 0, unisar_matrix, -np.inf)
    add(TWO_STAGE.format(k=retrieve), two_stage_ranks(retrieved, unisar_matrix, positives))

    history_sizes = np.count_nonzero(recent, axis=1)
    reachable = (positives > 0) & ~np.any(recent == positives[:, None], axis=1)
    rows[RANDOM] = random_full_metrics(history_sizes, reachable, num_ids - 1)
    rows["_notes"] = {
        "positives in their own history (a miss for every method)": float(1.0 - reachable.mean()),
        "items": int(num_ids - 1),
        f"two-tower Recall@{retrieve}": float(
            np.mean((retrieved == positives[:, None]).any(axis=1))
        ),
    }
    return rows


def rec_logit_function(model):
    """A traced (B, ...) features -> (B, C) rec logits function (SASRec or UniSAR): ranking
    a catalogue by probabilities would tie the saturated best items."""
    import tensorflow as tf

    # Named functions: AutoGraph re-reads a lambda's source and can pick the wrong lambda of
    # a function that has two (it did: UniSAR was traced with SASRec's line).
    if model.config.architecture == "sasrec":

        def logits(features):
            return model.logits(features, training=False)
    else:

        def logits(features):
            return model.task_logits(features, training=False)["rec"]

    return tf.function(logits)


def first_of(batch) -> np.ndarray:
    from feature_specs import CANDIDATE_ITEMS

    return batch[CANDIDATE_ITEMS].numpy()[:, 0]


# ---------------------------------------------------------------------------------- report
def report_markdown(
    protocol: str, dataset: str, rows: Dict[str, dict], trained: Optional[Dict[str, dict]] = None
) -> str:
    """The project's rows, then the published ones, one table, metrics of the protocol."""
    metrics = METRICS[protocol]
    notes = rows.get("_notes", {})
    title = (
        "1 positive + 99 uniform negatives never touched by the user"
        if protocol == "sampled"
        else "the positive ranked over the whole catalogue, the user's history left out"
    )
    lines = [
        f"## {dataset}, {protocol} protocol: {title}",
        "",
        "| model | source | " + " | ".join(metrics) + " | NDCG@10 SE | users |",
        "|---|---|" + "---|" * (len(metrics) + 2),
    ]
    for name, values in rows.items():
        if name.startswith("_"):
            continue
        cells = " | ".join(f"{values[m]:.4f}" if m in values else "" for m in metrics)
        lines.append(
            f"| {name} | this project | {cells} | {values['NDCG@10 SE']:.4f} | "
            f"{values['users']} |"
        )
    for name, values in PUBLISHED.get(protocol, {}).get(dataset, {}).items():
        cells = " | ".join(f"{values[m]:.4f}" for m in metrics)
        lines.append(f"| {name} | published | {cells} | | |")
    lines += [
        "",
        f"Published rows: {SOURCE}."
        + (
            " Their negatives are not published, so the sampled rows compare the same "
            "distribution, not the same lists."
            if protocol == "sampled"
            else ""
        ),
    ]
    for key, value in notes.items():
        lines.append(f"- {key}: {value:.4f}" if isinstance(value, float) else f"- {key}: {value}")
    if trained:
        for name, summary in trained.items():
            if summary:
                lines.append(
                    f"- {name}: best validation epoch {summary['epoch']} of "
                    f"{summary['epochs_run']} (NDCG@5 "
                    f"{summary['validation_score']:.4f})"
                )
    return "\n".join(lines) + "\n"


def run_protocols(
    protocols: Sequence[str],
    run: ProtocolRun,
    data_root: str,
    max_epochs: int,
    sasrec_max_epochs: Optional[int],
    retrieve: int,
    seed: int,
    validation_rows: Optional[int] = None,
) -> Dict[str, dict]:
    manifest = ensure_build(run, data_root)
    trained = ensure_trained(run, max_epochs, sasrec_max_epochs, seed, validation_rows)
    results = {}
    for protocol in protocols:
        started = time.time()
        print(f"scoring the {protocol} protocol on {run.data_dir}", flush=True)
        rows = (
            sampled_protocol(run, manifest)
            if protocol == "sampled"
            else full_protocol(run, manifest, retrieve, seed)
        )
        markdown = report_markdown(protocol, run.dataset, rows, trained)
        report = {
            "protocol": protocol,
            "dataset": run.dataset,
            "data_dir": run.data_dir,
            "model_dir": run.model_dir,
            "rows": rows,
            "trained": trained,
            "published": PUBLISHED.get(protocol, {}).get(run.dataset, {}),
            "source": SOURCE,
            "seconds": round(time.time() - started, 1),
        }
        stem = os.path.join(run.out_dir, f"{run.dataset}_{protocol}")
        with open(stem + ".json", "w") as out:
            json.dump(report, out, indent=1, sort_keys=True, default=float)
        with open(stem + ".md", "w") as out:
            out.write(markdown)
        print(markdown, flush=True)
        print(f"written to {stem}.{{json,md}}", flush=True)
        results[protocol] = report
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    logs.setup(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default="both", choices=(*PROTOCOLS, "both"))
    parser.add_argument("--dataset", default="amazon_beauty", choices=sorted(DATASETS))
    parser.add_argument(
        "--out_dir", default="out/protocols", help="builds, runs and reports go here"
    )
    parser.add_argument(
        "--data_root",
        default=os.path.join("..", "shared", "data"),
        help="folder holding amazon_beauty/ and amazon_sports/",
    )
    parser.add_argument(
        "--data_dir", default=None, help="an existing protocol build (default <out_dir>/<dataset>)"
    )
    parser.add_argument(
        "--model_dir",
        default=None,
        help="the UniSAR run (default <out_dir>/<dataset>_unisar; SASRec "
        "trains beside it in baselines/SASRec)",
    )
    parser.add_argument(
        "--max_epochs",
        type=int,
        default=100,
        help="UniSAR's epoch budget (early stopping usually ends it first)",
    )
    parser.add_argument(
        "--sasrec_max_epochs",
        type=int,
        default=None,
        help="SASRec's epoch budget (default: its recipe's own)",
    )
    parser.add_argument(
        "--retrieve",
        type=int,
        default=200,
        help="full protocol: items the retrieval stage hands UniSAR",
    )
    parser.add_argument(
        "--validation_rows",
        type=int,
        default=None,
        help="pick epochs on the first N validation lists (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0)
    logs.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    for name in ("max_epochs", "retrieve"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    os.makedirs(args.out_dir, exist_ok=True)
    run = ProtocolRun.at(args.dataset, args.out_dir, args.data_dir, args.model_dir)
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    try:
        run_protocols(
            protocols,
            run,
            args.data_root,
            args.max_epochs,
            args.sasrec_max_epochs,
            args.retrieve,
            args.seed,
            args.validation_rows,
        )
    except (ValueError, FileNotFoundError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
