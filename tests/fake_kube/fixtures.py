"""Pytest fixtures for the fake Kubernetes API (a plugin of tests/conftest.py)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import pytest

from .thread import FakeKube
from .spawners import make_facility, reset_kubespawner


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


@dataclass(frozen=True)
class MasterSecrets:
    signing_key: bytes
    macaroon_secret: bytes


@pytest.fixture
def master_secrets() -> MasterSecrets:
    return MasterSecrets(secrets.token_bytes(64), secrets.token_bytes(32))


@pytest.fixture
def facility(tmp_path, master_secrets):
    """A Facility with fresh master secrets the test knows (HTCondor pool key, macaroon secret)."""
    return make_facility(tmp_path, master_secrets.signing_key, master_secrets.macaroon_secret)
