"""The build, training and blessing-gate options every runner takes (local.py, kubeflow.py):
one definition, so a pipeline compiled for Kubeflow trains and gates as the local one would.

    parser = argparse.ArgumentParser()
    add_pipeline_options(parser)
    args = parser.parse_args(argv)
    options = pipeline_options(parser, args)  # create_pipeline's PipelineOptions

The gate's flags (--min_improvement, --min_relative_improvement, --confidence,
--bootstrap_samples, --gate_seed) are GateOptions' fields (unisar_tf/train/gate_options.py),
registered and read there.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, Sequence

from unisar_tf.train.gate_options import GateOptions


def option_value(text: str):
    """--build_option / --train_option values: JSON when they parse (numbers, true/false,
    lists), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """--max_users, --build_option, --beam_arg; the training and blessing-gate groups."""
    parser.add_argument(
        "--max_users",
        type=int,
        default=0,
        help="build examples for a seeded subset of N users (0 = all)",
    )
    parser.add_argument(
        "--build_option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a build_examples flag, repeatable, e.g. train_negative_pool=20",
    )
    parser.add_argument(
        "--beam_arg",
        action="append",
        default=[],
        help="a Beam pipeline option, repeatable, e.g. " "--beam_arg=--runner=DataflowRunner",
    )
    training = parser.add_argument_group("training (pipeline/trainer_module.py)")
    training.add_argument(
        "--preset", default="default", choices=("default", "paper", "amazon", "kuaisar")
    )
    training.add_argument("--max_epochs", type=int, default=100)
    training.add_argument("--steps_per_epoch", type=int, default=None)
    training.add_argument("--validation_rows", type=int, default=None)
    training.add_argument(
        "--train_option",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a UniSARConfig field, repeatable, " "e.g. batch_size=256",
    )
    training.add_argument(
        "--sasrec_max_epochs",
        type=int,
        default=None,
        help="epochs of SASRecTrainer, the learned rec baseline the "
        "evaluator reports and gates against (default: SASRec's own "
        "budget, early stopping ends it first; 0: no SASRecTrainer)",
    )
    resources = parser.add_argument_group(
        "Trainer resources on Kubeflow (KFP platform config; both Trainers)"
    )
    resources.add_argument("--trainer_cpu", type=float, default=None, help="vCPUs")
    resources.add_argument("--trainer_memory_gb", type=float, default=None, help="memory, GB")
    resources.add_argument("--trainer_accelerator_type", default=None, help="e.g. NVIDIA_TESLA_T4")
    resources.add_argument("--trainer_accelerator_count", type=int, default=None)
    vertex = parser.add_argument_group(
        "Trainers as Vertex AI training jobs (TFX's Google Cloud trainer extension)"
    )
    vertex.add_argument(
        "--vertex_project",
        default=None,
        help="set to train on Vertex AI, in this Google Cloud project",
    )
    vertex.add_argument("--vertex_region", default="us-central1")
    vertex.add_argument(
        "--vertex_workers",
        type=int,
        default=1,
        help="replicas: 1 chief + N-1 workers, MultiWorkerMirroredStrategy",
    )
    vertex.add_argument("--vertex_machine_type", default="n1-standard-8")
    vertex.add_argument("--vertex_accelerator_type", default="", help="e.g. NVIDIA_TESLA_T4")
    vertex.add_argument("--vertex_accelerator_count", type=int, default=0)
    vertex.add_argument(
        "--vertex_image",
        default=None,
        help="the training image (the Kubeflow runner's --image by default)",
    )
    GateOptions.add_arguments(
        parser.add_argument_group(
            "blessing gate (unisar_tf/train/gate_options.py, docs/pipeline.md)"
        )
    )


def assignments(parser: argparse.ArgumentParser, items: Sequence[str], flag: str) -> Dict[str, Any]:
    """["name=value", ...] -> {name: value}; values as in option_value."""
    parsed = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"{flag} {item!r}: expected NAME=VALUE")
        parsed[name] = option_value(value)
    return parsed


def pipeline_options(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """create_pipeline's PipelineOptions (build, training, Kubeflow resources, Vertex AI
    training and the gate) from the options add_pipeline_options defined."""
    from pipeline.tfx_pipeline import PipelineOptions

    build_options = assignments(parser, args.build_option, "--build_option")
    if args.max_users:
        build_options["max_users"] = args.max_users
    overrides = assignments(parser, args.train_option, "--train_option")
    train_config = {
        "preset": args.preset,
        "max_epochs": args.max_epochs,
        "config_overrides": overrides,
    }
    if args.steps_per_epoch:
        train_config["steps_per_epoch"] = args.steps_per_epoch
    if args.validation_rows:
        train_config["validation_rows"] = args.validation_rows
    resources = {
        key: getattr(args, f"trainer_{key}")
        for key in ("cpu", "memory_gb", "accelerator_type", "accelerator_count")
        if getattr(args, f"trainer_{key}") is not None
    }
    vertex = None
    if args.vertex_project:
        image = args.vertex_image or getattr(args, "image", None)
        if not image:
            parser.error("--vertex_project needs --vertex_image (the training image)")
        vertex = {
            "project": args.vertex_project,
            "region": args.vertex_region,
            "image": image,
            "workers": args.vertex_workers,
            "machine_type": args.vertex_machine_type,
            "accelerator_type": args.vertex_accelerator_type,
            "accelerator_count": args.vertex_accelerator_count,
        }
    return PipelineOptions(
        build_options=build_options,
        train_config=train_config,
        sasrec_max_epochs=args.sasrec_max_epochs,
        trainer_resources=resources or None,
        vertex_training=vertex,
        gate=GateOptions.from_args(args),
    )
