"""Quiet runs by default, --verbose for everything (unisar_tf/logs.py)."""

import logging
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import REPO

from unisar_tf import logs

# What an entry point does: set up logging first, import TensorFlow, log progress and chatter,
# start a child Python (as Beam starts its workers) and leave a loaded tf.function in another
# module's globals, which TensorFlow's AtomicFunction.__del__ fails on at interpreter exit.
ENTRY_POINT = textwrap.dedent("""
    import logging, subprocess, sys
    from unisar_tf import logs
    logs.setup(sys.argv[1:])
    import tensorflow as tf
    module = tf.Module()
    module.f = tf.function(lambda x: x + 1, input_signature=[tf.TensorSpec([], tf.float32)])
    tf.saved_model.save(module, sys.argv[-1])
    logging.loaded = tf.saved_model.load(sys.argv[-1])  # collected only at shutdown
    logging.getLogger("pipeline.example").info("progress %d", int(logging.loaded.f(1.0)))
    logging.getLogger("pipeline.example").debug("a debug line")
    logging.getLogger("absl").warning("library chatter")
    child = [sys.executable, "-c", "import sys; print(sys.unraisablehook.__name__)"]
    print("child hook:", subprocess.run(child, capture_output=True, text=True).stdout.strip())
    """)


@pytest.mark.slow  # a subprocess that imports TensorFlow
def test_an_entry_point_is_quiet_by_default(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")
    }  # as a user's shell
    result = subprocess.run(
        [sys.executable, "-c", ENTRY_POINT, str(tmp_path / "model")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.splitlines() == ["progress 2"], result.stderr[-3000:]
    # Beam's workers inherit the quiet set-up (their TF log level and the exit-time filter).
    assert result.stdout.strip() == "child hook: _quiet_unraisablehook"
    for noise in ("Traceback", "AtomicFunction", "cuDNN", "cuFFT", "cuBLAS", "FutureWarning"):
        assert noise not in result.stderr


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), sys.unraisablehook, dict(os.environ))
    library_levels = {name: logging.getLogger(name).level for name in logs.NOISY_LOGGERS}
    yield
    for name, level in library_levels.items():
        logging.getLogger(name).setLevel(level)
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    sys.unraisablehook = saved[2]
    os.environ.clear()
    os.environ.update(saved[3])


def test_verbose_brings_every_debug_line_back(restore_logging, capsys):
    hook = sys.unraisablehook
    assert logs.setup(["--data_root", "x", "--verbose"]) is True
    logging.getLogger("pipeline.example").debug("a debug line")
    logging.getLogger("absl").debug("library debug")
    err = capsys.readouterr().err
    assert "DEBUG pipeline.example: a debug line" in err and "DEBUG absl: library debug" in err
    assert sys.unraisablehook is hook  # nothing filtered


def test_quiet_keeps_progress_and_errors_and_unwraps_our_worker_lines(restore_logging, capsys):
    assert logs.setup([]) is False
    logs.setup([])  # again (tests, tools): still one handler
    assert sum(getattr(h, "unisar_tf", False) for h in logging.getLogger().handlers) == 1
    logging.getLogger("pipeline.example").info("progress")
    logging.getLogger("pipeline.example").warning("ours")
    logging.getLogger("tfx.orchestration").warning("library chatter")
    logging.info("TFX's module-level chatter")
    logging.getLogger("absl").error("a library's error")
    forwarded = (
        'Worker: severity: {} timestamp {{ seconds: 1 }} message: "{}" log_location: '
        '"{}" thread: "1"'
    )
    beam = logging.getLogger("apache_beam.runners.portability.local_job_service")
    beam.warning(forwarded.format("INFO", "built examples", "/repo/pipeline/beam_job.py:194"))
    beam.warning(forwarded.format("WARN", "No semi_persistent_directory", "/beam/x.py:1"))
    assert capsys.readouterr().err.splitlines() == [
        "progress",
        "WARNING pipeline.example: ours",
        "ERROR absl: a library's error",
        "[worker] built examples",
    ]


NATIVE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"W0000 00:00:1796329073.826108   26824 op_level_cost_estimator.cc:699] Error in "
    b"PredictCost() for the op: Softmax\n",
    b"I0000 00:00:1796329073.891271   26824 graph.cc:12] info line\n",
    b"E0000 00:00:1796329073.891271   26824 kernel.cc:3] an error\n",
    b"an ordinary line: W0000 is not at its start\n",
]


@pytest.mark.parametrize(
    "level, kept",
    [
        ("3", [4]),
        ("2", [3, 4]),
        ("1", [0, 1, 3, 4]),
        ("0", [0, 1, 2, 3, 4]),
        (None, [0, 1, 2, 3, 4]),
    ],
)
def test_native_lines_below_the_tf_level_are_dropped_in_order(monkeypatch, capfd, level, kept):
    """TF 2.15's grappler writes absl-formatted lines past TF_CPP_MIN_LOG_LEVEL: the block
    applies the level to them (I=0, W=1, E=2; the absl preamble is a W), keeps every
    other line, and writes what it keeps to stderr after the block, in order. (pytest's capfd
    gives sys.stderr its own file, so the lines are written to the descriptor here.)"""
    if level is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)  # --verbose
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    with logs.native_log_threshold():
        for line in NATIVE:  # as C++ writes them: straight to file descriptor 2
            os.write(2, line)
    expected = b"".join(NATIVE[i] for i in kept)
    assert capfd.readouterr().err.encode() == expected
    os.write(2, NATIVE[1])  # after the block, stderr is stderr again
    assert capfd.readouterr().err.encode() == NATIVE[1]
