"""Runners of the UniSAR TFX pipeline: local.py (LocalDagRunner, SQLite ML Metadata) and
kubeflow.py (compiles the same pipeline for Kubeflow Pipelines)."""
