"""Run by Python at start-up in child processes of a quiet entry point (unisar_tf.logs puts
this folder on their PYTHONPATH): Beam's worker processes drop the same shutdown tracebacks
and warnings as the main process. Then runs the sitecustomize this one shadows, if any."""

import importlib.machinery
import importlib.util
import os
import sys

from unisar_tf.logs import quiet_process

quiet_process()

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
)
if _spec is not None and _spec.loader is not None:
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
