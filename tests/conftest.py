"""Shared pytest set-up: fixtures of one component live in that component's own module, loaded here as a plugin."""

import logging
import os
from pathlib import Path

import pytest

# Tests never talk to a real cluster: KubeSpawner's load_config() needs some kubeconfig,
# and kubernetes_asyncio reads KUBECONFIG when first imported, so set it before any test
# module imports it.  Spawners under test point k8s_api_host at tests/fake_kube's server.
os.environ["KUBECONFIG"] = str(Path(__file__).with_name("fake_kube") / "kubeconfig.yaml")

pytest_plugins = [
    "tests.facilities",  # master_secrets, make_facility, facility: the one Facility factory
    "tests.fake_kube.fixtures",  # fake_kube, kube: the fake Kubernetes API
    "tests.condor_pool",  # condor_pool: the real HTCondor pool, one per test session
    "tests.e2e_guard",  # a test that starts a real server without @pytest.mark.e2e fails
    "pytester",  # tests/test_e2e_guard.py runs pytest on small test files
]


@pytest.fixture(autouse=True)
def _audit_logs_captured(caplog):
    """Capture casa's own logs at INFO so tests can scan them for secrets."""
    caplog.set_level(logging.INFO, logger="casa")
    yield
