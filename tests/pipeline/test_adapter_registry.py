"""An adapter is registered in one place (pipeline/adapters/registry.py): one registered here,
in memory, is a build_examples dataset with its flags and the component's input lookup, with
no other change. Cheap: nothing runs the Beam job."""

import dataclasses

import apache_beam as beam
import pytest
from tfx.dsl.components.base import base_beam_executor
from tfx.types import standard_artifacts

from feature_specs import event_schema as es
from pipeline import beam_job, build_examples
from pipeline.adapters import common, registry
from pipeline.components import sequence_example_gen as seg


@dataclasses.dataclass(frozen=True)
class TinyInputs:
    source: str
    rows: int = 3


def _tiny_read(pipeline, inputs: TinyInputs) -> common.AdapterOutput:
    events = [
        es.Event(f"u{i % 2}", i, es.SCENARIO_REC, f"i{i}", 1, "", (), inputs.source, i)
        for i in range(inputs.rows)
    ]
    return common.AdapterOutput(events=pipeline | beam.Create(events), rejected=[], stats=[])


def _tiny_inputs(values) -> TinyInputs:
    if not values["tiny_source"]:
        raise registry.MissingInputs("--dataset tiny needs --tiny_source")
    return TinyInputs(values["tiny_source"], values["tiny_rows"])


@pytest.fixture
def tiny():
    adapter = registry.register(
        registry.Adapter(
            name="tiny",
            read=_tiny_read,
            inputs=_tiny_inputs,
            flags=(
                registry.InputFlag("tiny_source", help="tiny: a name", from_data_root=True),
                registry.InputFlag("tiny_rows", type=int, default=3, group="tiny adapter"),
            ),
            defaults={"split": "time"},
            locate=lambda data_root: {"tiny_source": data_root},
        )
    )
    yield adapter
    registry.unregister("tiny")


def test_a_registered_adapter_is_a_build_examples_dataset(tiny):
    help_text = build_examples._parser().format_help()
    assert "--tiny_rows" in help_text and "tiny adapter" in help_text
    assert "time for kuaisar, tiny" in help_text  # the --split default per dataset
    args, unknown = build_examples.parse_args(
        ["--dataset", "tiny", "--tiny_source", "s", "--tiny_rows", "5", "--output", "o"]
    )
    assert unknown == []
    job = build_examples.job(args)
    assert job.inputs == TinyInputs("s", 5)
    assert job.options.split == "time" and job.options.clicks_per_session == 5
    assert build_examples.describe_inputs(job.inputs) == {"source": "s", "rows": 5}
    args, _ = build_examples.parse_args(["--dataset", "tiny", "--output", "o"])
    with pytest.raises(SystemExit, match="^--dataset tiny needs --tiny_source$"):
        build_examples.run_job(args, [])


def test_a_registered_adapter_is_found_by_the_component(tiny):
    args = seg.job_args("tiny", "/raw/tiny", {"tiny_rows": "4", "seed": 2}, output="out")
    assert (args.dataset, args.tiny_source, args.tiny_rows, args.seed) == (
        "tiny",
        "/raw/tiny",
        4,
        2,
    )
    assert args.layout == beam_job.LAYOUT_TFX and args.output == "out"
    with pytest.raises(ValueError, match=r"build_options \['tiny_source'\]: set by the component"):
        seg.job_args("tiny", "/raw/tiny", {"tiny_source": "x"}, output="out")
    gen = seg.SequenceExampleGen(data_root="/raw/tiny", adapter="tiny", build_options={})
    assert gen.exec_properties["adapter"] == "tiny"


def test_a_registered_adapter_loads_into_the_history_store(tiny):
    """serving.load_history offers the adapter and reads its events (the online path)."""
    from serving import load_history

    assert "tiny" in load_history.datasets() and "--tiny_rows" in load_history.input_flags()
    read, inputs = load_history.dataset_inputs("tiny", ["--tiny_source", "s", "--tiny_rows", "4"])
    assert read is _tiny_read and inputs == TinyInputs("s", 4)
    with pytest.raises(ValueError, match="--rec_len: not an input flag"):
        load_history.dataset_inputs("tiny", ["--rec_len", "3"])


def test_registering_twice_or_a_clashing_flag_is_an_error(tiny):
    with pytest.raises(ValueError, match="already registered"):
        registry.register(tiny)
    clash = registry.Adapter(
        name="tiny2",
        read=_tiny_read,
        inputs=_tiny_inputs,
        flags=(registry.InputFlag("tiny_rows", type=float),),
    )
    with pytest.raises(ValueError, match="--tiny_rows differs"):
        registry.register(clash)
    with pytest.raises(ValueError, match=r"defaults \['rec_len'\]"):
        registry.Adapter(name="x", read=_tiny_read, inputs=_tiny_inputs, defaults={"rec_len": 3})
    assert "tiny2" not in registry.adapters()


def test_component_options_are_checked_without_a_command_line():
    with pytest.raises(ValueError, match=r"split='weekly': invalid choice"):
        seg.job_args("kuaisar", "/raw", {"split": "weekly"}, output="o", resolve_inputs=False)
    with pytest.raises(ValueError, match=r"max_users='many': invalid literal"):
        seg.job_args("kuaisar", "/raw", {"max_users": "many"}, output="o", resolve_inputs=False)
    with pytest.raises(ValueError, match=r"strict_holdout='yes': expected True or False"):
        seg.job_args("kuaisar", "/raw", {"strict_holdout": "yes"}, output="o")
    with pytest.raises(ValueError, match=r"unknown adapter 'nope'"):
        seg.job_args("nope", "/raw", {}, output="o")
    args = seg.job_args(
        "amazon", "/raw", {"sequences": "s.txt", "attributes": "gs://b/a.json"}, output="o"
    )
    assert (args.sequences, args.attributes) == ("/raw/s.txt", "gs://b/a.json")


def test_the_executor_fails_with_the_adapters_message(tmp_path):
    """The executor calls the typed job: a missing input is a ValueError with the data job's
    message (it was a SystemExit out of the job's argv parsing)."""
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    executor = seg.Executor(base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=[]))
    with pytest.raises(ValueError, match=r"^--dataset amazon needs --sequences and --attributes$"):
        executor.Do(
            {},
            {seg.EXAMPLES_KEY: [examples]},
            {seg.ADAPTER_KEY: "amazon", seg.DATA_ROOT_KEY: str(tmp_path), "build_options": "{}"},
        )
