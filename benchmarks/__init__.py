"""Benchmarks of the control plane beside their baselines: ``python benchmarks/run.py``."""
