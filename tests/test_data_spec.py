"""feature_specs.data_spec: manifest.json <-> DataSpec, today's layout and older ones."""

import copy
import dataclasses
import json

import pytest

from feature_specs import SequenceShapes
from feature_specs.data_spec import Candidates, DataSpec, VocabSizes
from pipeline import beam_job
from pipeline import sequence_builder as sb

# What the data job counts (the Beam job's _stats.json), enough for every manifest block.
STATS = {
    "examples/train/rec": 5,
    "examples/train/search": 3,
    "examples/valid/rec": 1,
    "examples/test/search": 2,
    "rejected/too_few_negatives": 1,
    "vocab_users": 7,
    "vocab_items": 30,
    "vocab_words": 11,
    "events": 99,
    "users": 7,
    "time_split/train_days": 3,
}


def data_job_manifest():
    return beam_job.assemble_spec(
        "/data/out",
        STATS,
        sb.BuildOptions(train_negative_pool=4),
        "amazon",
        {"reviews": "/in/reviews.csv"},
        ["--runner=DirectRunner"],
        12.345,
    ).to_manifest()


def as_json(manifest) -> dict:
    """What a reader gets back from the file (tuples become lists)."""
    return json.loads(json.dumps(manifest, indent=2, sort_keys=True))


def test_data_job_manifest_round_trips_to_the_same_dict_and_text():
    manifest = as_json(data_job_manifest())
    spec = DataSpec.from_manifest(manifest)
    assert spec.to_manifest() == manifest
    assert spec.to_json() == json.dumps(manifest, indent=2, sort_keys=True)
    assert spec.vocab_sizes == VocabSizes(users=7, items=30, words=11)
    assert spec.candidates.train_negative_pool == 4
    assert spec.examples.count("train", "rec") == 5 and spec.examples.total == 11
    assert spec.counters_get("events") == 99 and spec.rejected_total == 1


def test_manifest_with_time_split_and_unknown_keys_round_trips():
    manifest = as_json(data_job_manifest())
    manifest["time_split"] = {"test_day": "2020-01-02", "events": {"test_day": 1}}
    manifest["fewer_outputs_than_previous"] = {"valid/search": 3}
    manifest["from_a_newer_writer"] = [1, 2]
    spec = DataSpec.from_manifest(copy.deepcopy(manifest))
    assert spec.to_manifest() == manifest
    assert spec.extra == {"from_a_newer_writer": [1, 2]}


def test_synthetic_manifest_round_trips_byte_for_byte(tmp_path):
    from unisar_tf.config import DataFacts
    from unisar_tf.data.synthetic import generate_synthetic_data, write_data_dir

    config = DataFacts(
        num_users=41,
        num_items=300,
        num_words=60,
        rec_len=4,
        search_len=3,
        query_len=3,
        clicks_per_session=5,
    )
    returned = write_data_dir(generate_synthetic_data(config, seed=0), config, str(tmp_path))
    assert DataFacts.from_spec(DataSpec.load(str(tmp_path))) == config
    text = (tmp_path / "manifest.json").read_text()
    spec = DataSpec.load(str(tmp_path))
    assert spec.to_json() == text
    assert spec.to_manifest() == json.loads(text) == returned
    assert spec.dataset == "synthetic" and spec.inputs is None
    assert spec.vocab_sizes.item_table == config.num_items
    assert spec.shapes == SequenceShapes(4, 3, 3, config.clicks_per_session)
    assert (spec.candidates.train, spec.candidates.eval) == (5, 100)
    copied = spec.write(str(tmp_path / "vocab"))  # an existing folder
    assert open(copied).read() == text


def test_older_manifest_loads_with_the_defaults():
    """The first data job's keys (5ed87ab): no id_format (3f5022a), no train_negative_pool
    (fb5549b), no time_split or fewer_outputs_than_previous."""
    manifest = as_json(data_job_manifest())
    del manifest["id_format"]
    del manifest["shapes"]["train_negative_pool"]
    spec = DataSpec.from_manifest(manifest)
    assert spec.id_format == "ids" and spec.id_format_is_ids
    options = sb.BuildOptions()
    assert spec.candidates == Candidates(
        train=1 + options.num_train_negatives, eval=1 + options.num_eval_negatives
    )
    assert spec.time_split is None and spec.fewer_outputs_than_previous is None
    assert spec.transform_dir is None


def test_minimal_manifest_has_no_counts_and_every_task():
    spec = DataSpec.from_manifest(
        {
            "vocab_sizes": {"users": 1, "items": 2, "words": 0},
            "shapes": {
                "rec_len": 2,
                "search_len": 1,
                "query_len": 1,
                "clicks_per_session": 1,
                "train_candidates": 2,
                "eval_candidates": 3,
            },
        }
    )
    assert spec.examples is None and spec.tasks_with_examples("train", ("rec", "search")) == (
        "rec",
        "search",
    )
    assert spec.vocab_sizes.word_table == 2


def test_reader_names_the_file_of_a_manifest_without_a_required_key(tmp_path):
    from unisar_tf.data import reader

    manifest = as_json(data_job_manifest())
    del manifest["shapes"]["train_candidates"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"{tmp_path}/manifest.json: .*'train_candidates'"):
        reader.load_manifest(str(tmp_path))
    manifest["shapes"]["train_candidates"] = 3
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert reader.load_spec(str(tmp_path)).candidates.train == 3


@pytest.mark.slow
def test_the_data_jobs_manifests_round_trip_byte_for_byte(amazon_examples, kuaisar_builds):
    """The session's data job outputs (both id formats, a negative pool): the file's text
    is what its DataSpec writes."""
    for out in [amazon_examples[0]] + [out for out, _ in kuaisar_builds.values()]:
        with open(f"{out}/manifest.json") as handle:
            text = handle.read()
        spec = DataSpec.load(out)
        assert spec.to_json() == text, out
        assert spec.extra == {}, out  # every key the data job writes is a typed field


@pytest.mark.parametrize(
    "path", [("vocab_sizes",), ("shapes",), ("vocab_sizes", "words"), ("shapes", "eval_candidates")]
)
def test_a_missing_required_key_raises_naming_it_and_the_file(path):
    manifest = as_json(data_job_manifest())
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    with pytest.raises(ValueError, match=rf"/data/x/manifest.json: .*'{path[-1]}'"):
        DataSpec.from_manifest(manifest, "/data/x/manifest.json")


def test_spec_is_frozen_and_a_renamed_field_fails_at_access():
    spec = DataSpec.from_manifest(as_json(data_job_manifest()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.id_format = "raw"
    with pytest.raises(AttributeError):
        spec.vocab_size  # noqa: B018 (the old spelling of a field is an error, not None)
