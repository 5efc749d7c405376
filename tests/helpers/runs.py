"""A trained run's directory without training: what `python -m unisar_tf.export` reads.

    fake_run(root, config, data, seed, empty_vocabularies=("words",))
        -> (model_dir, data_dir, model)

data_dir holds manifest.json and vocab/{users,items,words}.txt as the data job writes them
(line k = id k + 1; an empty file for a kind the data has none of, e.g. the query words of a
rec-only log, whose manifest then says 0 words); model_dir holds config.json (the config and
the data facts) and the seeded model's weights as the best checkpoint (best/ckpt-1). `model`
is that model, in memory.
"""

import json
import os

import tensorflow as tf

from helpers.model import write_vocabularies
from unisar_tf.config import run_config_dict
from unisar_tf.model import build_model


def fake_run(root, config, data, seed: int, empty_vocabularies=()):
    data_dir, model_dir = str(root / "data"), str(root / "run")
    vocab_dir = write_vocabularies(root / "data" / "vocab", data)
    sizes = {
        "users": data.num_users - 1,
        "items": data.num_items - 1,
        "words": data.num_words - 1,
    }
    for kind in empty_vocabularies:
        open(os.path.join(vocab_dir, f"{kind}.txt"), "w").close()
        sizes[kind] = 0
    shapes = {
        name: getattr(data, name)
        for name in ("rec_len", "search_len", "query_len", "clicks_per_session")
    }
    shapes.update(  # the data job's manifest has them (feature_specs.data_spec requires them)
        train_candidates=1 + config.training.num_train_negatives,
        eval_candidates=1 + config.training.num_eval_negatives,
    )
    with open(os.path.join(data_dir, "manifest.json"), "w") as out:
        json.dump(
            {"dataset": "test", "id_format": "ids", "vocab_sizes": sizes, "shapes": shapes}, out
        )
    tf.keras.utils.set_random_seed(seed)
    model = build_model(config, data)
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, "config.json"), "w") as out:
        json.dump(run_config_dict(config, data), out)
    tf.train.Checkpoint(model=model).save(os.path.join(model_dir, "best", "ckpt"))
    return model_dir, data_dir, model
