"""Joint rec+search input pipeline, training and 1+N evaluation for in-memory feature arrays.

Spec 10: every step sees one rec batch and one search batch, sized so both datasets finish an
epoch together, and shares one draw of relevance negatives between them. The TFRecord trainer
(unisar_tf/trainer.py) uses the same batch sizing.
"""
from __future__ import annotations

import math
import weakref
from typing import Dict, Mapping, Optional

import numpy as np
import tensorflow as tf

from feature_specs import QUERY_TOKENS, REL_NEGATIVE_ITEMS, REL_NEGATIVE_QUERY_TOKENS
from unisar_tf.config import UniSARConfig
from unisar_tf.metrics import ranking_metrics

ArrayDict = Mapping[str, np.ndarray]


def _num_rows(features: ArrayDict) -> int:
    return len(next(iter(features.values())))


def search_batch_size(num_rec: int, num_search: int, rec_batch_size: int) -> int:
    """Search batch size that makes the search data last as many steps as rec.

    The reference's rounding: it assumes rec // batch + 1 steps, one more than there are
    when the rec count is an exact multiple of the batch, and then a few search examples are
    not seen that epoch (the search stream cycles and is reshuffled every epoch).
    """
    rec_steps = num_rec // rec_batch_size + 1
    return max(1, num_search // rec_steps + 1)


def steps_per_epoch(config: UniSARConfig, num_rec: int, num_search: int) -> int:
    if "rec" in config.tasks:
        return math.ceil(num_rec / config.batch_size)
    return math.ceil(num_search / config.batch_size)


def joint_training_dataset(config: UniSARConfig, rec: Optional[ArrayDict],
                           search: Optional[ArrayDict], query_bank: np.ndarray,
                           seed: int = 0) -> tf.data.Dataset:
    """One epoch of {"rec": batch, "search": batch, "rel_negatives": {...}} elements.

    rec / search: feature dicts of (n, ...) arrays with the positive at candidate column 0.
    query_bank: (Nq, query_len) token rows the relevance loss draws its negative queries from.
    Negatives are drawn uniformly per step: items from 1..num_items-1, queries from the bank.
    Re-iterating the dataset reshuffles and redraws.
    """
    tasks = config.tasks
    joint = "rec" in tasks and "search" in tasks
    parts = {}
    if "rec" in tasks:
        parts["rec"] = (tf.data.Dataset.from_tensor_slices(dict(rec))
                        .shuffle(_num_rows(rec), seed=seed, reshuffle_each_iteration=True)
                        .batch(config.batch_size))
    if "search" in tasks:
        size = (search_batch_size(_num_rows(rec), _num_rows(search), config.batch_size)
                if joint else config.batch_size)
        search_ds = (tf.data.Dataset.from_tensor_slices(dict(search))
                     .shuffle(_num_rows(search), seed=seed + 1, reshuffle_each_iteration=True))
        # The rec data sets the epoch; the search data cycles if a step would run short.
        parts["search"] = (search_ds.repeat() if joint else search_ds).batch(size)
    dataset = tf.data.Dataset.zip(parts)

    bank = tf.constant(query_bank, tf.int64)
    num_negatives = config.num_relevance_negatives
    num_items = config.num_items

    def add_relevance_negatives(batch):
        batch = dict(batch)
        batch["rel_negatives"] = {
            REL_NEGATIVE_ITEMS: tf.random.uniform([num_negatives], 1, num_items, tf.int64),
            REL_NEGATIVE_QUERY_TOKENS: tf.gather(bank, tf.random.uniform(
                [num_negatives], 0, tf.shape(bank, tf.int64)[0], tf.int64)),
        }
        return batch

    return dataset.map(add_relevance_negatives).prefetch(tf.data.AUTOTUNE)


def predict_scores(model: tf.keras.Model, features: ArrayDict, task: str,
                   batch_size: int = 512) -> np.ndarray:
    """Scores (n, C) of one task for every row of `features`, in inference mode."""
    if task == "search" and QUERY_TOKENS not in features:
        raise ValueError("search scores need query_tokens in the features")
    score = _scoring_function(model, task, features)
    dataset = tf.data.Dataset.from_tensor_slices(dict(features)).batch(batch_size)
    return np.concatenate([score(batch).numpy() for batch in dataset], axis=0)


# One traced scoring graph per (model, task, input shapes), reused across evaluations.
_SCORING_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _scoring_function(model: tf.keras.Model, task: str, features: ArrayDict):
    signature = {name: tf.TensorSpec((None,) + np.shape(values)[1:], tf.int64)
                 for name, values in features.items()}
    key = (task, tuple(sorted((name, np.shape(values)[1:]) for name, values in features.items())))
    per_model = _SCORING_FUNCTIONS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = tf.function(lambda batch: model(batch, training=False)[task],
                                     input_signature=[signature])
    return per_model[key]


def evaluate_tasks(model: tf.keras.Model, eval_sets: Mapping[str, ArrayDict],
                   batch_size: int = 512) -> Dict[str, Dict[str, float]]:
    """HR@1/5/10 and NDCG@5/10 per task on 1-positive + N-negative examples."""
    return {task: ranking_metrics(predict_scores(model, features, task, batch_size))
            for task, features in eval_sets.items()}
