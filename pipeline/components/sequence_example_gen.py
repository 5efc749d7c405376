"""SequenceExampleGen: the Beam sequence-example job (pipeline/build_examples.py) as a TFX
component, so the examples' lineage (raw data, options, Beam args) is in ML Metadata.

    gen = SequenceExampleGen(data_root="../shared/data", adapter="amazon_beauty",
                             build_options={"max_users": 200, "train_negative_pool": 20})
    gen.outputs["examples"]  # standard Examples, six splits

The executor runs the data job itself (`build_examples.run`, typed) with the pipeline's
`beam_pipeline_args` (DirectRunner locally, Dataflow/Flink/Spark by options), writing into
the Examples artifact's uri:

    <uri>/Split-{train,valid,test}_{rec,search}/data-*.tfrecord.gz   gzipped tf.Examples
    <uri>/manifest.json, schema.pbtxt, vocab/, rejected/, side_features/ (KuaiSAR), _stats.json
    <uri>/cooccurrence/*.npy   the default preset's top-K pair and transition tables

i.e. the job's usual output with the examples in TFX's split layout (`--layout tfx`; in the
pipeline also `--id_format raw`, so Transform builds the vocabularies); the
manifest's `files` patterns point at them, so `unisar_tf.data` reads the artifact uri like a
job output directory. Counts from the manifest become custom properties of the artifact.

Parameters:
- `adapter`: a registered adapter's name (pipeline/adapters/registry.py: amazon_beauty, amazon,
  kuaisar, event_log), as `build_examples --dataset`.
- `data_root`: the raw data, per adapter (its `locate`): amazon_beauty: the folder holding
  amazon_beauty/ (as `--data_root`); kuaisar: the folder with rec_inter.csv, src_inter.csv, ... (as
  `--input_dir`); event_log: a file, a glob, or a folder (its *.csv and *.parquet files);
  amazon: the folder that relative `sequences` / `attributes` build options are under.
- `build_options`: other `build_examples` flags by name, e.g. {"seed": 1, "max_users": 200,
  "train_negative_pool": 20, "strict_holdout": True}; checked when the component is built.

A custom driver fingerprints the input files (size and mtime, like TFX's ExampleGen) before
the cache lookup, so changed raw data at the same `data_root` is not served from the cache
(LocalDagRunner; Kubeflow V2 runs no custom driver except FileBasedExampleGen's and caches on
the parameters alone).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Optional

from apache_beam.io.filesystems import FileSystems
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import (
    base_beam_component,
    base_beam_executor,
    base_driver,
    executor_spec,
)
from tfx.orchestration.portable import base_driver as ir_base_driver
from tfx.proto import example_gen_pb2
from tfx.proto.orchestration import driver_output_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from feature_specs import event_schema as es
from feature_specs.data_spec import DataSpec
from pipeline import beam_job, build_examples
from pipeline import sequence_builder as sb
from pipeline.adapters import registry

EXAMPLES_KEY = "examples"
DATA_ROOT_KEY = "data_root"
ADAPTER_KEY = "adapter"
BUILD_OPTIONS_KEY = "build_options"
INPUT_FINGERPRINT_KEY = "input_fingerprint"

# train_rec, train_search, valid_rec, valid_search, test_rec, test_search.
SPLIT_NAMES = [
    beam_job.tfx_split_name(split, scenario) for split in sb.SPLITS for scenario in es.SCENARIOS
]
# Flags the component sets itself; so are the adapters' inputs under data_root (_reserved).
_SET_BY_COMPONENT = ("dataset", "output", "layout")


# --- adapter, data_root and build options -> the data job's typed arguments -------------------


def _reserved() -> set:
    return set(_SET_BY_COMPONENT) | set(registry.data_root_flags())


def _resolve_paths(build_options: Dict[str, Any], data_root: str) -> Dict[str, Any]:
    """Path options (e.g. amazon's sequences) relative to data_root unless absolute."""
    paths = registry.path_flags()
    return {
        name: os.path.join(data_root, value)
        if name in paths and not (os.path.isabs(value) or "://" in value)
        else value
        for name, value in build_options.items()
    }


def job_args(
    adapter: str,
    data_root: str,
    build_options: Optional[Dict[str, Any]],
    output: str,
    resolve_inputs: bool = True,
):
    """The parsed `build_examples` arguments for these parameters; ValueError names a bad
    option. resolve_inputs=False skips looking at data_root (pipeline construction)."""
    build_options = dict(build_options or {})
    reserved = sorted(set(build_options) & _reserved())
    if reserved:
        raise ValueError(
            f"build_options {reserved}: set by the component (use the adapter "
            "and data_root parameters)"
        )
    known = set(build_examples.flag_names())
    unknown_names = sorted(set(build_options) - known)
    if unknown_names:
        raise ValueError(
            f"unknown build_options {unknown_names}; known: {sorted(known - _reserved())}"
        )
    located = registry.get(adapter).locate(data_root) if resolve_inputs else {}
    values = {"dataset": adapter, "output": output, "layout": beam_job.LAYOUT_TFX}
    try:
        args = build_examples.args_from_values(
            {**values, **located, **_resolve_paths(build_options, data_root)}
        )
    except ValueError as error:
        raise ValueError(f"bad build_options for build_examples: {error}") from error
    build_examples.build_options(args)  # raises ValueError on inconsistent options
    return args


def _build_options_value(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    value = exec_properties.get(BUILD_OPTIONS_KEY) or {}
    return json.loads(value) if isinstance(value, str) else dict(value)  # JSON in the IR


def _args_from_properties(exec_properties: Dict[str, Any], output: str):
    return job_args(
        exec_properties[ADAPTER_KEY],
        exec_properties[DATA_ROOT_KEY],
        _build_options_value(exec_properties),
        output,
    )


def input_fingerprint(args) -> str:
    """Digest of the path, size and mtime of every input file the adapter will read."""
    inputs = registry.get(args.dataset).inputs(vars(args))
    entries = []
    for value in build_examples.describe_inputs(inputs).values():
        for pattern in value if isinstance(value, list) else [value]:
            if isinstance(pattern, str) and pattern:
                entries += [
                    f"{m.path}\t{m.size_in_bytes}\t{m.last_updated_in_seconds}"
                    for result in FileSystems.match([pattern])
                    for m in result.metadata_list
                ]
    return hashlib.sha256("\n".join(sorted(entries)).encode("utf-8")).hexdigest()


# --- TFX component ----------------------------------------------------------------------------


class SequenceExampleGenSpec(types.ComponentSpec):
    PARAMETERS = {
        DATA_ROOT_KEY: ExecutionParameter(type=str),
        ADAPTER_KEY: ExecutionParameter(type=str),
        BUILD_OPTIONS_KEY: ExecutionParameter(type=Dict[str, Any], optional=True),
        # Set by the driver at run time, not by the user; part of the cache key.
        INPUT_FINGERPRINT_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {}
    OUTPUTS = {EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples)}


class InputFingerprintDriver(base_driver.BaseDriver, ir_base_driver.BaseDriver):
    """Adds `input_fingerprint` to the execution properties before the cache lookup."""

    def __init__(self, metadata_handle):
        base_driver.BaseDriver.__init__(self, metadata_handle)
        ir_base_driver.BaseDriver.__init__(self, metadata_handle)

    def run(self, execution_info) -> driver_output_pb2.DriverOutput:
        args = _args_from_properties(execution_info.exec_properties, output="")
        result = driver_output_pb2.DriverOutput()
        result.exec_properties[INPUT_FINGERPRINT_KEY].string_value = input_fingerprint(args)
        return result


class Executor(base_beam_executor.BaseBeamExecutor):
    """Runs the data job into the Examples artifact and records its counts there."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])
        args = _args_from_properties(exec_properties, output=examples.uri)
        # The job builds its Beam pipeline from these args (and records them in the
        # manifest) rather than from self._make_beam_pipeline(): same options, one code path.
        manifest = build_examples.run(build_examples.job(args), list(self._beam_pipeline_args))
        describe_examples(examples, manifest, exec_properties.get(INPUT_FINGERPRINT_KEY))


def describe_examples(
    examples: types.Artifact, manifest: "dict | DataSpec", fingerprint: Optional[str] = None
) -> None:
    """Split names, formats and the manifest's counts on the Examples artifact."""
    spec = DataSpec.of(manifest)
    examples.split_names = artifact_utils.encode_split_names(SPLIT_NAMES)
    examples.span = 0
    examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    examples_utils.set_file_format(examples, "tfrecords_gzip")
    for split, by_scenario in spec.examples.by_split.items():
        for scenario, count in by_scenario.items():
            examples.set_int_custom_property(
                f"examples_{beam_job.tfx_split_name(split, scenario)}", count
            )
    examples.set_int_custom_property("examples_total", spec.examples_total)
    examples.set_int_custom_property("rejected_total", spec.rejected_total)
    for reason, count in sorted(spec.rejected.items()):
        examples.set_int_custom_property(f"rejected_{reason}", count)
    for name, size in spec.vocab_sizes.as_dict().items():
        examples.set_int_custom_property(f"vocab_{name}", size)
    examples.set_string_custom_property("dataset", spec.dataset)
    examples.set_string_custom_property(
        "manifest", os.path.join(examples.uri, beam_job.MANIFEST_FILE)
    )
    if fingerprint:
        examples.set_string_custom_property(INPUT_FINGERPRINT_KEY, fingerprint)


class SequenceExampleGen(base_beam_component.BaseBeamComponent):
    """Raw logs -> canonical events -> per-user sequence examples (six splits), vocabularies,
    dead letters and manifest, with the data job of pipeline/build_examples.py."""

    SPEC_CLASS = SequenceExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
    DRIVER_CLASS = InputFingerprintDriver

    def __init__(
        self, data_root: str, adapter: str, build_options: Optional[Dict[str, Any]] = None
    ):
        """Checks the options against build_examples now, not when the pipeline runs."""
        job_args(adapter, data_root, build_options, output="", resolve_inputs=False)
        super().__init__(
            SequenceExampleGenSpec(
                data_root=data_root,
                adapter=adapter,
                build_options=dict(build_options or {}),
                examples=types.Channel(type=standard_artifacts.Examples),
            )
        )
