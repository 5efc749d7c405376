"""Small model configurations and vocabulary files for fast model, export and trainer tests."""
import os

import tensorflow as tf

from unisar_tf.config import UniSARConfig, amazon_preset
from unisar_tf.model import build_model

# A model small enough to build, export and serve in a few seconds.
SMALL_MODEL = dict(num_users=40, num_items=80, num_words=30, rec_len=6,
                   search_len=5, query_len=4, clicks_per_session=2,
                   num_relevance_negatives=16, batch_size=8)


def write_vocabularies(vocab_dir, config):
    """Vocab files like the data job's for a config's sizes: line k (1-based) is id k's string."""
    os.makedirs(vocab_dir, exist_ok=True)
    for kind, size, prefix in (("users", config.num_users, "u"), ("items", config.num_items, "i"),
                               ("words", config.num_words, "w")):
        with open(os.path.join(vocab_dir, f"{kind}.txt"), "w") as out:
            out.write("".join(f"{prefix}{k}\n" for k in range(1, size)))
    return str(vocab_dir)


TINY = dict(batch_size=16, embedding_dim=16, raw_embedding_dim=8, feed_forward_dim=16,
            expert_units=8, tower_units=(16,), head_units=(16,), num_relevance_negatives=16)

# The same configuration as command-line flags (--seed 0 sets the config's seed too).
TINY_FLAGS = ["--batch_size", "16", "--embedding_dim", "16", "--raw_embedding_dim", "8",
              "--feed_forward_dim", "16", "--expert_units", "8", "--tower_units", "16",
              "--head_units", "16", "--num_relevance_negatives", "16"]


def tiny_config(**overrides):
    return amazon_preset(seed=0, **dict(TINY, **overrides))


def small_model(root, seed: int):
    """(config, model, vocab_dir): a seeded SMALL_MODEL and vocabulary files under root/vocab,
    ready to export."""
    tf.keras.utils.set_random_seed(seed)
    config = UniSARConfig(**SMALL_MODEL)
    return config, build_model(config), write_vocabularies(root / "vocab", config)
