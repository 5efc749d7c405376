"""The data job on the test fixtures: its options, the KuaiSAR fixture's expected counts."""

import contextlib
import io
import logging
import os

from helpers import FIXTURES
from pipeline import build_examples

KUAISAR_DIR = os.path.join(FIXTURES, "kuaisar")

IN_MEMORY = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]

SPLITS = ("train", "valid", "test")

SCENARIOS = ("rec", "search")


def read_vocab(output_dir, name):
    """Lines of vocab/<name>.txt; line k (1-based) is dense id k."""
    with open(os.path.join(output_dir, "vocab", f"{name}.txt"), encoding="utf-8") as handle:
        return handle.read().splitlines()


# Targets per user (README): 7 -> train r1 s1, valid r1 s1, test r1 s1; 12 -> train r2 s1,
# valid r1 s1, test r1 s1; 3 -> train r1, valid r1 s1, test r1; 25 -> train s1, valid r1, test s1.
KUAISAR_EXAMPLES = {
    "train": {"rec": 4, "search": 3},
    "valid": {"rec": 4, "search": 3},
    "test": {"rec": 3, "search": 3},
}


KUAISAR_FLAGS = [
    "--dataset",
    "kuaisar",
    "--input_dir",
    KUAISAR_DIR,
    "--split",
    "time",
    "--clicks_per_session",
    "5",
    "--num_train_negatives",
    "2",
    "--num_eval_negatives",
    "3",
    "--rec_len",
    "3",
    "--search_len",
    "4",
    "--query_len",
    "3",
    "--train_negative_pool",
    "5",
    "--seed",
    "3",
]


def run_cli(argv):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # main() reconfigures the root logger
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return build_examples.main(argv + IN_MEMORY)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
