"""Where training runs: one device, every GPU of one host, or several workers (tf.distribute).

    strategy = make_strategy("auto")      # TrainerOptions.distribution
    role = worker_role(strategy)          # chief or not, worker index and count

Strategies, by name:
    default       TensorFlow's default strategy: one device, one replica.
    mirrored      tf.distribute.MirroredStrategy: one replica per visible GPU of this host.
    multi_worker  tf.distribute.MultiWorkerMirroredStrategy: the workers of TF_CONFIG, each
                  with its local devices (CPU or GPUs), synchronous all-reduce.
    auto          multi_worker when TF_CONFIG names more than one task, else mirrored when
                  more than one GPU is visible, else default.

How a global batch is split (the Trainer; docs/training.md): the configured batch size is
the global batch. Every worker reads the same global batches in the same order and keeps the
rows of its own replicas, replica r of T taking rows [r*B/T, (r+1)*B/T) of each task's batch,
so the replicas together train on exactly the batch one device would. Training negatives are
drawn per global batch before the split (stateless in seed, epoch and step), and the step's
relevance negatives are the same on every replica. Each replica's loss is the mean over its
rows, and the gradient is scaled by 1/T before the all-reduce sums it, which gives the global
batch's mean gradient. The alignment loss's in-batch negatives are the other rows of the same
replica (B/T of them instead of B), the one term that changes with the replica count.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from typing import Callable, Dict, List, Optional

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
STRATEGY_CLASSES = {
    "default": "the default strategy",
    "mirrored": "MirroredStrategy",
    "multi_worker": "MultiWorkerMirroredStrategy",
}


def cluster_tasks(tf_config: Optional[str] = None) -> int:
    """How many tasks (chief + workers) TF_CONFIG's cluster names; 0 without TF_CONFIG."""
    text = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not text.strip():
        return 0
    try:
        cluster = json.loads(text).get("cluster", {})
    except ValueError as error:
        raise ValueError(f"TF_CONFIG is not JSON: {error}") from None
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def local_cluster(workers: int) -> List[str]:
    """TF_CONFIG values for `workers` processes on this machine (free loopback ports), one per
    worker index: for tests and benchmarks of multi-worker training on one host."""
    sockets = [socket.socket() for _ in range(workers)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    addresses = [f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets]
    for sock in sockets:
        sock.close()
    return [
        json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})
        for index in range(workers)
    ]


def resolve_strategy_name(
    name: str, tf_config: Optional[str] = None, gpus: Optional[int] = None
) -> str:
    """The concrete strategy name for `name` (see the module docstring for "auto")."""
    if name not in STRATEGIES:
        raise ValueError(f"distribution must be one of {STRATEGIES}, got {name!r}")
    if name != "auto":
        return name
    if cluster_tasks(tf_config) > 1:
        return "multi_worker"
    if gpus is None:
        gpus = len(tf.config.list_physical_devices("GPU"))
    return "mirrored" if gpus > 1 else "default"


_STRATEGIES: Dict[str, tf.distribute.Strategy] = {}


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The tf.distribute strategy for `name`, one per process and kind: a multi-worker
    strategy must be made before the process runs any TensorFlow op, and only once
    (TensorFlow's rules for collective ops), so later trainers in the same process (the
    SASRec baseline after the model) share it."""
    resolved = resolve_strategy_name(name)
    if resolved not in _STRATEGIES:
        if resolved == "multi_worker":
            if cluster_tasks() < 1:
                raise ValueError(
                    "distribution multi_worker needs TF_CONFIG with a cluster "
                    "and this task's type and index"
                )
            _STRATEGIES[resolved] = tf.distribute.MultiWorkerMirroredStrategy()
        elif resolved == "mirrored":
            _STRATEGIES[resolved] = tf.distribute.MirroredStrategy()
        else:
            _STRATEGIES[resolved] = tf.distribute.get_strategy()
    return _STRATEGIES[resolved]


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    is_chief: bool
    index: int  # this worker's position among all workers (the chief is 0)
    count: int  # workers (input pipelines)

    def scratch_dir(self, model_dir: str) -> str:
        """Where a non-chief worker writes what the chief alone keeps (then deletes it)."""
        return os.path.join(model_dir, ".workers", f"worker-{self.index}")


def worker_role(strategy: tf.distribute.Strategy) -> WorkerRole:
    """Chief or not: the chief alone writes checkpoints, best/, TensorBoard and reports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return WorkerRole(is_chief=True, index=0, count=1)
    spec = resolver.cluster_spec().as_dict()
    kind, task = resolver.task_type, int(resolver.task_id or 0)
    has_chief = bool(spec.get("chief"))
    count = len(spec.get("chief", [])) + len(spec.get("worker", []))
    index = task + (1 if has_chief and kind == "worker" else 0)
    is_chief = kind == "chief" or (not has_chief and kind == "worker" and task == 0)
    return WorkerRole(is_chief=is_chief, index=index, count=count)


def replica_rows(batch: tf.Tensor, replicas: int, first: int, count: int) -> tf.Tensor:
    """(B, ...) -> (count, B / replicas, ...): the row blocks of replicas first..first+count-1.

    B must be a multiple of `replicas` (the Trainer drops an epoch's last, shorter batch and
    sizes the search batch so that it is)."""
    size = tf.shape(batch)[0] // replicas
    block = batch[first * size : (first + count) * size]
    return tf.reshape(block, tf.concat([[count, size], tf.shape(batch)[1:]], axis=0))


def split_for_replicas(
    batch: Dict, context: tf.distribute.InputContext, shared_keys=("rel_negatives",)
) -> Dict:
    """One global batch -> this input pipeline's replicas' batches, stacked on a new leading
    axis (unbatch it to get one element per replica). Keys in `shared_keys` are copied to
    every replica whole."""
    total = context.num_replicas_in_sync
    local = total // context.num_input_pipelines
    first = context.input_pipeline_id * local

    def split(value, shared):
        if shared:
            return tf.nest.map_structure(lambda t: tf.repeat(t[tf.newaxis], local, axis=0), value)
        return tf.nest.map_structure(lambda t: replica_rows(t, total, first, local), value)

    return {key: split(value, key in shared_keys) for key, value in batch.items()}


def distribute_global_batches(
    strategy: tf.distribute.Strategy, make_dataset: Callable[[], tf.data.Dataset]
):
    """The global-batch dataset `make_dataset()` split across the strategy's replicas (as
    described in the module docstring); the dataset itself for one replica."""
    if strategy.num_replicas_in_sync == 1:
        return make_dataset()

    def per_pipeline(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset().map(lambda batch: split_for_replicas(batch, context)).unbatch()

    options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
    return strategy.distribute_datasets_from_function(per_pipeline, options)


def replica_train_step(model, batch) -> Dict[str, tf.Tensor]:
    """One optimizer step on this replica's rows (inside strategy.run): TFRS's train_step with
    the gradient scaled by 1/replicas, so the all-reduced update is the global batch's."""
    replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    with tf.GradientTape() as tape:
        loss = model.compute_loss(batch, training=True)
        regularization = tf.add_n(model.losses) if model.losses else tf.constant(0.0)
        total = loss + regularization
        scaled = total / replicas  # inside the tape: it must record the division too
    gradients = tape.gradient(scaled, model.trainable_variables)
    model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    logs = {metric.name: metric.result() for metric in model.metrics}
    logs.update(loss=loss, regularization_loss=regularization, total_loss=total)
    return logs


def mean_over_replicas(strategy: tf.distribute.Strategy, per_replica: Dict) -> Dict:
    """{name: per-replica value} -> {name: mean over the replicas} (the logged losses)."""
    return {
        name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
        for name, value in per_replica.items()
    }
