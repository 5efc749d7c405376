"""Reading the data job's TFRecords (pipeline/build_examples.py) with tf.data.

The output directory holds manifest.json (counts, vocabulary sizes, shapes, options) and
{train,valid,test}/{rec,search}-*.tfrecord.gz, one tf.Example per target event with the
features of feature_specs/example_schema.py. This module knows the file layout and the
feature contract, not Beam.

Files that do not fit their manifest fail with the file's name: ManifestMismatchError (the
first example of a file has other shapes than manifest.json says, `check_example_shapes`) and
CorruptExampleFileError (a truncated or corrupted TFRecord, `naming_bad_files`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    ID_FEATURE_VOCABULARIES,
    NEGATIVE_POOL,
    QUERY_TOKENS,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    SEARCH_HISTORY_QUERY_TOKENS,
    SequenceShapes,
    model_feature_shapes,
)
from feature_specs.data_spec import DataSpec, tasks_with_counts
from feature_specs.layout import MANIFEST_FILE, VOCAB_DIR, example_pattern
from unisar_tf.config import TASKS
from unisar_tf.data.transform import transform_ids, transformed_manifest

# The manifest entries that say which data it is (not where it lives or how long the job ran).
IDENTITY_KEYS = (
    "dataset",
    "id_format",
    "inputs",
    "build_options",
    "vocab_sizes",
    "shapes",
    "examples",
    "counters",
    "rejected",
)


def load_manifest(data_dir: str, transform_dir: Optional[str] = None) -> dict:
    """The data job's manifest.json as a dict (callers pass it on, and data_identity hashes
    it as written); `load_spec` gives it typed. Checked on loading: a missing required key
    raises ValueError naming it and the file. With `transform_dir`, its examples are read
    through that Transform graph (raw string ids -> ids, see unisar_tf/data/transform.py)."""
    path = os.path.join(data_dir, MANIFEST_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} not found: build the examples first " "(python -m pipeline.build_examples ...)"
        )
    with tf.io.gfile.GFile(path) as handle:
        manifest = json.load(handle)
    spec = DataSpec.from_manifest(manifest, path)
    if transform_dir:
        return transformed_manifest(manifest, transform_dir)
    if not spec.id_format_is_ids:
        raise ValueError(
            f"{path}: the examples carry raw string ids (id_format="
            f"{spec.id_format!r}); read them with the Transform output "
            "that maps them (transform_dir, e.g. the pipeline's Transform "
            "transform_graph artifact)"
        )
    return manifest


def load_spec(data_dir: str, transform_dir: Optional[str] = None) -> DataSpec:
    """load_manifest, typed."""
    return DataSpec.from_manifest(
        load_manifest(data_dir, transform_dir), os.path.join(data_dir, MANIFEST_FILE)
    )


def shapes_from_manifest(manifest: dict | DataSpec) -> SequenceShapes:
    return DataSpec.of(manifest).shapes


def tasks_with_examples(
    manifest: dict | DataSpec, split: str = "train", tasks: Sequence[str] = TASKS
) -> Tuple[str, ...]:
    """The tasks of `tasks` that have examples in `split` (a manifest without counts: all).
    Takes partial manifest dicts too (only their `examples`)."""
    if isinstance(manifest, DataSpec):
        return manifest.tasks_with_examples(split, tasks)
    return tasks_with_counts(manifest.get("examples"), split, tasks)


def vocabulary_files(data_dir: str, manifest: dict | DataSpec) -> list:
    """The files that give ids their meaning: the data job's vocab/ and, for raw-id examples,
    the Transform output's vocabularies (its transform_fn assets)."""
    files = sorted(tf.io.gfile.glob(os.path.join(data_dir, VOCAB_DIR, "*")))
    transform_dir = DataSpec.of(manifest).transform_dir
    if transform_dir:
        files += sorted(
            tf.io.gfile.glob(os.path.join(transform_dir, "transform_fn", "assets", "*"))
        )
    return files


def _sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


def data_identity(data_dir: str, manifest: dict) -> dict:
    """Which data this is, for run directories (model_dir/data.json, unisar_tf.train.trainer):
    from the manifest dict as written (not DataSpec.to_manifest, which fills an older
    manifest's defaults in and so would change its fingerprint).

    {"vocabulary": sha256 of the vocabulary files' names and bytes and the vocabulary sizes
    (equal: every user, item and word id means the same thing),
    "fingerprint": sha256 of that and the manifest's IDENTITY_KEYS (examples counts, shapes,
    build options, input paths, counters), "data_dir", "transform_dir", "vocab_sizes",
    "shapes", "examples"}. Where the data lives is recorded, not hashed: a copy of the same
    data has the same fingerprint.
    """
    digest = hashlib.sha256()
    for path in vocabulary_files(data_dir, manifest):
        digest.update(os.path.basename(path).encode("utf-8") + b"\0")
        with tf.io.gfile.GFile(path, "rb") as handle:
            while True:
                chunk = handle.read(1 << 20)
                if not chunk:
                    break
                digest.update(chunk)
        digest.update(b"\0")
    vocabulary = _sha256([digest.hexdigest(), manifest.get("vocab_sizes")])
    described = {key: manifest.get(key) for key in IDENTITY_KEYS}
    return {
        "fingerprint": _sha256([vocabulary, described]),
        "vocabulary": vocabulary,
        "data_dir": data_dir,
        "transform_dir": manifest.get("transform_dir"),
        "vocab_sizes": manifest.get("vocab_sizes"),
        "shapes": manifest.get("shapes"),
        "examples": manifest.get("examples"),
    }


def example_files(data_dir: str, split: str, scenario: str) -> list:
    """The split's TFRecord files: the manifest's `files` pattern (relative to data_dir), so
    another layout (e.g. a TFX Examples artifact's Split-<name>/) reads the same way."""
    pattern = example_pattern(data_dir, split, scenario)
    manifest_path = os.path.join(data_dir, MANIFEST_FILE)
    if tf.io.gfile.exists(manifest_path):
        with tf.io.gfile.GFile(manifest_path) as handle:
            relative = json.load(handle).get("files", {}).get(f"{split}/{scenario}")
        if relative:
            pattern = os.path.join(data_dir, relative)
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no example files match {pattern}")
    return files


SPLITS = ("train", "valid", "test")


class ManifestMismatchError(ValueError):
    """The example files do not hold what their manifest.json says (a manifest of another
    build, or files of another build copied in). The message names the field, the manifest's
    value, the files' value and the file."""


class CorruptExampleFileError(tf.errors.DataLossError):
    """A truncated or corrupted TFRecord file of the data; the message names it (TensorFlow's
    own DataLossError says only "truncated record at N")."""

    def __init__(self, message: str):
        super().__init__(None, None, message)


def _error_detail(error: tf.errors.OpError) -> str:
    """TensorFlow's message without the function-node prefix and the op suffix."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", error.message or str(error))
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text, flags=re.S)
    return text.replace("'", "").strip() or type(error).__name__


def _count_records(path: str) -> int:
    dataset = tf.data.TFRecordDataset(path, compression_type="GZIP")
    return int(dataset.reduce(np.int64(0), lambda count, _: count + 1))


def find_bad_files(files: Iterable[str]) -> List[Tuple[str, str]]:
    """[(file, TensorFlow's complaint)] of the files that do not read whole (truncated or
    corrupted TFRecords), each read on its own to the end (no parsing)."""
    bad = []
    for path in files:
        try:
            _count_records(path)
        except tf.errors.DataLossError as error:
            bad.append((path, _error_detail(error)))
    return bad


def _split_files(data_dir: str, splits: Sequence[str], scenarios: Sequence[str]) -> List[str]:
    files = []
    for split in splits:
        for scenario in scenarios:
            try:
                files += example_files(data_dir, split, scenario)
            except FileNotFoundError:
                continue
    return files


def _corrupt_message(bad: List[Tuple[str, str]], data_dir: str) -> str:
    named = "; ".join(f"{path} ({detail})" for path, detail in bad)
    return (
        f"{'this example file is' if len(bad) == 1 else 'these example files are'} "
        f"truncated or corrupted: {named}: {_rebuild_hint(data_dir)}"
    )


def _rebuild_hint(data_dir: str) -> str:
    return (
        f"rebuild the data (python -m pipeline.build_examples ... --output {data_dir}) or "
        "restore the file from a good copy"
    )


@contextlib.contextmanager
def naming_bad_files(
    data_dir: str, splits: Sequence[str] = SPLITS, scenarios: Sequence[str] = TASKS
):
    """Reading inside this block: a DataLossError (a truncated or corrupted TFRecord) is
    raised again as CorruptExampleFileError naming the bad file(s) among `splits` x
    `scenarios` of data_dir, found by reading each file on its own (the error path only)."""
    try:
        yield
    except CorruptExampleFileError:
        raise
    except tf.errors.DataLossError as error:
        files = _split_files(data_dir, splits, scenarios)
        bad = find_bad_files(files)
        if bad:
            message = _corrupt_message(bad, data_dir)
        else:
            message = (
                f"reading the examples of {data_dir} ({'/'.join(splits)}) failed "
                f"({_error_detail(error)}), but each of its {len(files)} files reads "
                "whole on its own now: was the data being rewritten? Run again, or "
                + _rebuild_hint(data_dir)
            )
        raise CorruptExampleFileError(message) from error


def _value_count(feature) -> int:
    kind = feature.WhichOneof("kind")
    return len(getattr(feature, kind).value) if kind else 0


def _first_example(path: str, data_dir: str):
    """The first tf.train.Example of a file, or None for an empty file."""
    try:
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").take(1):
            return tf.train.Example.FromString(record.numpy())
    except tf.errors.DataLossError as error:
        raise CorruptExampleFileError(
            _corrupt_message([(path, _error_detail(error))], data_dir)
        ) from error
    return None


def _shape_problems(
    counts: Dict[str, int], expected: Dict[str, int], manifest_shapes: dict, candidates_field: str
) -> List[str]:
    """What differs between one example's value counts and the manifest's shapes: the
    manifest's fields where the files' value follows from the counts ("manifest.json says
    rec_len 20, the files hold 30"), else the features' counts."""
    held: Dict[str, Optional[int]] = {}

    def per(total: Optional[int], length: Optional[int]) -> Optional[int]:
        if total is None or not length or total % length:
            return None
        return total // length

    held["rec_len"] = counts.get(REC_HISTORY_ITEMS)
    if held["rec_len"] is not None and HISTORY_TYPES in counts:
        held["search_len"] = counts[HISTORY_TYPES] - held["rec_len"]
    if QUERY_TOKENS in counts:
        held["query_len"] = counts[QUERY_TOKENS]
    else:
        held["query_len"] = per(counts.get(SEARCH_HISTORY_QUERY_TOKENS), held.get("search_len"))
    held["clicks_per_session"] = per(
        counts.get(SEARCH_HISTORY_CLICKED_ITEMS), held.get("search_len")
    )
    held[candidates_field] = counts.get(CANDIDATE_ITEMS)
    if NEGATIVE_POOL in expected:
        held["train_negative_pool"] = counts.get(NEGATIVE_POOL)
    problems = []
    for field, value in held.items():
        said = manifest_shapes.get(field)
        if field == "train_negative_pool" and value is None:
            problems.append(
                f"manifest.json says train_negative_pool {said}, the files hold "
                f"none (no {NEGATIVE_POOL} feature)"
            )
        elif value is not None and said is not None and value != said:
            problems.append(f"manifest.json says {field} {said}, the files hold {value}")
    if problems:
        return problems
    for name, size in expected.items():  # what the fields cannot say (e.g. a missing feature)
        if name not in counts:
            problems.append(
                f"the files have no {name} feature, which manifest.json's shapes "
                f"give {size} values"
            )
        elif counts[name] != size:
            problems.append(
                f"{name} holds {counts[name]} values per example in the files, "
                f"manifest.json's shapes make {size}"
            )
    return problems


_CHECKED: set = set()


def _candidates(spec: DataSpec, split: str) -> int:
    """Candidates per example of `split`: the training or the evaluation list width."""
    return spec.candidates.train if split == "train" else spec.candidates.eval


def check_example_shapes(
    data_dir: str, split: str, scenario: str, manifest: dict | DataSpec
) -> None:
    """Raises ManifestMismatchError unless the first example of every file of the split and
    scenario has the shapes manifest.json gives (sequence lengths, candidates, negative
    pool), naming the field, both values and the file; a truncated first record is a
    CorruptExampleFileError. Checked once per file (and its size and time) per process."""
    data = DataSpec.of(manifest)
    candidates_field = "train_candidates" if split == "train" else "eval_candidates"
    spec = model_feature_shapes(
        data.shapes, _candidates(data, split), with_query=scenario == "search"
    )
    expected = {name: int(math.prod(shape)) for name, shape in spec.items()}
    pool = data.candidates.train_negative_pool
    if split == "train" and pool:
        expected[NEGATIVE_POOL] = pool
    expectation = json.dumps(expected, sort_keys=True)
    for path in example_files(data_dir, split, scenario):
        try:
            stat = tf.io.gfile.stat(path)
            key = (path, stat.length, stat.mtime_nsec, expectation)
        except tf.errors.OpError:
            key = (path, None, None, expectation)
        if key in _CHECKED:
            continue
        example = _first_example(path, data_dir)
        if example is not None:
            counts = {
                name: _value_count(feature) for name, feature in example.features.feature.items()
            }
            problems = _shape_problems(counts, expected, data.shapes_block(), candidates_field)
            if problems:
                raise ManifestMismatchError(
                    f"{path} does not hold what {os.path.join(data_dir, MANIFEST_FILE)} says "
                    f"({split}/{scenario}, first example): {'; '.join(problems)}. The manifest "
                    "and the example files come from different builds: rebuild the data "
                    f"(python -m pipeline.build_examples ... --output {data_dir}), or put "
                    "back the manifest.json written with these files"
                )
        _CHECKED.add(key)


def parse_spec(
    shapes: SequenceShapes, num_candidates: int, with_query: bool
) -> Dict[str, tf.io.FixedLenFeature]:
    return {
        name: tf.io.FixedLenFeature(shape, tf.int64)
        for name, shape in model_feature_shapes(shapes, num_candidates, with_query).items()
    }


def _reader(transform_dir: Optional[str], spec: Dict[str, tf.io.FixedLenFeature]):
    """(spec to parse the files with, function from parsed features to id features).

    Raw-id examples (manifest with a transform_dir) parse id features as strings and map
    them with the Transform graph; id examples parse as they are.
    """
    if not transform_dir:
        return spec, lambda features: features

    ids = transform_ids(transform_dir)
    raw_spec = {
        name: tf.io.FixedLenFeature(feature.shape, tf.string)
        if name in ID_FEATURE_VOCABULARIES
        else feature
        for name, feature in spec.items()
    }
    return raw_spec, ids


def read_examples(
    data_dir: str,
    split: str,
    scenario: str,
    batch_size: int,
    manifest: dict | DataSpec | None = None,
    shuffle: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
    shuffle_buffer: int = 20_000,
) -> tf.data.Dataset:
    """Batches of {feature: (B, ...) int64} from one split and scenario, parsed in parallel.

    Shuffling reads the files interleaved and shuffles records with a buffer; the data job
    already wrote each user's examples together, so the buffer covers many users. The order
    is a function of `seed` alone (deterministic interleave), so a run can be replayed.
    Without shuffling the files are read one after another (sorted), so row i is record i
    in file order: the order `read_feature` and `evaluate.saved_model_scores` see, which
    pairs a model's per-list scores with the baselines' (unisar_tf/train/gate.py).
    """
    manifest = manifest or load_manifest(data_dir)
    data = DataSpec.of(manifest)
    spec = parse_spec(data.shapes, _candidates(data, split), with_query=scenario == "search")
    pool = data.candidates.train_negative_pool
    if split == "train" and pool:
        spec[NEGATIVE_POOL] = tf.io.FixedLenFeature((pool,), tf.int64)
    spec, to_ids = _reader(data.transform_dir, spec)
    files = example_files(data_dir, split, scenario)
    check_example_shapes(data_dir, split, scenario, data)
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
        cycle_length=max(1, min(len(files), 4)) if shuffle else 1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return (
        dataset.batch(batch_size, drop_remainder=drop_remainder)
        .map(
            lambda records: to_ids(tf.io.parse_example(records, spec)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .prefetch(tf.data.AUTOTUNE)
    )


def load_arrays(
    data_dir: str,
    split: str,
    scenario: str,
    manifest: dict | DataSpec | None = None,
    features: Optional[list] = None,
    limit: Optional[int] = None,
) -> Dict[str, np.ndarray]:
    """A whole split as numpy arrays (optionally only some features / the first rows)."""
    dataset = read_examples(data_dir, split, scenario, batch_size=4096, manifest=manifest)
    if limit is not None:
        dataset = dataset.unbatch().take(limit).batch(4096)
    parts: Dict[str, list] = {}
    with naming_bad_files(data_dir, (split,), (scenario,)):
        for batch in dataset:
            for name, values in batch.items():
                if features is None or name in features:
                    parts.setdefault(name, []).append(values.numpy())
    if not parts:
        raise ValueError(f"{data_dir}: split {split}/{scenario} has no examples")
    return {name: np.concatenate(values) for name, values in parts.items()}


def read_feature(
    data_dir: str,
    split: str,
    scenario: str,
    name: str,
    width: int,
    manifest: dict | DataSpec | None = None,
) -> np.ndarray:
    """One int64 feature (n, width) of a whole split, in file order, parsing nothing else;
    without a manifest, id examples and no shape check."""
    data = DataSpec.of(manifest) if manifest else None
    spec, to_ids = _reader(
        data.transform_dir if data else None, {name: tf.io.FixedLenFeature((width,), tf.int64)}
    )
    files = example_files(data_dir, split, scenario)
    if data:
        check_example_shapes(data_dir, split, scenario, data)
    dataset = (
        tf.data.TFRecordDataset(files, compression_type="GZIP")
        .batch(8192)
        .map(
            lambda records: to_ids(tf.io.parse_example(records, spec))[name],
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    )
    with naming_bad_files(data_dir, (split,), (scenario,)):
        parts = [batch.numpy() for batch in dataset]
    return np.concatenate(parts) if parts else np.zeros((0, width), np.int64)


def query_bank(data_dir: str, manifest: dict | DataSpec | None = None) -> np.ndarray:
    """Distinct training search queries (Nq, query_len): the relevance loss's negative pool.

    Data without training search examples: the distinct queries of the training rec
    examples' search histories; (0, query_len) when there are none either (a rec-only log,
    where the relevance loss has no query-click pair to learn from).
    """
    manifest = manifest or load_manifest(data_dir)
    spec = DataSpec.of(manifest)
    width = spec.shapes.query_len
    if tasks_with_examples(manifest, "train", ("search",)):
        queries = read_feature(data_dir, "train", "search", QUERY_TOKENS, width, manifest)
        if len(queries):
            return np.unique(queries, axis=0)
    parts = []
    counters = spec.counters  # the data job counts the search sessions it used
    if tasks_with_examples(manifest, "train", ("rec",)) and (
        counters is None or counters.get("search_sessions", 0)
    ):
        with naming_bad_files(data_dir, ("train",), ("rec",)):
            for batch in read_examples(data_dir, "train", "rec", 4096, manifest):
                queries = batch[SEARCH_HISTORY_QUERY_TOKENS].numpy().reshape(-1, width)
                queries = queries[np.any(queries != 0, axis=1)]
                if len(queries):
                    parts.append(np.unique(queries, axis=0))
    if not parts:
        return np.zeros((0, width), np.int64)
    return np.unique(np.concatenate(parts), axis=0)


__all__ = [
    "load_manifest",
    "read_examples",
    "load_arrays",
    "query_bank",
    "read_feature",
    "parse_spec",
    "example_files",
    "tasks_with_examples",
    "vocabulary_files",
    "data_identity",
    "check_example_shapes",
    "naming_bad_files",
    "find_bad_files",
    "ManifestMismatchError",
    "CorruptExampleFileError",
    "SPLITS",
]
