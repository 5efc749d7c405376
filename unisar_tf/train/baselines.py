"""Non-learned baselines scored on the evaluation lists: popularity, ItemKNN, query match.

Every baseline gives each candidate of a 1 positive + N negative list (`candidate_items`,
positive at column 0) a score; `unisar_tf.metrics.ranking_metrics` turns the scores into
HR/NDCG exactly as for the model (ties count against the positive). Everything is counted
on the training split only, every scenario it has (rec and search files; a single-scenario
log counts its one scenario).

- **popularity**: how often the candidate is a training positive (`candidate_items[0]`).
- **ItemKNN**: item-to-item co-occurrence between a training example's history and its
  positive. The history of an example is the distinct nonzero ids of `rec_history_items`
  and `search_history_clicked_items`. Every training example adds 1 to cooc(h, p) and 1 to
  cooc(p, h) for each distinct history item h and its positive p (so a positive that is also
  in its own history adds 2 to cooc(p, p)); n(x) = sum over y of cooc(x, y). A candidate c
  scores sum over the evaluation example's distinct history items h of
  cooc(h, c) / sqrt(n(h) n(c)) (a term is 0 when n(h) or n(c) is 0).
- **query match** (search only): the number of distinct query words (`query_tokens`,
  nonzero) among the candidate item's words; ItemKNN orders candidates of equal overlap, and
  popularity those equal on both (the strongest of the simple tie-breaks we tried). The item's words
  are its side-feature text (`side_features/items-*.jsonl`, `caption_word_ids`, in the same
  word ids as queries; KuaiSAR captions, Amazon attributes), the first `query_len` words as
  the model sees them. Without item text they are the query words the item was clicked for
  in training search examples: word w belongs to item c when some training search example
  with w in its query has c as its positive.

`baseline_scores` reads the data and returns the score matrices; random ranking needs no
scores (its metrics are an exact expectation, `unisar_tf.tools.demo.random_ranking_metrics`).
Library code: numpy, scipy.sparse and tf.data, no TFX or Beam.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from feature_specs import (
    CANDIDATE_ITEMS,
    QUERY_TOKENS,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
)
from feature_specs.data_spec import DataSpec
from feature_specs.layout import VOCAB_DIR, side_feature_pattern
from unisar_tf.data import reader
from unisar_tf.data.cooccurrence import history_items, id_sets, item_cooccurrence, read_split
from unisar_tf.data.side_features import load_side_features
from unisar_tf.data.transform import data_job_id_maps

POPULARITY = "popularity"
RANDOM = "random"
ITEMKNN = "ItemKNN"
QUERY_MATCH = "query match"
# The order reports list them in (after the model).
BASELINE_ORDER = (POPULARITY, RANDOM, ITEMKNN, QUERY_MATCH)

# Rows per block when sampling a sparse product at the candidates (bounds memory).
_BLOCK_ROWS = 2048


def sampled_product(left: sp.spmatrix, right: sp.spmatrix, candidates: np.ndarray) -> np.ndarray:
    """(N, C) float64 with [i, j] = (left @ right)[i, candidates[i, j]], computed in row
    blocks without materialising the dense (N, num_items) product."""
    left, right = sp.csr_matrix(left), sp.csr_matrix(right)
    candidates = np.asarray(candidates, np.int64)
    out = np.zeros(candidates.shape, np.float64)
    width = candidates.shape[1]
    for start in range(0, len(candidates), _BLOCK_ROWS):
        block = candidates[start : start + _BLOCK_ROWS]
        product = (left[start : start + len(block)] @ right).tocsr()
        rows = np.repeat(np.arange(len(block)), width)
        out[start : start + len(block)] = np.asarray(product[rows, block.reshape(-1)]).reshape(
            len(block), width
        )
    return out


def normalized_cooccurrence(cooc: sp.spmatrix) -> sp.csr_matrix:
    """cooc(x, y) / sqrt(n(x) n(y)) with n(x) = sum over y of cooc(x, y); 0 where n is 0."""
    totals = np.asarray(cooc.sum(axis=1)).reshape(-1)
    inverse_root = np.zeros_like(totals, dtype=np.float64)
    inverse_root[totals > 0] = 1.0 / np.sqrt(totals[totals > 0])
    scale = sp.diags(inverse_root)
    return (scale @ sp.csr_matrix(cooc, dtype=np.float64) @ scale).tocsr()


def itemknn_scores(
    normalized: sp.spmatrix, histories: np.ndarray, candidates: np.ndarray
) -> np.ndarray:
    """(N, C): for each candidate c of row i, the sum over the distinct nonzero items h of
    histories[i] of normalized[h, c]."""
    return sampled_product(id_sets(histories, normalized.shape[0]), normalized, candidates)


def item_words_from_captions(captions: np.ndarray, num_words: int) -> sp.csr_matrix:
    """(num_words, num_items) binary: word w is among item c's words (captions[c], 0 = pad)."""
    return id_sets(captions, num_words).T.tocsr()


def item_words_from_clicks(
    queries: np.ndarray, positives: np.ndarray, num_words: int, num_items: int
) -> sp.csr_matrix:
    """(num_words, num_items) binary, the fallback without item text: word w belongs to item
    c when count(w, c) > 0, each training search example adding 1 to count(w, positive) for
    each distinct nonzero word w of its query."""
    positives = np.asarray(positives, np.int64).reshape(-1)
    counts = (id_sets(queries, num_words).T @ id_sets(positives[:, None], num_items)).tocsr()
    counts.data[:] = (counts.data > 0).astype(np.float64)
    counts.eliminate_zeros()
    return counts


def query_overlap(
    queries: np.ndarray, item_words: sp.spmatrix, candidates: np.ndarray
) -> np.ndarray:
    """(N, C): how many distinct nonzero words of queries[i] are words of candidate [i, j]."""
    return sampled_product(id_sets(queries, item_words.shape[0]), item_words, candidates)


def query_match_scores(
    overlap: np.ndarray, itemknn: np.ndarray, popularity: Optional[np.ndarray] = None
) -> np.ndarray:
    """Scores that order each row by overlap, then ItemKNN, then (if given) popularity.

    All (N, C). The result is each candidate's dense rank of its (overlap, itemknn,
    popularity) key within its row (0 = lowest), so candidates equal on every key tie, and
    the metric counts that tie against the positive.
    """
    keys = [np.asarray(overlap, np.float64), np.asarray(itemknn, np.float64)]
    if popularity is not None:
        keys.append(np.asarray(popularity, np.float64))
    stacked = np.stack(keys, axis=-1)  # (N, C, K)
    scores = np.zeros(stacked.shape[:2], np.float64)
    for row in range(len(stacked)):
        _, ranks = np.unique(stacked[row], axis=0, return_inverse=True)  # lexicographic
        scores[row] = ranks.reshape(-1)
    return scores


def _item_captions(
    data_dir: str, spec: DataSpec, num_items: int, transform_dir: Optional[str]
) -> Optional[np.ndarray]:
    """(num_items, query_len) caption word ids from the data's side features, keyed by the
    ids the examples are read with; None when no item has any."""

    if not tf.io.gfile.glob(side_feature_pattern(data_dir, "items")):
        return None
    id_maps = None
    if transform_dir:
        id_maps = data_job_id_maps(os.path.join(data_dir, VOCAB_DIR), transform_dir)
    side = load_side_features(
        data_dir,
        num_items,
        spec.vocab_sizes.user_table,
        spec.shapes.query_len,
        id_maps,
    )
    if side is None or not np.any(side.item_captions):
        return None
    return side.item_captions


def _word_table_size(spec: DataSpec, *arrays: np.ndarray) -> int:
    largest = max((int(np.max(a)) for a in arrays if np.size(a)), default=0)
    return max(spec.vocab_sizes.words + 1, largest + 1)


def baseline_scores(
    data_dir: str,
    split: str,
    manifest: dict | DataSpec,
    num_items: int,
    tasks: Sequence[str] = ("rec", "search"),
    transform_dir: Optional[str] = None,
) -> Dict[str, Dict[str, np.ndarray]]:
    """{baseline name: {task: scores (N, C) float}} for popularity, ItemKNN and (search)
    query match, rows in the order `unisar_tf.data.reader.read_examples(data_dir, split, task, ...,
    shuffle=False)` yields them.

    manifest: `reader.load_manifest(data_dir, transform_dir)` (raw-id examples are read through
    its Transform graph). num_items: item table size (vocabulary + 1). transform_dir: the
    Transform output of raw-id examples, for side features keyed by the data job's ids;
    defaults to the manifest's.
    """
    spec = DataSpec.of(manifest)
    transform_dir = transform_dir or spec.transform_dir
    tasks = tuple(tasks)
    history_features = (REC_HISTORY_ITEMS, SEARCH_HISTORY_CLICKED_ITEMS)

    # Training split, every scenario that has examples (a rec-only log has no search ones):
    # popularity, co-occurrence and (search) query clicks.
    histories, positives = [], []
    train_queries = train_query_positives = None
    scenarios = reader.tasks_with_examples(spec, "train")
    if not scenarios:
        raise ValueError(f"{data_dir}: the training split has no examples to count " "baselines on")
    for scenario in scenarios:
        names = (
            history_features
            + (CANDIDATE_ITEMS,)
            + ((QUERY_TOKENS,) if scenario == "search" else ())
        )
        train = read_split(data_dir, "train", scenario, spec, names)
        histories.append(history_items(train))
        positives.append(train[CANDIDATE_ITEMS][:, 0])
        if scenario == "search":
            train_queries, train_query_positives = train[QUERY_TOKENS], positives[-1]
    width = max(h.shape[1] for h in histories)
    histories = np.concatenate([np.pad(h, ((0, 0), (0, width - h.shape[1]))) for h in histories])
    positives = np.concatenate(positives)
    popularity = np.bincount(positives, minlength=num_items).astype(np.float64)
    if len(popularity) > num_items:
        raise ValueError(
            f"training positives reach id {len(popularity) - 1}, beyond the "
            f"{num_items}-item table"
        )
    normalized = normalized_cooccurrence(item_cooccurrence(histories, positives, num_items))

    results: Dict[str, Dict[str, np.ndarray]] = {POPULARITY: {}, ITEMKNN: {}}
    for task in tasks:
        names = (
            history_features + (CANDIDATE_ITEMS,) + ((QUERY_TOKENS,) if task == "search" else ())
        )
        examples = read_split(data_dir, split, task, spec, names)
        candidates = examples[CANDIDATE_ITEMS]
        results[POPULARITY][task] = popularity[candidates]
        itemknn = itemknn_scores(normalized, history_items(examples), candidates)
        results[ITEMKNN][task] = itemknn
        if task != "search":
            continue
        captions = _item_captions(data_dir, spec, num_items, transform_dir)
        if captions is not None:
            num_words = _word_table_size(spec, examples[QUERY_TOKENS], captions)
            item_words = item_words_from_captions(captions, num_words)
        elif train_queries is None:  # no item words and no training queries to learn them
            continue
        else:
            num_words = _word_table_size(spec, examples[QUERY_TOKENS], train_queries)
            item_words = item_words_from_clicks(
                train_queries, train_query_positives, num_words, num_items
            )
        overlap = query_overlap(examples[QUERY_TOKENS], item_words, candidates)
        results.setdefault(QUERY_MATCH, {})[task] = query_match_scores(
            overlap, itemknn, popularity[candidates]
        )
    return results


__all__ = [
    "POPULARITY",
    "RANDOM",
    "ITEMKNN",
    "QUERY_MATCH",
    "BASELINE_ORDER",
    "baseline_scores",
    "history_items",
    "id_sets",
    "item_cooccurrence",
    "normalized_cooccurrence",
    "itemknn_scores",
    "item_words_from_captions",
    "item_words_from_clicks",
    "query_overlap",
    "query_match_scores",
    "read_split",
    "sampled_product",
]
