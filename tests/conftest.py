"""Shared pytest set-up: fixtures of one component live in that component's own module."""

import logging
import os
from pathlib import Path

import pytest

from condor_pool import condor_pool  # noqa: F401 -- the real HTCondor pool, one per test session

# the fake Kubernetes API's fixtures (fake_kube, kube, facility, master_secrets) for every test module
pytest_plugins = ["fake_kube.fixtures"]

# Tests never talk to a real cluster: KubeSpawner's load_config() needs some kubeconfig,
# and kubernetes_asyncio reads KUBECONFIG when first imported, so set it before any test
# module imports it.  Spawners under test point k8s_api_host at tests/fake_kube's server.
os.environ["KUBECONFIG"] = str(Path(__file__).with_name("fake_kube") / "kubeconfig.yaml")


@pytest.fixture(autouse=True)
def _audit_logs_captured(caplog):
    """Capture casa's own logs at INFO so tests can scan them for secrets."""
    caplog.set_level(logging.INFO, logger="casa")
    yield
