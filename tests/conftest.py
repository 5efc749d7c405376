import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


# A model small enough to build, export and serve in a few seconds.
SMALL_MODEL = dict(num_users=40, num_items=80, num_words=30, max_rec_history=6,
                   max_search_history=5, query_length=4, clicks_per_session=2,
                   num_relevance_negatives=16, batch_size=8)


def write_vocabularies(vocab_dir, config):
    """Vocab files like the data job's for a config's sizes: line k (1-based) is id k's string."""
    os.makedirs(vocab_dir, exist_ok=True)
    for kind, size, prefix in (("users", config.num_users, "u"), ("items", config.num_items, "i"),
                               ("words", config.num_words, "w")):
        with open(os.path.join(vocab_dir, f"{kind}.txt"), "w") as out:
            out.write("".join(f"{prefix}{k}\n" for k in range(1, size)))
    return str(vocab_dir)
