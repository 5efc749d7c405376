"""UniSAR in TensorFlow/Keras: one model for search and recommendation (SIGIR 2024)."""
from unisar_tf.config import ABLATIONS, UniSARConfig, amazon_preset, kuaisar_preset, preset  # noqa: F401
