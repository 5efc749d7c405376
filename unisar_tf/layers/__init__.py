"""Keras layers of UniSAR, one concept per module."""

from unisar_tf.layers.attention import (  # noqa: F401
    FusionDecoderLayer,
    MaskedMultiHeadAttention,
    TargetAttention,
    TransformerEncoderLayer,
    masked_softmax,
)
from unisar_tf.layers.embeddings import (  # noqa: F401
    CategoricalSideFeatures,
    EntityEmbedding,
    IdAttributes,
    PositionalEmbedding,
    QueryEncoder,
    search_behaviour_embedding,
)
from unisar_tf.layers.experts import (  # noqa: F401
    MultiLayerPerceptron,
    MultiTaskExperts,
    StackedExperts,
)
from unisar_tf.layers.transitions import (  # noqa: F401
    gather_by_type,
    masked_mean,
    merge_histories,
    padding_attention_mask,
    transition_attention_mask,
)
