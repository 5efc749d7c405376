"""The UniSAR TFX pipeline: raw logs -> sequence examples -> checks -> vocabularies -> train ->
bless -> push.

    SequenceExampleGen ─> StatisticsGen ─┬─> ExampleValidatorRec    (*_rec)    ─┬─> AnomalyGate
    ImportSchemaGen (curated schema) ────┘   ExampleValidatorSearch (*_search) ─┘       │
    ImportSchemaGenRec / ImportSchemaGenSearch: the schema's REC / SEARCH views, one per │
    validator (see pipeline/components/validation.py for why)                           ▼
    Transform (pipeline.transform_module.preprocessing_fn; ImportSchemaGenTransform's view)
      │ transform_graph: user / item / word vocabularies, analyzed on the training splits
      ▼
    Trainer (pipeline.trainer_module.run_fn) ─> RankingEvaluator ─> Pusher (if blessed)
    SASRecTrainer (same run_fn, the SASRec recipe) ┤ (the learned rec baseline)
    LatestBlessedModelResolver ────────────────────┘ (the last blessed model, to beat; the
    gate: unisar_tf/train/gate.py, each task against random, every baseline and the last blessed
    model)

SequenceExampleGen writes raw-id examples (`id_format="raw"`): Transform owns the id
mapping. It runs with materialize=False: the Trainer and the evaluator apply the transform
graph to the raw examples as they read them, and the exported model carries the same graph
in its serving signatures, so training and serving map ids with one graph.
The same definition runs with LocalDagRunner (pipeline/runners/local.py) and is what the
Kubeflow runner compiles (pipeline/runners/kubeflow.py); both give it one PipelineOptions
(the build, training and gate settings; the gate's are a GateOptions).
Whatever reads the examples waits for the gate (`add_upstream_node(gate)`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence

from tfx import v1 as tfx

from feature_specs import ID_FORMAT_RAW
from feature_specs.serving import MODEL_NAME
from pipeline import beam_job, build_examples, trainer_module
from pipeline.components import run_parameters as run_parameters_components
from pipeline.components import validation
from pipeline.components.ranking_evaluator import RankingEvaluator
from pipeline.components.sequence_example_gen import SPLIT_NAMES, SequenceExampleGen, job_args
from unisar_tf.config import SASREC_MAX_EPOCHS
from unisar_tf.train.gate_options import GateOptions
from unisar_tf.train.run_dir import SASREC


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """What the pipeline builds, trains and gates with: create_pipeline's settings, the same
    for every runner (pipeline/runners/options.py makes one from the command line)."""

    # build_examples flags by name, e.g. {"max_users": 200, "seed": 1}.
    build_options: Optional[Dict[str, Any]] = None
    # The Trainer's custom_config (pipeline/trainer_module.py: preset, config_overrides,
    # max_epochs, steps_per_epoch, validation_rows, seed).
    train_config: Optional[Dict[str, Any]] = None
    # SASRecTrainer's epoch budget (the learned rec baseline the evaluator gates against);
    # None: SASRec's own (config.SASREC_MAX_EPOCHS, early stopping ends it first); 0: none.
    sasrec_max_epochs: Optional[int] = None
    # RankingEvaluator's blessing gate (unisar_tf/train/gate_options.py).
    gate: GateOptions = dataclasses.field(default_factory=GateOptions)
    # Both Trainers' container resources on Kubeflow (KFP platform config): {"cpu",
    # "memory_gb", "accelerator_type", "accelerator_count"}; LocalDagRunner refuses them.
    trainer_resources: Optional[Dict[str, Any]] = None
    # Both Trainers as Vertex AI training jobs: {"project", "region", "image", "workers",
    # "machine_type", "accelerator_type", "accelerator_count"}; workers > 1: multi-worker.
    vertex_training: Optional[Dict[str, Any]] = None


# create_pipeline's (and the runners') former keywords, accepted for one more release.
DEPRECATED_KEYWORDS = (
    "build_options",
    "train_config",
    "sasrec_max_epochs",
    "trainer_resources",
    "vertex_training",
    "min_improvement",
    "gate_options",
)


def options_or_keywords(caller: str, options, keywords: Mapping[str, Any]) -> PipelineOptions:
    """`options`, or the PipelineOptions of the deprecated loose keywords (build_options,
    train_config, ..., min_improvement and gate_options: the gate's), with a
    DeprecationWarning. A dict in `options`' place is the former positional build_options."""
    keywords = dict(keywords)
    if isinstance(options, Mapping):
        keywords["build_options"] = options
        options = None
    unknown = sorted(set(keywords) - set(DEPRECATED_KEYWORDS))
    if unknown:
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {unknown}")
    if not keywords:
        return options if options is not None else PipelineOptions()
    if options is not None:
        raise TypeError(
            f"{caller}(): give options or the deprecated keywords " f"{sorted(keywords)}, not both"
        )
    warnings.warn(
        f"{caller}(): the keywords {', '.join(sorted(keywords))} are deprecated "
        "and will be removed in the next release: pass options=PipelineOptions(...) "
        "(pipeline.tfx_pipeline; the gate's settings as "
        "PipelineOptions(gate=GateOptions(...)))",
        DeprecationWarning,
        stacklevel=3,
    )
    gate = GateOptions.from_legacy(
        keywords.pop("min_improvement", None), keywords.pop("gate_options", None)
    )
    return PipelineOptions(gate=gate, **keywords)


def pipeline_build_options(build_options: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The data job's options in the pipeline: raw-id examples, which Transform maps."""
    options = dict(build_options or {})
    if options.get("id_format", ID_FORMAT_RAW) != ID_FORMAT_RAW:
        raise ValueError(
            f"build option id_format={options['id_format']!r}: the pipeline's "
            f"Transform builds the vocabularies, so it needs {ID_FORMAT_RAW!r}"
        )
    options["id_format"] = ID_FORMAT_RAW
    return options


def evaluator_gate_options(
    min_improvement: Optional[float] = None, gate_options: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """Deprecated (next release: removed): GateOptions.from_legacy(...).to_dict()."""
    warnings.warn(
        "evaluator_gate_options is deprecated and will be removed in the next "
        "release: use GateOptions (unisar_tf.train.gate_options)",
        DeprecationWarning,
        stacklevel=2,
    )
    return GateOptions.from_legacy(min_improvement, gate_options).to_dict()


def curated_schema_files(
    adapter: str, data_root: str, build_options: Optional[Dict[str, Any]], schema_dir: str
) -> Dict[str, str]:
    """The curated schema for these build options (the data job's schema.pbtxt) and its
    per-environment and Transform views, written under schema_dir:
    {"ALL" | "REC" | "SEARCH" | "TRANSFORM": path}."""
    args = job_args(adapter, data_root, build_options, output="", resolve_inputs=False)
    schema = beam_job.example_schema(build_examples.build_options(args))
    return validation.write_schema_files(schema, schema_dir)


def validators(statistics: tfx.dsl.Channel, schema_files: Dict[str, str]) -> Dict[str, List]:
    """{environment: [ImportSchemaGen of its view, ExampleValidator of its splits]}."""
    nodes = {}
    for environment, splits in validation.ENVIRONMENT_SPLITS.items():
        suffix = environment.capitalize()  # Rec, Search
        view = tfx.components.ImportSchemaGen(schema_file=schema_files[environment]).with_id(
            f"ImportSchemaGen{suffix}"
        )
        validator = tfx.components.ExampleValidator(
            statistics=statistics,
            schema=view.outputs["schema"],
            exclude_splits=[split for split in SPLIT_NAMES if split not in splits],
        ).with_id(f"ExampleValidator{suffix}")
        nodes[environment] = [view, validator]
    return nodes


# Trainer resources on Kubeflow (create_pipeline's trainer_resources) -> KFP's ResourceSpec.
RESOURCE_KEYS = ("cpu", "memory_gb", "accelerator_type", "accelerator_count")
# Vertex AI training (create_pipeline's vertex_training): required and optional keys.
VERTEX_REQUIRED = ("project", "region", "image")
VERTEX_DEFAULTS = {
    "workers": 1,
    "machine_type": "n1-standard-8",
    "accelerator_type": "",
    "accelerator_count": 0,
}


def trainer_platform_config(resources: Optional[Dict[str, Any]]):
    """KFP v2's ResourceSpec for a component from {"cpu": vCPUs, "memory_gb": GB,
    "accelerator_type": e.g. "NVIDIA_TESLA_T4", "accelerator_count": n}, or None. The
    Kubeflow V2 runner writes it as the component's container resources."""
    if not resources:
        return None
    unknown = sorted(set(resources) - set(RESOURCE_KEYS))
    if unknown:
        raise ValueError(f"unknown trainer resource(s) {unknown}; known: {RESOURCE_KEYS}")
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec()
    if resources.get("cpu"):
        spec.cpu_limit = float(resources["cpu"])
    if resources.get("memory_gb"):
        spec.memory_limit = float(resources["memory_gb"])
    if resources.get("accelerator_type"):
        count = int(resources.get("accelerator_count") or 1)
        spec.accelerator.type = str(resources["accelerator_type"])
        spec.accelerator.count = count
    return spec


def vertex_custom_config(vertex: Dict[str, Any]) -> Dict[str, Any]:
    """The custom_config entries that make TFX's Google Cloud trainer run a Vertex AI custom
    job: `workers` replicas of `machine_type` (with accelerators) running `image`, the first
    pool the chief (TF_CONFIG task "chief"), the rest "worker"; the Trainer's run_fn then
    trains under MultiWorkerMirroredStrategy (unisar_tf/train/distribution.py)."""
    from tfx.extensions.google_cloud_ai_platform import constants as gcp_constants
    from tfx.extensions.google_cloud_ai_platform.trainer import executor as gcp_trainer

    missing = [key for key in VERTEX_REQUIRED if not vertex.get(key)]
    unknown = sorted(set(vertex) - set(VERTEX_REQUIRED) - set(VERTEX_DEFAULTS))
    if missing or unknown:
        raise ValueError(
            f"vertex_training: missing {missing}, unknown {unknown}; required "
            f"{VERTEX_REQUIRED}, optional {sorted(VERTEX_DEFAULTS)}"
        )
    values = dict(VERTEX_DEFAULTS, **vertex)
    if int(values["workers"]) < 1:
        raise ValueError(f"vertex_training workers must be at least 1, got {values['workers']}")
    machine = {"machine_type": values["machine_type"]}
    if values["accelerator_type"]:
        machine.update(
            accelerator_type=values["accelerator_type"],
            accelerator_count=int(values["accelerator_count"] or 1),
        )
    pool = {"machine_spec": machine, "container_spec": {"image_uri": values["image"]}}
    pools = [dict(pool, replica_count=1)]
    if int(values["workers"]) > 1:
        pools.append(dict(pool, replica_count=int(values["workers"]) - 1))
    return {
        gcp_constants.ENABLE_VERTEX_KEY: True,
        gcp_constants.VERTEX_REGION_KEY: values["region"],
        gcp_trainer.TRAINING_ARGS_KEY: {"project": values["project"], "worker_pool_specs": pools},
    }


def sasrec_trainer(
    example_gen,
    transform,
    train_config: Optional[Dict[str, Any]],
    max_epochs: Optional[int],
    vertex_training: Optional[Dict[str, Any]] = None,
) -> Optional[tfx.components.Trainer]:
    """A second Trainer ("SASRecTrainer") for the learned rec baseline: the same module
    file with custom_config learned_baseline="SASRec", the model's preset, seed and caps
    (not its config_overrides: SASRec has its own recipe), `max_epochs` epochs (None: its own
    budget, config.SASREC_MAX_EPOCHS). None when max_epochs is 0."""
    train_config = dict(train_config or {})
    if max_epochs is None:
        max_epochs = SASREC_MAX_EPOCHS
    if int(max_epochs) <= 0:
        return None
    custom = {
        key: train_config[key]
        for key in ("preset", "seed", "steps_per_epoch", "validation_rows")
        if key in train_config
    }
    custom.update(learned_baseline=SASREC, max_epochs=int(max_epochs))
    trainer_class = tfx.components.Trainer
    if vertex_training:
        custom.update(vertex_custom_config(vertex_training))
        trainer_class = tfx.extensions.google_cloud_ai_platform.Trainer
    return trainer_class(
        run_fn="pipeline.trainer_module.run_fn",
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        train_args=tfx.proto.TrainArgs(splits=list(trainer_module.TRAIN_SPLITS)),
        eval_args=tfx.proto.EvalArgs(splits=list(trainer_module.EVAL_SPLITS)),
        custom_config=custom,
    ).with_id("SASRecTrainer")


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    adapter: str,
    serving_dir: str,
    beam_pipeline_args: Sequence[str],
    metadata_connection_config=None,
    options: Optional[PipelineOptions] = None,
    enable_cache: bool = True,
    schema_dir: Optional[str] = None,
    *,
    run_parameters: Optional[Dict[str, Any]] = None,
    **deprecated_keywords,
) -> tfx.dsl.Pipeline:
    """The pipeline for the raw data of `adapter` at `data_root` (see SequenceExampleGen).

    options: what it builds, trains and gates with (PipelineOptions; default: all defaults).
    The former keywords build_options, train_config, sasrec_max_epochs, trainer_resources,
    vertex_training, min_improvement and gate_options still work for one release, with a
    DeprecationWarning (options_or_keywords).
    serving_dir: the Pusher writes blessed models to <serving_dir>/unisar/<version>, the
    layout TF Serving (and serving/server.py) watch.
    metadata_connection_config: None on Kubeflow, which brings its own ML Metadata.
    enable_cache, schema_dir, run_parameters: how the runner runs it, not what it computes.
    schema_dir: where the schema files that ImportSchemaGen reads are written when the
    pipeline is defined (default <pipeline_root>/_schemas); it must be readable where the
    pipeline runs.
    run_parameters: {"max_epochs", "batch_size", "push"}: values or RuntimeParameters (the
    Kubeflow runner's pipeline parameters); given, the Trainer and Pusher are the ones of
    pipeline/components/run_parameters.py, which take them as their own parameters.
    data_root may be a RuntimeParameter too.
    """
    options = options_or_keywords("create_pipeline", options, deprecated_keywords)
    train_config = options.train_config
    vertex_training = options.vertex_training
    build_options = pipeline_build_options(options.build_options)
    schema_files = curated_schema_files(
        adapter, data_root, build_options, schema_dir or os.path.join(pipeline_root, "_schemas")
    )

    example_gen = SequenceExampleGen(
        data_root=data_root, adapter=adapter, build_options=build_options
    )
    schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_files["ALL"])
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"]
    )
    checks = validators(statistics_gen.outputs["statistics"], schema_files)
    gate = validation.AnomalyGate(
        rec_anomalies=checks["REC"][1].outputs["anomalies"],
        search_anomalies=checks["SEARCH"][1].outputs["anomalies"],
    )
    components = [
        example_gen,
        schema_gen,
        statistics_gen,
        *[node for nodes in checks.values() for node in nodes],
        gate,
    ]

    # Functions are named by import path: the project is installed where components run
    # (the venv here, the Dockerfile's image on Kubeflow), so TFX need not package modules.
    transform_schema = tfx.components.ImportSchemaGen(
        schema_file=schema_files[validation.TRANSFORM_VIEW]
    ).with_id("ImportSchemaGenTransform")
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=transform_schema.outputs["schema"],
        preprocessing_fn="pipeline.transform_module.preprocessing_fn",
        # Vocabularies from the training splits only; nothing is materialized (the readers
        # apply the graph), so no split is transformed here.
        splits_config=tfx.proto.SplitsConfig(analyze=list(trainer_module.TRAIN_SPLITS)),
        # StatisticsGen already describes these examples; the post-transform statistics
        # would add a pass over the data for ids nobody reads.
        materialize=False,
        disable_statistics=True,
    )
    transform.add_upstream_node(gate)
    components += [transform_schema, transform]

    run_parameters = dict(run_parameters or {})
    unknown = sorted(set(run_parameters) - {"max_epochs", "batch_size", "push"})
    if unknown:
        raise ValueError(f"unknown run parameter(s) {unknown}")
    if run_parameters:
        trainer_class = functools.partial(
            run_parameters_components.Trainer,
            max_epochs=run_parameters.get("max_epochs"),
            batch_size=run_parameters.get("batch_size"),
            vertex=bool(vertex_training),
        )
        pusher_class = functools.partial(
            run_parameters_components.Pusher, push=run_parameters.get("push")
        )
    else:
        trainer_class = (
            tfx.extensions.google_cloud_ai_platform.Trainer
            if vertex_training
            else tfx.components.Trainer
        )
        pusher_class = tfx.components.Pusher
    custom_config = dict(train_config or {})
    if vertex_training:
        custom_config.update(vertex_custom_config(vertex_training))
    trainer = trainer_class(
        run_fn="pipeline.trainer_module.run_fn",
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        train_args=tfx.proto.TrainArgs(splits=list(trainer_module.TRAIN_SPLITS)),
        eval_args=tfx.proto.EvalArgs(splits=list(trainer_module.EVAL_SPLITS)),
        custom_config=custom_config,
    )
    trainer.add_upstream_node(gate)
    learned_baseline = sasrec_trainer(
        example_gen, transform, train_config, options.sasrec_max_epochs, vertex_training
    )
    platform_config = trainer_platform_config(options.trainer_resources)
    for node in (trainer, learned_baseline):
        if node is not None and platform_config is not None:
            node.with_platform_config(platform_config)
    if learned_baseline is not None:
        learned_baseline.add_upstream_node(gate)
        components.append(learned_baseline)
    last_blessed = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("LatestBlessedModelResolver")
    evaluator = RankingEvaluator(
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        model=trainer.outputs["model"],
        baseline_model=last_blessed.outputs["model"],
        learned_baseline=(
            learned_baseline.outputs["model"] if learned_baseline is not None else None
        ),
        **options.gate.to_dict(),
    )
    pusher = pusher_class(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(serving_dir, MODEL_NAME)
            )
        ),
    )
    components += [trainer, last_blessed, evaluator, pusher]

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args),
    )
