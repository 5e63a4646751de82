"""tests.e2e_guard: a test that starts a real server without ``@pytest.mark.e2e`` fails, one with it passes."""

from __future__ import annotations

import sys

import pytest

from tests.e2e_guard import server_in
from tests.paths import REPO

PY = sys.executable


@pytest.mark.parametrize("argv, server", [
    (["/usr/bin/xrootd", "-c", "x.cfg"], "xrootd"),
    (["/venv/bin/traefik", "--configFile=t.yml"], "traefik"),
    (["/opt/htcondor/sbin/condor_master", "-f"], "condor_master"),
    ([PY, "-m", "jupyterhub", "-f", "jupyterhub_config.py"], "python -m jupyterhub"),
    ([PY, "-m", "distributed.cli.dask_scheduler", "--port", "0"], "python -m distributed.cli.dask_scheduler"),
    ([PY, "-u", "-m", "distributed.cli.dask_worker", "tls://a:1"], "python -m distributed.cli.dask_worker"),
    (["dask", "worker", "tls://a:1"], "dask worker"),
    (["/usr/bin/node", "server.mjs", "provider.json"], "node"),
    (["/venv/bin/casa", "demo", "--port", "8000"], "casa demo"),
    ([b"/usr/bin/xrootd"], "xrootd"),
    ("/usr/bin/xrootd", "xrootd"),
])
def test_servers_are_known_by_their_program(argv, server):
    assert server_in(argv) == server


@pytest.mark.parametrize("argv", [
    [PY, "-m", "casa_session.credsync", "--once"],
    [PY, "-c", "import time; time.sleep(1)"],
    ["/venv/bin/casa", "mint", "condor-token"],
    ["/opt/htcondor/bin/condor_q", "-all"],
    ["g++", "-o", "shim", "shim.cpp"],
    [PY, "-m"],
    [],
])
def test_clients_and_tools_are_not_servers(argv):
    assert server_in(argv) is None


GUARDED = 'pytest_plugins = ["tests.e2e_guard"]\n'
STARTS_A_SERVER = """
import pathlib
import subprocess
import pytest

def start():  # a program named like a server the guard knows, that exits at once
    subprocess.run([str(pathlib.Path(__file__).with_name("traefik"))], check=True, timeout=60)

@pytest.fixture(scope="module")
def server():
    start()
    return "up"
"""


def run_guarded(pytester, monkeypatch, body: str):
    """``body`` under the guard, in a pytest of its own (the guard's audit hook is per process)."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # tests.e2e_guard
    pytester.makeconftest(GUARDED)
    pytester.makepyfile(test_inner=STARTS_A_SERVER + body)
    fake = pytester.path / "traefik"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=120)


def test_a_server_started_in_an_unmarked_test_fails_it(pytester, monkeypatch):
    result = run_guarded(pytester, monkeypatch, """
def test_unmarked():
    start()

@pytest.mark.e2e
def test_marked():
    start()
""")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_unmarked started a real server (traefik) without @pytest.mark.e2e*"])


def test_a_server_fixture_fails_an_unmarked_test_whether_it_starts_it_or_reuses_it(pytester, monkeypatch):
    result = run_guarded(pytester, monkeypatch, """
@pytest.mark.e2e
def test_marked_first(server):
    pass

def test_unmarked_reuses(server):
    pass
""")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_unmarked_reuses uses fixture 'server', a real server (traefik)*"])

    result = run_guarded(pytester, monkeypatch, """
def test_unmarked_starts(server):
    pass
""")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_unmarked_starts started a real server (traefik)*"])
