"""Benchmarks, run from the repository root: ``python3 -m bench.<name>``."""
