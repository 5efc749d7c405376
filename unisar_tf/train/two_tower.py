"""The two-tower retrieval model (TensorFlow Recommenders), trained on the training split.

Examples are the training split's (rec and search): a user is the example's recent items
(unisar_tf.data.retrieval_index.Sequences), the label its positive. Towers:

- item: an item embedding (`dim`);
- user: the recency-weighted mean (weights `decay ** j`, j = 0 the latest) of the embeddings
  of the last `history` distinct history items (a second table), then a dense layer;
- loss: in-batch sampled softmax (tfrs.tasks.Retrieval, temperature `temperature`), each
  in-batch negative's logit corrected by its sampling probability (logQ, `logq` = 1: the
  item's share of training positives), which stops the softmax from pushing popular items
  down; Adam, `epochs` epochs (validation chose 2: later epochs overfit).

`train_two_tower` returns the weights as a TwoTowerIndex (numpy), which is what ships: the
service scores with numpy, no TensorFlow graph.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from unisar_tf.data.retrieval_index import Sequences, TwoTowerIndex, TwoTowerParams


def train_two_tower(
    train: Sequences,
    catalogue: np.ndarray,
    params: TwoTowerParams = TwoTowerParams(),
    seed: int = 0,
    on_epoch: Optional[Callable[[int, TwoTowerIndex], None]] = None,
) -> TwoTowerIndex:
    """Train on `train` (ids of `catalogue`, (N + 1,) strings, [0] = ""); on_epoch(epoch,
    index) is called after every epoch (the experiment's validation)."""
    import tensorflow_recommenders as tfrs

    tf.keras.utils.set_random_seed(seed)
    size = len(catalogue)
    positives = np.asarray(train.positives, np.int64)
    popularity = np.bincount(positives[positives > 0], minlength=size).astype(np.float32)
    recent = np.asarray(train.recent, np.int64)[:, : params.history]
    if recent.shape[1] < params.history:
        recent = np.pad(recent, ((0, 0), (0, params.history - recent.shape[1])))
    weights = tf.constant(params.decay ** np.arange(params.history), tf.float32)
    # How often each item is a positive: the rate it shows up as an in-batch negative.
    counts = np.maximum(popularity, 1.0)
    sampling = tf.constant(counts / counts.sum(), tf.float32)
    regularizer = tf.keras.regularizers.l2(params.l2) if params.l2 else None

    class TwoTower(tfrs.Model):
        def __init__(self):
            super().__init__()
            self.item_table = tf.keras.layers.Embedding(
                size, params.dim, embeddings_regularizer=regularizer
            )
            self.history_table = tf.keras.layers.Embedding(
                size, params.dim, embeddings_regularizer=regularizer
            )
            self.dense = tf.keras.layers.Dense(params.dim)
            self.task = tfrs.tasks.Retrieval(temperature=params.temperature)

        def user(self, items):
            """(B, history) ids -> (B, dim), TwoTowerIndex.user_vectors' formula."""
            mask = tf.cast(items > 0, tf.float32) * weights[None, :]
            total = tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1e-9)
            pooled = tf.reduce_sum(self.history_table(items) * mask[..., None], axis=1) / total
            return self.dense(pooled)

        def compute_loss(self, features, training=False):
            probability = None
            if params.logq:  # tfrs subtracts log(p); p ** logq scales the correction
                probability = tf.pow(tf.gather(sampling, features["positive"]), params.logq)
            return self.task(
                self.user(features["recent"]),
                self.item_table(features["positive"]),
                candidate_sampling_probability=probability,
                compute_metrics=False,
            )

    model = TwoTower()
    model.compile(optimizer=tf.keras.optimizers.Adam(params.learning_rate))
    keep = positives > 0
    dataset = (
        tf.data.Dataset.from_tensor_slices({"recent": recent[keep], "positive": positives[keep]})
        .shuffle(int(keep.sum()), seed=seed, reshuffle_each_iteration=True)
        # A log smaller than a batch (tests) still trains, on one batch.
        .batch(max(1, min(params.batch_size, int(keep.sum()))), drop_remainder=True)
    )
    model.user(tf.zeros((1, params.history), tf.int64))  # build the layers
    model.item_table(tf.zeros((1,), tf.int64))

    def snapshot() -> TwoTowerIndex:
        kernel, bias = (w.numpy() for w in model.dense.weights)
        return TwoTowerIndex(
            catalogue,
            popularity,
            model.item_table.embeddings.numpy(),
            model.history_table.embeddings.numpy(),
            kernel,
            bias,
            params,
            {
                "training_examples": int(len(positives)),
                "training_positives_in_catalogue": int(keep.sum()),
                "clicks_per_session": int(train.clicks_per_session),
                "epochs": params.epochs,
                "seed": seed,
            },
        )

    # No training positive in the catalogue (a tiny or foreign log): nothing to learn from.
    for epoch in range(1, params.epochs + 1 if keep.any() else 1):
        model.fit(dataset, epochs=1, verbose=0)
        if on_epoch is not None:
            on_epoch(epoch, snapshot())
    return snapshot()
