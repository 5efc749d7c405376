"""Command-line tools built on the library: ablations, benchmarks, the demo, parameter counts.

ablation.py         python -m unisar_tf.tools.ablation: variants and baselines, one table
time_to_quality.py  python -m unisar_tf.tools.time_to_quality: wall time to 99% of best
benchmark_train.py  python -m unisar_tf.tools.benchmark_train: training throughput
benchmark_reference.py  python -m unisar_tf.tools.benchmark_reference: throughput against
                    the authors' PyTorch UniSAR on the same examples (reference_driver.py
                    runs under the reference's own Python)
sizing.py           python -m unisar_tf.tools.sizing: data job, tables, training, serving
                    at 1M-100M users
param_count.py      python -m unisar_tf.tools.param_count: parameters per preset
demo.py             python -m unisar_tf.tools.demo: synthetic data, the Trainer, a report
fit_vs_loop.py      python -m unisar_tf.tools.fit_vs_loop: the Trainer's loop against model.fit
"""
