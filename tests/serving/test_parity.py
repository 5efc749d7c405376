"""Online/offline parity on a small Amazon-format log: every test user, both tasks.

The data job builds the examples; an (untrained, seeded) model sized to its vocabularies is
exported and served by the stand-in; serving/parity.py then writes each user's events before
the test target into the history store, assembles the online request from what the store
returns, and compares features and served scores with the data job's test example and the
evaluator's scores. The Beauty-wide run is `python -m serving.parity ...` (docs/online.md).
"""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from feature_specs.data_spec import DataSpec
from feature_specs.event_schema import Event
from pipeline.adapters import amazon
from serving import parity
from serving.load_history import adapter_events
from serving.online_features import OnlineFeatureAssembler
from serving.server import serve
from unisar_tf.config import DataFacts, UniSARConfig
from unisar_tf.export.push import export_serving_model
from unisar_tf.model import build_model
from unisar_tf.train.evaluation import saved_model_scores

pytestmark = pytest.mark.slow


def amazon_events(root):
    """The data job's events of build_amazon_examples' log under root, by user (the same
    adapter inputs)."""
    inputs = amazon.AmazonInputs(
        str(root / "seq.txt"), str(root / "attrs.json"), query_min_item_frequency=5, seed=1
    )
    return parity.events_by_user(adapter_events(amazon.read, inputs))


@pytest.fixture(scope="module")
def parity_world(amazon_examples, tmp_path_factory):
    """(events by user, examples dir, export dir, stand-in server, scratch dir, offline
    scores) for the shared 60-user Amazon-format examples (read-only; exports go here)."""
    out, manifest = amazon_examples
    root = tmp_path_factory.mktemp("parity")
    tf.keras.utils.set_random_seed(5)
    config = UniSARConfig(
        batch_size=8,
        embedding_dim=16,
        raw_embedding_dim=8,
        feed_forward_dim=16,
        expert_units=8,
        tower_units=(16,),
        head_units=(16,),
        num_relevance_negatives=8,
    )
    model = build_model(config, DataFacts.from_spec(DataSpec.of(manifest)))
    export_dir = export_serving_model(model, f"{out}/vocab", str(root / "serving" / "unisar" / "1"))
    offline_scores = saved_model_scores(export_dir, out, "test", ("rec", "search"))
    with serve(str(root / "serving" / "unisar"), port=0) as server:
        yield (
            amazon_events(pathlib.Path(out).parent),
            out,
            export_dir,
            server,
            root,
            offline_scores,
        )


def run_parity(world):
    events, out, export_dir, server, root, offline_scores = world
    store = f"sqlite:///{root}/history-{{task}}-{len(list(root.iterdir()))}.db"
    return parity.check_parity(
        events,
        out,
        export_dir,
        server.address,
        store,
        vocab_dir=f"{out}/vocab",
        offline_scores=offline_scores,
        log=lambda *_: None,
    )


def test_every_test_user_gets_the_data_jobs_features_and_the_evaluators_scores(parity_world):
    results = run_parity(parity_world)
    assert set(results) == {"rec", "search"}
    for result in results.values():
        assert result.users >= 30, result  # most of the 60 users have a test example
        assert result.feature_mismatches == 0, result.examples
        assert result.score_mismatches == 0, result.max_score_difference
        assert result.max_score_difference <= parity.SCORE_TOLERANCE


def test_a_lost_event_is_caught(parity_world, monkeypatch):
    """The check can fail: an online path that loses the user's oldest stored event."""
    original = OnlineFeatureAssembler.assemble

    def assemble_without_oldest(self, user_id, events, candidates, query=None):
        return original(self, user_id, list(events)[1:], candidates, query)

    monkeypatch.setattr(OnlineFeatureAssembler, "assemble", assemble_without_oldest)
    results = run_parity(parity_world)
    for result in results.values():
        assert result.feature_mismatches > 0
        assert result.score_mismatches > 0


def test_leave_one_out_targets_and_the_events_before_them():
    """Hand-built log: the last rec click and the last clicked search session are the
    targets; a session counts as a whole, by its first row."""
    events = [
        Event("u", 0, "rec", "a"),
        Event("u", 1, "search", "b", 1, "s1", ("w",)),
        Event("u", 1, "rec", "c"),  # tie: rec first
        Event("u", 2, "search", "", 0, "s2", ("v",)),  # no click: not a target
        Event("u", 3, "rec", "d", 0),  # impression: not a target
        Event("u", 4, "search", "e", 1, "s3", ("x",)),
        Event("u", 6, "search", "f", 1, "s3", ("x",)),
    ]  # same session, later row
    keys = parity.loo_target_keys(events)
    assert keys["rec"] == events[2].sort_key()
    assert keys["search"] == events[5].sort_key()
    before_rec = parity.events_before(events, keys["rec"])
    assert before_rec == events[:1]
    before_search = parity.events_before(events, keys["search"])
    assert before_search == events[:5]
    assert parity.target_query(events, keys["search"]) == "x"


def test_stacked_inputs_pad_each_request_and_keep_its_values():
    one = {"a": np.array([[b"x", b"y"]], dtype=object), "n": np.array([[1]], np.int64)}
    two = {"a": np.array([[b"z"]], dtype=object), "n": np.array([[2, 3]], np.int64)}
    stacked = parity.stack_inputs([one, two])
    assert stacked["a"].tolist() == [[b"x", b"y"], [b"z", b""]]
    assert stacked["n"].tolist() == [[1, 0], [2, 3]]
