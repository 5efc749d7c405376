"""Hyperparameter search with KerasTuner: learning rate, dropout, embedding size, negatives.

    python -m unisar_tf.tools.tune --data_dir out/beauty_q8 --out_dir out/tune \
        --validation_rows 5000 --max_trials 9 --max_epochs 3

Every trial trains one configuration (`--preset`, default `default`, plus `--set` overrides,
plus the trial's values) with the project's Trainer, into out_dir/trials/<trial id>/, and is
scored by its best epoch's validation mean NDCG@5 (the Trainer's validation score; KerasTuner
objective "validation_score", maximised). Only the training and validation splits are read:
the test split is left for the chosen configuration.

Searched (UniSARConfig fields; `--learning_rates`, `--dropouts`, `--embedding_dims`,
`--negatives` change the choices):
    learning_rate        3e-4, 1e-3, 3e-3
    dropout              0.0, 0.1, 0.2, 0.3 (the transformer blocks' dropout)
    embedding_dim        32, 64, 128 (each must be divisible by num_heads)
    num_train_negatives  4, 10, 20, each capped at the data's negative pool (the data job's
                         --train_negative_pool); not searched on data without a pool, which
                         trains with its fixed negatives

Records: KerasTuner's own files in out_dir (oracle.json, tuner0.json, trial_<id>/trial.json);
the runs in out_dir/trials/<id>/ (checkpoints, best.json, history.jsonl); search.json (the
settings) and tuning.{md,json} (the trials sorted by validation score, written after every
trial, and the `python -m unisar_tf.train` flags of the best one).

Repeatable: KerasTuner's random search oracle is seeded with --seed and its proposals do not
depend on the scores, and every trial trains with the same --seed, so the same command
proposes the same trials in the same order. (Not Bayesian optimisation: its later proposals
follow the measured scores, and KerasTuner needs scikit-learn for it.) Re-running the command
on the same out_dir resumes: finished trials are reused, not retrained, an interrupted trial
resumes from its last epoch's checkpoint, and a larger --max_trials adds trials; other
settings on the same out_dir are refused.

TFX: `tuner_fn(fn_args)` returns the same tuner for TFX's Tuner component (see its
docstring); the pipeline does not wire it in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import keras_tuner
import tensorflow as tf

from feature_specs.data_spec import DataSpec
from unisar_tf import logs
from unisar_tf.config import PRESETS, preset
from unisar_tf.data import reader
from unisar_tf.flags import comma_separated
from unisar_tf.tools.ablation import parse_set_overrides
from unisar_tf.train.evaluation import VALIDATION_METRIC
from unisar_tf.train.run_dir import BEST_FILE, HISTORY_FILE
from unisar_tf.train.trainer import Trainer, TrainerOptions

OBJECTIVE = "validation_score"  # the Trainer's: mean NDCG@5 over the tasks, validation split
# Hyperparameter (= UniSARConfig field and `python -m unisar_tf.train` flag) -> choices.
DEFAULT_SPACE: Dict[str, Tuple] = {
    "learning_rate": (3e-4, 1e-3, 3e-3),
    "dropout": (0.0, 0.1, 0.2, 0.3),
    "embedding_dim": (32, 64, 128),
    "num_train_negatives": (4, 10, 20),
}
SETTINGS_FILE = "search.json"
TRIALS_DIR = "trials"
# Settings that may change between runs on one out_dir (the rest must match search.json).
EXTENSIBLE = frozenset({"max_trials", "verbose", "out_dir", "data_dir", "transform_dir"})


@dataclasses.dataclass
class SearchSettings:
    data_dir: str
    out_dir: str
    preset: str = "default"
    base_overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    space: Dict[str, Sequence] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SPACE))
    max_trials: int = 9
    max_epochs: int = 3
    steps_per_epoch: Optional[int] = None
    validation_rows: Optional[int] = None
    seed: int = 0
    transform_dir: Optional[str] = None
    verbose: int = 1  # 0 silent, 1 a line per epoch, 2 also a progress bar


# ----------------------------------------------------------------------------- the space
def _config_values(overrides: Dict[str, Any]) -> Dict[str, Any]:
    """JSON values as UniSARConfig takes them (lists -> tuples)."""
    return {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in overrides.items()
    }


def search_space(
    settings: SearchSettings, manifest: "dict | DataSpec"
) -> Tuple[keras_tuner.HyperParameters, List[str]]:
    """(KerasTuner's space for these settings on this data, notes on what the data changed).

    Negatives are capped at the data's training negative pool (and dropped from the space
    without one); a bad choice (embedding size not divisible by num_heads, dropout outside
    [0, 1), ...) is a ValueError."""
    unknown = sorted(set(settings.space) - set(DEFAULT_SPACE))
    if unknown:
        raise ValueError(f"cannot search {unknown}: choose among {sorted(DEFAULT_SPACE)}")
    clash = sorted(set(settings.space) & set(settings.base_overrides))
    if clash:
        raise ValueError(f"{clash} are searched: set their choices, not a fixed override")
    if settings.seed < 0:
        raise ValueError(f"seed must be >= 0, got {settings.seed}")
    base = preset(settings.preset, seed=settings.seed, **_config_values(settings.base_overrides))
    notes: List[str] = []
    hyperparameters = keras_tuner.HyperParameters()
    for name, choices in settings.space.items():
        kind = float if name in ("learning_rate", "dropout") else int
        values = sorted({kind(value) for value in choices})
        if not values:
            raise ValueError(f"no choices for {name}")
        if name == "learning_rate" and values[0] <= 0:
            raise ValueError(f"learning rates must be > 0, got {values}")
        if name == "num_train_negatives":
            pool = DataSpec.of(manifest).candidates.train_negative_pool
            if not pool:
                notes.append(
                    "the data has no training negative pool: it trains with its fixed "
                    "negatives, so num_train_negatives is not searched"
                )
                continue
            capped = sorted({min(value, pool) for value in values})
            if capped != values:
                notes.append(
                    f"num_train_negatives {values} capped at the data's pool of "
                    f"{pool}: {capped}"
                )
            values = capped
        for value in values:  # the same checks as a training run's config
            base.replace(**{name: value})
        hyperparameters.Choice(name, values)
    return hyperparameters, notes


# --------------------------------------------------------------------------------- tuner
class UniSARTuner(keras_tuner.Tuner):
    """A KerasTuner Tuner whose trial is one Trainer run (run_trial returns the objective).

    KerasTuner's records go to settings.out_dir (its project directory); each trial's run to
    out_dir/trials/<trial id>, where the Trainer resumes it if it was cut short. The tables
    are rewritten after every trial and at the end of the search."""

    def __init__(self, settings: SearchSettings, manifest: Optional[dict] = None):
        self.settings = settings
        self.manifest = manifest or reader.load_manifest(settings.data_dir, settings.transform_dir)
        self.space, self.notes = search_space(settings, self.manifest)
        self.data_fingerprint = reader.data_identity(settings.data_dir, self.manifest)[
            "fingerprint"
        ]
        check_settings(settings, self.space, self.data_fingerprint)
        objective = keras_tuner.Objective(OBJECTIVE, direction="max")
        # KerasTuner draws a random seed for seed 0 (falsy): its seed is --seed + 1.
        oracle = keras_tuner.oracles.RandomSearchOracle(
            objective=objective,
            max_trials=settings.max_trials,
            seed=settings.seed + 1,
            hyperparameters=self.space,
            tune_new_entries=False,
            allow_new_entries=False,
        )
        out_dir = os.path.normpath(settings.out_dir)
        super().__init__(
            oracle=oracle,
            directory=os.path.dirname(out_dir) or ".",
            project_name=os.path.basename(out_dir),
        )
        self.oracle.verbose = settings.verbose
        write_settings(settings, self.space, self.data_fingerprint)

    def trial_dir(self, trial_id: str) -> str:
        return os.path.join(self.settings.out_dir, TRIALS_DIR, trial_id)

    def trial_config(self, values: Dict[str, Any]):
        settings = self.settings
        overrides = dict(_config_values(settings.base_overrides), **values)
        return preset(settings.preset, seed=settings.seed, **overrides)

    def run_trial(self, trial, *args, **kwargs) -> Dict[str, float]:
        settings = self.settings
        values = dict(trial.hyperparameters.values)
        options = TrainerOptions(
            data_dir=settings.data_dir,
            model_dir=self.trial_dir(trial.trial_id),
            max_epochs=settings.max_epochs,
            seed=settings.seed,
            steps_per_epoch=settings.steps_per_epoch,
            validation_rows=settings.validation_rows,
            transform_dir=settings.transform_dir,
            verbose=settings.verbose,
        )
        tf.keras.backend.clear_session()  # the previous trial's model
        try:
            summary = Trainer(self.trial_config(values), options).fit()
        except FloatingPointError as error:  # a diverged trial (too high a learning rate)
            raise keras_tuner.errors.FailedTrialError(str(error)) from error
        except Exception as error:  # a bug or unusable data: stop (the trial resumes later)
            raise keras_tuner.errors.FatalError(
                f"trial {trial.trial_id} ({values}): {type(error).__name__}: {error}"
            ) from error
        metrics = {OBJECTIVE: float(summary["validation_score"])}
        for task, task_metrics in summary["validation"].items():
            metrics[f"{task}_{VALIDATION_METRIC}"] = float(task_metrics[VALIDATION_METRIC])
        return metrics

    def on_trial_end(self, trial) -> None:
        super().on_trial_end(trial)
        self.write_report()

    def on_search_end(self) -> None:
        super().on_search_end()
        self.report = self.write_report()

    # -- the record ---------------------------------------------------------------------
    def rows(self) -> List[dict]:
        names = [hp.name for hp in self.space.space]
        return trial_rows(self.oracle, self.settings.out_dir, names)

    def write_report(self) -> dict:
        return write_report(self.settings, self.rows(), self.notes)


# ----------------------------------------------------------------------- settings record
def _settings_record(
    settings: SearchSettings, space: keras_tuner.HyperParameters, fingerprint: str
) -> dict:
    record = dataclasses.asdict(settings)
    record["space"] = {hp.name: list(hp.values) for hp in space.space}
    record["data_fingerprint"] = fingerprint
    return record


def check_settings(
    settings: SearchSettings, space: keras_tuner.HyperParameters, fingerprint: str
) -> None:
    """A ValueError if out_dir holds a search with other settings (KerasTuner would reload
    its old space silently): only max_trials may grow, and the data may move."""
    path = os.path.join(settings.out_dir, SETTINGS_FILE)
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as handle:
        recorded = json.load(handle)
    current = json.loads(json.dumps(_settings_record(settings, space, fingerprint)))
    differences = [
        f"{key}: {recorded.get(key)!r} there, {current.get(key)!r} now"
        for key in sorted(set(recorded) | set(current))
        if key not in EXTENSIBLE and recorded.get(key) != current.get(key)
    ]
    if differences:
        raise ValueError(
            f"{settings.out_dir} holds a search with other settings ("
            + "; ".join(differences)
            + "): use another --out_dir, or the same "
            "settings to continue that search"
        )


def write_settings(
    settings: SearchSettings, space: keras_tuner.HyperParameters, fingerprint: str
) -> None:
    tf.io.gfile.makedirs(settings.out_dir)
    with tf.io.gfile.GFile(os.path.join(settings.out_dir, SETTINGS_FILE), "w") as out:
        out.write(
            json.dumps(_settings_record(settings, space, fingerprint), indent=2, sort_keys=True)
        )


# --------------------------------------------------------------------------------- report
def _read_json_lines(path: str) -> List[dict]:
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def trial_rows(oracle, out_dir: str, names: Sequence[str]) -> List[dict]:
    """One row per trial of the oracle, best validation score first (unscored ones last):
    {"trial", "status", "values", "validation_score", "validation" {task: NDCG@5},
    "best_epoch", "epochs_run", "seconds" (training and validation, summed over resumes),
    "message"}."""
    rows = []
    for trial_id, trial in oracle.trials.items():
        run_dir = os.path.join(out_dir, TRIALS_DIR, trial_id)
        history = _read_json_lines(os.path.join(run_dir, HISTORY_FILE))
        best_path = os.path.join(run_dir, BEST_FILE)
        best = {}
        if tf.io.gfile.exists(best_path):
            with tf.io.gfile.GFile(best_path) as handle:
                best = json.load(handle)
        values = trial.hyperparameters.values
        # A failed trial's message is KerasTuner's traceback: its last line, less the class.
        message = (trial.message or "").strip().splitlines()
        message = [message[-1].split(": ", 1)[-1]] if message else []
        rows.append(
            {
                "trial": trial_id,
                "status": trial.status,
                "values": {name: values.get(name) for name in names},
                "validation_score": trial.score,
                "validation": {
                    task: metrics[VALIDATION_METRIC]
                    for task, metrics in best.get("validation", {}).items()
                },
                "best_epoch": best.get("epoch"),
                "epochs_run": len(history),
                "seconds": round(sum(entry.get("seconds", 0.0) for entry in history), 1),
                "message": message[-1] if message else "",
            }
        )
    rows.sort(
        key=lambda row: (
            row["validation_score"] is None,
            -(row["validation_score"] or 0.0),
            row["trial"],
        )
    )
    return rows


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_flag_value(item) for item in value)
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def train_flags(settings: SearchSettings, values: Dict[str, Any]) -> List[str]:
    """`python -m unisar_tf.train` flags that train the trial with these values as the search
    did (preset, seed, --set overrides, the values, the search's budget)."""
    flags = ["--preset", settings.preset, "--seed", str(settings.seed)]
    for name, value in dict(settings.base_overrides, **values).items():
        flags += [f"--{name}", _flag_value(value)]
    flags += ["--max_epochs", str(settings.max_epochs)]
    for name in ("steps_per_epoch", "validation_rows"):
        if getattr(settings, name) is not None:
            flags += [f"--{name}", str(getattr(settings, name))]
    return flags


def train_command(settings: SearchSettings, values: Dict[str, Any]) -> str:
    model_dir = os.path.join(settings.out_dir, "best")
    return " ".join(
        ["python -m unisar_tf.train", "--data_dir", settings.data_dir, "--model_dir", model_dir]
        + train_flags(settings, values)
    )


def _number(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def tuning_markdown(settings: SearchSettings, rows: List[dict], notes: Sequence[str]) -> str:
    names = list(rows[0]["values"]) if rows else list(settings.space)
    tasks = sorted({task for row in rows for task in row["validation"]})
    budget = (
        f"at most {settings.max_epochs} epochs"
        + (f" x {settings.steps_per_epoch} steps" if settings.steps_per_epoch else "")
        + ", validation on "
        + (
            f"the first {settings.validation_rows} rows per task"
            if settings.validation_rows
            else "the whole split"
        )
    )
    lines = [
        f"KerasTuner random search on `{settings.data_dir}` "
        f"({settings.preset} preset"
        + (
            f" + {json.dumps(settings.base_overrides, sort_keys=True)}"
            if settings.base_overrides
            else ""
        )
        + f", seed {settings.seed}, {budget}); score = validation mean NDCG@5 of the "
        "best epoch. The test split was not read.",
        "",
    ]
    lines += [f"Note: {note}." for note in notes] + ([""] if notes else [])
    lines += [
        "| trial | "
        + " | ".join(names)
        + " | validation score | "
        + "".join(f"{task} NDCG@5 | " for task in tasks)
        + "best epoch | epochs | seconds | status |",
        "|" + "---|" * (len(names) + len(tasks) + 6),
    ]
    for row in rows:
        status = row["status"] + (
            f" ({row['message']})" if row["status"] == "FAILED" and row["message"] else ""
        )
        lines.append(
            f"| {row['trial']} | "
            + " | ".join(
                _flag_value(row["values"][name]) if row["values"][name] is not None else "-"
                for name in names
            )
            + f" | {_number(row['validation_score'])} | "
            + "".join(f"{_number(row['validation'].get(task))} | " for task in tasks)
            + f"{row['best_epoch'] if row['best_epoch'] is not None else '-'} | "
            + f"{row['epochs_run']} | {row['seconds']:.0f} | {status} |"
        )
    best = next((row for row in rows if row["validation_score"] is not None), None)
    if best is not None:
        lines += [
            "",
            f"Best: trial {best['trial']} (validation score "
            f"{best['validation_score']:.4f}). To train it again:",
            "",
            f"    {train_command(settings, best['values'])}",
        ]
    return "\n".join(lines) + "\n"


def write_report(settings: SearchSettings, rows: List[dict], notes: Sequence[str]) -> dict:
    """Writes out_dir/tuning.{md,json}; returns the JSON's content."""
    best = next((row for row in rows if row["validation_score"] is not None), None)
    result = {
        "settings": dataclasses.asdict(settings),
        "notes": list(notes),
        "rows": rows,
        "best": None
        if best is None
        else {
            "trial": best["trial"],
            "values": best["values"],
            "validation_score": best["validation_score"],
            "train_flags": train_flags(settings, best["values"]),
            "command": train_command(settings, best["values"]),
        },
    }
    tf.io.gfile.makedirs(settings.out_dir)
    with tf.io.gfile.GFile(os.path.join(settings.out_dir, "tuning.md"), "w") as out:
        out.write(tuning_markdown(settings, rows, notes))
    with tf.io.gfile.GFile(os.path.join(settings.out_dir, "tuning.json"), "w") as out:
        out.write(json.dumps(result, indent=2, sort_keys=True))
    return result


# ------------------------------------------------------------------------------ entries
def run(settings: SearchSettings) -> dict:
    """Runs (or continues) the search; prints and returns the report (tuning.json's)."""
    tuner = UniSARTuner(settings)
    for note in tuner.notes:
        print(f"note: {note}", flush=True)
    tuner.search()
    report = tuner.report
    print(tuning_markdown(settings, report["rows"], report["notes"]))
    print(
        "written: "
        + ", ".join(os.path.join(settings.out_dir, name) for name in ("tuning.md", "tuning.json"))
    )
    return report


def examples_root(train_files: Sequence[str]) -> str:
    """A TFX Examples artifact's uri from its split pattern <uri>/Split-<name>/*: the data
    dir the project's reader reads (the artifact holds manifest.json and vocab/)."""
    split_dir = train_files[0].rstrip("*").rstrip("/")
    if not os.path.basename(split_dir).startswith("Split-"):
        raise ValueError(
            f"unexpected training file pattern {train_files[0]!r}: expected "
            "<examples uri>/Split-<name>/*, or set custom_config['data_dir']"
        )
    return os.path.dirname(split_dir)


def tuner_fn(fn_args):
    """TFX Tuner component's entry: the same search, returned as a TunerFnResult.

    The examples are read by the project's reader from a data dir: custom_config["data_dir"]
    if given, else the Examples artifact whose training split fn_args.train_files names (the
    pipeline's sequence-example artifact: <uri>/Split-train_rec/*; it holds manifest.json).
    The Transform graph (raw-id examples) is fn_args.transform_graph_path if the component
    has one. KerasTuner's records and the trial runs go to custom_config["out_dir"] if given
    (a lasting directory, so a later run resumes), else fn_args.working_dir (the executor's
    scratch directory). Other custom_config keys, all optional, as the command line's flags:
    preset, config_overrides {field: value}, space {hyperparameter: [choices]}, max_trials,
    max_epochs, steps_per_epoch, validation_rows, seed. The search needs no fit
    arguments (fit_kwargs is empty); TFX then writes the best trial's values
    (best_hyperparameters.txt).
    """
    from tfx import v1 as tfx  # only this entry needs TFX

    custom: Dict[str, Any] = dict(getattr(fn_args, "custom_config", None) or {})
    transform_dir = (
        getattr(fn_args, "transform_graph_path", None)
        or getattr(fn_args, "transform_output", None)
        or None
    )
    settings = SearchSettings(
        data_dir=custom.get("data_dir") or examples_root(fn_args.train_files),
        out_dir=custom.get("out_dir") or fn_args.working_dir,
        preset=custom.get("preset", "default"),
        base_overrides=dict(custom.get("config_overrides", {})),
        space=dict(custom.get("space", DEFAULT_SPACE)),
        max_trials=int(custom.get("max_trials", 9)),
        max_epochs=int(custom.get("max_epochs", 3)),
        steps_per_epoch=custom.get("steps_per_epoch"),
        validation_rows=custom.get("validation_rows"),
        seed=int(custom.get("seed", 0)),
        transform_dir=transform_dir,
        verbose=1,
    )
    return tfx.components.TunerFnResult(tuner=UniSARTuner(settings), fit_kwargs={})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data_dir", required=True, help="output of pipeline.build_examples")
    parser.add_argument(
        "--out_dir", required=True, help="KerasTuner's records, trials/<id>/ runs, tuning.{md,json}"
    )
    parser.add_argument(
        "--transform_dir",
        default=None,
        help="for data built with --id_format raw: its Transform graph",
    )
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the oracle's (as seed + 1) and every trial's training seed",
    )
    parser.add_argument("--max_trials", type=int, default=9)
    parser.add_argument(
        "--max_epochs",
        type=int,
        default=3,
        help="per trial (early stopping on validation may end it first)",
    )
    parser.add_argument(
        "--steps_per_epoch",
        type=int,
        default=None,
        help="cap on training steps per epoch; default: whole epoch",
    )
    parser.add_argument(
        "--validation_rows",
        type=int,
        default=None,
        help="validate on the first N rows per task; default: all",
    )
    space = parser.add_argument_group("the choices (comma-separated)")
    space.add_argument(
        "--learning_rates", type=comma_separated(float), default=DEFAULT_SPACE["learning_rate"]
    )
    space.add_argument("--dropouts", type=comma_separated(float), default=DEFAULT_SPACE["dropout"])
    space.add_argument(
        "--embedding_dims", type=comma_separated(int), default=DEFAULT_SPACE["embedding_dim"]
    )
    space.add_argument(
        "--negatives",
        type=comma_separated(int),
        default=DEFAULT_SPACE["num_train_negatives"],
        help="num_train_negatives, capped at the data's negative pool",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="fixed config override for every trial, "
        "e.g. --set batch_size=512 --set tower_units=[64,32]",
    )
    parser.add_argument(
        "--verbose", type=int, default=1, help="0 silent, 1 a line per epoch, 2 also a progress bar"
    )
    return parser


def parse_settings(argv: Optional[Sequence[str]] = None) -> SearchSettings:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        overrides = parse_set_overrides(args.overrides)
    except ValueError as error:
        parser.error(str(error))
    space = {
        "learning_rate": args.learning_rates,
        "dropout": args.dropouts,
        "embedding_dim": args.embedding_dims,
        "num_train_negatives": args.negatives,
    }
    return SearchSettings(
        data_dir=args.data_dir,
        out_dir=args.out_dir,
        preset=args.preset,
        base_overrides=overrides,
        space={name: list(values) for name, values in space.items()},
        max_trials=args.max_trials,
        max_epochs=args.max_epochs,
        steps_per_epoch=args.steps_per_epoch,
        validation_rows=args.validation_rows,
        seed=args.seed,
        transform_dir=args.transform_dir,
        verbose=args.verbose,
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    logs.setup([])  # the Trainer's progress lines; --verbose here is the Trainer's level
    settings = parse_settings(argv)
    # Each trial builds and traces its own model; TF's retracing warnings are expected here.
    tf.get_logger().setLevel("ERROR")
    try:
        run(settings)
    except (ValueError, keras_tuner.errors.FatalError) as error:
        build_parser().exit(1, f"unisar_tf.tools.tune: error: {error}\n")


if __name__ == "__main__":
    main()
