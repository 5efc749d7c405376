"""python -m unisar_tf.train: train, report, optionally export (unisar_tf.train.cli)."""

from unisar_tf import logs

logs.setup()  # before the command line module imports TensorFlow (reads --verbose)

from unisar_tf.train.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
