"""TFX Trainer module file: `run_fn` trains UniSAR with the project's trainer and exports it.

The TFX Trainer calls `run_fn(fn_args)` with the Examples artifact of the sequence-example
component (train_rec/train_search for training, valid_rec/valid_search for validation; the
artifact also holds the data job's manifest.json and vocab/) and, in the pipeline, the
Transform graph (`fn_args.transform_output`): the examples carry raw ids, which the graph
maps as they are read, and the export serves with the same graph. Without a transform
graph the examples must be the data job's id format and its vocab/ is used. The same
`unisar_tf.train.trainer.Trainer` as `python -m unisar_tf.train` runs the epochs (validation,
plateau / early stopping, checkpoints in the model run dir), then the best validation
checkpoint is exported with the serving signatures (`unisar_tf.export`) into the Model
artifact, which the evaluator scores and the Pusher pushes unchanged. The export carries the
retrieval index of the same training split (`assets.extra/retrieval/`,
unisar_tf.export.retrieval).

custom_config (all optional):
    preset             "default" (the tuned configuration), "paper" (= "amazon", spec 10) or
                       "kuaisar"
    config_overrides   {UniSARConfig field: value}, e.g. {"batch_size": 256}
    max_epochs         default 100 (early stopping usually ends the run first)
    steps_per_epoch    cap on training steps per epoch (small budgets, tests)
    validation_rows    cap on validation examples per task
    seed               default 0
    distribution       tf.distribute strategy (unisar_tf/train/distribution.py), default
                       "auto": multi-worker when the Trainer runs under a TF_CONFIG cluster
                       (Vertex AI's worker pools), mirrored on several GPUs; the chief alone
                       exports
    learned_baseline   "SASRec": train the learned rec baseline instead (its recipe on top of
                       `preset`: unisar_tf.train.learned_baseline); the pipeline's SASRecTrainer
                       sets it, and RankingEvaluator scores its export next to the model
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict

import tensorflow as tf

from feature_specs.layout import VOCAB_DIR

LOG = logging.getLogger(__name__)
TRAIN_SPLITS = ("train_rec", "train_search")
EVAL_SPLITS = ("valid_rec", "valid_search")


def examples_root(fn_args) -> str:
    """The Examples artifact's uri, from a split pattern like <uri>/Split-train_rec/*."""
    split_dir = fn_args.train_files[0].rstrip("*").rstrip("/")
    if not os.path.basename(split_dir).startswith("Split-"):
        raise ValueError(
            f"unexpected training file pattern {fn_args.train_files[0]!r}: "
            "expected <examples uri>/Split-<name>/*"
        )
    return os.path.dirname(split_dir)


def run_fn(fn_args) -> None:
    from unisar_tf.config import preset
    from unisar_tf.export.push import export_serving_model
    from unisar_tf.export.retrieval import retrieval_writer
    from unisar_tf.train.learned_baseline import sasrec_config
    from unisar_tf.train.run_dir import SASREC, load_trained_model
    from unisar_tf.train.trainer import Trainer, TrainerOptions

    custom: Dict[str, Any] = dict(fn_args.custom_config or {})
    data_dir = examples_root(fn_args)
    seed = int(custom.get("seed", 0))
    # custom_config travels as JSON: tuple fields (tower_units, ...) arrive as lists.
    overrides = {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in custom.get("config_overrides", {}).items()
    }
    learned_baseline = custom.get("learned_baseline")
    if learned_baseline not in (None, SASREC):
        raise ValueError(
            f"custom_config learned_baseline must be {SASREC!r} or absent, "
            f"got {learned_baseline!r}"
        )
    if learned_baseline:
        config = sasrec_config(custom.get("preset", "default"), seed).replace(**overrides)
    else:
        config = preset(custom.get("preset", "default"), seed=seed, **overrides)
    transform_dir = getattr(fn_args, "transform_output", None) or None
    options = TrainerOptions(
        data_dir=data_dir,
        model_dir=fn_args.model_run_dir,
        transform_dir=transform_dir,
        max_epochs=int(custom.get("max_epochs", 100)),
        seed=seed,
        steps_per_epoch=custom.get("steps_per_epoch"),
        validation_rows=custom.get("validation_rows"),
        verbose=1,
        distribution=custom.get("distribution", "auto"),
    )
    trainer = Trainer(config, options)  # distribution "auto": TF_CONFIG makes it multi-worker
    summary = trainer.fit()
    LOG.info(
        "best validation epoch %d of %d (mean NDCG@5 %.4f)",
        summary["epoch"],
        summary["epochs_run"],
        summary["validation_score"],
    )
    if not trainer.role.is_chief:  # the chief alone exports (TFX's rule for run_fn)
        return
    model = load_trained_model(fn_args.model_run_dir, data_dir)
    # TFX may create the (empty) serving dir; the exporter wants to create it itself.
    if tf.io.gfile.isdir(fn_args.serving_model_dir) and not tf.io.gfile.listdir(
        fn_args.serving_model_dir
    ):
        tf.io.gfile.rmtree(fn_args.serving_model_dir)
    # The ranker's export also carries the retrieval index of the same training split (raw
    # ids, over the export's items); the learned baseline's needs none.
    writers = [] if learned_baseline else [retrieval_writer(data_dir)]
    export_serving_model(
        model,
        None if transform_dir else os.path.join(data_dir, VOCAB_DIR),
        fn_args.serving_model_dir,
        transform_dir=transform_dir,
        extra_writers=writers,
    )
