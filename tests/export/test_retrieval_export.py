"""An export made with the retrieval writer carries the index of the data's training split,
over the model's items, and serving/retrieval.py loads it from the version directory."""

import os

import pytest
from helpers.model import small_model
from helpers.retrieval import write_tiny_data

from feature_specs.event_schema import Event
from serving.retrieval import Retriever
from unisar_tf.data.retrieval_index import RETRIEVAL_DIR
from unisar_tf.export.push import push
from unisar_tf.export.retrieval import retrieval_writer


@pytest.mark.slow  # one SavedModel export (about 10 s on 2 cores)
def test_push_with_the_retrieval_writer_ships_the_index(tmp_path):
    _, model, vocab_dir = small_model(tmp_path, seed=3)  # items i1 .. i79
    data_dir = write_tiny_data(tmp_path / "data", raw=False, names=("i1", "i2", "i3", "i4"))
    version = push(
        model,
        vocab_dir,
        str(tmp_path / "serving"),
        extra_writers=[retrieval_writer(data_dir, "cooccurrence")],
    )
    assert os.path.basename(version) == "1"
    assert os.path.isfile(os.path.join(version, RETRIEVAL_DIR, "index.json"))
    retriever = Retriever.load(version)
    assert retriever.num_items == 79
    # i1 -> i2 (twice), i3 (after i2); then popularity (i2, i3), then the rest by id.
    events = [Event("u", 1, "rec", "i1")]
    assert retriever.retrieve(events, 4) == ["i2", "i3", "i4", "i5"]
    assert retriever.retrieve([], 3) == ["i2", "i3", "i1"]
