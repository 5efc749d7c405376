"""Small model configurations and vocabulary files for fast model, export and trainer tests."""

import os

import tensorflow as tf

from unisar_tf.config import DATA_FACT_FIELDS, DataFacts, UniSARConfig, amazon_preset
from unisar_tf.model import build_model

# The data facts a test gets unless it sets them (spec 3's shapes, KuaiSAR's 5 clicks).
DEFAULT_FACTS = dict(
    num_users=1000,
    num_items=1000,
    num_words=1000,
    rec_len=30,
    search_len=30,
    query_len=50,
    clicks_per_session=5,
)


def config_and_data(make=UniSARConfig, **values):
    """(config, DataFacts) from one dict of config fields and data facts (DEFAULT_FACTS for
    those it leaves out): for tests that size a model by hand. `make` builds the config
    (UniSARConfig, or a preset function)."""
    facts = {name: values.pop(name) for name in list(values) if name in DATA_FACT_FIELDS}
    return make(**values), DataFacts(**dict(DEFAULT_FACTS, **facts))


# A model small enough to build, export and serve in a few seconds (config fields and data
# facts: config_and_data(**SMALL_MODEL)).
SMALL_MODEL = dict(
    num_users=40,
    num_items=80,
    num_words=30,
    rec_len=6,
    search_len=5,
    query_len=4,
    clicks_per_session=2,
    num_relevance_negatives=16,
    batch_size=8,
)


def write_vocabularies(vocab_dir, data):
    """Vocab files like the data job's for the facts' table sizes: line k (1-based) is id k's
    string."""
    os.makedirs(vocab_dir, exist_ok=True)
    for kind, size, prefix in (
        ("users", data.num_users, "u"),
        ("items", data.num_items, "i"),
        ("words", data.num_words, "w"),
    ):
        with open(os.path.join(vocab_dir, f"{kind}.txt"), "w") as out:
            out.write("".join(f"{prefix}{k}\n" for k in range(1, size)))
    return str(vocab_dir)


TINY = dict(
    batch_size=16,
    embedding_dim=16,
    raw_embedding_dim=8,
    feed_forward_dim=16,
    expert_units=8,
    tower_units=(16,),
    head_units=(16,),
    num_relevance_negatives=16,
)

# The same configuration as command-line flags (--seed 0 sets the config's seed too).
TINY_FLAGS = [
    "--batch_size",
    "16",
    "--embedding_dim",
    "16",
    "--raw_embedding_dim",
    "8",
    "--feed_forward_dim",
    "16",
    "--expert_units",
    "8",
    "--tower_units",
    "16",
    "--head_units",
    "16",
    "--num_relevance_negatives",
    "16",
]


def tiny_config(**overrides):
    return amazon_preset(seed=0, **dict(TINY, **overrides))


def small_model(root, seed: int):
    """(config, model, vocab_dir): a seeded SMALL_MODEL and vocabulary files under root/vocab,
    ready to export (the model's data facts: model.data)."""
    tf.keras.utils.set_random_seed(seed)
    config, data = config_and_data(**SMALL_MODEL)
    return config, build_model(config, data), write_vocabularies(root / "vocab", data)


# The co-occurrence fixture: 8 items, training examples (history items, positive).
COOCCURRENCE_ITEMS = 8
COOCCURRENCE_HISTORIES = ((1, 2, 0), (2, 3, 0), (1, 3, 3), (4, 0, 0))
COOCCURRENCE_POSITIVES = (3, 1, 2, 5)


def cooccurrence_model(seed=None, **overrides):
    """The default preset's model on COOCCURRENCE_ITEMS items with captions, the
    co-occurrence table of the fixture's examples and one transition (2 -> 3); `overrides`
    change the config (e.g. TINY widths), `seed` seeds the weights first."""
    config, data, side, tables = cooccurrence_parts(**overrides)
    if seed is not None:
        tf.keras.utils.set_random_seed(seed)
    return build_model(config, data, side_features=side, cooccurrence=tables)


def cooccurrence_parts(**overrides):
    """(config, data facts, side_features, (table, transitions)) of cooccurrence_model."""
    import numpy as np

    from unisar_tf.config import default_preset
    from unisar_tf.data.cooccurrence import CooccurrenceTable, item_cooccurrence, table_from_counts
    from unisar_tf.data.side_features import SideFeatures

    items = COOCCURRENCE_ITEMS
    captions = np.zeros((items, 3), np.int32)
    captions[1], captions[2], captions[3] = [4, 5, 0], [4, 0, 0], [6, 7, 5]
    side = SideFeatures(
        np.zeros((items, 0), np.int32), captions, np.zeros((6, 0), np.int32), (), (), ()
    )
    table = table_from_counts(
        item_cooccurrence(
            np.array(COOCCURRENCE_HISTORIES), np.array(COOCCURRENCE_POSITIVES), items
        ),
        items,
    )
    transitions = CooccurrenceTable(
        np.array([2 * items + 3]), np.array([1.0], np.float32), np.eye(items, dtype=np.float32)[2]
    )
    values = dict(
        num_items=items,
        num_users=6,
        num_words=9,
        rec_len=3,
        search_len=2,
        query_len=4,
        clicks_per_session=1,
        num_relevance_negatives=4,
        cooccurrence_pairs=table.num_pairs,
        transition_pairs=1,
        item_category_vocab_sizes=side.item_category_vocab_sizes,
        user_feature_vocab_sizes=side.user_feature_vocab_sizes,
        item_caption_length=int(side.item_captions.shape[1]),
    )
    values.update(overrides)
    return (*config_and_data(default_preset, **values), side, (table, transitions))
