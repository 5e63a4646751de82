"""The local facility end to end with real parts: JupyterHub, CasaLocalSpawner, Traefik, Dask, XRootD.

alice and bob spawn through the hub's REST API.  What alice's notebook gets is read
from the running notebook process itself (``/proc/<pid>/environ``): with it a Dask
client reaches ``tls://alice.dask.casa.test:<port>`` through Traefik by SNI (the name
does not resolve here, so the connection goes to 127.0.0.1 with the name as SNI),
local workers join the same way, and a computation comes back right.  bob's
certificates are refused by alice's scheduler; alice's injected XCache token reads
the data, bob's cannot read alice's area.  After stop nothing is left.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from distributed import Client
from jupyterhub.utils import random_port

from casa_session.cluster import CasaCluster, LocalProcessWorkers, SchedulerConnection
from casa_spawner.demo.traefik import TraefikProcess
from casa_spawner.demo.xcache import ensure_macaroon_secret
from tests.hub_process import start_hub
from tests.xrootd_server import start_xrootd

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(280)]

DOMAIN = "casa.test"
SITE = "CASA_E2E"
DEMO_TEXT = b"open data for everyone\n"
ALICE_TEXT = b"alice's own histograms\n"


@pytest.fixture
def traefik(tmp_path):
    """Real Traefik on its own event loop (the test itself is synchronous, like a notebook)."""
    loop = asyncio.new_event_loop()
    proc = TraefikProcess(tmp_path / "traefik", dask_port=random_port())
    loop.run_until_complete(proc.start())
    try:
        yield proc
    finally:
        loop.run_until_complete(proc.stop())
        loop.close()


@pytest.fixture
def macaroon_secret(tmp_path):
    return ensure_macaroon_secret(tmp_path / "macaroon-secret")


@pytest.fixture
def xrootd(tmp_path, macaroon_secret):
    data = tmp_path / "data"
    (data / "store" / "data").mkdir(parents=True)  # open data: readable by anyone (authdb)
    (data / "store" / "user" / "alice").mkdir(parents=True)
    (data / "store" / "data" / "demo.txt").write_bytes(DEMO_TEXT)
    (data / "store" / "user" / "alice" / "hist.txt").write_bytes(ALICE_TEXT)
    with start_xrootd(tmp_path / "xrootd", sitename=SITE, secret_b64_file=macaroon_secret, data_dir=data,
                      authdb_rules="u * /store/data lr\n", timeout=30) as srv:
        yield srv


@pytest.fixture
def hub(tmp_path, traefik, xrootd, macaroon_secret):
    state_dir = tmp_path / "state"
    hub = start_hub(tmp_path / "hub", [
        "c.JupyterHub.authenticator_class = 'casa-dummy'",
        "c.CasaDummyAuthenticator.users = {'alice': {'admin': True, 'password': 'alice-pw'}, 'bob': {'password': 'bob-pw'}}",
        "c.JupyterHub.spawner_class = 'casa-local'",
        f"c.CasaLocalSpawner.state_dir = {str(state_dir)!r}",
        f"c.CasaLocalSpawner.routes_dir = {str(traefik.routes_dir)!r}",
        "c.CasaLocalSpawner.scheduler_connect_host = '127.0.0.1'",
        f"c.Facility.domain = {DOMAIN!r}",
        f"c.Facility.dask_port = {traefik.dask_port}",
        f"c.Facility.macaroon_secret_file = {str(macaroon_secret)!r}",
        f"c.Facility.xcache_site = {SITE!r}",
        f"c.Facility.xcache_host = 'root://127.0.0.1:{xrootd.port}'",
        "c.Facility.xcache_paths = ['/store/user/{username}']",
        "c.Facility.xcache_token_lifetime = 3600",
        "c.Facility.xcache_max_lifetime = 86400",
    ])
    hub.state_dir = state_dir
    try:
        yield hub
    finally:
        hub.stop()
        kill_processes_using(state_dir)  # only if the hub could not stop its sessions itself


def kill_processes_using(directory: Path) -> None:
    """SIGKILL every process whose command line or environment mentions ``directory``."""
    marker = str(directory).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes() or marker in (proc / "environ").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def spawn(hub, username: str) -> dict:
    """Log in, start the server through the REST API, wait until ready; the server's spawner state."""
    assert not hub.login(username, "wrong")
    assert hub.login(username, f"{username}-pw")
    status, body = hub.api("POST", f"/users/{username}/server")
    assert status in (201, 202), f"{body}\n{hub.log_text()[-4000:]}"
    hub.wait_for_server(username, ready=True)
    status, model = hub.api("GET", f"/users/{username}")
    return model["servers"][""]["state"]


def process_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def session_tls(env: dict) -> ssl.SSLContext:
    """The notebook's client TLS context (loaded now: the files go when the session stops)."""
    ctx = ssl.create_default_context(cafile=env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"])
    ctx.check_hostname = False
    ctx.load_cert_chain(env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"])
    return ctx


def sni_reaches_scheduler(port: int, sni: str, ctx: ssl.SSLContext) -> bool:
    """A mutual-TLS handshake through Traefik with ``sni``, the peer verified against the session CA."""
    try:
        with socket.create_connection(("127.0.0.1", port), 5) as sock:
            with ctx.wrap_socket(sock, server_hostname=sni) as tls:
                # TLS 1.3: a refused client certificate shows up on the first read; an
                # accepting scheduler sends its comm handshake at once.  A timeout counts as
                # reached, so it is long: a refusal delayed by a loaded machine is still seen
                tls.settimeout(15)
                try:
                    return tls.recv(1) != b""
                except socket.timeout:
                    return True
    except (OSError, ssl.SSLError):
        return False


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.3)


def xrootd_get(url: str, token_file: str) -> tuple[int, bytes]:
    token = Path(token_file).read_text().strip()
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def urllib_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_alice_and_bob_on_the_local_facility(hub, traefik, xrootd, macaroon_secret):
    alice_state = spawn(hub, "alice")
    bob_state = spawn(hub, "bob")
    alice_env = process_environ(alice_state["pid"])
    bob_env = process_environ(bob_state["pid"])
    alice_tls, bob_tls = session_tls(alice_env), session_tls(bob_env)

    # what the notebook is told
    assert alice_env["CASA_SCHEDULER_ADDRESS"] == f"tls://alice.dask.{DOMAIN}:{traefik.dask_port}"
    assert alice_env["CASA_SCHEDULER_CONNECT_HOST"] == "127.0.0.1"
    creds = Path(alice_env["CASA_CREDENTIALS"])
    assert creds.stat().st_mode & 0o777 == 0o700
    files = [p for p in creds.rglob("*") if p.is_file()]
    assert files and not any(p.name == "scheduler.pem" for p in files)  # the scheduler's key stays out
    assert all(p.stat().st_mode & 0o077 == 0 for p in files if p.name != "ca.pem")
    secret_b64 = macaroon_secret.read_bytes().strip()
    secret_raw = base64.b64decode(secret_b64)
    everything = b"".join(p.read_bytes() for p in files) + "\0".join(f"{k}={v}" for k, v in alice_env.items()).encode()
    assert secret_b64 not in everything and secret_raw not in everything

    # Dask through Traefik by name: a client and two local workers
    alice = SchedulerConnection.from_environment(alice_env)
    assert alice.connect_address == f"tls://127.0.0.1:{traefik.dask_port}" and alice.sni == f"alice.dask.{DOMAIN}"
    wait_until(lambda: sni_reaches_scheduler(traefik.dask_port, alice.sni, alice_tls), 30, "alice's route answering")
    cluster = CasaCluster(alice, LocalProcessWorkers())
    try:
        cluster.scale(2)
        with cluster.get_client(timeout="30s") as client:
            client.wait_for_workers(2, timeout=90)
            assert client.submit(sum, range(1000)).result(timeout=60) == 499500
            squares = client.map(lambda x: x * x, range(10))
            assert client.submit(sum, squares).result(timeout=60) == 285
            workers = {w["name"] for w in client.scheduler_info()["workers"].values()}
            assert workers == set(cluster.launcher.running())
            # the notebook's local address (DASK_SCHEDULER_ADDRESS) is the same scheduler
            with Client(alice_env["DASK_SCHEDULER_ADDRESS"], security=alice.security(), timeout="30s") as local:
                assert {w["name"] for w in local.scheduler_info()["workers"].values()} == workers
        worker_pids = cluster.launcher.pids()
    finally:
        cluster.close()
    assert not any(pid_alive(p) for p in worker_pids)

    # bob's certificates against alice's scheduler: refused
    bob = SchedulerConnection.from_environment(bob_env)
    bob_at_alice = SchedulerConnection(
        address=alice.address, ca_file=bob.ca_file, client_cert=bob.client_cert, client_key=bob.client_key,
        worker_cert=bob.worker_cert, worker_key=bob.worker_key, connect_host="127.0.0.1",
    )
    with pytest.raises((OSError, TimeoutError)):
        Client(bob_at_alice.connect_address, security=bob_at_alice.security(), timeout="10s")
    assert not sni_reaches_scheduler(traefik.dask_port, alice.sni, bob_tls)
    assert sni_reaches_scheduler(traefik.dask_port, bob.sni, bob_tls)  # his own, yes

    # data with the injected XCache token
    base = xrootd.url
    assert alice_env["XCACHE_HOST"] == f"root://127.0.0.1:{xrootd.port}"
    assert xrootd_get(f"{base}/store/data/demo.txt", alice_env["BEARER_TOKEN_FILE"]) == (200, DEMO_TEXT)
    assert xrootd_get(f"{base}/store/user/alice/hist.txt", alice_env["BEARER_TOKEN_FILE"]) == (200, ALICE_TEXT)
    assert xrootd_get(f"{base}/store/user/alice/hist.txt", bob_env["BEARER_TOKEN_FILE"])[0] == 403
    assert urllib_status(f"{base}/store/user/alice/hist.txt") == 403  # and no token, no read

    # stop alice: route, scheduler, credentials gone; bob unaffected
    alice_session = alice_state["casa"]
    status, _ = hub.api("DELETE", "/users/alice/server")
    assert status in (202, 204)
    hub.wait_for_server("alice", ready=False)
    wait_until(lambda: not sni_reaches_scheduler(traefik.dask_port, alice.sni, alice_tls), 30, "alice's route gone")
    assert not pid_alive(alice_session["scheduler_pid"])
    assert not pid_alive(alice_state["pid"])
    assert not Path(alice_session["session_dir"]).exists()
    assert not (traefik.routes_dir / "casa-dask-alice.yml").exists()
    assert sni_reaches_scheduler(traefik.dask_port, bob.sni, bob_tls)

    # the hub's shutdown stops bob's session too
    bob_session = bob_state["casa"]
    hub.stop()
    assert not pid_alive(bob_session["scheduler_pid"]) and not pid_alive(bob_state["pid"])
    assert list(traefik.routes_dir.iterdir()) == []
    leftovers = [p for p in (hub.state_dir / "users").rglob("*")] if (hub.state_dir / "users").exists() else []
    assert leftovers == []
