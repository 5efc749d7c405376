"""The example schema as a TensorFlow Metadata (TFMD) Schema, for TFX's ImportSchemaGen.

Every feature is int64 and required. Sequences have fixed shapes; `candidate_items` holds
1 + train negatives in training files and 1 + eval negatives in evaluation files, so the schema
gives it a value-count range rather than a shape. `query_tokens` exists only in search
examples: it is in the SEARCH environment, not in REC.

With id_format="raw" (examples carrying raw id strings, see example_schema.py) the id features
(example_schema.ID_FEATURE_VOCABULARIES) are BYTES instead, without an int_domain; shapes,
value counts, presence and environments are the same, and `history_types` stays INT.
"""

from __future__ import annotations

from tensorflow_metadata.proto.v0 import schema_pb2

from feature_specs import example_schema as fs

ENV_REC = "REC"
ENV_SEARCH = "SEARCH"


def build_schema(
    shapes: fs.SequenceShapes,
    train_candidates: int = 5,
    eval_candidates: int = 100,
    negative_pool: int = 0,
    id_format: str = fs.ID_FORMAT_IDS,
) -> schema_pb2.Schema:
    if id_format not in fs.ID_FORMATS:
        raise ValueError(f"id_format={id_format!r}: expected one of {fs.ID_FORMATS}")
    raw = id_format == fs.ID_FORMAT_RAW
    schema = schema_pb2.Schema()
    schema.default_environment.extend([ENV_REC, ENV_SEARCH])

    def new_feature(name):
        if raw and name in fs.ID_FEATURE_VOCABULARIES:
            return schema.feature.add(name=name, type=schema_pb2.BYTES)
        return schema.feature.add(name=name, type=schema_pb2.INT)

    def add(name, dims, domain_max=None):
        feature = new_feature(name)
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        if dims is None:
            feature.value_count.min = min(train_candidates, eval_candidates)
            feature.value_count.max = max(train_candidates, eval_candidates)
        else:
            # An explicit (possibly empty) shape: user_id is a scalar, a FixedLenFeature([])
            # for TF Transform and TFDV, not a variable-length list.
            feature.shape.SetInParent()
            for size in dims:
                feature.shape.dim.add(size=size)
        if feature.type == schema_pb2.INT:
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
        pool = new_feature(fs.NEGATIVE_POOL)
        pool.value_count.min = pool.value_count.max = negative_pool
        pool.presence.min_fraction = 0.0
        if pool.type == schema_pb2.INT:
            pool.int_domain.min = 1
    return schema
