"""SavedModel export with one scoring signature per task.

Signatures take the model's id features (feature_specs names, int64, dense and padded, with
a dynamic batch and candidate count) and return {"scores": (batch, num_candidates)} click
probabilities. Mapping raw ids and query text to these ids inside the graph is added by the
serving export (serving signatures issue) on top of these functions.
"""
from __future__ import annotations

from typing import Dict

import tensorflow as tf

from feature_specs import model_feature_shapes
from unisar_tf.model import UniSARModel

SIGNATURE_NAMES = {"rec": "recommend", "search": "search"}


def input_signature(model: UniSARModel, task: str) -> Dict[str, tf.TensorSpec]:
    shapes = model_feature_shapes(model.config.sequence_shapes, num_candidates=None,
                                  with_query=(task == "search"))
    return {name: tf.TensorSpec((None,) + shape, tf.int64, name=name)
            for name, shape in shapes.items()}


def scoring_functions(model: UniSARModel) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """Signature name -> concrete function, for every task the model was trained for."""
    functions = {}
    for task in model.config.tasks:
        def score(features, task=task):
            return {"scores": model(features, training=False)[task]}

        functions[SIGNATURE_NAMES[task]] = tf.function(score).get_concrete_function(
            input_signature(model, task))
    return functions


def export_saved_model(model: UniSARModel, export_dir: str) -> str:
    """Write a SavedModel (tag "serve") with `recommend` and/or `search` signatures."""
    # save_traces=False: the signatures are all a server needs; tracing every Keras layer's
    # call for Python-free reloading costs tens of seconds and adds nothing here.
    model.save(export_dir, save_format="tf", save_traces=False,
               signatures=scoring_functions(model))
    return export_dir
