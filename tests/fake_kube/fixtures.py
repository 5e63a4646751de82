"""Pytest fixtures for the fake Kubernetes API (a plugin of tests/conftest.py)."""

from __future__ import annotations

import pytest

from .spawners import reset_kubespawner
from .thread import FakeKube


@pytest.fixture
def fake_kube():
    """A fresh fake API server on a free loopback port, stopped after the test."""
    fake = FakeKube().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
async def kube(fake_kube):
    """The fake API, with KubeSpawner's shared clients and reflectors reset after the test."""
    try:
        yield fake_kube
    finally:
        await reset_kubespawner()
