"""Train UniSAR on the data job's TFRecords, then report test metrics of the best checkpoint.

    python -m unisar_tf.train --data_dir out/amazon_beauty --model_dir out/models/unisar
    python -m unisar_tf.train ... --preset kuaisar --learning_rate 5e-4 --use_s2r false
    python -m unisar_tf.train ... --architecture sasrec --embedding_dim 50 --num_layers 2

`--architecture sasrec` trains the SASRec baseline (unisar_tf.sasrec) on the rec task
(`--tasks` defaults to rec for it). A UniSAR run with the rec task also trains SASRec beside
it (model_dir/baselines/SASRec, unisar_tf.train.learned_baseline), so that the test report has the
learned baseline next to the non-learned ones; `--sasrec_baseline false` skips it.

Every UniSARConfig field is a flag (`--tower_units 128,64`, booleans as true/false) except
the vocabulary sizes and sequence shapes, which come from the data's manifest. Re-running
with the same --model_dir resumes from the last finished epoch (on the same data and with the
same settings only: a model_dir trained on other data, or asked for other hyperparameters
than it was trained with, is refused, listing them; --max_epochs may change). One run per
--model_dir at a time: a second one fails at once naming the first (pid, host). Data with one
scenario trains that task.
"""

from __future__ import annotations

import argparse
import os
import typing
from typing import Any, Dict, List, Optional

import tensorflow as tf

from feature_specs.layout import VOCAB_DIR
from unisar_tf import logs
from unisar_tf.config import PRESETS, UniSARConfig, preset
from unisar_tf.data import reader

# The command line is an entry point: it also exports (--serving_dir), above train/.
from unisar_tf.export.push import push
from unisar_tf.export.retrieval import retrieval_writer
from unisar_tf.flags import comma_separated
from unisar_tf.train.distribution import STRATEGIES, cluster_tasks
from unisar_tf.train.evaluation import evaluate_best, report_markdown
from unisar_tf.train.learned_baseline import train_sasrec
from unisar_tf.train.run_dir import DataMismatchError, SettingsMismatchError, load_trained_model
from unisar_tf.train.run_lock import RunDirLockedError
from unisar_tf.train.trainer import Trainer, TrainerOptions

# --seed sets both the trainer's and the config's seed; the data facts (DataFacts: table
# sizes, shapes) come from the data, not from flags.
NOT_FLAGS = frozenset({"seed"})


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per tunable UniSARConfig field, default None (= the preset's value)."""
    group = parser.add_argument_group("model hyperparameters (default: the preset's value)")
    for name, hint in UniSARConfig.field_types().items():
        if name in NOT_FLAGS:
            continue
        if hint is bool:
            kind, metavar = _parse_bool, "true|false"
        elif hint in (int, float, str):
            kind, metavar = hint, hint.__name__.upper()
        elif typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            kind, metavar = comma_separated(item), "A,B,..."
        else:  # pragma: no cover - a new field type needs a parser here
            raise TypeError(f"no command-line parser for UniSARConfig.{name}: {hint}")
        group.add_argument(f"--{name}", type=kind, default=None, metavar=metavar)


def config_from_args(args: argparse.Namespace) -> UniSARConfig:
    overrides = {
        name: getattr(args, name)
        for name in UniSARConfig.field_types()
        if name not in NOT_FLAGS and getattr(args, name, None) is not None
    }
    if overrides.get("architecture") == "sasrec":
        overrides.setdefault("tasks", ("rec",))  # SASRec is a rec-only model
    return preset(args.preset, seed=args.seed, **overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data_dir", required=True, help="output of pipeline.build_examples")
    parser.add_argument("--model_dir", required=True, help="checkpoints, logs and reports")
    parser.add_argument(
        "--transform_dir",
        default=None,
        help="for data built with --id_format raw: the Transform graph that "
        "maps its raw ids (python -m pipeline.transform_module)",
    )
    parser.add_argument(
        "--preset",
        default="default",
        choices=sorted(PRESETS),
        help="default: the tuned configuration; paper: spec 10's Amazon values",
    )
    parser.add_argument("--max_epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--steps_per_epoch",
        type=int,
        default=None,
        help="cap on steps per epoch (quick runs); default: whole epoch",
    )
    parser.add_argument(
        "--validation_rows",
        type=int,
        default=None,
        help="validate on the first N rows per task; default: all",
    )
    parser.add_argument(
        "--fresh_negatives",
        type=_parse_bool,
        default=True,
        help="draw training negatives from the data's pool every epoch",
    )
    parser.add_argument(
        "--skip_test", action="store_true", help="do not score the test split after training"
    )
    parser.add_argument(
        "--sasrec_baseline",
        type=_parse_bool,
        default=True,
        help="also train the SASRec baseline (model_dir/baselines/SASRec) for "
        "the test report; only for a UniSAR run with the rec task",
    )
    parser.add_argument(
        "--sasrec_max_epochs",
        type=int,
        default=None,
        help="the SASRec baseline's epoch budget (default: its own, "
        "config.SASREC_MAX_EPOCHS; early stopping ends it first)",
    )
    parser.add_argument(
        "--inter_op_threads",
        type=int,
        default=0,
        help="TF inter-op threads (0: TF's default); on 2 CPU cores, 2 inter x "
        "1 intra ran 1.24x faster (docs/benchmarks.md)",
    )
    parser.add_argument(
        "--intra_op_threads", type=int, default=0, help="TF intra-op threads (0: TF's default)"
    )
    parser.add_argument(
        "--serving_dir",
        default=None,
        help="also export the best checkpoint as <serving_dir>/unisar/<next "
        "version> with the serving signatures (unisar_tf.export)",
    )
    parser.add_argument("--quiet", action="store_true", help="one line per epoch, no progress bar")
    parser.add_argument(
        "--distribution",
        default="auto",
        choices=STRATEGIES,
        help="tf.distribute strategy (unisar_tf/train/distribution.py): auto = "
        "multi_worker under a TF_CONFIG cluster, mirrored with several "
        "GPUs, else default (one device)",
    )
    logs.add_verbose_flag(parser)
    add_config_flags(parser)
    return parser


# What a step fails with when a peer worker is gone (aborted or timed-out collectives).
PEER_FAILURES = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
)


def wants_sasrec_baseline(args: argparse.Namespace, config: UniSARConfig) -> bool:
    """SASRec is trained beside a UniSAR run that has the rec task and a test report."""
    return (
        args.sasrec_baseline
        and not args.skip_test
        and config.architecture != "sasrec"
        and "rec" in config.model.tasks
    )


def run(args: argparse.Namespace) -> Dict[str, Any]:
    # Before any op runs: the thread pools are fixed once TF's runtime starts.
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    config = config_from_args(args)
    options = TrainerOptions(
        data_dir=args.data_dir,
        model_dir=args.model_dir,
        max_epochs=args.max_epochs,
        seed=args.seed,
        steps_per_epoch=args.steps_per_epoch,
        validation_rows=args.validation_rows,
        fresh_negatives=args.fresh_negatives,
        transform_dir=args.transform_dir,
        verbose=1 if args.quiet else 2,
        distribution=args.distribution,
    )
    trainer = Trainer(config, options)
    with trainer.run_dir_lock():  # the whole run: training, SASRec, report, export
        return _train_and_report(args, config, options, trainer)


def _train_and_report(
    args: argparse.Namespace, config: UniSARConfig, options: TrainerOptions, trainer: Trainer
) -> Dict[str, Any]:
    summary = trainer.fit()
    print(
        f"best validation epoch {summary['epoch']} of {summary['epochs_run']} "
        f"(mean NDCG@5 {summary['validation_score']:.4f})"
        + ("; stopped early" if summary["stopped_early"] else ""),
        flush=True,
    )
    result: Dict[str, Any] = {"training": summary}
    if wants_sasrec_baseline(args, config):
        print("training the SASRec baseline for the report", flush=True)
        sasrec = train_sasrec(options, args.preset, args.sasrec_max_epochs)
        if sasrec is not None:
            print(
                f"SASRec: best validation epoch {sasrec['epoch']} of {sasrec['epochs_run']} "
                f"(NDCG@5 {sasrec['validation_score']:.4f})",
                flush=True,
            )
            result["sasrec_training"] = sasrec
    if not trainer.role.is_chief:  # the chief alone reports and exports
        return result
    if not args.skip_test:
        report = evaluate_best(args.model_dir, args.data_dir, "test")
        print(report_markdown(report))
        print(f"report: {os.path.join(args.model_dir, 'eval', 'test_metrics.md')}")
        result["test"] = report
    if args.serving_dir:
        vocab_dir = None if args.transform_dir else os.path.join(args.data_dir, VOCAB_DIR)
        # The retrieval index (candidates for requests without any) ships with the model.
        path = push(
            load_trained_model(args.model_dir, args.data_dir),
            vocab_dir,
            args.serving_dir,
            transform_dir=args.transform_dir,
            extra_writers=[retrieval_writer(args.data_dir)],
        )
        print(f"exported: {path}")
        result["export"] = path
    return result


def main(argv: Optional[List[str]] = None) -> None:
    logs.setup(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    # Before anything is written: a bad count would create the run folder, then fail there.
    for name in ("max_epochs", "steps_per_epoch", "validation_rows", "sasrec_max_epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    try:  # an inconsistent set of flags is a usage error, not a traceback
        config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    try:
        run(args)
    except (
        DataMismatchError,  # another dataset's model_dir, a task the data lacks
        SettingsMismatchError,  # resuming with other hyperparameters
        RunDirLockedError,  # another trainer on the same model_dir
        reader.ManifestMismatchError,  # a manifest of other files
        reader.CorruptExampleFileError,
    ) as error:  # a truncated or corrupted file
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    except PEER_FAILURES as error:
        if cluster_tasks() < 2:
            raise
        # MultiWorkerMirroredStrategy aborts the collectives when a peer stops answering.
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        parser.exit(
            1,
            f"{parser.prog}: error: a worker of the cluster stopped ({reason}); "
            f"the last checkpoint in {args.model_dir}/checkpoints is kept: start "
            "every worker again to resume from it\n",
        )


if __name__ == "__main__":
    main()
