"""Training and evaluation on the data job's TFRecords, one path for every caller.

inputs.py            one epoch of joint rec + search batches (spec 10), fresh negatives
trainer.py           Trainer: the fit loop, plateau / early stopping, checkpoints
run_dir.py           a run directory: files, resumability checks, reloading the best model
run_lock.py          one trainer per run directory (an OS lock on model_dir/run.lock)
evaluation.py        scoring splits, HR/NDCG reports, SavedModel scoring (and its CLI)
baselines.py         the non-learned baselines (popularity, ItemKNN, query match)
learned_baseline.py  SASRec trained beside a run, for the reports
gate.py              the per-task blessing rule (paired bootstrap)
gate_options.py      the gate's settings (GateOptions), their one definition
cli.py, __main__.py  python -m unisar_tf.train
"""
