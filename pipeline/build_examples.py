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
import json
import os
import sys
from typing import Optional, Sequence

from feature_specs import example_schema as fs
from pipeline import beam_job
from pipeline import sequence_builder as sb
from pipeline.adapters import amazon, event_log, kuaisar
from unisar_tf import logs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")

# Per dataset: the split and clicks per session the spec prescribes (sections 2 and 11).
DATASET_DEFAULTS = {
    "amazon_beauty": {"split": "loo", "clicks_per_session": 1},
    "amazon": {"split": "loo", "clicks_per_session": 1},
    "kuaisar": {"split": "time", "clicks_per_session": 5},
    "event_log": {"split": "loo", "clicks_per_session": 5},
}


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--dataset", required=True, choices=sorted(DATASET_DEFAULTS))
    parser.add_argument("--output", required=True, help="output directory (local or gs://...)")
    data = parser.add_argument_group("inputs")
    data.add_argument(
        "--data_root",
        default=DEFAULT_SHARED_DATA,
        help="folder holding amazon_beauty/ (for --dataset amazon_beauty)",
    )
    data.add_argument("--sequences", help="amazon: the 'user item item ...' sequences file")
    data.add_argument("--attributes", help="amazon: the item -> attribute ids JSON")
    data.add_argument(
        "--input_dir",
        help="kuaisar: folder with rec_inter.csv, src_inter.csv, "
        "and optionally user_features.csv, item_features.csv",
    )
    data.add_argument("--events", nargs="+", help="event_log: CSV/Parquet files or globs")
    amazon_group = parser.add_argument_group("amazon semi-synthetic search (docs/data.md)")
    amazon_group.add_argument("--search_fraction", type=float, default=0.5)
    amazon_group.add_argument("--query_min_item_frequency", type=int, default=100)
    build = parser.add_argument_group("example construction")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument(
        "--split",
        choices=("loo", "time"),
        help="default: time for kuaisar, leave-one-out otherwise",
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
    build.add_argument("--clicks_per_session", type=int, help="default: 1 for amazon, 5 otherwise")
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
        help="TFRecord shards per split and scenario (0 = one per 10,000 examples); "
        "the files are the same on every run either way",
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
    return parser.parse_known_args(argv)


def adapter_inputs(args):
    """(inputs record, read function) of the parsed arguments' dataset; SystemExit with the
    missing flag when the dataset's inputs are not given."""
    if args.dataset in ("amazon_beauty", "amazon"):
        if args.dataset == "amazon_beauty":
            root = os.path.join(args.data_root, "amazon_beauty")
            sequences = args.sequences or os.path.join(root, "Beauty.txt")
            attributes = args.attributes or os.path.join(root, "Beauty_item2attributes.json")
        else:
            if not (args.sequences and args.attributes):
                raise SystemExit("--dataset amazon needs --sequences and --attributes")
            sequences, attributes = args.sequences, args.attributes
        inputs = amazon.AmazonInputs(
            sequences=sequences,
            attributes=attributes,
            search_fraction=args.search_fraction,
            query_min_item_frequency=args.query_min_item_frequency,
            seed=args.seed,
            max_rows_per_file=args.max_rows_per_file,
        )
        return inputs, amazon.read
    if args.dataset == "kuaisar":
        if not args.input_dir:
            raise SystemExit("--dataset kuaisar needs --input_dir")
        return (
            kuaisar.KuaiSARInputs.from_dir(args.input_dir, args.max_rows_per_file),
            kuaisar.read,
        )
    if not args.events:
        raise SystemExit("--dataset event_log needs --events")
    return (
        event_log.EventLogInputs(
            events=tuple(args.events), max_rows_per_file=args.max_rows_per_file
        ),
        event_log.read,
    )


def build_options(args) -> sb.BuildOptions:
    defaults = DATASET_DEFAULTS[args.dataset]
    return sb.BuildOptions(
        seed=args.seed,
        split=args.split or defaults["split"],
        strict_holdout=args.strict_holdout,
        min_rec_history=args.min_rec_history,
        min_search_history=args.min_search_history,
        num_train_negatives=args.num_train_negatives,
        num_eval_negatives=args.num_eval_negatives,
        negative_sampler=args.negative_sampler,
        rec_len=args.rec_len,
        search_len=args.search_len,
        query_len=args.query_len,
        clicks_per_session=args.clicks_per_session or defaults["clicks_per_session"],
        max_users=args.max_users,
        train_negative_pool=args.train_negative_pool,
        id_format=args.id_format,
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
    the manifest. What main() does without the logging set-up, defaults and printing; the
    TFX component (pipeline/components/sequence_example_gen.py) calls it."""
    inputs, read = adapter_inputs(args)
    return beam_job.run(
        lambda pipeline: read(pipeline, inputs),
        build_options(args),
        args.output,
        dataset=args.dataset,
        inputs=describe_inputs(inputs),
        beam_args=beam_args,
        num_shards=args.num_shards,
        layout=args.layout,
        allow_fewer_outputs=args.allow_fewer_outputs,
    )


def describe_inputs(inputs) -> dict:
    """The inputs record as JSON-ready values (tuples as lists, as the manifest stores them)."""
    return json.loads(
        json.dumps({name: getattr(inputs, name) for name in inputs.__dataclass_fields__})
    )


if __name__ == "__main__":
    main()
