"""Recall of the true next item over the whole catalogue: the retrieval stage against baselines.

    python -m unisar_tf.tools.retrieval_recall --data_dir out/beauty_q8 [--split valid,test]
    python -m unisar_tf.tools.retrieval_recall --data_dir D --split valid --sweep

Every example of the split (rec and search) is one user and one true next item, its
positive (`candidate_items[0]`); its history is the example's (the model's window). Each
method orders the whole catalogue for that history, the history's items left out (as the
service does), and Recall@k is the share of examples whose positive is among the first k;
NDCG@k = 1 / log2(rank + 2) when it is. A positive that is in its own history (a repeat)
or outside the catalogue counts as a miss for every method (the `in history` line).

- **co-occurrence**: the transition and co-occurrence neighbour index
  (unisar_tf.data.retrieval_index, RetrievalParams defaults or the flags), built on the
  training split;
- **two-tower**: the TFRS two-tower model (unisar_tf.train.two_tower, TwoTowerParams
  defaults, seed 0), trained on the training split (`--two_tower false` skips it);
- **ItemKNN**: the ranking baseline's score (docs/training.md) on every item: the sum over
  the distinct history items h of cooc(h, c) / sqrt(n(h) n(c)), full tables (no top-K);
- **popularity**: training positives' counts;
- **random**: the exact expectation of a uniformly random order of the items left.
Ties (equal scores; all zeros for most items) are ordered by popularity then catalogue id,
for every method, which is the service's order (back-fill by popularity).

`--sweep` tries one parameter at a time around the defaults on the given split (use valid)
and prints Recall@100 of each setting: how the defaults were chosen.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from unisar_tf.data.cooccurrence import id_sets
from unisar_tf.data.retrieval_index import (
    RetrievalIndex,
    RetrievalParams,
    Sequences,
    build_index,
    catalogue_from_vocab,
    cooccurrence_counts,
    cosine_normalized,
    read_sequences,
)

CUTOFFS = (50, 100, 200)
NDCG_CUTOFF = 100
RETRIEVAL = "co-occurrence"
TWO_TOWER = "two-tower"
ITEMKNN = "ItemKNN"
POPULARITY = "popularity"
RANDOM = "random"
_BLOCK = 512  # users per block: (block, catalogue) score matrices bound the memory


def positive_ranks(
    scores: np.ndarray, popularity: np.ndarray, recent: np.ndarray, positives: np.ndarray
) -> np.ndarray:
    """(B,) float: the 0-based place of each row's positive in the order (score desc,
    popularity desc, id asc) of the items 1..N not in its history; inf when the positive is
    0 or in the history.

    scores (B, N + 1); popularity (N + 1,); recent (B, L) history ids; positives (B,)."""
    rows = np.arange(len(scores))
    positives = np.asarray(positives, np.int64)
    own = scores[rows, positives][:, None]
    own_popularity = popularity[positives][:, None]
    ids = np.arange(scores.shape[1])[None, :]
    before = (
        (scores > own)
        | ((scores == own) & (popularity[None, :] > own_popularity))
        | ((scores == own) & (popularity[None, :] == own_popularity) & (ids < positives[:, None]))
    )
    before[:, 0] = False
    history = np.zeros(scores.shape, bool)
    history[np.repeat(rows, recent.shape[1]), recent.reshape(-1)] = True
    history[:, 0] = False
    ranks = (before & ~history).sum(axis=1).astype(np.float64)
    ranks[(positives == 0) | history[rows, positives]] = np.inf
    return ranks


def random_metrics(sequences: Sequences, num_items: int) -> Dict[str, float]:
    """The exact expectation of a uniformly random order of the items not in the history."""
    left = num_items - np.count_nonzero(sequences.recent, axis=1)
    reachable = (sequences.positives > 0) & ~np.any(
        sequences.recent == sequences.positives[:, None], axis=1
    )
    out = {}
    for k in CUTOFFS:
        out[f"Recall@{k}"] = float(np.mean(np.where(reachable, np.minimum(k, left) / left, 0)))
    gains = np.cumsum(1.0 / np.log2(np.arange(NDCG_CUTOFF) + 2))
    out[f"NDCG@{NDCG_CUTOFF}"] = float(
        np.mean(np.where(reachable, gains[np.minimum(NDCG_CUTOFF, left) - 1] / left, 0))
    )
    return out


def metrics_from_ranks(ranks: np.ndarray) -> Dict[str, float]:
    out = {f"Recall@{k}": float(np.mean(ranks < k)) for k in CUTOFFS}
    gain = np.where(ranks < NDCG_CUTOFF, 1.0 / np.log2(np.minimum(ranks, 1e9) + 2), 0.0)
    out[f"NDCG@{NDCG_CUTOFF}"] = float(np.mean(gain))
    return out


def method_ranks(score_fn, popularity: np.ndarray, sequences: Sequences) -> np.ndarray:
    """Ranks of every example's positive under score_fn(recent block) -> (B, N + 1)."""
    parts = []
    for start in range(0, len(sequences.positives), _BLOCK):
        recent = sequences.recent[start : start + _BLOCK]
        parts.append(
            positive_ranks(
                score_fn(recent), popularity, recent, sequences.positives[start : start + _BLOCK]
            )
        )
    return np.concatenate(parts)


def evaluate(
    train: Sequences,
    split: Sequences,
    catalogue: np.ndarray,
    params: RetrievalParams = RetrievalParams(),
    baselines: bool = True,
    index: Optional[RetrievalIndex] = None,
    others: Optional[Dict[str, object]] = None,
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{method: {"all" | "rec" | "search": {metric: value}}} on `split`'s examples: the
    co-occurrence index (`index`, or built with `params`) as RETRIEVAL, then `others`
    ({name: index with scores()}, e.g. the two-tower), then the baselines."""
    index = index or build_index(train, catalogue, params)
    popularity = index.popularity
    ranks = {RETRIEVAL: method_ranks(index.scores, popularity, split)}
    for name, other in (others or {}).items():
        ranks[name] = method_ranks(other.scores, popularity, split)
    if baselines:
        knn = cosine_normalized(cooccurrence_counts(train.recent, train.positives, len(catalogue)))
        ranks[ITEMKNN] = method_ranks(
            lambda recent: np.asarray((id_sets(recent, len(catalogue)) @ knn).todense()),
            popularity,
            split,
        )
        ranks[POPULARITY] = method_ranks(
            lambda recent: np.zeros((len(recent), len(catalogue))), popularity, split
        )
    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    groups = {"all": np.ones(len(split.positives), bool)}
    groups.update(
        {task: split.tasks == task for task in ("rec", "search") if np.any(split.tasks == task)}
    )
    for method, method_rank in ranks.items():
        results[method] = {
            group: metrics_from_ranks(method_rank[mask]) for group, mask in groups.items()
        }
    if baselines:
        results[RANDOM] = {
            group: random_metrics(
                Sequences(split.recent[mask], split.positives[mask], split.tasks[mask]),
                len(catalogue) - 1,
            )
            for group, mask in groups.items()
        }
    return results


def format_table(
    results: Dict[str, Dict[str, Dict[str, float]]], users: int, repeats: float
) -> str:
    metrics = [f"Recall@{k}" for k in CUTOFFS] + [f"NDCG@{NDCG_CUTOFF}"]
    tasks = [task for task in ("rec", "search") if task in next(iter(results.values()))]
    header = ["method"] + metrics + [f"Recall@100 {task}" for task in tasks]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, groups in results.items():
        cells = [method] + [f"{groups['all'][m]:.4f}" for m in metrics]
        cells += [f"{groups[task]['Recall@100']:.4f}" for task in tasks]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"\n{users} examples (users x task); the positive is in its own history "
        f"(a miss for every method) in {repeats:.2%} of them"
    )
    return "\n".join(lines)


SWEEP = {
    "recent_items": (1, 3, 5, 10, 20, 50),
    "recency_decay": (0.3, 0.5, 0.7, 0.85, 1.0),
    "transition_weight": (0.0, 0.25, 0.5, 0.75, 1.0),
    "transition_window": (1, 2, 3, 5),
    "transition_decay": (0.25, 0.5, 0.75, 1.0),
    "neighbours": (25, 50, 100, 200),
}


BUILD_PARAMETERS = ("neighbours", "transition_window", "transition_decay")


def sweep(
    train: Sequences, split: Sequences, catalogue: np.ndarray, base: RetrievalParams
) -> List[dict]:
    """Recall@50/100/200 of `base` with one parameter changed at a time (the tables are
    rebuilt only for the parameters that build them)."""
    rows = []
    base_index = build_index(train, catalogue, base)
    for name, values in SWEEP.items():
        for value in values:
            params = base.replace(**{name: value})
            if name in BUILD_PARAMETERS:
                index = build_index(train, catalogue, params)
            else:  # the same tables, scored another way
                index = RetrievalIndex(
                    base_index.items,
                    base_index.popularity,
                    base_index.neighbours,
                    base_index.weights,
                    params,
                )
            result = evaluate(train, split, catalogue, params, baselines=False, index=index)[
                RETRIEVAL
            ]["all"]
            rows.append({"parameter": name, "value": value, **result})
            print(
                f"{name}={value}: " + "  ".join(f"{m} {v:.4f}" for m, v in result.items()),
                flush=True,
            )
    return rows


def subsample(sequences: Sequences, count: int, seed: int = 0) -> Sequences:
    """A seeded random subset of `count` examples (all if count is 0 or larger)."""
    if not count or count >= len(sequences.positives):
        return sequences
    keep = np.sort(
        np.random.default_rng(seed).choice(len(sequences.positives), count, replace=False)
    )
    return Sequences(
        sequences.recent[keep],
        sequences.positives[keep],
        sequences.tasks[keep],
        sequences.clicks_per_session,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True, help="output of pipeline.build_examples")
    parser.add_argument(
        "--split",
        default="test",
        help="test, valid, or both: valid,test (one training of each method)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="one parameter at a time around the defaults (use --split valid)",
    )
    parser.add_argument(
        "--two_tower",
        default="true",
        choices=("true", "false"),
        help="also train and score the two-tower model (about a minute)",
    )
    parser.add_argument(
        "--max_examples",
        type=int,
        default=0,
        help="score a seeded random subset of this many examples (0 = all)",
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    for field in dataclasses.fields(RetrievalParams):
        parser.add_argument(
            f"--{field.name}",
            type=type(field.default),
            default=None,
            help=f"RetrievalParams.{field.name} (default {field.default})",
        )
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    params = RetrievalParams().replace(
        **{
            field.name: getattr(args, field.name)
            for field in dataclasses.fields(RetrievalParams)
            if getattr(args, field.name) is not None
        }
    )

    started = time.time()
    catalogue = catalogue_from_vocab(args.data_dir)
    train = read_sequences(args.data_dir, "train", catalogue)
    splits = {
        name: subsample(read_sequences(args.data_dir, name, catalogue), args.max_examples)
        for name in args.split.split(",")
    }
    print(
        f"{args.data_dir}: {len(catalogue) - 1} items, {len(train.positives)} training "
        f"examples; {params}",
        flush=True,
    )
    output = {}
    if args.sweep:
        for name, split in splits.items():
            output[name] = {"sweep": sweep(train, split, catalogue, params)}
    else:
        others = {}
        if args.two_tower == "true":
            from unisar_tf.train.two_tower import train_two_tower

            trained = time.time()
            others[TWO_TOWER] = train_two_tower(train, catalogue)
            print(f"two-tower trained in {time.time() - trained:.0f} s", flush=True)
        for name, split in splits.items():
            results = evaluate(train, split, catalogue, params, others=others)
            repeats = float(np.mean(np.any(split.recent == split.positives[:, None], axis=1)))
            print(f"\n{name}:\n" + format_table(results, len(split.positives), repeats), flush=True)
            output[name] = {"results": results}
    print(f"({time.time() - started:.0f} s)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {"data_dir": args.data_dir, "params": dataclasses.asdict(params), **output},
                out,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
