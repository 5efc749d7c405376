"""TFX's Trainer and Pusher with the values that change from run to run as their own
parameters, so a compiled Kubeflow pipeline can take them as pipeline runtime parameters
(`tfx.dsl.experimental.RuntimeParameter`; pipeline/runners/kubeflow.py).

KubeflowV2DagRunner turns a RuntimeParameter into a pipeline input only where it is a whole
execution parameter of a component: one inside the Trainer's `custom_config` dict would be
serialized into its JSON, not resolved. So:

- `Trainer(max_epochs=..., batch_size=..., **trainer_kwargs)`: TFX's Trainer (same inputs,
  outputs and parameters) plus `max_epochs` and `batch_size`; the executor writes them into
  `custom_config` (`max_epochs`, `config_overrides.batch_size`; pipeline/trainer_module.py)
  before `run_fn` runs. None leaves custom_config as it is. `vertex=True` runs it as a
  Vertex AI training job (`VertexTrainerExecutor`; the worker pools are in custom_config,
  pipeline/tfx_pipeline.py `vertex_training`).
- `Pusher(push=..., **pusher_kwargs)`: TFX's Pusher plus `push` (1/0); 0 records the model as
  not pushed (TFX's own "not pushed" outcome) even when it is blessed.

Both keep the ids "Trainer" and "Pusher". The local runner uses TFX's components with plain
values (pipeline/tfx_pipeline.py); these are used when `create_pipeline` is given
`run_parameters`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Optional, Union

from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.extensions.google_cloud_ai_platform.trainer import executor as vertex_trainer_executor
from tfx.orchestration import data_types
from tfx.types import artifact_utils, component_spec, standard_component_specs
from tfx.v1 import components as tfx_components

LOG = logging.getLogger(__name__)
MAX_EPOCHS_KEY = "max_epochs"
BATCH_SIZE_KEY = "batch_size"
PUSH_KEY = "push"

IntParameter = Optional[Union[int, data_types.RuntimeParameter]]


def train_config_with(
    custom_config: Optional[str], max_epochs: Optional[int], batch_size: Optional[int]
) -> str:
    """The Trainer's custom_config JSON with max_epochs and the batch size set."""
    config: Dict[str, Any] = json.loads(custom_config) if custom_config else {}
    config = dict(config or {})
    if max_epochs is not None:
        config["max_epochs"] = int(max_epochs)
    if batch_size is not None:
        config["config_overrides"] = dict(
            config.get("config_overrides") or {}, batch_size=int(batch_size)
        )
    return json.dumps(config)


class TrainerSpec(standard_component_specs.TrainerSpec):
    PARAMETERS = {
        **standard_component_specs.TrainerSpec.PARAMETERS,
        MAX_EPOCHS_KEY: component_spec.ExecutionParameter(type=int, optional=True),
        BATCH_SIZE_KEY: component_spec.ExecutionParameter(type=int, optional=True),
    }


def _with_run_parameters(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    """exec_properties with max_epochs and batch_size moved into custom_config."""
    exec_properties = dict(exec_properties)
    max_epochs = exec_properties.pop(MAX_EPOCHS_KEY, None)
    batch_size = exec_properties.pop(BATCH_SIZE_KEY, None)
    key = standard_component_specs.CUSTOM_CONFIG_KEY
    exec_properties[key] = train_config_with(exec_properties.get(key), max_epochs, batch_size)
    return exec_properties


class TrainerExecutor(trainer_executor.GenericExecutor):
    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        super().Do(input_dict, output_dict, _with_run_parameters(exec_properties))


class VertexTrainerExecutor(vertex_trainer_executor.GenericExecutor):
    """The same, as a Vertex AI custom job (TFX's Google Cloud trainer extension: its
    custom_config carries the worker pools; each worker runs run_fn under TF_CONFIG)."""

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        super().Do(input_dict, output_dict, _with_run_parameters(exec_properties))


def _fresh_outputs(spec: types.ComponentSpec) -> Dict[str, types.Channel]:
    return {key: types.Channel(type=channel.type) for key, channel in spec.outputs.items()}


class Trainer(base_component.BaseComponent):
    """TFX's Trainer with max_epochs and batch_size parameters (see the module docstring)."""

    SPEC_CLASS = TrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(TrainerExecutor)

    def __init__(
        self,
        max_epochs: IntParameter = None,
        batch_size: IntParameter = None,
        vertex: bool = False,
        **trainer_kwargs,
    ):
        # TFX's Trainer checks and normalizes its arguments (custom_config to JSON, ...).
        standard = tfx_components.Trainer(**trainer_kwargs).spec
        super().__init__(
            spec=TrainerSpec(
                **standard.exec_properties,
                **standard.inputs,
                **_fresh_outputs(standard),
                max_epochs=max_epochs,
                batch_size=batch_size,
            ),
            custom_executor_spec=executor_spec.ExecutorClassSpec(VertexTrainerExecutor)
            if vertex
            else None,
        )
        self.with_id("Trainer")


class PusherSpec(standard_component_specs.PusherSpec):
    PARAMETERS = {
        **standard_component_specs.PusherSpec.PARAMETERS,
        PUSH_KEY: component_spec.ExecutionParameter(type=int, optional=True),
    }


class PusherExecutor(pusher_executor.Executor):
    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        exec_properties = dict(exec_properties)
        push = exec_properties.pop(PUSH_KEY, None)
        if push is not None and not int(push):
            LOG.info("push=0 for this run: the model is not pushed")
            self._MarkNotPushed(
                artifact_utils.get_single_instance(
                    output_dict[standard_component_specs.PUSHED_MODEL_KEY]
                )
            )
            return
        super().Do(input_dict, output_dict, exec_properties)


class Pusher(base_component.BaseComponent):
    """TFX's Pusher with a push (1/0) parameter (see the module docstring)."""

    SPEC_CLASS = PusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(PusherExecutor)

    def __init__(self, push: IntParameter = None, **pusher_kwargs):
        standard = tfx_components.Pusher(**pusher_kwargs).spec
        super().__init__(
            spec=PusherSpec(
                **standard.exec_properties, **standard.inputs, **_fresh_outputs(standard), push=push
            )
        )
        self.with_id("Pusher")
