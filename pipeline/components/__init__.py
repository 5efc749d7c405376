"""Custom TFX components of the UniSAR pipeline (pipeline/tfx_pipeline.py).

- sequence_example_gen.SequenceExampleGen: the Beam data job as an ExampleGen (six splits).
- validation.AnomalyGate: stops the run on any ExampleValidator anomaly; validation also holds
  the schema files and per-environment schema views the validators use.
"""
