"""The Transform graph's id mapping, where raw-id examples are read and inside the serving model.

In the TFX pipeline the data job writes its examples with raw string ids (`id_format="raw"`:
the same features and shapes as feature_specs, strings where ids would be, "" for padding),
and tensorflow-transform computes the user, item and word vocabularies on the training
splits (pipeline/transform_module.py). `TransformIds` wraps that output:

- `__call__`: parsed raw features -> the model's int64 id features, through the whole
  Transform graph (training, validation and the `serving_default` signature read this way);
- `lookup(kind, strings)`: strings of any shape -> ids with one vocabulary, through the
  same graph; `lookup_together` maps several kinds and tensors in one run of the graph (the
  `recommend` / `search` signatures, whose inputs are not example-shaped).

Ids follow the data job's convention (feature_specs): vocabulary line k is id k + 1, and id 0
is padding and everything the vocabulary does not know. Vocabulary names are "users",
"items" and "words"; model tables have vocabulary size + 1 rows.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Mapping, Sequence

import numpy as np
import tensorflow as tf

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    ID_FEATURE_VOCABULARIES,  # which vocabulary maps each raw-id feature
    QUERY_TOKENS,
    USER_ID,
)
from unisar_tf.data.vocab import read_vocabularies

VOCABULARY_NAMES = ("users", "items", "words")
PASSTHROUGH_FEATURES = (HISTORY_TYPES,)
# A feature per vocabulary whose raw spec takes any number of values per row (VarLen) or one
# (user_id): `lookup` sends arbitrary strings of that kind through the graph as that feature.
_LOOKUP_FEATURE = {"users": USER_ID, "items": CANDIDATE_ITEMS, "words": QUERY_TOKENS}


class TransformIds(tf.Module):
    """Raw string ids -> int64 ids with the Transform output at `transform_dir`.

    The graph (and its vocabulary files, as assets) is tracked by this module, so a
    SavedModel holding it serves without the Transform output directory.
    """

    example_dtype = tf.string  # what serving_default's examples carry in id features

    def __init__(self, transform_dir: str, name: str = "transform_ids"):
        super().__init__(name=name)
        import tensorflow_transform as tft

        output = tft.TFTransformOutput(transform_dir)
        self.transform_dir = transform_dir
        self.tft_layer = output.transform_features_layer()
        # Plain Python values (not tracked): which raw features the graph reads as VarLen.
        self._varlen = frozenset(
            name
            for name, spec in output.raw_feature_spec().items()
            if isinstance(spec, tf.io.VarLenFeature)
        )
        self._sizes = {kind: int(output.vocabulary_size_by_name(kind)) for kind in VOCABULARY_NAMES}

    def vocabulary_sizes(self) -> Dict[str, int]:
        """{"users" | "items" | "words": distinct values seen by the analyzers}."""
        return dict(self._sizes)

    def vocabularies(self) -> Dict[str, np.ndarray]:
        """kind -> (size + 1,) object array of strings, index = id; index 0 is "" (as
        unisar_tf.data.vocab.read_vocabularies gives the data job's)."""
        # Read on demand: only tools and tests need the words, and a catalogue can be large.
        import tensorflow_transform as tft

        output = tft.TFTransformOutput(self.transform_dir)
        return {
            kind: np.array(
                [""] + [word.decode("utf-8") for word in output.vocabulary_by_name(kind)],
                dtype=object,
            )
            for kind in VOCABULARY_NAMES
        }

    def _as_raw(self, name: str, values: tf.Tensor):
        # VarLen raw features are (B, N) SparseTensors in the graph; "" (padding) is left out
        # and comes back as id 0 when the result is made dense again.
        if name not in self._varlen:
            return values
        if values.shape.rank == 1:  # a scalar feature that a schema left without a shape
            values = values[:, tf.newaxis]
        return tf.sparse.from_dense(values)

    def __call__(self, features: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """Dense raw features (strings for ID_FEATURE_VOCABULARIES, int64 otherwise), batch
        first, any subset -> the same features as dense int64 ids (same shapes)."""
        unknown = sorted(set(features) - set(ID_FEATURE_VOCABULARIES) - set(PASSTHROUGH_FEATURES))
        if unknown:
            raise ValueError(f"features {unknown} are not raw-id or passthrough features")
        mapped = self.tft_layer(
            {name: self._as_raw(name, value) for name, value in features.items()}
        )
        out = {}
        for name, value in features.items():
            result = mapped[name]
            if isinstance(result, tf.SparseTensor):
                result = tf.reshape(tf.sparse.to_dense(result), tf.shape(value))
            result = tf.cast(result, tf.int64)
            result.set_shape(value.shape)
            out[name] = result
        return out

    def lookup(self, kind: str, strings: tf.Tensor) -> tf.Tensor:
        """(...,) or (..., N) strings -> int64 ids of the same shape, with vocabulary `kind`."""
        if kind == "users":  # one user per row: any shape goes through as a flat batch
            flat = tf.reshape(strings, [-1])
            return tf.reshape(self.lookup_together({kind: [flat]})[kind][0], tf.shape(strings))
        return self.lookup_together({kind: [strings]})[kind][0]

    def lookup_together(
        self, strings: Mapping[str, Sequence[tf.Tensor]]
    ) -> Dict[str, List[tf.Tensor]]:
        """{kind: [(B, ...) strings]} -> {kind: [int64 ids, same shapes]}, through ONE run of
        the Transform graph: a request's items, words and user mapped together (one call per
        tensor ran the graph six times per request; docs/results.md, serving profile).

        Every tensor is batch first with the same B; "users" takes (B,) tensors."""
        features, split = {}, {}
        for kind, tensors in strings.items():
            feature = _LOOKUP_FEATURE[kind]
            if kind == "users":
                (users,) = tensors  # one user per request row
                features[feature] = users
                continue
            features[feature], split[kind] = _rows_side_by_side(tensors)
        mapped = self(features)
        return {
            kind: [mapped[USER_ID]]
            if kind == "users"
            else split[kind](mapped[_LOOKUP_FEATURE[kind]])
            for kind in strings
        }

    def example_ids(self, features: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """Parsed raw-id examples (dense) -> id features: the whole Transform graph."""
        return self(features)


def _rows_side_by_side(tensors: Sequence[tf.Tensor]):
    """[(B, ...) tensors] -> (B, N) their rows flattened and concatenated, and the function
    that cuts a (B, N) result back into tensors of the original shapes."""
    shapes = [tf.shape(t) for t in tensors]
    batch = shapes[0][0]
    # Explicit widths: -1 cannot be inferred when a tensor has no values.
    widths = [tf.reduce_prod(shape[1:]) for shape in shapes]
    joined = tf.concat(
        [tf.reshape(t, tf.stack([batch, width])) for t, width in zip(tensors, widths)], axis=1
    )

    def cut(ids: tf.Tensor) -> List[tf.Tensor]:
        parts = tf.split(ids, tf.stack(widths), axis=1, num=len(tensors))
        return [tf.reshape(part, shape) for part, shape in zip(parts, shapes)]

    return joined, cut


def transformed_manifest(manifest: dict, transform_dir: str) -> dict:
    """A data job manifest whose examples are read through the Transform graph.

    Sets `transform_dir` (unisar_tf.data reads the raw strings and maps them) and replaces
    the data job's vocabulary sizes with Transform's, which size the model's tables.
    """
    result = dict(manifest)
    result["transform_dir"] = transform_dir
    result["vocab_sizes"] = transform_ids(transform_dir).vocabulary_sizes()
    return result


@functools.lru_cache(maxsize=4)
def transform_ids(transform_dir: str) -> TransformIds:
    """One TransformIds per Transform output (loading the graph takes a second or two)."""
    return TransformIds(transform_dir)


def data_job_id_maps(vocab_dir: str, transform_dir: str) -> Dict[str, np.ndarray]:
    """{kind: (job vocabulary + 1,) int64}: the data job's id -> Transform's id (0 if the
    Transform vocabulary lacks it), for tables keyed by job ids (KuaiSAR side features)."""

    job = read_vocabularies(vocab_dir)
    transform = transform_ids(transform_dir).vocabularies()
    maps = {}
    for kind in VOCABULARY_NAMES:
        index = {word: i for i, word in enumerate(transform[kind]) if i}
        maps[kind] = np.array(
            [index.get(word, 0) if i else 0 for i, word in enumerate(job[kind])], np.int64
        )
    return maps
