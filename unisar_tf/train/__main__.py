"""python -m unisar_tf.train: train, report, optionally export (unisar_tf.train.cli)."""
from unisar_tf.train.cli import main

if __name__ == "__main__":
    main()
