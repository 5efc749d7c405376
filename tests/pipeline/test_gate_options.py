"""The blessing gate's settings have one definition (unisar_tf/train/gate_options.py): the gate,
RankingEvaluator, the runners' flags, create_pipeline and docs/pipeline.md read it, and a
value given on the command line reaches the evaluator's execution property."""

import argparse
import dataclasses
import inspect
import os
import re
import warnings

import numpy as np
import pytest
from helpers import FIXTURES, REPO

from pipeline.components.ranking_evaluator import RankingEvaluator
from pipeline.runners import local, options
from pipeline.tfx_pipeline import PipelineOptions, create_pipeline, options_or_keywords
from unisar_tf.train import gate
from unisar_tf.train.gate_options import DEFAULTS, GateOptions

FIELDS = [field.name for field in dataclasses.fields(GateOptions)]
EVENT_LOG_DIR = os.path.join(FIXTURES, "event_log")


def evaluator_properties(pipeline) -> dict:
    """RankingEvaluator's gate execution properties in a defined pipeline."""
    [evaluator] = [node for node in pipeline.components if node.id == "RankingEvaluator"]
    return {name: evaluator.exec_properties[name] for name in FIELDS}


def test_every_default_is_the_one_definitions():
    # The runners' flags (both runners register them through add_pipeline_options).
    parser = argparse.ArgumentParser()
    options.add_pipeline_options(parser)
    flags = {action.dest: action.default for action in parser._actions}
    assert {name: flags["gate_seed" if name == "seed" else name] for name in FIELDS} == (
        DEFAULTS.to_dict()
    )
    assert options.pipeline_options(parser, parser.parse_args([])).gate == GateOptions()
    # RankingEvaluator's parameters: the same names, the same defaults.
    signature = inspect.signature(RankingEvaluator.test_call).parameters
    assert set(RankingEvaluator.SPEC_CLASS.PARAMETERS) - {"split"} == set(FIELDS)
    assert {name: signature[name].default for name in FIELDS} == DEFAULTS.to_dict()
    # The gate: decide's settings and the bootstrap functions' defaults.
    model = {"rec": np.array([[0.9, 0.1, 0.2, 0.3]] * 4)}
    assert gate.decide(model, {}).settings == DEFAULTS.to_dict()
    for function in (gate.paired_comparison, gate.bootstrap_lower_bound):
        defaults = inspect.signature(function).parameters
        assert (
            defaults["confidence"].default,
            defaults["samples"].default,
            defaults["seed"].default,
        ) == (DEFAULTS.confidence, DEFAULTS.bootstrap_samples, DEFAULTS.seed)
    assert PipelineOptions().gate == DEFAULTS
    # docs/pipeline.md's table: every field with its default, nothing else.
    text = open(os.path.join(REPO, "docs", "pipeline.md"), encoding="utf-8").read()
    table = text[text.index("| setting | default | flag | meaning |") :].split("\n\n")[0]
    rows = re.findall(r"^\| `(\w+)` \| ([\d.]+) \| `(--\w+)` \|", table, flags=re.M)
    assert [(name, float(default), flag) for name, default, flag in rows] == [
        (name, float(getattr(DEFAULTS, name)), "--gate_seed" if name == "seed" else f"--{name}")
        for name in FIELDS
    ]


def test_from_dict_checks_names_and_types():
    # The evaluator's execution properties (as a compiled pipeline carries them) parse back.
    properties = {
        "min_improvement": 0.01,
        "min_relative_improvement": 0,
        "confidence": 0,
        "bootstrap_samples": 10.0,
        "seed": 4,
    }
    parsed = GateOptions.from_dict(properties)
    assert parsed == GateOptions(0.01, 0.0, 0.0, 10, 4)
    assert [type(value) for value in parsed.to_dict().values()] == [float, float, float, int, int]
    assert GateOptions.from_dict(parsed.to_dict()) == parsed
    assert GateOptions.from_dict({"seed": 3}, parsed) == dataclasses.replace(parsed, seed=3)
    with pytest.raises(ValueError, match="confidense"):
        GateOptions.from_dict({"confidense": 0.9})
    # create_pipeline's former keywords: the defaults, then min_improvement, then the dict.
    assert GateOptions.from_legacy(0.01, {"confidence": 0.9}) == GateOptions(
        min_improvement=0.01, confidence=0.9
    )
    assert GateOptions.from_legacy() == DEFAULTS


def test_former_keywords_map_onto_pipeline_options_with_a_warning():
    given = PipelineOptions(train_config={"max_epochs": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new call warns about nothing
        assert options_or_keywords("run", given, {}) is given
        assert options_or_keywords("run", None, {}) == PipelineOptions()
    with pytest.warns(DeprecationWarning, match="min_improvement"):
        mapped = options_or_keywords(
            "run",
            {"seed": 1},
            {"min_improvement": 0.02, "gate_options": {"seed": 5}, "sasrec_max_epochs": 0},
        )
    assert mapped == PipelineOptions(
        build_options={"seed": 1},
        sasrec_max_epochs=0,
        gate=GateOptions(min_improvement=0.02, seed=5),
    )
    with pytest.raises(TypeError, match="not both"):
        options_or_keywords("run", given, {"min_improvement": 0.1})
    with pytest.raises(TypeError, match="min_improvment"):
        options_or_keywords("run", None, {"min_improvment": 0.1})


def test_command_line_values_reach_the_evaluator_and_old_keywords_still_do(tmp_path, monkeypatch):
    """The pipeline is defined, not run (well under a second, past the imports)."""
    from tfx import v1 as tfx

    defined = []

    class DefineOnly:
        def run(self, pipeline):
            defined.append(pipeline)

    monkeypatch.setattr(tfx.orchestration, "LocalDagRunner", DefineOnly)
    monkeypatch.setattr(local, "executions_since", lambda *args: [])
    local.main(
        [
            "--data_root",
            EVENT_LOG_DIR,
            "--adapter",
            "event_log",
            "--pipeline_root",
            str(tmp_path / "root"),
            "--serving_dir",
            str(tmp_path / "serving"),
            "--min_relative_improvement",
            "0.1",
            "--confidence",
            "0.5",
            "--bootstrap_samples",
            "20",
            "--gate_seed",
            "7",
        ]
    )
    expected = {
        "min_improvement": 0.0,
        "min_relative_improvement": 0.1,
        "confidence": 0.5,
        "bootstrap_samples": 20,
        "seed": 7,
    }
    assert evaluator_properties(defined[0]) == expected
    # create_pipeline's former keywords, deprecated, give the same properties.
    with pytest.warns(DeprecationWarning, match="gate_options, min_improvement"):
        pipeline = create_pipeline(
            "p",
            str(tmp_path / "old"),
            EVENT_LOG_DIR,
            "event_log",
            str(tmp_path / "serving"),
            [],
            min_improvement=0.0,
            gate_options={
                "min_relative_improvement": 0.1,
                "confidence": 0.5,
                "bootstrap_samples": 20,
                "seed": 7,
            },
        )
    assert evaluator_properties(pipeline) == expected
