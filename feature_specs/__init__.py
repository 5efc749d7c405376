"""The contract between the data job and the model: feature names, dtypes and shapes.

Both `pipeline/` (which writes tf.Examples) and `unisar_tf/` (which reads them) import
these names, so a renamed feature fails at import rather than silently at training time.
"""

from feature_specs.example_schema import (  # noqa: F401
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    ID_FEATURE_VOCABULARIES,
    ID_FORMAT_IDS,
    ID_FORMAT_RAW,
    ID_FORMATS,
    NEGATIVE_POOL,
    QUERY_TOKENS,
    REC_HISTORY_ITEMS,
    REL_NEGATIVE_ITEMS,
    REL_NEGATIVE_QUERY_TOKENS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    SEARCH_HISTORY_QUERY_TOKENS,
    TYPE_PAD,
    TYPE_REC,
    TYPE_SEARCH,
    USER_ID,
    SequenceShapes,
    model_feature_shapes,
)
