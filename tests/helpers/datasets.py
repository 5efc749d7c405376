"""Example sets built by the data job that several test folders train or evaluate on.

Fixtures (session-scoped: built once per pytest process, i.e. once per xdist worker, and
shared by every module that asks; tests/conftest.py makes them visible everywhere). They
are READ-ONLY: a test that writes, moves or deletes files must do it in its own copy
(shutil.copytree) and a test that edits a returned manifest must edit a copy
(copy.deepcopy); models, exports and reports go to the
test's own tmp_path.
    amazon_examples   (out, manifest): a small Amazon-format log through the Beam data job
    kuaisar_builds    {id_format: (output_dir, manifest)}: the KuaiSAR fixture built by the
                      data job CLI in both id formats with the same flags ("ids" without
                      --id_format: the default)
    kuaisar_formats   (ids_dir, raw_dir, transform_dir): kuaisar_builds' two directories, and
                      Transform's analysis of the raw training splits
"""

import json

import numpy as np
import pytest

from helpers.data_job import IN_MEMORY, KUAISAR_FLAGS, run_cli
from helpers.model import TINY
from pipeline import beam_job, transform_module
from pipeline import sequence_builder as sb
from pipeline.adapters import amazon

STEPS = 2  # training steps per epoch of the trainer tests
POOL = 8  # training negatives per example in amazon_examples


def build_amazon_examples(
    root, num_users: int = 60, train_negative_pool: int = 0, num_shards: int = 0
):
    """(out, manifest): `num_users` users x 8 of 30 items in the Amazon format (3 category
    words), through the Beam data job into root/out; `num_shards` files per split (0: the
    job's default)."""
    rng = np.random.default_rng(3)
    lines = [
        f"u{u} " + " ".join(f"i{i}" for i in rng.choice(30, size=8, replace=False))
        for u in range(num_users)
    ]
    (root / "seq.txt").write_text("\n".join(lines) + "\n")
    (root / "attrs.json").write_text(
        json.dumps({f"i{i}": [f"brand{i}", f"cat{i % 3}"] for i in range(30)})
    )
    inputs = amazon.AmazonInputs(
        str(root / "seq.txt"), str(root / "attrs.json"), query_min_item_frequency=5, seed=1
    )
    options = sb.BuildOptions(
        seed=1,
        clicks_per_session=1,
        num_eval_negatives=9,
        query_len=4,
        rec_len=5,
        search_len=5,
        train_negative_pool=train_negative_pool,
    )
    out = str(root / "out")
    manifest = beam_job.run(
        lambda p: amazon.read(p, inputs),
        options,
        out,
        "amazon",
        {"sequences": "seq.txt"},
        IN_MEMORY,
        num_shards=num_shards,
    )
    return out, manifest


@pytest.fixture(scope="session")
def amazon_examples(tmp_path_factory):
    """(out, manifest): build_amazon_examples with 60 users and a training negative pool of
    POOL."""
    out, manifest = build_amazon_examples(
        tmp_path_factory.mktemp("amazon"), train_negative_pool=POOL
    )
    counts = manifest["examples"]["train"]
    # The trainer tests need more than STEPS full rec and search batches per epoch.
    assert counts["rec"] > STEPS * TINY["batch_size"], counts
    return out, manifest


@pytest.fixture(scope="session")
def kuaisar_builds(tmp_path_factory):
    """{id_format: (output_dir, manifest)}: the KuaiSAR fixture built by the CLI in both
    formats with the same flags (the "ids" run without --id_format: the default)."""
    root = tmp_path_factory.mktemp("kuaisar_builds")
    runs = {}
    for id_format, flags in (("ids", []), ("raw", ["--id_format", "raw"])):
        output_dir = str(root / id_format)
        runs[id_format] = output_dir, run_cli(KUAISAR_FLAGS + flags + ["--output", output_dir])
    return runs


@pytest.fixture(scope="session")
def kuaisar_formats(kuaisar_builds, tmp_path_factory):
    """(ids_dir, raw_dir, transform_dir): the fixture in both formats, and Transform's
    analysis of the raw training splits."""
    ids_dir, raw_dir = kuaisar_builds["ids"][0], kuaisar_builds["raw"][0]
    root = tmp_path_factory.mktemp("transform")
    transform_dir = transform_module.analyze(
        raw_dir, str(root / "transform"), beam_args=["--runner=DirectRunner"]
    )
    return ids_dir, raw_dir, transform_dir
