"""The one Facility factory of the tests (and bench/): master secrets the test knows, in private files.

A test that scans for leaks needs the secrets the facility was given, so they come from the
``master_secrets`` fixture (fresh per test) and ``make_facility(**traits)`` writes them into key
files before building the :class:`~casa_hub.facility.Facility`.  ``facility`` is
``make_facility()``: a whole site (domain, HTCondor trust domain and collector, XCache site and
host) with both master secrets.  Loaded as a plugin by tests/conftest.py.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest
from traitlets.config import Config

from casa_hub.facility import Facility
from tests.secret_files import write_secret_file

#: what ``facility`` is configured with besides its key files; ``make_facility(**traits)`` overrides
SITE_TRAITS = {
    "domain": "coffea.casa",
    "trust_domain": "cms-af.example.org",
    "xcache_site": "T2_US_Test",
    "collector_host": "collector.example.org:9619",
    "xcache_host": "root://xcache.example.org:1094",
}


@dataclass(frozen=True)
class MasterSecrets:
    """The secrets that must never reach a user: HTCondor's pool signing key and the macaroon secret."""

    signing_key: bytes
    macaroon_secret: bytes

    @classmethod
    def fresh(cls) -> "MasterSecrets":
        # a NUL byte and bytes above 0x7f, as a real pool key may hold: read as bytes, never as text
        return cls(b"pool-key\x00with-nul\xde\xad\xbe\xef" + secrets.token_bytes(32), secrets.token_bytes(48))


def facility_config(directory: os.PathLike | str, master: MasterSecrets, **traits) -> Config:
    """``c.Facility`` settings: :data:`SITE_TRAITS`, key files ``POOL`` and ``macaroon`` holding
    ``master`` in ``directory`` (the macaroon secret base64 with a newline, as XRootD reads it), ``traits``."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    values = {
        **SITE_TRAITS,
        "signing_key_file": write_secret_file(directory / "POOL", master.signing_key),
        "macaroon_secret_file": write_secret_file(directory / "macaroon", base64.b64encode(master.macaroon_secret) + b"\n"),
        **traits,
    }
    config = Config()
    for name, value in values.items():
        setattr(config.Facility, name, value)
    return config


def new_facility(directory: os.PathLike | str, master: MasterSecrets, **traits) -> Facility:
    """A Facility built from :func:`facility_config`, as the hub builds it from its config file."""
    return Facility(config=facility_config(directory, master, **traits))


@pytest.fixture
def master_secrets() -> MasterSecrets:
    """This test's master secrets, fresh, for the facility and for the scans that look for them."""
    return MasterSecrets.fresh()


@pytest.fixture
def make_facility(tmp_path, master_secrets):
    """``make_facility(**traits)``: a Facility on this test's ``master_secrets`` (key files in ``tmp_path/keys``)."""

    def make(**traits) -> Facility:
        return new_facility(tmp_path / "keys", master_secrets, **traits)

    return make


@pytest.fixture
def facility(make_facility) -> Facility:
    """The test's facility: :data:`SITE_TRAITS` and both master secrets (``master_secrets``)."""
    return make_facility()
