"""Logging set-up of the command-line entry points: quiet by default, `--verbose` for everything.

Library modules log through `LOG = logging.getLogger(__name__)` and never configure handlers;
an entry point calls `setup(argv)` first, before TensorFlow is imported, and adds the flag to
its parser with `add_verbose_flag`:

- quiet (the default): our progress (INFO) and warnings on stderr; TensorFlow's C++ log (the
  cuDNN/cuFFT/cuBLAS registration errors every process prints on import), everything below
  ERROR from absl, TFX, TensorFlow's Python logger and Beam (NOISY_LOGGERS; its workers' lines
  too), Google's Python-version FutureWarning and TensorFlow's shutdown-time
  `AtomicFunction.__del__` tracebacks are dropped, also in child processes such as Beam's
  workers (through the environment they inherit: TF_CPP_MIN_LOG_LEVEL, and PYTHONPATH to
  quiet_startup/). A TF_CPP_MIN_LOG_LEVEL
  set by the user wins.
- `--verbose`: DEBUG from every logger, nothing filtered.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from typing import Iterator, Optional, Sequence

VERBOSE_FLAG = "--verbose"
# Libraries whose INFO and WARNING lines a user need not read by default (ArtifactQuery
# notes, Keras' get_config and tf.function table warnings, Beam's worker start-up): quiet
# mode shows their errors only. "root": module-level logging.info() calls, which TFX makes
# (our code logs through named loggers).
NOISY_LOGGERS = ("absl", "apache_beam", "tensorflow", "tfx", "ml_metadata", "h5py", "root")
# google-api-core warns on every import under Python 3.10, which the pinned stack requires.
PYTHON_VERSION_WARNING = "You are using a non-supported Python version"
# On child processes' PYTHONPATH in quiet mode: its sitecustomize runs quiet_process().
STARTUP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quiet_startup")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        VERBOSE_FLAG,
        action="store_true",
        help="log everything: DEBUG of every library, TensorFlow's C++ log, "
        "Beam's workers (default: progress, our warnings, errors)",
    )


def verbose_requested(argv: Optional[Sequence[str]] = None) -> bool:
    """Whether argv (default: the command line) asks for --verbose; read before parsing, so
    that the environment is set before anything imports TensorFlow."""
    return VERBOSE_FLAG in (sys.argv[1:] if argv is None else argv)


class QuietFilter(logging.Filter):
    """Keeps our own log lines and the libraries' errors. Beam forwards its worker processes'
    log lines wrapped ("Worker: severity: ... message: ..."): those logged by our code
    (under /pipeline/) and the workers' errors are kept, unwrapped."""

    _FORWARDED = re.compile(r'^Worker: severity: (\w+) .*? message: "(.*?)" (?:\w+: )', re.S)
    _LOCATION = re.compile(r'log_location: "([^"]*)"')
    _LEVELS = {
        "DEBUG": logging.DEBUG,
        "INFO": logging.INFO,
        "WARN": logging.WARNING,
        "ERROR": logging.ERROR,
        "CRITICAL": logging.CRITICAL,
    }

    def filter(self, record: logging.LogRecord) -> bool:
        match = self._FORWARDED.match(record.getMessage())
        if match:
            severity, text = match.groups()
            location = self._LOCATION.search(record.getMessage())
            if (not location or "/pipeline/" not in location.group(1)) and severity not in (
                "ERROR",
                "CRITICAL",
            ):
                return False
            record.msg, record.args = f"[worker] {text}", ()
            record.levelno = self._LEVELS.get(severity, record.levelno)
            record.levelname = logging.getLevelName(record.levelno)
            return True
        return record.levelno >= logging.ERROR or not record.name.startswith(NOISY_LOGGERS)


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is when a record comes (tests and tools swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


class _Formatter(logging.Formatter):
    """Progress (INFO) as the bare message; other levels name the level and the logger."""

    def __init__(self, verbose: bool):
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"
            if verbose
            else "%(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
        self.verbose = verbose

    def formatMessage(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO and not self.verbose:
            return record.message
        return super().formatMessage(record)


def _quiet_unraisablehook(unraisable, _show=sys.__unraisablehook__) -> None:
    """Drops TensorFlow's `AtomicFunction.__del__` failing while an interpreter shuts down:
    the tf.functions still referenced from module globals (Keras models, TFT's and TFDV's
    loaded graphs in Beam's worker processes) are collected after TensorFlow's own module
    globals were cleared to None (`RUNTIME_FUNCTION_REFS[key]`: "'NoneType' object is not
    subscriptable"). Harmless: the process is ending. Self-contained (a default argument, no
    module globals): it runs while modules are torn down."""
    where = getattr(unraisable.object, "__qualname__", None) or repr(unraisable.object)
    if "AtomicFunction.__del__" not in where:
        _show(unraisable)


# TensorFlow 2.15's absl-formatted C++ log lines ("W0000 00:00:1796.0 26824 file.cc:699] ...")
# and absl's preamble: grappler writes them past TF_CPP_MIN_LOG_LEVEL.
_NATIVE_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+\] ")
_NATIVE_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called"
_NATIVE_LEVELS = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}


def native_line_kept(line: bytes, min_level: int) -> bool:
    """Whether stderr `line` stays under TF_CPP_MIN_LOG_LEVEL `min_level`: TensorFlow's
    absl-formatted lines below it and absl's preamble are dropped, every other line kept."""
    if min_level <= 0:
        return True
    if line.startswith(_NATIVE_PREAMBLE):  # a warning itself
        return min_level < 2
    match = _NATIVE_LINE.match(line)
    return match is None or _NATIVE_LEVELS[match.group(1)] >= min_level


@contextlib.contextmanager
def native_log_threshold() -> Iterator[None]:
    """Applies TF_CPP_MIN_LOG_LEVEL (set by quiet mode; unset with --verbose) to what
    TensorFlow's C++ code writes to stderr inside the block: TF 2.15's grappler logs through
    absl, past the variable ("Error in PredictCost()" lines on a loaded SavedModel's first
    call). Meanwhile file descriptor 2 goes to a temporary file; afterwards the kept lines
    are written to it in order (Python's own stderr writes in the block included)."""
    try:
        min_level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        min_level = 0
    if min_level <= 0:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = b"".join(line for line in capture if native_line_kept(line, min_level))
            if kept:
                os.write(2, kept)


def quiet_process() -> None:
    """The in-process part of quiet mode; also run at start-up by every child Python process
    (Beam's workers) through quiet_startup/sitecustomize.py.

    The exit tracebacks are filtered, not prevented: they come from objects that TF, Keras,
    TFT and TFDV keep in their own module globals (in Beam's workers, outside our code), which
    a run cannot clear before exit. The hook drops exactly those and shows every other one."""
    warnings.filterwarnings("ignore", PYTHON_VERSION_WARNING, FutureWarning)
    sys.unraisablehook = _quiet_unraisablehook


def setup(argv: Optional[Sequence[str]] = None) -> bool:
    """Configures logging for an entry point run with argv (default: the command line);
    returns whether it is verbose. Call it before TensorFlow is imported."""
    verbose = verbose_requested(argv)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "unisar_tf", False)]:
        root.removeHandler(handler)  # an earlier setup in this process
    handler = _StderrHandler()
    handler.unisar_tf = True
    handler.setFormatter(_Formatter(verbose))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        # Libraries set their own loggers' levels (absl's verbosity, TF's WARNING): lift them.
        for name in NOISY_LOGGERS:
            if name != "root":
                logging.getLogger(name).setLevel(logging.DEBUG)
        return True
    handler.addFilter(QuietFilter())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # FATAL only: also the E-level lines
    # Child processes (Beam's DirectRunner workers inherit the environment) start quiet too.
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if STARTUP_DIR not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([STARTUP_DIR] + [p for p in paths if p])
    quiet_process()
    return False
