"""The ``e2e`` marker's guard: a test that starts a real server, or uses a fixture that did, is marked ``e2e``.

So ``pytest -m "not e2e"`` stays an inner loop without servers, and a test that forgets the marker
fails (in the phase that started the server: setup, call or teardown) instead of slowing that loop.
An audit hook sees every ``subprocess.Popen`` of the test process -- asyncio's and other threads'
too -- and knows a server by its program (:func:`server_in`).  A fixture during whose setup one
started (the session's ``condor_pool``, a module's hub) counts as a server for every later test
that uses it.  Not seen: servers a test runs inside its own process (distributed's ``Scheduler``
and ``Worker`` objects); those tests are marked by hand.  Loaded as a plugin by tests/conftest.py.
"""

from __future__ import annotations

import os
import sys

import pytest

#: programs that serve: XRootD, Traefik, HTCondor's daemons, JupyterHub and its proxy and
#: single-user servers, Dask's scheduler and workers, Node.js (the OIDC provider, Playwright's
#: driver of Chromium), Chromium itself
SERVER_PROGRAMS = {
    "xrootd", "cmsd", "traefik",
    "condor_master", "condor_collector", "condor_negotiator", "condor_schedd", "condor_startd",
    "jupyterhub", "jupyterhub-singleuser", "configurable-http-proxy",
    "dask-scheduler", "dask-worker",
    "node", "chromium", "chrome", "headless_shell",
}
#: the same, as ``python -m <module>``
SERVER_MODULES = {
    "jupyterhub", "jupyterhub.singleuser",
    "distributed.cli.dask_scheduler", "distributed.cli.dask_worker", "distributed.cli.dask_spec",
}
MARKER = "e2e"


def server_in(argv) -> str | None:
    """The server ``argv`` starts (its program, or ``python -m`` module, or ``casa demo``), else None."""
    if isinstance(argv, (str, bytes, os.PathLike)):
        argv = [argv]
    args = [os.fsdecode(a) for a in argv]
    if not args:
        return None
    program = os.path.basename(args[0])
    if program in SERVER_PROGRAMS:
        return program
    if program.startswith("python") and "-m" in args[:-1]:
        module = args[args.index("-m") + 1]
        if module in SERVER_MODULES:
            return f"python -m {module}"
    if program == "dask" and len(args) > 1 and args[1] in ("scheduler", "worker"):
        return f"dask {args[1]}"
    if program == "casa" and "demo" in args[1:]:
        return "casa demo"
    return None


class _Guard:
    """What the audit hook needs to know: the running test, the fixtures being set up, what it saw."""

    def __init__(self):
        self.item: pytest.Item | None = None
        self.setting_up: list = []  # FixtureDefs whose setup is under way, innermost last
        self.server_fixtures: dict = {}  # FixtureDef -> the server started while setting it up
        self.unmarked_starts: list[str] = []

    def audit(self, event: str, args) -> None:
        if event != "subprocess.Popen" or self.item is None:
            return
        what = server_in(args[1] if args[1] is not None else [args[0]])
        if what is None:
            return
        for fixturedef in self.setting_up:
            self.server_fixtures.setdefault(fixturedef, what)
        if self.item.get_closest_marker(MARKER) is None:
            self.unmarked_starts.append(what)

    def fail_if_unmarked_starts(self, item: pytest.Item) -> None:
        started, self.unmarked_starts = self.unmarked_starts, []
        if started:
            pytest.fail(f"{item.nodeid} started a real server ({', '.join(sorted(set(started)))}) "
                        f"without @pytest.mark.{MARKER}", pytrace=False)

    def fail_if_uses_a_server_fixture(self, item: pytest.Item) -> None:
        if item.get_closest_marker(MARKER) is not None:
            return
        info = getattr(item, "_fixtureinfo", None)
        for name in getattr(item, "fixturenames", ()):
            defs = info.name2fixturedefs.get(name) if info else None
            if defs and defs[-1] in self.server_fixtures:
                pytest.fail(f"{item.nodeid} uses fixture {name!r}, a real server "
                            f"({self.server_fixtures[defs[-1]]}), without @pytest.mark.{MARKER}", pytrace=False)


_guard = _Guard()
sys.addaudithook(_guard.audit)  # hooks cannot be removed; outside a test it does nothing


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _guard.item, _guard.unmarked_starts = item, []
    try:
        return (yield)
    finally:
        _guard.item = None


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    _guard.setting_up.append(fixturedef)
    try:
        return (yield)
    finally:
        _guard.setting_up.pop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    _guard.fail_if_uses_a_server_fixture(item)
    result = yield
    _guard.fail_if_unmarked_starts(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    _guard.fail_if_unmarked_starts(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    _guard.fail_if_unmarked_starts(item)
    return result
