"""UniSAR in TensorFlow/Keras: one model for search and recommendation (SIGIR 2024)."""

from unisar_tf.config import (  # noqa: F401
    ABLATIONS,
    DataFacts,
    ModelConfig,
    SASRecConfig,
    TrainingConfig,
    UniSARConfig,
    amazon_preset,
    kuaisar_preset,
    preset,
)
