"""Build UniSAR sequence examples from raw logs: `python -m pipeline.build_examples --help`.

    python -m pipeline.build_examples --dataset amazon_beauty --output out/amazon_beauty
    python -m pipeline.build_examples --dataset kuaisar --input_dir /data/KuaiSAR --output ...
    python -m pipeline.build_examples --dataset event_log --events 'logs/*.csv' --output ...

Arguments this parser does not know are Beam pipeline options, e.g. `--runner=DataflowRunner
--project=... --region=... --temp_location=gs://...`; without `--runner` the job runs on the
DirectRunner with 2 worker processes. Prints the manifest when done.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence

from feature_specs import example_schema as fs
from pipeline import beam_job, cooccurrence_tables
from pipeline import sequence_builder as sb
from pipeline.adapters import amazon, registry
from unisar_tf import logs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SHARED_DATA = amazon.DEFAULT_SHARED_DATA


def _dataset_defaults_help(field: str) -> str:
    """e.g. "default: loo for amazon, event_log; time for kuaisar", from the registry."""
    by_value = {}
    for name, adapter in sorted(registry.adapters().items()):
        value = adapter.defaults.get(field, getattr(sb.BuildOptions, field))
        by_value.setdefault(value, []).append(name)
    return "default: " + "; ".join(
        f"{value} for {', '.join(names)}" for value, names in by_value.items()
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--dataset", required=True, choices=sorted(registry.adapters()))
    parser.add_argument("--output", required=True, help="output directory (local or gs://...)")
    # The adapters' own flags (pipeline/adapters/registry.py), in their --help sections.
    groups = {registry.INPUTS_GROUP: parser.add_argument_group(registry.INPUTS_GROUP)}
    for flag in registry.input_flags():
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        flag.add_to(groups[flag.group])
    build = parser.add_argument_group("example construction")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument(
        "--split",
        choices=("loo", "time"),
        help=_dataset_defaults_help("split"),
    )
    build.add_argument(
        "--strict_holdout",
        action="store_true",
        help="training histories never contain a validation/test behaviour",
    )
    build.add_argument("--min_rec_history", type=int, default=1)
    build.add_argument("--min_search_history", type=int, default=1)
    build.add_argument(
        "--negative_sampler", choices=("popularity", "uniform"), default="popularity"
    )
    build.add_argument("--num_train_negatives", type=int, default=4)
    build.add_argument("--num_eval_negatives", type=int, default=99)
    build.add_argument(
        "--train_negative_pool",
        type=int,
        default=0,
        help="also write K negatives per training example (negative_pool) for "
        "fresh negatives every epoch; 0 = off",
    )
    build.add_argument("--rec_len", type=int, default=30)
    build.add_argument("--search_len", type=int, default=30)
    build.add_argument("--query_len", type=int, default=50)
    build.add_argument(
        "--clicks_per_session", type=int, help=_dataset_defaults_help("clicks_per_session")
    )
    build.add_argument(
        "--max_users",
        type=int,
        default=0,
        help="keep a seeded subset of this many users (0 = all), for quick runs",
    )
    build.add_argument(
        "--max_rows_per_file",
        type=int,
        default=0,
        help="read only the first N data rows (Amazon: user lines) of each input "
        "file, for quick runs; the rest are counted, not used (0 = all)",
    )
    build.add_argument(
        "--num_shards",
        type=int,
        default=0,
        help="TFRecord shards per split and scenario, each holding the examples of one "
        "shard of the users (0 = one per 4,000 users); the files are the same on every "
        "run either way",
    )
    build.add_argument(
        "--cooccurrence_top_k",
        type=int,
        default=cooccurrence_tables.DEFAULT_TOP_K,
        help="neighbours kept per item in the co-occurrence tables the job writes for the "
        "Trainer (cooccurrence/; 0 = all)",
    )
    build.add_argument(
        "--id_format",
        choices=fs.ID_FORMATS,
        default=fs.ID_FORMAT_IDS,
        help="id features as int64 ids of the job's vocab/*.txt (ids) or as the "
        "raw id strings, b'' for padding, for TF Transform to map (raw)",
    )
    build.add_argument(
        "--layout",
        choices=beam_job.LAYOUTS,
        default=beam_job.LAYOUT_JOB,
        help="example files as <split>/<scenario>-*.tfrecord.gz (job) or as a "
        "TFX Examples artifact's Split-<split>_<scenario>/ (tfx)",
    )
    build.add_argument(
        "--allow_fewer_outputs",
        action="store_true",
        help="replace an earlier output in --output even when this run builds "
        "no example for a split and scenario it has (the run fails otherwise, "
        "keeping it); recorded as fewer_outputs_than_previous in the manifest",
    )
    logs.add_verbose_flag(parser)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None):
    return _parser().parse_known_args(argv)


def _actions() -> dict:
    """dest -> argparse action of every flag (argparse has no public list of them)."""
    return {action.dest: action for action in _parser()._actions if action.dest != "help"}


def flag_names() -> list:
    """Every flag's name as in args_from_values, e.g. "max_users"."""
    return sorted(_actions())


def args_from_values(values: Mapping[str, Any]) -> argparse.Namespace:
    """The parsed arguments for flag values by name (e.g. {"dataset": "kuaisar", "seed": 3}),
    checked as the parser checks a command line, without one: the SequenceExampleGen
    component's path. ValueError names an unknown flag or a bad value."""
    actions = _actions()
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise ValueError(f"unknown options {unknown}; known: {sorted(actions)}")
    args = argparse.Namespace(**{dest: action.default for dest, action in actions.items()})
    for name, value in values.items():
        setattr(args, name, _checked_value(actions[name], name, value))
    missing = [dest for dest, action in actions.items() if action.required and dest not in values]
    if missing:
        raise ValueError(f"options {missing} are required")
    return args


def _checked_value(action: argparse.Action, name: str, value: Any) -> Any:
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r}: expected True or False")
        return value
    if action.nargs in ("+", "*"):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or (action.nargs == "+" and not items):
            raise ValueError(f"{name}={value!r}: expected a list of values")
        return [_checked_value(_one_value(action), name, item) for item in items]
    if isinstance(value, (bool, list, tuple, dict)):
        raise ValueError(
            f"{name}={value!r}: expected one {getattr(action.type, '__name__', 'str')}"
        )
    try:  # as from a command line: the value's text, by the flag's type
        converted = action.type(str(value)) if action.type else str(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}={value!r}: {error}") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(repr, action.choices))
        raise ValueError(f"{name}={value!r}: invalid choice (choose from {choices})")
    return converted


def _one_value(action: argparse.Action) -> argparse.Action:
    return argparse.Action(
        action.option_strings, action.dest, type=action.type, choices=action.choices
    )


def adapter_inputs(args):
    """(inputs record, read function) of the parsed arguments' dataset; SystemExit with the
    missing flag when the dataset's inputs are not given."""
    adapter = registry.get(args.dataset)
    try:
        return adapter.inputs(vars(args)), adapter.read
    except registry.MissingInputs as error:
        raise SystemExit(str(error)) from None


def build_options(args) -> sb.BuildOptions:
    defaults = registry.get(args.dataset).defaults
    return sb.BuildOptions(
        seed=args.seed,
        split=args.split or defaults.get("split", sb.BuildOptions.split),
        strict_holdout=args.strict_holdout,
        min_rec_history=args.min_rec_history,
        min_search_history=args.min_search_history,
        num_train_negatives=args.num_train_negatives,
        num_eval_negatives=args.num_eval_negatives,
        negative_sampler=args.negative_sampler,
        rec_len=args.rec_len,
        search_len=args.search_len,
        query_len=args.query_len,
        clicks_per_session=args.clicks_per_session
        or defaults.get("clicks_per_session", sb.BuildOptions.clicks_per_session),
        max_users=args.max_users,
        train_negative_pool=args.train_negative_pool,
        id_format=args.id_format,
    )


@dataclasses.dataclass(frozen=True)
class Job:
    """One run of the data job, typed: what run() needs."""

    adapter: str  # a registered adapter's name (pipeline/adapters/registry.py)
    inputs: Any  # that adapter's inputs record
    options: sb.BuildOptions
    output: str
    num_shards: int = 0
    layout: str = beam_job.LAYOUT_JOB
    allow_fewer_outputs: bool = False
    cooccurrence_top_k: int = cooccurrence_tables.DEFAULT_TOP_K


def job(args) -> Job:
    """The job of parsed arguments; registry.MissingInputs when the dataset's inputs are not
    given, ValueError on inconsistent options."""
    if args.cooccurrence_top_k < 0:
        raise ValueError(
            f"--cooccurrence_top_k {args.cooccurrence_top_k}: expected 0 (keep all) or more"
        )
    return Job(
        adapter=args.dataset,
        inputs=registry.get(args.dataset).inputs(vars(args)),
        options=build_options(args),
        output=args.output,
        num_shards=args.num_shards,
        layout=args.layout,
        allow_fewer_outputs=args.allow_fewer_outputs,
        cooccurrence_top_k=args.cooccurrence_top_k,
    )


def run(job: Job, beam_args: Sequence[str]) -> dict:
    """Runs the job with exactly these Beam args; returns the manifest. The TFX component
    (pipeline/components/sequence_example_gen.py) calls it."""
    read = registry.get(job.adapter).read
    return beam_job.run(
        lambda pipeline: read(pipeline, job.inputs),
        job.options,
        job.output,
        dataset=job.adapter,
        inputs=describe_inputs(job.inputs),
        beam_args=beam_args,
        num_shards=job.num_shards,
        layout=job.layout,
        allow_fewer_outputs=job.allow_fewer_outputs,
        cooccurrence_top_k=job.cooccurrence_top_k,
    )


def main(argv: Optional[Sequence[str]] = None) -> dict:
    logs.setup(argv)
    args, beam_args = parse_args(argv)
    if not any(arg.startswith("--runner") for arg in beam_args):
        beam_args = list(beam_job.DEFAULT_LOCAL_BEAM_ARGS) + list(beam_args)
    manifest = run_job(args, beam_args)
    print(json.dumps(manifest, indent=2, sort_keys=True))
    print(f"\nexamples and manifest in {args.output}", file=sys.stderr)
    return manifest


def run_job(args, beam_args: Sequence[str]) -> dict:
    """Runs the job for parsed arguments (parse_args) with exactly these Beam args; returns
    the manifest. What main() does without the logging set-up, defaults and printing."""
    try:
        parsed = job(args)
    except registry.MissingInputs as error:
        raise SystemExit(str(error)) from None
    return run(parsed, beam_args)


def describe_inputs(inputs) -> dict:
    """The inputs record as JSON-ready values (tuples as lists, as the manifest stores them)."""
    return json.loads(
        json.dumps({name: getattr(inputs, name) for name in inputs.__dataclass_fields__})
    )


if __name__ == "__main__":
    main()
