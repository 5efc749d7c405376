"""Put on child processes' PYTHONPATH by unisar_tf.logs in quiet mode (see sitecustomize.py)."""
