"""The learned baseline of every report: SASRec, trained by the same Trainer on the same data.

A UniSAR result means something only next to a learned single-task sequential recommender
(issue 14). This module trains one beside a UniSAR run and scores it on the same lists:

    train_sasrec(options, preset_name="default")         # <model_dir>/baselines/SASRec
    sasrec_metrics(model_dir, data_dir, "test")          # {"rec": metrics} or None

The SASRec run is an ordinary run directory (checkpoints, best/, history.jsonl), so it
resumes like any run, and `unisar_tf.train.evaluation.evaluate_best` adds its row to the report when
it exists. Its recipe is `config.BASELINES["SASRec"]` on top of the same preset as the model
it is compared with (the ablation table uses the same recipe), with its own schedule (plateau
and early-stop patience, epoch budget `config.SASREC_MAX_EPOCHS`). SASRec scores rec only.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from unisar_tf.config import BASELINES, SASREC_MAX_EPOCHS, preset
from unisar_tf.data import reader
from unisar_tf.train.run_dir import SASREC, sasrec_run_dir
from unisar_tf.train.trainer import Trainer, TrainerOptions


def sasrec_config(preset_name: str = "default", seed: int = 0):
    """The SASRec recipe on top of `preset_name` (architecture "sasrec", tasks ("rec",))."""
    return preset(preset_name, seed=seed, **BASELINES[SASREC])


def has_rec_training(data_dir: str, transform_dir: Optional[str] = None) -> bool:
    """True when the data has rec training examples (SASRec has nothing to learn otherwise)."""
    return bool(reader.load_spec(data_dir, transform_dir).examples.count("train", "rec"))


def train_sasrec(
    options: TrainerOptions, preset_name: str = "default", max_epochs: Optional[int] = None
) -> Optional[dict]:
    """Trains SASRec with the UniSAR run's TrainerOptions into sasrec_run_dir(model_dir).

    options: the UniSAR run's options (data, seed, caps and verbosity are
    shared, not its epoch budget); max_epochs: SASRec's budget (default: its own,
    config.SASREC_MAX_EPOCHS). Returns the best epoch's summary (`Trainer.fit`), or None for
    data without rec training examples.
    """
    if not has_rec_training(options.data_dir, options.transform_dir):
        return None
    sasrec_options = dataclasses.replace(
        options,
        model_dir=sasrec_run_dir(options.model_dir),
        max_epochs=SASREC_MAX_EPOCHS if max_epochs is None else int(max_epochs),
    )
    return Trainer(sasrec_config(preset_name, options.seed), sasrec_options).fit()
