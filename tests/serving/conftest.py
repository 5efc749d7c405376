"""Fixtures of the serving tests.

`redis_url` starts `redis-server` from PATH (installed from the distribution's packages by
tools/ensure-redis-server when missing, as `make test` does first) on 127.0.0.1 at a free
port, without persistence, once per session, and stops it at the end. No mock: the Redis
tests talk to the server.

`small_export` pushes one small real UniSAR model (helpers.model.small_model, seed 5) once per
session, for the tests that serve a real export (tests using it are slow: mark them).
"""

import os

import numpy as np
import pytest
from helpers.redis_server import start_redis_server, stop_redis_server


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """ "redis://127.0.0.1:<port>/0" of a redis-server this session started (and stops)."""
    process, url = start_redis_server(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop_redis_server(process)


@pytest.fixture(scope="session")
def small_export(tmp_path_factory):
    """(model_base_path, raw, expected): a small UniSAR model pushed to
    <root>/serving/unisar/1, a raw request of 4 users x 9 candidates (both signatures' inputs;
    `recommend` takes all but "query") and the in-process model's scores {task: (4, 9)}.
    Read-only: tests serve it, never write under it."""
    from helpers.model import small_model

    from unisar_tf.data.synthetic import random_feature_batch
    from unisar_tf.data.vocab import read_vocabularies
    from unisar_tf.export.push import push
    from unisar_tf.export.requests import raw_request_from_features

    root = tmp_path_factory.mktemp("serving")
    _, model, vocab_dir = small_model(root, seed=5)
    path = push(model, vocab_dir, str(root / "serving"))
    features = random_feature_batch(model.data, 4, 9, True, np.random.default_rng(6))
    expected = {task: scores.numpy() for task, scores in model(features).items()}
    raw = raw_request_from_features(features, read_vocabularies(vocab_dir))
    return os.path.dirname(path), raw, expected
