"""The example schema as a TensorFlow Metadata (TFMD) Schema, for TFX's ImportSchemaGen.

Every feature is int64 and required. Sequences have fixed shapes; `candidate_items` holds
1 + train negatives in training files and 1 + eval negatives in evaluation files, so the schema
gives it a value-count range rather than a shape. `query_tokens` exists only in search
examples: it is in the SEARCH environment, not in REC.
"""
from __future__ import annotations

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from feature_specs import example_schema as fs

ENV_REC = "REC"
ENV_SEARCH = "SEARCH"


def build_schema(shapes: fs.SequenceShapes, train_candidates: int = 5,
                 eval_candidates: int = 100, negative_pool: int = 0) -> schema_pb2.Schema:
    schema = schema_pb2.Schema()
    schema.default_environment.extend([ENV_REC, ENV_SEARCH])

    def add(name, dims, domain_max=None):
        feature = schema.feature.add(name=name, type=schema_pb2.INT)
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        if dims is None:
            feature.value_count.min = min(train_candidates, eval_candidates)
            feature.value_count.max = max(train_candidates, eval_candidates)
        else:
            for size in dims:
                feature.shape.dim.add(size=size)
        feature.int_domain.min = 0
        if domain_max is not None:
            feature.int_domain.max = domain_max
        return feature

    add(fs.USER_ID, ())
    add(fs.HISTORY_TYPES, (shapes.mixed_len,), domain_max=fs.TYPE_SEARCH)
    add(fs.REC_HISTORY_ITEMS, (shapes.rec_len,))
    add(fs.SEARCH_HISTORY_QUERY_TOKENS, (shapes.search_len, shapes.query_len))
    add(fs.SEARCH_HISTORY_CLICKED_ITEMS, (shapes.search_len, shapes.clicks_per_session))
    add(fs.CANDIDATE_ITEMS, None)
    query = add(fs.QUERY_TOKENS, (shapes.query_len,))
    query.not_in_environment.append(ENV_REC)
    if negative_pool:
        # Training files only: a fixed count where present, absent from evaluation files.
        pool = schema.feature.add(name=fs.NEGATIVE_POOL, type=schema_pb2.INT)
        pool.value_count.min = pool.value_count.max = negative_pool
        pool.presence.min_fraction = 0.0
        pool.int_domain.min = 1
    return schema


def schema_text(shapes: fs.SequenceShapes, train_candidates: int = 5,
                eval_candidates: int = 100, negative_pool: int = 0) -> str:
    return text_format.MessageToString(build_schema(shapes, train_candidates, eval_candidates,
                                                    negative_pool))
