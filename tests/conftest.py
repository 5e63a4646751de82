"""Shared pytest set-up: fixtures of one component live in that component's own module."""

import logging

import pytest


@pytest.fixture(autouse=True)
def _audit_logs_captured(caplog):
    """Capture casa's own logs at INFO so tests can scan them for secrets."""
    caplog.set_level(logging.INFO, logger="casa")
    yield
