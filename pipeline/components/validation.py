"""Schema files for ImportSchemaGen, and AnomalyGate: the run stops on any data anomaly.

Environments. The curated schema (feature_specs/tfmd_schema.py) has REC and SEARCH
environments: `query_tokens` is not in REC. TFX 1.15's ExampleValidator calls
`tfdv.validate_statistics(stats, schema)` without an environment, and TFDV then expects every
schema feature in every split (a rec split gets "query_tokens: Column is completely missing").
So validation uses one *view* of the schema per environment, holding exactly the features in
that environment (`schema_for_environment`, TFDV's environment rule), and one ExampleValidator
per environment with `exclude_splits` leaving it that environment's splits: REC for *_rec,
SEARCH for *_search. Validating a split against its view is what
`tfdv.validate_statistics(..., environment=ENV)` against the full schema does (tested), and
a feature that shows up where its view lacks it is a "new column" anomaly.

AnomalyGate reads both ExampleAnomalies artifacts and raises AnomaliesFound naming the split,
feature and description of every anomaly; components that must not run on bad data
(Transform, Trainer, ...) depend on it (`add_upstream_node`).
"""

# No `from __future__ import annotations`: TFX reads AnomalyGate's type hints as objects.
import hashlib
import os
from typing import Dict, Iterable, List

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils

from feature_specs import event_schema as es
from feature_specs import tfmd_schema
from pipeline import beam_job
from pipeline import sequence_builder as sb

# Which schema environment each example split is validated in.
SCENARIO_ENVIRONMENTS = {
    es.SCENARIO_REC: tfmd_schema.ENV_REC,
    es.SCENARIO_SEARCH: tfmd_schema.ENV_SEARCH,
}
ENVIRONMENT_SPLITS: Dict[str, List[str]] = {
    environment: [beam_job.tfx_split_name(split, scenario) for split in sb.SPLITS]
    for scenario, environment in SCENARIO_ENVIRONMENTS.items()
}
ANOMALIES_FILE = "SchemaDiff.pb"  # what ExampleValidator writes per split


# --- schema views and files -------------------------------------------------------------------


def in_environment(
    feature: schema_pb2.Feature, environment: str, schema: schema_pb2.Schema
) -> bool:
    """TFDV's rule: listed in in_environment, else not excluded and in a default environment."""
    if environment in feature.in_environment:
        return True
    if environment in feature.not_in_environment or feature.in_environment:
        return False
    return not schema.default_environment or environment in schema.default_environment


def schema_for_environment(schema: schema_pb2.Schema, environment: str) -> schema_pb2.Schema:
    """The features of `environment`, without environment annotations (see the docstring)."""
    view = schema_pb2.Schema()
    view.CopyFrom(schema)
    view.ClearField("default_environment")
    del view.feature[:]
    for feature in schema.feature:
        if in_environment(feature, environment, schema):
            kept = view.feature.add()
            kept.CopyFrom(feature)
            kept.ClearField("in_environment")
            kept.ClearField("not_in_environment")
    return view


TRANSFORM_VIEW = "TRANSFORM"


def schema_for_transform(schema: schema_pb2.Schema) -> schema_pb2.Schema:
    """The schema Transform parses every split with: environments do not exist there, so a
    feature missing from some environment (`query_tokens`, absent from rec examples) becomes
    optional and variable-length (a SparseTensor in preprocessing_fn); the rest is as is."""
    view = schema_pb2.Schema()
    view.CopyFrom(schema)
    view.ClearField("default_environment")
    for feature in view.feature:
        everywhere = all(
            in_environment(feature, environment, schema) for environment in ENVIRONMENT_SPLITS
        )
        feature.ClearField("in_environment")
        feature.ClearField("not_in_environment")
        if not everywhere and feature.HasField("shape"):
            size = 1
            for dim in feature.shape.dim:
                size *= dim.size
            feature.ClearField("shape")
            feature.value_count.min = feature.value_count.max = size
            feature.presence.min_fraction = 0.0
            feature.presence.min_count = 0
    return view


def write_schema_files(schema: schema_pb2.Schema, directory: str) -> Dict[str, str]:
    """Writes the schema, its per-environment views and Transform's view;
    {"ALL", environment or TRANSFORM_VIEW: path}.

    The folder is named by the schema's digest: ImportSchemaGen's cache key is the file path,
    so another schema must be another path. Existing files are left alone (same content)."""
    text = text_format.MessageToString(schema)
    folder = os.path.join(directory, hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])
    texts = {"ALL": text}
    texts.update(
        {
            environment: text_format.MessageToString(schema_for_environment(schema, environment))
            for environment in ENVIRONMENT_SPLITS
        }
    )
    texts[TRANSFORM_VIEW] = text_format.MessageToString(schema_for_transform(schema))
    paths = {}
    for name, content in texts.items():
        # ImportSchemaGen copies the file to <artifact>/schema.pbtxt: one folder per file.
        path = os.path.join(folder, name.lower(), "schema.pbtxt")
        if not tf.io.gfile.exists(path):
            tf.io.gfile.makedirs(os.path.dirname(path))
            with tf.io.gfile.GFile(path + ".tmp", "w") as handle:
                handle.write(content)
            tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
        paths[name] = path
    return paths


# --- the gate ---------------------------------------------------------------------------------


class AnomaliesFound(RuntimeError):
    """The data failed validation; the message lists every anomaly."""


def describe_anomalies(split: str, anomalies: anomalies_pb2.Anomalies) -> List[str]:
    """One readable line per anomaly of one split."""
    lines = []
    if anomalies.HasField("data_missing") and anomalies.data_missing:
        lines.append(f"split {split}: no data (empty split)")
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        lines.append(f"split {split}, dataset: {info.description or info.short_description}")
    for feature, info in sorted(anomalies.anomaly_info.items()):
        reasons = ", ".join(
            anomalies_pb2.AnomalyInfo.Type.Name(reason.type) for reason in info.reason
        )
        severity = anomalies_pb2.AnomalyInfo.Severity.Name(info.severity)
        lines.append(
            f"split {split}, feature '{feature}' ({severity}; {reasons}): "
            f"{info.description or info.short_description}"
        )
    return lines


def anomaly_report(artifacts: Iterable) -> List[str]:
    """Every anomaly line of ExampleAnomalies artifacts (each split's SchemaDiff.pb)."""
    lines = []
    for artifact in artifacts:
        for split in artifact_utils.decode_split_names(artifact.split_names):
            path = os.path.join(artifact_utils.get_split_uri([artifact], split), ANOMALIES_FILE)
            anomalies = anomalies_pb2.Anomalies()
            with tf.io.gfile.GFile(path, "rb") as handle:
                anomalies.ParseFromString(handle.read())
            lines += describe_anomalies(split, anomalies)
    return lines


@tfx.dsl.components.component
def AnomalyGate(
    rec_anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    search_anomalies: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.ExampleAnomalies
    ],
) -> None:
    """Fails the run when ExampleValidator found any anomaly, naming split and feature."""
    lines = anomaly_report([rec_anomalies, search_anomalies])
    if lines:
        raise AnomaliesFound(
            f"data validation failed, {len(lines)} anomal{'y' if len(lines) == 1 else 'ies'} "
            "(ExampleValidator against the curated schema, feature_specs/tfmd_schema.py):\n  "
            + "\n  ".join(lines)
        )
