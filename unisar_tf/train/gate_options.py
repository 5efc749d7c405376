"""The blessing gate's settings: their one definition, with defaults and meaning.

    options = GateOptions(min_improvement=0.01)        # the rest: defaults
    gate.decide(model_scores, comparators, options)     # the rule (gate.py)
    options.to_dict()        # RankingEvaluator's execution properties; the report's settings
    GateOptions.from_dict({"confidence": 0.9})          # names checked, values typed
    GateOptions.add_arguments(parser)                   # --min_improvement ... --gate_seed
    GateOptions.from_args(parser.parse_args(argv))

Everything else reads this class: the gate's functions take their defaults from `DEFAULTS`,
RankingEvaluator's parameters are these fields, `create_pipeline` takes one inside
`PipelineOptions.gate`, the runners' flags are registered here, and docs/pipeline.md's table
lists the same fields. Standard library only (no numpy, no TensorFlow), so a runner can
register the flags without importing the model stack.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict, Mapping, Optional


def _setting(default, doc: str, flag: Optional[str] = None):
    """A field with its one-line meaning (the flags' help) and, when it is not --<name>,
    its command-line flag."""
    return dataclasses.field(default=default, metadata={"doc": doc, "flag": flag})


@dataclasses.dataclass(frozen=True)
class GateOptions:
    """How clearly the model must beat every comparator on every task to be blessed."""

    min_improvement: float = _setting(
        0.0,
        "absolute NDCG@10 difference the model must exceed against random, every "
        "baseline and the last blessed model, on each task (TFX's absolute change threshold)",
    )
    min_relative_improvement: float = _setting(
        0.0,
        "... and this fraction of the comparator's NDCG@10 (TFX's relative change "
        "threshold; 0: off)",
    )
    confidence: float = _setting(
        0.95,
        "level of the one-sided paired-bootstrap lower bound on the difference that "
        "must be above 0 (0: no noise test)",
    )
    bootstrap_samples: int = _setting(1000, "bootstrap resamples per comparison")
    seed: int = _setting(0, "the bootstrap's seed (a decision replays exactly)", flag="--gate_seed")

    def __post_init__(self):
        # Each value in its field's type (the default's): 1 -> 1.0, "0.5" -> 0.5, 3.0 -> 3.
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, type(field.default)(getattr(self, field.name)))

    def to_dict(self) -> Dict[str, Any]:
        """{name: value}, in field order: RankingEvaluator's execution properties, the
        report's `settings`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls, values: Optional[Mapping[str, Any]], base: Optional["GateOptions"] = None
    ) -> "GateOptions":
        """`base` (default: the defaults) with `values` by name, e.g. a to_dict() or a
        pipeline's execution properties; an unknown name is a ValueError naming it."""
        values = dict(values or {})
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown gate option(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(base or cls(), **values)

    @classmethod
    def from_legacy(
        cls,
        min_improvement: Optional[float] = None,
        gate_options: Optional[Mapping[str, Any]] = None,
    ) -> "GateOptions":
        """The options of create_pipeline's former keywords: the defaults, then
        `min_improvement`, then `gate_options` by name."""
        base = cls() if min_improvement is None else cls(min_improvement=min_improvement)
        return cls.from_dict(gate_options, base)

    @staticmethod
    def _flag(field: dataclasses.Field) -> str:
        return field.metadata["flag"] or f"--{field.name}"

    @classmethod
    def add_arguments(cls, parser) -> None:
        """One flag per field (a parser or an argument group), its default and help from
        the field."""
        for field in dataclasses.fields(cls):
            parser.add_argument(
                cls._flag(field),
                type=type(field.default),
                default=field.default,
                help=field.metadata["doc"],
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "GateOptions":
        """The options of the flags add_arguments registered."""
        return cls(
            **{field.name: getattr(args, cls._flag(field)[2:]) for field in dataclasses.fields(cls)}
        )


# The defaults, for the gate's functions that take single settings.
DEFAULTS = GateOptions()
