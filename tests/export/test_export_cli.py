"""`python -m unisar_tf.export` on a run directory (helpers.runs: a config and a best checkpoint,
no training): single-scenario models export, serve and score like the model (issue 23 item 3:
a rec-only model failed on its empty word vocabulary), a failed export leaves nothing behind,
and a damaged checkpoint is named (item 8: "IndexError: Read less bytes than requested")."""

import contextlib
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers.model import SMALL_MODEL, config_and_data, small_model
from helpers.runs import fake_run

from feature_specs.serving import EXAMPLES_SIGNATURE, SIGNATURE_NAMES
from serving.client import UniSARClient
from serving.server import StandInServer
from unisar_tf.data.synthetic import random_feature_batch
from unisar_tf.data.vocab import read_vocabularies
from unisar_tf.export import __main__ as export_cli
from unisar_tf.export import push as push_module
from unisar_tf.export.push import push
from unisar_tf.export.requests import raw_request_from_features


def export(model_dir, data_dir, serving_dir):
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            export_cli.main(
                ["--model_dir", model_dir, "--data_dir", data_dir, "--serving_dir", serving_dir]
            )
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def _as_tensors(raw):
    return {name: tf.constant(value) for name, value in raw.items()}


# A rec-only log has no query words: the data job writes an empty vocab/words.txt.
SINGLE_SCENARIO = {
    "rec": (dict(tasks=("rec",), num_words=2), ("words",)),
    "search": (dict(tasks=("search",)), ()),
}


@pytest.mark.slow  # one export and one server load per task (~20 s on 2 cores)
@pytest.mark.parametrize("task", sorted(SINGLE_SCENARIO))
def test_a_single_scenario_run_exports_serves_and_scores_like_the_model(tmp_path, task):
    overrides, empty = SINGLE_SCENARIO[task]
    config, data = config_and_data(**dict(SMALL_MODEL, **overrides))
    model_dir, data_dir, model = fake_run(tmp_path, config, data, seed=7, empty_vocabularies=empty)
    serving_dir = str(tmp_path / "serving")
    code, out, err = export(model_dir, data_dir, serving_dir)
    assert code == 0, err
    path = os.path.join(serving_dir, "unisar", "1")
    assert out.strip() == f"exported {path}"
    assert os.listdir(os.path.join(serving_dir, "unisar")) == ["1"]

    # The data of one scenario: a rec-only user has no search history, and the reverse.
    features = random_feature_batch(
        data,
        4,
        7,
        task == "search",
        np.random.default_rng(8),
        empty_search_history=task == "rec",
        empty_rec_history=task == "search",
    )
    expected = model(features)[task].numpy()
    raw = raw_request_from_features(features, read_vocabularies(os.path.join(data_dir, "vocab")))
    signature = SIGNATURE_NAMES[task]
    reloaded = tf.saved_model.load(path)
    assert set(reloaded.signatures) == {signature, EXAMPLES_SIGNATURE}
    scores = reloaded.signatures[signature](**_as_tensors(raw))["scores"].numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert np.ptp(scores) > 0  # the candidates' scores differ: a real comparison

    with StandInServer(os.path.dirname(path), port=0) as server:  # loads as TF Serving does
        with UniSARClient(f"127.0.0.1:{server.port}", timeout_seconds=30) as client:
            served = client.predict(signature, raw)["scores"]
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)


def _damage(path, how):
    if how == "missing":
        os.remove(path)
    elif how == "truncated":
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)
    else:  # bytes overwritten in the middle
        with open(path, "r+b") as handle:
            handle.seek(os.path.getsize(path) // 2)
            handle.write(b"\xff" * 64)


@pytest.mark.parametrize(
    "target, how, says",
    [
        ("data", "truncated", "Read less bytes than requested"),
        ("data", "corrupted", "Checksum does not match"),
        ("data", "missing", "data"),
        ("index", "truncated", "its index"),
    ],
)
def test_a_damaged_checkpoint_is_named_and_nothing_is_written(tmp_path, target, how, says):
    """Issue 23: a truncated checkpoint gave "IndexError: Read less bytes than requested"."""
    config, data = config_and_data(**SMALL_MODEL)
    model_dir, data_dir, _ = fake_run(tmp_path, config, data, seed=3)
    best = os.path.join(model_dir, "best")
    name = next(n for n in os.listdir(best) if (".data-" if target == "data" else ".index") in n)
    _damage(os.path.join(best, name), how)
    serving_dir = tmp_path / "serving"
    code, out, err = export(model_dir, data_dir, str(serving_dir))
    assert code == 1 and out == ""
    assert err.startswith(f"error: the checkpoint {os.path.join(best, 'ckpt-1')} is damaged")
    if how != "missing":
        assert os.path.join(best, name) in err
    assert says in err
    assert not serving_dir.exists()


def test_a_failed_export_leaves_no_version_nor_the_folders_it_made(tmp_path, monkeypatch):
    """The version is staged under a temporary name and renamed; on failure the staging and
    the folders push created are removed (a folder that already existed stays)."""
    _, model, vocab_dir = small_model(tmp_path, seed=4)

    def save_half(path, **_):  # as if the disk filled up in the middle of model.save
        os.makedirs(os.path.join(path, "variables"))
        open(os.path.join(path, "saved_model.pb"), "wb").close()
        raise OSError("No space left on device")

    class NoSignatures:  # tracing the signatures takes ~10 s and is not what is tested
        def __init__(self, model, ids):
            self.ids = ids

        def signatures(self):
            return {}

    monkeypatch.setattr(push_module, "ServingFunctions", NoSignatures)
    monkeypatch.setattr(model, "save", save_half)
    serving_dir = tmp_path / "serving"
    with pytest.raises(OSError, match="No space left"):
        push(model, vocab_dir, str(serving_dir))
    assert not serving_dir.exists()
    (serving_dir / "unisar" / "4").mkdir(parents=True)
    with pytest.raises(OSError, match="No space left"):
        push(model, vocab_dir, str(serving_dir))
    assert os.listdir(serving_dir / "unisar") == ["4"]
