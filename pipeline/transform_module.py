"""TFX Transform module: the user, item and word vocabularies, computed by tensorflow-transform.

The pipeline's SequenceExampleGen writes raw-id examples (`id_format="raw"`,
feature_specs/example_schema.py): the model's features and shapes with the raw user id,
item ids and query words as strings, "" for padding. `preprocessing_fn` maps them to ids:

- one vocabulary per kind ("users", "items", "words"), most frequent first, over every
  non-empty value of that kind's features (items: candidates, rec history, clicked items,
  the negative pool; words: the query and the history's queries) in the splits Transform
  analyzes (the pipeline analyzes the training splits only);
- id = line number + 1; "" (padding) and values the vocabulary lacks (out of vocabulary,
  e.g. an item first seen after training) become 0, the model's padding id, which
  `unisar_tf.export` scores 0 as a candidate and drops from a served rec history;
- `history_types` passes through.

The output has the feature names and shapes of the data job's id format, so the trainer
reads it like id examples; the Trainer applies this graph to the raw examples as it reads
them (Transform runs with materialize=False), and the exported model applies the same graph
inside its serving signatures (unisar_tf/data/transform.py).

Outside TFX, `analyze` (or `python -m pipeline.transform_module --data_dir D --output_dir T`)
runs the same analysis with Beam over a data job output built with `--id_format raw`; then
`python -m unisar_tf.train --data_dir D --transform_dir T ...` trains on it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Dict, Sequence, Union

import tensorflow as tf
import tensorflow_transform as tft

from feature_specs import ID_FEATURE_VOCABULARIES
from unisar_tf.data.transform import PASSTHROUGH_FEATURES, VOCABULARY_NAMES

Feature = Union[tf.Tensor, tf.SparseTensor]


def _non_empty_values(feature: Feature) -> tf.Tensor:
    """All of a batch's values except padding, flattened: (N,) strings."""
    values = feature.values if isinstance(feature, tf.SparseTensor) else tf.reshape(feature, [-1])
    return tf.boolean_mask(values, tf.not_equal(values, ""))


def _to_ids(feature: Feature, vocabulary) -> Feature:
    if isinstance(feature, tf.SparseTensor):
        return tf.SparseTensor(
            feature.indices, _to_ids(feature.values, vocabulary), feature.dense_shape
        )
    return tft.apply_vocabulary(feature, vocabulary, default_value=-1) + 1


def preprocessing_fn(inputs: Dict[str, Feature]) -> Dict[str, Feature]:
    """Raw-id features (batch first; dense or sparse as the schema says) -> id features."""
    outputs = {name: inputs[name] for name in PASSTHROUGH_FEATURES if name in inputs}
    for kind in VOCABULARY_NAMES:
        # Sorted: TF2 traces this function more than once and needs one analyzer order.
        names = sorted(
            name
            for name, vocabulary in ID_FEATURE_VOCABULARIES.items()
            if vocabulary == kind and name in inputs
        )
        if not names:
            raise ValueError(f"no {kind} feature among the inputs {sorted(inputs)}")
        vocabulary = tft.vocabulary(
            tf.concat([_non_empty_values(inputs[name]) for name in names], axis=0),
            vocab_filename=kind,
        )
        for name in names:
            outputs[name] = _to_ids(inputs[name], vocabulary)
    return outputs


def analyze(
    data_dir: str,
    output_dir: str,
    splits: Sequence[str] = ("train",),
    beam_args: Sequence[str] = (),
) -> str:
    """Runs the Transform analysis over a raw-id data job output's `splits` (both scenarios)
    and writes the transform graph (TFTransformOutput layout) to output_dir."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.public import tfxio

    from feature_specs import ID_FORMAT_RAW
    from feature_specs.data_spec import DataSpec
    from feature_specs.layout import MANIFEST_FILE
    from pipeline.components.validation import schema_for_transform

    path = os.path.join(data_dir, MANIFEST_FILE)
    with tf.io.gfile.GFile(path) as handle:
        spec = DataSpec.from_manifest(json.load(handle), path)
    if spec.id_format != ID_FORMAT_RAW:
        raise ValueError(
            f"{data_dir}: id_format is {spec.id_format!r}; "
            f"Transform analyzes raw-id examples (build with --id_format raw)"
        )
    with tf.io.gfile.GFile(os.path.join(data_dir, "schema.pbtxt")) as handle:
        schema = schema_for_transform(text_format.Parse(handle.read(), schema_pb2.Schema()))
    patterns = [
        os.path.join(data_dir, spec.files[f"{split}/{scenario}"])
        for split in splits
        for scenario in ("rec", "search")
        if spec.examples.count(split, scenario)
    ]
    examples = tfxio.TFExampleRecord(file_pattern=patterns, schema=schema)
    with (
        beam.Pipeline(argv=list(beam_args)) as pipeline,
        tft_beam.Context(temp_dir=tempfile.mkdtemp(prefix="unisar-transform-")),
    ):
        transform_fn = (
            pipeline | "Read" >> examples.BeamSource(),
            examples.TensorAdapterConfig(),
        ) | "Analyze" >> tft_beam.AnalyzeDataset(preprocessing_fn)
        _ = transform_fn | "Write" >> tft_beam.WriteTransformFn(output_dir)
    write_raw_metadata(schema, output_dir)
    return output_dir


def write_raw_metadata(schema, output_dir: str) -> None:
    """The raw examples' schema under <output_dir>/metadata, as TFX's Transform writes it:
    TFTransformOutput.raw_feature_spec() reads it (unisar_tf.data.transform uses it)."""
    import tensorflow_transform as tft
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

    metadata_io.write_metadata(
        dataset_metadata.DatasetMetadata(schema),
        os.path.join(output_dir, tft.TFTransformOutput.RAW_METADATA_DIR),
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Build the Transform graph (vocabularies) of a raw-id data job output."
    )
    parser.add_argument("--data_dir", required=True, help="built with --id_format raw")
    parser.add_argument("--output_dir", required=True, help="where the transform graph goes")
    parser.add_argument("--splits", default="train", help="comma-separated splits to analyze")
    args, beam_args = parser.parse_known_args(argv)
    path = analyze(args.data_dir, args.output_dir, args.splits.split(","), beam_args)
    print(f"transform graph written to {path}")


if __name__ == "__main__":
    main()
