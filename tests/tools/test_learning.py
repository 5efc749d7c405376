"""A short training run learns: it beats random ranking by a clear margin on held-out data."""

import numpy as np
import pytest

from unisar_tf.metrics import random_ranking_metrics
from unisar_tf.tools.demo import run_demo

pytestmark = pytest.mark.slow  # trains the demo model


def test_short_training_run_beats_random_ranking_on_held_out_data():
    results = run_demo(
        num_users=500, num_items=400, num_words=100, epochs=1, batch_size=64, seed=0, verbose=0
    )
    random = random_ranking_metrics(100)
    for task in ("rec", "search"):
        learned = results["unisar"][task]
        # Random ranking gives HR@10 = 0.10 and NDCG@10 = 0.045 on 1 + 99 candidates.
        assert learned["HR@10"] > 3 * random["HR@10"], (task, learned)
        assert learned["NDCG@10"] > 3 * random["NDCG@10"], (task, learned)
        assert np.isfinite(list(learned.values())).all()
