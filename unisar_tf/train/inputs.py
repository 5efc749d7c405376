"""The training input: one epoch of joint rec + search batches from the data job's TFRecords.

Spec 10: every step takes one rec batch and one search batch, sized so both finish an epoch
together (`search_batch_size`, the reference's rounding), and shares one draw of relevance
negatives. With a negative pool in the data (`--train_negative_pool` of the data job) each
epoch draws fresh training negatives from it. The batch order and every negative are
stateless functions of (seed, epoch, step), so a resumed run sees the same batches.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping

import numpy as np
import tensorflow as tf

from feature_specs import (
    CANDIDATE_ITEMS,
    NEGATIVE_POOL,
    REL_NEGATIVE_ITEMS,
    REL_NEGATIVE_QUERY_TOKENS,
)
from feature_specs.data_spec import DataSpec
from unisar_tf.config import UniSARConfig
from unisar_tf.data import reader


def search_batch_size(num_rec: int, num_search: int, rec_batch_size: int, replicas: int = 1) -> int:
    """Search batch size that makes the search data last as many steps as rec.

    The reference's rounding: it assumes rec // batch + 1 steps, one more than there are
    when the rec count is an exact multiple of the batch, and then a few search examples are
    not seen that epoch (the search stream cycles and is reshuffled every epoch). With several
    replicas it is rounded up to a multiple of their number, so each gets the same rows.
    """
    rec_steps = num_rec // rec_batch_size + 1
    size = max(1, num_search // rec_steps + 1)
    return -(-size // replicas) * replicas


def _stateless_seed(seed: int, epoch, step) -> tf.Tensor:
    return tf.stack(
        [tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64), tf.cast(step, tf.int64)]
    )


def epoch_steps(config: UniSARConfig, counts: Mapping[str, int], replicas: int = 1) -> int:
    """Steps of one epoch: the lead task's batches, the last one short on one replica; with
    several replicas only whole global batches (they split evenly), at least one."""
    lead = "rec" if "rec" in config.model.tasks else "search"
    if replicas > 1:
        return max(1, counts[lead] // config.training.batch_size)
    return math.ceil(counts[lead] / config.training.batch_size)


def replace_negatives(
    features: Dict[str, tf.Tensor], num_negatives: int, seed: tf.Tensor
) -> Dict[str, tf.Tensor]:
    """Candidates = [positive, `num_negatives` distinct draws from the row's negative pool].

    features[CANDIDATE_ITEMS] (B, 1 + n) with the positive first, features[NEGATIVE_POOL]
    (B, K) -> candidates (B, 1 + num_negatives); the pool is dropped from the features.
    """
    features = dict(features)
    pool = features.pop(NEGATIVE_POOL)
    noise = tf.random.stateless_uniform(tf.shape(pool), seed=seed)
    picks = tf.argsort(noise, axis=1)[:, :num_negatives]  # a random subset, no repeats
    negatives = tf.gather(pool, picks, batch_dims=1)
    features[CANDIDATE_ITEMS] = tf.concat([features[CANDIDATE_ITEMS][:, :1], negatives], axis=1)
    return features


def training_dataset(
    config: UniSARConfig,
    data_dir: str,
    manifest: dict | DataSpec,
    query_bank: np.ndarray,
    seed: int,
    epoch: int,
    fresh_negatives: bool = True,
    shuffle_buffer: int = 20_000,
    replicas: int = 1,
) -> tf.data.Dataset:
    """One epoch of {"rec": batch, "search": batch, "rel_negatives": {...}} (spec 10), as
    global batches.

    The rec data sets the epoch; the search data, batched to finish at the same time, cycles
    if rounding leaves a step short. With one task only that task's batches are produced.
    For several replicas (train/distribution.py) every batch is whole, so it splits evenly:
    the search batch is a multiple of `replicas` and an epoch's last, shorter batch is left
    out (the data is reshuffled every epoch, so no example is left out for good).
    """
    spec = DataSpec.of(manifest)
    counts = spec.examples.split("train")
    tasks = config.model.tasks
    joint = len(tasks) == 2
    sizes = {task: config.training.batch_size for task in tasks}
    if joint:
        sizes["search"] = search_batch_size(
            counts["rec"], counts["search"], config.training.batch_size, replicas
        )
    parts = {}
    for offset, task in enumerate(tasks):
        stream = reader.read_examples(
            data_dir,
            "train",
            task,
            sizes[task],
            manifest,
            shuffle=True,
            seed=seed * 7919 + epoch * 2 + offset,
            shuffle_buffer=shuffle_buffer,
            drop_remainder=replicas > 1,
        )
        parts[task] = stream.repeat() if joint and task == "search" else stream
    has_pool = bool(spec.candidates.train_negative_pool)
    # No query at all (a rec-only log): no relevance negatives (the Trainer turns L_rel off).
    with_relevance = len(query_bank) > 0
    bank = tf.constant(query_bank, tf.int64) if with_relevance else None
    num_relevance = config.training.num_relevance_negatives

    def finish(step, batch):
        batch = dict(batch)
        for index, task in enumerate(tasks):
            task_batch = dict(batch[task])
            if has_pool and fresh_negatives:
                task_batch = replace_negatives(
                    task_batch,
                    config.training.num_train_negatives,
                    _stateless_seed(seed, epoch, step * 4 + index),
                )
            else:
                task_batch.pop(NEGATIVE_POOL, None)
            batch[task] = task_batch
        if not with_relevance:
            return batch
        item_seed = _stateless_seed(seed, epoch, step * 4 + 2)
        query_seed = _stateless_seed(seed, epoch, step * 4 + 3)
        batch["rel_negatives"] = {
            REL_NEGATIVE_ITEMS: tf.random.stateless_uniform(
                [num_relevance], item_seed, 1, spec.vocab_sizes.item_table, tf.int64
            ),
            REL_NEGATIVE_QUERY_TOKENS: tf.gather(
                bank,
                tf.random.stateless_uniform(
                    [num_relevance], query_seed, 0, tf.shape(bank, tf.int64)[0], tf.int64
                ),
            ),
        }
        return batch

    return (
        tf.data.Dataset.zip(parts)
        .enumerate()
        .map(finish, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(2)
    )


def training_item_counts(data_dir: str, manifest: dict | DataSpec, num_items: int) -> np.ndarray:
    """(num_items,) how often each item is a training positive (the popularity baseline)."""
    counts = np.zeros(num_items, np.float64)
    width = DataSpec.of(manifest).candidates.train
    for task in reader.tasks_with_examples(manifest, "train"):
        positives = reader.read_feature(data_dir, "train", task, CANDIDATE_ITEMS, width, manifest)[
            :, 0
        ]
        np.add.at(counts, positives, 1.0)
    return counts
