"""The test suite; ``tests.*`` modules (the fake Kubernetes API, real-server launchers) are shared with ``bench/``."""
