"""The data job's manifest.json as a typed spec: what the examples in a data folder are.

Written by the data job (pipeline/beam_job.py) and the synthetic generator
(unisar_tf/data/synthetic.py), read by the reader, Trainer, evaluation, export and server.
A renamed field fails at attribute access (or import), not as a KeyError deep in a run.

`DataSpec.from_manifest(dict)` reads today's manifests and older ones (missing optional keys
get the defaults documented on the fields); `to_manifest()` gives back today's JSON layout,
so a manifest written through it is byte for byte what the writers wrote by hand before.
Standard library only: `pipeline/` and `unisar_tf/` both import it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

from feature_specs.example_schema import ID_FORMAT_IDS, SequenceShapes
from feature_specs.layout import MANIFEST_FILE

VOCAB_KINDS = ("users", "items", "words")
_SEQUENCE_FIELDS = ("rec_len", "search_len", "query_len", "clicks_per_session")


@dataclasses.dataclass(frozen=True)
class VocabSizes:
    """Vocabulary sizes: ids run 1..n (vocab/<kind>.txt line k = id k), 0 = padding/unknown."""

    users: int
    items: int
    words: int

    @property
    def user_table(self) -> int:
        """Rows of a user table: size + 1 (row 0 = padding / unknown)."""
        return self.users + 1

    @property
    def item_table(self) -> int:
        return self.items + 1

    @property
    def word_table(self) -> int:
        """At least 2 rows: a data set without words still gets one word row beside padding."""
        return max(self.words, 1) + 1

    def as_dict(self) -> Dict[str, int]:
        return {kind: getattr(self, kind) for kind in VOCAB_KINDS}


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Candidates per example: 1 positive + negatives; the per-example negative pool (0: none)."""

    train: int
    eval: int
    train_negative_pool: int = 0  # absent before the pool existed (fb5549b): no pool


@dataclasses.dataclass(frozen=True)
class ExampleCounts:
    """Examples per split ("train", "valid", "test") and scenario ("rec", "search")."""

    by_split: Mapping[str, Mapping[str, int]]

    def split(self, split: str) -> Dict[str, int]:
        """{scenario: count} of `split`; {} when the manifest has no such split."""
        return dict(self.by_split.get(split, {}))

    def count(self, split: str, scenario: str) -> int:
        return int(self.by_split.get(split, {}).get(scenario, 0))

    @property
    def total(self) -> int:
        return sum(sum(counts.values()) for counts in self.by_split.values())


def tasks_with_counts(
    by_split: Optional[Mapping[str, Mapping[str, int]]], split: str, tasks
) -> Tuple[str, ...]:
    """The tasks of `tasks` with examples in `split` of `by_split` ({split: {scenario:
    count}}); a missing count (or no counts at all) counts as present."""
    counts = (by_split or {}).get(split, {})
    return tuple(task for task in tasks if counts.get(task, 1) > 0)


@dataclasses.dataclass(frozen=True)
class CooccurrenceTables:
    """The data job's co-occurrence artifact (unisar_tf/data/cooccurrence.py): the top_k
    neighbours per item (0 = all) of the symmetric pair and the directed transition tables,
    their sizes (pairs kept) and files (key -> path relative to the data folder)."""

    top_k: int
    pairs: int
    transitions: int
    files: Mapping[str, str]

    @classmethod
    def from_block(cls, block: Any, source: str) -> "CooccurrenceTables":
        try:
            return cls(
                top_k=int(block["top_k"]),
                pairs=int(block["pairs"]),
                transitions=int(block["transitions"]),
                files={str(key): str(path) for key, path in dict(block["files"]).items()},
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{source}: the manifest's cooccurrence block {block!r} is not "
                f"{{top_k, pairs, transitions, files}}: {error!r}"
            ) from None

    def as_dict(self) -> Dict[str, Any]:
        return {
            "top_k": self.top_k,
            "pairs": self.pairs,
            "transitions": self.transitions,
            "files": dict(self.files),
        }


# Keys that are not DataSpec fields of the same name: parsed into the typed parts above.
_TYPED_KEYS = ("vocab_sizes", "shapes", "examples", "cooccurrence")
_REQUIRED_SHAPE_KEYS = _SEQUENCE_FIELDS + ("train_candidates", "eval_candidates")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """One data folder's manifest.json.

    Required: vocab_sizes, shapes (the four sequence lengths and the candidate counts).
    Everything else is optional; None means the key is absent from the file (the synthetic
    generator writes fewer keys than the data job) and to_manifest leaves it out.
    """

    vocab_sizes: VocabSizes
    shapes: SequenceShapes
    candidates: Candidates
    # None: no counts in the manifest (readers then treat every scenario as present).
    examples: Optional[ExampleCounts] = None
    dataset: Optional[str] = None
    # "ids" (int64 ids of vocab/*.txt) or "raw" strings; absent before 3f5022a: "ids".
    id_format: str = ID_FORMAT_IDS
    build_options: Optional[Mapping[str, Any]] = None
    # "<split>/<scenario>" -> glob pattern relative to the data folder.
    files: Optional[Mapping[str, str]] = None
    # Set by unisar_tf.data.transform.transformed_manifest, never by a writer.
    transform_dir: Optional[str] = None
    # The data job's own record (absent from synthetic data).
    inputs: Optional[Mapping[str, Any]] = None
    beam_args: Optional[Tuple[str, ...]] = None
    examples_total: Optional[int] = None
    rejected: Optional[Mapping[str, int]] = None
    rejected_total: Optional[int] = None
    counters: Optional[Mapping[str, int]] = None
    wall_seconds: Optional[float] = None
    time_split: Optional[Mapping[str, Any]] = None  # --split time only (d0fac6d)
    fewer_outputs_than_previous: Optional[Mapping[str, Any]] = None  # 1c080fa
    # The data job's co-occurrence tables; absent from older builds and synthetic data.
    cooccurrence: Optional[CooccurrenceTables] = None
    # Keys this version does not know (a newer writer's), kept so they round-trip.
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def id_format_is_ids(self) -> bool:
        return self.id_format == ID_FORMAT_IDS

    def counters_get(self, name: str, default: int = 0) -> int:
        return int((self.counters or {}).get(name, default))

    def build_option(self, name: str, default: Any = None) -> Any:
        return (self.build_options or {}).get(name, default)

    def tasks_with_examples(self, split: str, tasks) -> Tuple[str, ...]:
        """The tasks of `tasks` with examples in `split`; without counts: all of them."""
        return tasks_with_counts(self.examples and self.examples.by_split, split, tasks)

    def replace(self, **changes) -> "DataSpec":
        return dataclasses.replace(self, **changes)

    # --- the JSON layout ------------------------------------------------------------------

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], source: str = MANIFEST_FILE) -> "DataSpec":
        """Parses a manifest dict; a missing required key raises ValueError naming it and
        `source` (the file's path)."""

        def need(mapping, key, where):
            if not isinstance(mapping, Mapping) or key not in mapping:
                raise ValueError(f"{source}: the manifest has no {where}{key!r}")
            return mapping[key]

        sizes = need(manifest, "vocab_sizes", "")
        shapes = need(manifest, "shapes", "")
        for key in VOCAB_KINDS:
            need(sizes, key, "vocab_sizes.")
        for key in _REQUIRED_SHAPE_KEYS:
            need(shapes, key, "shapes.")
        fields = {field.name for field in dataclasses.fields(cls)}
        plain = {
            key: value
            for key, value in manifest.items()
            if key in fields and key not in _TYPED_KEYS + ("candidates", "extra")
        }
        if "beam_args" in plain:
            plain["beam_args"] = tuple(plain["beam_args"])
        examples = manifest.get("examples")
        cooccurrence = manifest.get("cooccurrence")
        return cls(
            vocab_sizes=VocabSizes(**{kind: int(sizes[kind]) for kind in VOCAB_KINDS}),
            shapes=SequenceShapes(**{key: int(shapes[key]) for key in _SEQUENCE_FIELDS}),
            candidates=Candidates(
                train=int(shapes["train_candidates"]),
                eval=int(shapes["eval_candidates"]),
                train_negative_pool=int(shapes.get("train_negative_pool", 0)),
            ),
            examples=None if examples is None else ExampleCounts(examples),
            cooccurrence=None
            if cooccurrence is None
            else CooccurrenceTables.from_block(cooccurrence, source),
            extra={
                key: value
                for key, value in manifest.items()
                if key not in fields or key in ("candidates", "extra")
            },
            **plain,
        )

    @classmethod
    def of(
        cls, manifest: "Mapping[str, Any] | DataSpec", source: str = MANIFEST_FILE
    ) -> "DataSpec":
        """`manifest` as a DataSpec: a DataSpec as it is, a dict through from_manifest (for
        callers that still pass the manifest dict around)."""
        return manifest if isinstance(manifest, DataSpec) else cls.from_manifest(manifest, source)

    def shapes_block(self) -> Dict[str, int]:
        """The manifest's `shapes`: sequence lengths and candidate counts."""
        block = {key: getattr(self.shapes, key) for key in _SEQUENCE_FIELDS}
        block["train_candidates"] = self.candidates.train
        block["eval_candidates"] = self.candidates.eval
        block["train_negative_pool"] = self.candidates.train_negative_pool
        return block

    def to_manifest(self) -> Dict[str, Any]:
        """Today's manifest.json layout (absent optional fields left out)."""
        manifest: Dict[str, Any] = {
            "vocab_sizes": self.vocab_sizes.as_dict(),
            "shapes": self.shapes_block(),
            "id_format": self.id_format,
        }
        if self.examples is not None:
            manifest["examples"] = {
                split: dict(counts) for split, counts in self.examples.by_split.items()
            }
        if self.cooccurrence is not None:
            manifest["cooccurrence"] = self.cooccurrence.as_dict()
        skip = {"vocab_sizes", "shapes", "candidates", "examples", "id_format", "extra"}
        skip.add("cooccurrence")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name not in skip and value is not None:
                manifest[field.name] = list(value) if field.name == "beam_args" else value
        manifest.update(self.extra)
        return manifest

    def to_json(self) -> str:
        """The file's text, as both writers have always written it."""
        return json.dumps(self.to_manifest(), indent=2, sort_keys=True)

    # --- local files (GCS and other file systems: the callers' own I/O with to_json) --------

    @classmethod
    def load(cls, data_dir: str) -> "DataSpec":
        path = os.path.join(data_dir, MANIFEST_FILE)
        with open(path, encoding="utf-8") as handle:
            return cls.from_manifest(json.load(handle), path)

    def write(self, data_dir: str) -> str:
        path = os.path.join(data_dir, MANIFEST_FILE)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json())
        return path
