"""Serving: gRPC client for the UniSAR signatures and a local TF Serving stand-in for tests."""
