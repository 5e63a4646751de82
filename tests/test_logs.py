"""casa_hub.logs: casa's loggers write through the running application's log, as JupyterHub's tornado loggers do."""

import io
import logging

import pytest

from casa_hub import audit
from casa_hub.logs import attach_to


@pytest.fixture
def app_log():
    """An application log with its own handler and format (what JupyterHub's log is), casa restored after."""
    casa, audit_logger = logging.getLogger("casa"), logging.getLogger("casa.audit")
    saved = (casa.parent, casa.propagate, casa.level, audit_logger.level)
    log = logging.getLogger("TestHub")
    log.propagate = False
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[%(levelname)1.1s %(name)s %(module)s:%(lineno)d] %(message)s"))
    log.addHandler(handler)
    log.stream = stream
    yield log
    log.removeHandler(handler)
    casa.parent, casa.propagate = saved[0], saved[1]
    casa.setLevel(saved[2])
    audit_logger.setLevel(saved[3])


def test_audit_lines_reach_the_application_s_handler_in_its_format(app_log):
    app_log.setLevel(logging.INFO)
    attach_to(app_log)
    audit.record_issuance("alice", "dask-tls", 0, "alice.dask.example.org")
    logging.getLogger("casa.traefik").info("route written")
    logging.getLogger("casa.traefik").debug("not at INFO")
    lines = app_log.stream.getvalue().splitlines()
    assert lines[0].startswith("[I casa.audit audit:")
    assert lines[0].endswith("issued kind=dask-tls user=alice expires=1970-01-01T00:00:00Z id=alice.dask.example.org")
    assert lines[1].startswith("[I casa.traefik ") and len(lines) == 2


def test_a_quiet_hub_still_logs_audit_lines(app_log):
    app_log.setLevel(logging.WARNING)
    attach_to(app_log)
    logging.getLogger("casa.cluster").info("chatter")
    audit.record_issuance("bob", "condor-idtoken", None, "0123")
    assert app_log.stream.getvalue().splitlines() == [
        next(line for line in app_log.stream.getvalue().splitlines() if "kind=condor-idtoken user=bob" in line)
    ]


def test_attaching_twice_changes_nothing(app_log):
    app_log.setLevel(logging.DEBUG)
    attach_to(app_log)
    attach_to(app_log)
    logging.getLogger("casa").debug("once")
    assert app_log.stream.getvalue().count("once") == 1
