"""CasaLocalSpawner's lifecycle with a real Dask scheduler and a stand-in notebook process.

The notebook is a sleeping Python process (the real one is exercised in
tests/test_local_e2e.py); everything else -- credentials, scheduler, route file,
state, cleanup -- is the spawner's real behaviour.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import stat
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from jupyterhub.objects import Hub

from casa_hub.errors import ConfigurationError
from casa_hub.facility import Facility
from casa_spawner.local import CasaLocalSpawner
from casa_spawner.processes import ProcessStartError
from casa_spawner.demo.xcache import ensure_macaroon_secret
from tests.fake_hub import FakeUser

NOTEBOOK = [sys.executable, "-c", "import time; time.sleep(600)"]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]  # most tests start a real Dask scheduler


@pytest.fixture
def macaroon_secret(tmp_path):
    return ensure_macaroon_secret(tmp_path / "macaroon-secret")


@pytest.fixture
def make_spawner(tmp_path, macaroon_secret):
    made = []

    def make(name="alice", spawner_class=CasaLocalSpawner, **facility_kw):
        facility = Facility(
            domain="casa.test", macaroon_secret_file=str(macaroon_secret), xcache_site="CASA_TEST",
            xcache_paths=["/store/user/{username}"], **facility_kw,
        )
        spawner = spawner_class(
            user=FakeUser(name), hub=Hub(), cmd=NOTEBOOK, facility=facility,
            state_dir=str(tmp_path / "state"), routes_dir=str(tmp_path / "routes"),
            scheduler_connect_host="127.0.0.1",
        )
        spawner.api_token = secrets.token_hex(16)
        made.append(spawner)
        return spawner

    yield make
    for spawner in made:  # whatever a failed test left running
        for pid in (spawner.pid, spawner.scheduler_pid):
            # never our own group: a test may point scheduler_pid at pytest itself, which leads
            # its process group when started from a terminal
            if pid and pid != os.getpgrp():
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


async def wait_dead(pid: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        await asyncio.sleep(0.1)


def leftovers(tmp_path) -> list[str]:
    users = tmp_path / "state" / "users"
    routes = tmp_path / "routes"
    found = [str(p) for p in users.rglob("*")] if users.exists() else []
    return found + ([str(p) for p in routes.iterdir()] if routes.exists() else [])


async def test_start_materialises_the_plan_and_stop_removes_it(make_spawner, tmp_path, macaroon_secret):
    spawner = make_spawner()
    ip, port = await spawner.start()
    assert (ip, port) == ("127.0.0.1", spawner.port)
    state = spawner.get_state()["casa"]
    session = Path(state["session_dir"])
    creds = session / "credentials"

    # private directories, private files; the notebook's copy has no scheduler key
    for d in (session, creds, session / "scheduler"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    files = {str(p.relative_to(creds)): stat.S_IMODE(p.stat().st_mode) for p in creds.rglob("*") if p.is_file()}
    assert files == {"dask/ca.pem": 0o644, "dask/client.pem": 0o600, "dask/worker.pem": 0o600, "bearer_token": 0o600}

    # the route file points Traefik at the scheduler, by the user's name
    route = yaml.safe_load((tmp_path / "routes" / "casa-dask-alice.yml").read_text())
    router = route["tcp"]["routers"]["casa-dask-alice"]
    assert router["rule"] == "HostSNI(`alice.dask.casa.test`)" and router["tls"] == {"passthrough": True}
    assert route["tcp"]["services"]["casa-dask-alice"]["loadBalancer"]["servers"] == [{"address": f"127.0.0.1:{state['scheduler_port']}"}]

    # the notebook process's environment
    env = environ(spawner.pid)
    assert env["DASK_SCHEDULER_ADDRESS"] == f"tls://127.0.0.1:{state['scheduler_port']}"
    assert env["CASA_SCHEDULER_ADDRESS"] == "tls://alice.dask.casa.test:8786"
    assert env["CASA_SCHEDULER_CONNECT_HOST"] == "127.0.0.1"
    assert env["BEARER_TOKEN_FILE"] == str(creds / "bearer_token")
    assert not any(str(session / "scheduler") in v for v in env.values())

    # the scheduler: a child process reading its key from a file, never from argv or env
    sched = state["scheduler_pid"]
    assert alive(sched)
    args, sched_env = cmdline(sched), environ(sched)
    assert "distributed.cli.dask_scheduler" in args
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert args[args.index("--dashboard-address") + 1].startswith("127.0.0.1:")  # no open dashboard
    key_pem = (session / "scheduler" / "dask" / "scheduler.pem").read_bytes()
    secret_b64 = macaroon_secret.read_bytes().strip()
    for blob in ("\0".join(args).encode(), "\0".join(f"{k}={v}" for k, v in sched_env.items()).encode(),
                 "\0".join(f"{k}={v}" for k, v in env.items()).encode()):
        assert b"PRIVATE KEY" not in blob and key_pem[-200:] not in blob
        assert secret_b64 not in blob and base64.b64decode(secret_b64) not in blob
    for path in session.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret_b64 not in data and base64.b64decode(secret_b64) not in data

    assert await spawner.poll() is None
    notebook = spawner.pid
    await spawner.stop(now=True)
    assert not alive(notebook) and not alive(sched)
    assert leftovers(tmp_path) == []
    assert "casa" not in spawner.get_state()


async def test_a_dead_scheduler_ends_the_session(make_spawner, tmp_path):
    spawner = make_spawner()
    await spawner.start()
    notebook, sched = spawner.pid, spawner.scheduler_pid
    os.killpg(sched, signal.SIGKILL)
    await wait_dead(sched)
    assert await spawner.poll() not in (None, 0)
    assert not alive(notebook)
    assert leftovers(tmp_path) == []


async def test_a_dead_notebook_takes_its_scheduler_along(make_spawner, tmp_path):
    spawner = make_spawner()
    await spawner.start()
    notebook, sched = spawner.pid, spawner.scheduler_pid
    os.kill(notebook, signal.SIGKILL)
    await wait_dead(notebook)
    assert await spawner.poll() is not None
    await wait_dead(sched)
    assert leftovers(tmp_path) == []


async def test_a_restarted_hub_finds_the_running_session_and_can_stop_it(make_spawner, tmp_path):
    first = make_spawner()
    await first.start()
    state = first.get_state()
    notebook, sched = first.pid, first.scheduler_pid

    second = make_spawner()  # what the hub builds after a restart
    second.load_state(state)
    assert second.scheduler_pid == sched and second.bundle is not None
    assert await second.poll() is None
    await second.stop(now=True)
    await wait_dead(sched)
    assert not alive(notebook)
    assert leftovers(tmp_path) == []


async def test_a_restarted_hub_cleans_up_after_a_dead_session(make_spawner, tmp_path):
    first = make_spawner()
    await first.start()
    state = first.get_state()
    os.killpg(first.scheduler_pid, signal.SIGKILL)
    os.killpg(first.pid, signal.SIGKILL)
    await wait_dead(first.scheduler_pid)
    await wait_dead(first.pid)
    assert leftovers(tmp_path) != []  # the hub died too: nobody cleaned up yet

    second = make_spawner()
    second.load_state(state)
    assert await second.poll() is not None
    assert leftovers(tmp_path) == []


async def test_a_recycled_pid_is_not_mistaken_for_the_scheduler(make_spawner, tmp_path):
    first = make_spawner()
    await first.start()
    state = first.get_state()
    state["casa"]["scheduler_pid"] = os.getpid()  # alive, but not a scheduler of this session
    second = make_spawner()
    second.load_state(state)
    assert second._scheduler_alive() is False
    await first.stop(now=True)
    assert alive(os.getpid())


class FakeDB:
    commits = 0

    def commit(self):
        self.commits += 1


async def test_credentials_are_renewed_in_poll(make_spawner):
    spawner = make_spawner(xcache_token_lifetime=60, renew_fraction=0.01)
    await spawner.start()
    issued = spawner.get_state()["casa"]["credentials"]
    # what JupyterHub gives a spawner: its database row and session
    spawner.orm_spawner, spawner.db = SimpleNamespace(name="", state={}, server=None), FakeDB()
    token_file = Path(spawner.credentials_dir) / "bearer_token"
    before = token_file.read_bytes()
    client_before = (Path(spawner.credentials_dir) / "dask" / "client.pem").read_bytes()
    await asyncio.sleep(1.1)  # 1% of 60 s has passed
    assert await spawner.poll() is None
    after = token_file.read_bytes()
    assert after != before and after.strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert (Path(spawner.credentials_dir) / "dask" / "client.pem").read_bytes() == client_before  # TLS is not renewed
    assert spawner.bundle.get("bearer_token").content == after
    # the renewed times are saved, so a restarted hub does not read the old ones
    saved = spawner.orm_spawner.state["casa"]["credentials"]
    assert spawner.db.commits == 1 and saved == spawner.get_state()["casa"]["credentials"] != issued
    await spawner.stop(now=True)


async def test_a_bad_secret_file_fails_the_start_cleanly(make_spawner, tmp_path):
    spawner = make_spawner()
    spawner.facility.macaroon_secret_file = str(tmp_path / "missing")
    with pytest.raises(ConfigurationError):
        await spawner.start()
    assert leftovers(tmp_path) == []
    assert spawner.scheduler_pid == 0 and not spawner.pid


async def test_a_scheduler_that_cannot_start_fails_the_start_cleanly(make_spawner, tmp_path):
    spawner = make_spawner()
    spawner.scheduler_host = "192.0.2.1"  # not an address of this machine: the scheduler cannot bind
    with pytest.raises(ProcessStartError, match="Dask scheduler exited"):
        await spawner.start()
    assert leftovers(tmp_path) == []
    assert spawner.scheduler_pid == 0 and not spawner.pid


class NamedServerSpawner(CasaLocalSpawner):
    """A spawner for the named server ``gpu`` (JupyterHub takes the name from its database row)."""

    name = "gpu"


async def test_named_servers_are_refused_clearly(make_spawner, tmp_path):
    spawner = make_spawner(spawner_class=NamedServerSpawner)
    with pytest.raises(ConfigurationError, match="one session per user"):
        await spawner.start()
    assert leftovers(tmp_path) == [] and not spawner.pid


async def test_a_failed_renewal_keeps_the_session_and_its_credentials(make_spawner, tmp_path, caplog):
    spawner = make_spawner(xcache_token_lifetime=60, renew_fraction=0.01)
    await spawner.start()
    token_file = Path(spawner.credentials_dir) / "bearer_token"
    before = token_file.read_bytes()
    spawner.facility.macaroon_secret_file = str(tmp_path / "gone")
    spawner.facility._macaroon_secret = None  # as if the hub had restarted: the file is read again
    await asyncio.sleep(1.1)
    assert await spawner.poll() is None
    assert token_file.read_bytes() == before
    assert "Could not renew credentials of" in caplog.text
    await spawner.stop(now=True)
    assert leftovers(tmp_path) == []


async def test_stopping_an_unkillable_scheduler_after_a_restart_is_bounded(make_spawner, monkeypatch, caplog):
    spawner = make_spawner()
    spawner.scheduler_pid, spawner.scheduler_stop_timeout = 2**22 + 1, 0.5
    # a scheduler from before the restart that no signal ends (e.g. stuck in the kernel)
    signals = []
    monkeypatch.setattr("casa_spawner.local.spawner._is_our_process", lambda pid, d: True)
    monkeypatch.setattr("casa_spawner.local.spawner._pid_exists", lambda pid: True)
    monkeypatch.setattr("casa_spawner.local.spawner.signal_group", lambda pid, sig: signals.append(sig))
    await asyncio.wait_for(spawner._stop_scheduler(), 10)
    assert signals == [signal.SIGTERM, signal.SIGKILL]
    assert spawner.scheduler_pid == 0 and "did not die on SIGKILL" in caplog.text


async def test_a_stop_during_a_renewal_leaves_no_credentials_behind(make_spawner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where paths relative to a torn-down session would land
    spawner = make_spawner(xcache_token_lifetime=60, renew_fraction=0.01)
    await spawner.start()
    renewing, release = asyncio.Event(), asyncio.Event()
    renew = spawner.facility.renew_bundle
    loop = asyncio.get_running_loop()

    def slow_renew(*args, **kwargs):  # the hub stops the session while the renewal is under way
        loop.call_soon_threadsafe(renewing.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(30)
        return renew(*args, **kwargs)

    monkeypatch.setattr(spawner.facility, "renew_bundle", slow_renew)
    await asyncio.sleep(1.1)  # 1% of 60 s has passed
    polling = asyncio.ensure_future(spawner.poll())
    await asyncio.wait_for(renewing.wait(), 30)
    stopping = asyncio.ensure_future(spawner.stop(now=True))
    await asyncio.sleep(0.5)
    release.set()
    await asyncio.wait_for(asyncio.gather(polling, stopping), 60)
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "credentials").exists() and not (tmp_path / "scheduler").exists()
    assert "casa" not in spawner.get_state() and spawner.bundle is None


async def test_idp_access_token_becomes_the_bearer_token_with_its_expiry(tmp_path):
    """Without an XCache secret the notebook's BEARER_TOKEN_FILE holds the IdP token, expiring when it does."""
    expiry = int(time.time()) + 3600
    user = FakeUser("alice", {"access_token": "idp-token-5e1f", "casa": {"access_token_expires_at": expiry}})
    spawner = CasaLocalSpawner(
        user=user, hub=Hub(), cmd=NOTEBOOK, facility=Facility(domain="casa.test"),
        state_dir=str(tmp_path / "state"), routes_dir=str(tmp_path / "routes"),
    )
    spawner.api_token = secrets.token_hex(16)
    try:
        await spawner.start()
        token_file = Path(spawner.get_env()["BEARER_TOKEN_FILE"])
        assert token_file.read_text() == "idp-token-5e1f\n"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        bearer = spawner.bundle.get("bearer_token")
        assert bearer.expires_at.timestamp() == expiry
    finally:
        await spawner.stop()
    assert leftovers(tmp_path) == []
