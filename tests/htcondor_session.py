"""A session as the spawner leaves it, on the real pool: a Facility plan's files and environment,
a real TLS scheduler, and a real Traefik routing ``<slug>.dask.<domain>`` to it by SNI.

    site = HTCondorSite(pool, workdir).start()   # credentials from Facility.issue_bundle("alice")
    site.env                                     # the notebook's environment (CASA_SESSION_ID, _CONDOR_*, ...)
    site.stop()

With ``data={export path: local file}`` the site also runs the demo's real XCache (an origin
holding the files behind the cache, both checking the facility's macaroons); the session gets its
address, its CA and a macaroon for ``/store/user/<user>``, and -- with ``data_token_service`` --
the macaroon is in the pool's credd, stored as the spawner stores it (``DataTokenStore``).
Another user's site can share that XCache (``xcache=alice_site.xcache``).

Used by tests/test_htcondor_workers_e2e.py, tests/test_htcondor_data_e2e.py and bench/htcondor_workers.py.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import socket
import ssl
import subprocess
import time
from pathlib import Path

import dask.config
import pytest

from casa_hub.bundle import BEARER_TOKEN_PATH
from casa_hub.plan import plan_session
from casa_session.cluster import CasaCluster
from casa_session.htcondor_workers import LoopThread
from casa_spawner.data_token import DataTokenStore
from casa_spawner.demo.traefik import TraefikProcess
from casa_spawner.demo.xcache import XCacheServer
from casa_spawner.local.routes import write_route_file
from jupyterhub.utils import random_port
from tests.condor_pool import TRUST_DOMAIN, PoolThread
from tests.facilities import MasterSecrets, facility_config, new_facility

USER = "alice"
DOMAIN = "casa.test"
XCACHE_SITE = "CASA_TEST"
USERS = ("alice", "bob")


class HTCondorSite:
    """One user's session on ``pool``: plan, credentials, scheduler and Traefik (the public port), and an XCache."""

    def __init__(self, pool: PoolThread, workdir: Path, user: str = USER, *, data: dict[str, Path] | None = None,
                 xcache: XCacheServer | None = None, data_token_service: str = "", **facility_traits):
        self.pool = pool
        self.workdir = Path(workdir)
        self.user = user
        self.traefik_port, self.scheduler_port = random_port(), random_port()
        self.xcache, self._own_xcache = xcache, False
        if xcache is not None:  # another site's: the same secret signs this user's macaroons
            self.master = MasterSecrets(signing_key=pool.signing_key, macaroon_secret=base64.b64decode(Path(xcache.secret_file).read_bytes()))
        else:
            self.master = MasterSecrets(signing_key=pool.signing_key, macaroon_secret=secrets.token_bytes(48))
        keys = self.workdir / "keys"
        if data is not None and xcache is None:
            secret_file = facility_config(keys, self.master).Facility.macaroon_secret_file
            self.xcache = XCacheServer(sitename=XCACHE_SITE, secret_file=secret_file, users=list(USERS), files=dict(data),
                                       port=random_port(), origin_port=random_port(), ca_copy=str(self.workdir / "xcache-ca.pem"),
                                       log_copy=str(self.workdir / "logs" / "xcache.log"), ready_timeout=60)
            self._own_xcache = True
            (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        if self.xcache is not None:
            facility_traits = {"xcache_site": XCACHE_SITE, "xcache_host": self.xcache.url, "xcache_paths": ["/store/user/{username}"],
                               "data_token_service": data_token_service, "credd_host": pool.credd_host, **facility_traits}
        self.facility = new_facility(
            keys, self.master, domain=DOMAIN, trust_domain=TRUST_DOMAIN,
            collector_host=pool.pool.collector_host, schedd_host=pool.pool.schedd_name,
            dask_port=self.traefik_port, scheduler_port=self.scheduler_port, dashboard_port=random_port(),
            **facility_traits,
        )
        self.plan = plan_session(self.facility, user, self.facility.issue_bundle(user))
        self.creds = self.workdir / "credentials"
        self.session_id = f"test-{secrets.token_hex(6)}"
        self._loop = LoopThread("traefik")
        self.traefik = TraefikProcess(self.workdir / "traefik", dask_port=self.traefik_port)
        self.scheduler: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """The notebook's environment: the plan's, plus what a pod on this machine needs (tools on PATH,
        no HTCondor config file, the scheduler name not resolvable so Traefik is dialled at 127.0.0.1)."""
        env = self.plan.environment(str(self.creds), f"tls://127.0.0.1:{self.scheduler_port}")
        if self.xcache is not None:  # a site's XCache has a grid certificate; this one's CA comes with the session
            env["XCACHE_CA_FILE"] = self.xcache.ca_copy or str(self.xcache.ca_file)
        return {
            **env,
            "CASA_SESSION_ID": self.session_id,
            "CASA_SCHEDULER_CONNECT_HOST": "127.0.0.1",
            "CONDOR_CONFIG": "ONLY_ENV",
            "PATH": self.pool.tools_path,
        }

    @property
    def token_file(self) -> Path:
        """The session's data token (``BEARER_TOKEN_FILE``)."""
        return self.creds / BEARER_TOKEN_PATH

    def store_data_token(self, token: bytes | None = None) -> bool:
        """Give the pool's credd ``token`` (default: the session's) as the user, as the spawner does."""
        store = DataTokenStore(facility=self.facility, store_command=self.pool.install.sbin_tool("condor_store_cred"))
        return self._loop.run(store.store(self.user, token if token is not None else self.token_file.read_bytes()), 60)

    @property
    def identity(self) -> str:
        return self.facility.condor_identity_of(self.user)

    def start(self) -> "HTCondorSite":
        self.plan.bundle.write_to(self.creds)
        spec = self.plan.scheduler
        log = open(self.workdir / "scheduler.log", "wb")
        with log:
            self.scheduler = subprocess.Popen(
                spec.command(str(self.creds), host="127.0.0.1", dashboard_host="127.0.0.1"),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            if self._own_xcache:
                self._loop.run(self.xcache.start(), 90)
            if self.facility.stores_data_tokens and not self.store_data_token():
                raise RuntimeError("the pool's credd did not take the session's data token")
            self._loop.run(self.traefik.start(), 60)
            write_route_file(self.traefik.routes_dir, self.plan.route, f"127.0.0.1:{self.scheduler_port}")
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", self.scheduler_port), 1).close()
                    break
                except OSError:
                    if self.scheduler.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the scheduler did not start: " + (self.workdir / "scheduler.log").read_text())
                    time.sleep(0.2)
            self._wait_for_route(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_route(self, deadline: float) -> None:
        """Until Traefik has read the route file: a TLS handshake by SNI reaches the scheduler's certificate."""
        ctx = ssl.create_default_context(cafile=str(self.creds / "dask" / "ca.pem"))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(self.creds / "dask" / "client.pem"))
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.traefik_port), 2) as sock:
                    with ctx.wrap_socket(sock, server_hostname=self.plan.route.host):
                        return
            except (OSError, ssl.SSLError):
                if time.monotonic() > deadline:
                    raise RuntimeError("Traefik did not route the scheduler's name:\n" + self.traefik.log_tail()) from None
                time.sleep(0.2)

    def stop(self) -> None:
        try:
            if self.scheduler is not None and self.scheduler.poll() is None:
                self.scheduler.terminate()
                try:
                    self.scheduler.wait(15)
                except subprocess.TimeoutExpired:
                    self.scheduler.kill()
                    self.scheduler.wait()
            self._loop.run(self.traefik.stop(), 30)
            if self._own_xcache:
                self._loop.run(self.xcache.stop(), 30)
        finally:
            self._loop.close()

    def session_jobs(self, *attrs: str) -> list[list[str]]:
        """This session's jobs in the queue (read as the pool's admin)."""
        return self.pool.queue(f'CasaSession == "{self.session_id}"', *(attrs or ("ClusterId",)))


def in_session(mp: pytest.MonkeyPatch, site: HTCondorSite, **overrides: str) -> None:
    """The notebook's environment of ``site`` in this process (``overrides`` replace variables)."""
    for name, value in {**site.env, **overrides}.items():
        mp.setenv(name, value)


@contextlib.contextmanager
def scaled_cluster(site: HTCondorSite, n: int, config: dict):
    """``CasaCluster()`` in ``site``'s session (dask ``config`` set) with ``n`` HTCondor workers connected, and a
    client of it; both closed on exit."""
    with pytest.MonkeyPatch.context() as mp, dask.config.set(config):
        in_session(mp, site)
        cluster = CasaCluster()
        try:
            cluster.scale(n)
            cluster.wait_for_workers(n)
            client = cluster.get_client(timeout="30s")
            try:
                yield cluster, client
            finally:
                client.close()
        finally:
            cluster.close()
