"""A real ``dask-gateway-server`` process on 127.0.0.1, authenticated by a real JupyterHub, for the tests.

    hub = start_gateway_hub(workdir)                       # a JupyterHub with the "dask-gateway" service
    gw = GatewayProcess(workdir, hub, backend_lines).start()
    gateway = gw.client("alice")                           # dask_gateway.Gateway as alice (her hub token)
    gw.stop()                                              # SIGTERM (the gateway stops its clusters), then SIGKILL

The gateway is an *external* JupyterHub service (it has an API token, the hub does not start
it), so a test can stop and restart it while its clusters run.  Users' tokens carry the scope
``access:services!service=dask-gateway``, which dask-gateway's JupyterHubAuthenticator checks.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from jupyterhub.utils import random_port

from tests.condor_pool import TRUST_DOMAIN, PoolThread, worker_python
from tests.hub_process import HubProcess, start_hub

SERVICE = "dask-gateway"
LOG_TAIL_LINES = 60
SIMPLE_PASSWORD = "not-a-secret"  # dask-gateway's SimpleAuthenticator: any user name, this password


def gateway_worker_python() -> str:
    """The jobs' Python (``condor_pool.worker_python``); it must have dask-gateway for the scheduler's preload."""
    python = worker_python()
    done = subprocess.run([python, "-c", "import dask_gateway"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{python} has no dask-gateway: run scripts/install-test-deps ({done.stderr.strip()})")
    return python


def pool_backend_lines(pool: PoolThread, *, key_file: Path | None = None, **facility) -> list[str]:
    """``c.Facility`` for ``pool`` and the HTCondorBackend settings of a one-machine pool."""
    python = gateway_worker_python()
    settings = {
        "signing_key_file": str(key_file or pool.workdir / "POOL"),
        "trust_domain": TRUST_DOMAIN,
        "collector_host": pool.pool.collector_host,
        "schedd_host": pool.pool.schedd_name,
        **facility,
    }
    return [
        *(f"c.Facility.{k} = {v!r}" for k, v in settings.items()),
        "c.HTCondorBackend.condor_config = 'ONLY_ENV'",
        "c.HTCondorBackend.default_host = '127.0.0.1'",
        "c.HTCondorBackend.cluster_status_period = 2",
        "c.HTCondorBackend.worker_status_period = 2",
        f"c.HTCondorClusterConfig.scheduler_cmd = [{python!r}, '-m', 'distributed.cli.dask_scheduler']",
        f"c.HTCondorClusterConfig.worker_cmd = [{python!r}, '-m', 'distributed.cli.dask_worker']",
        "c.HTCondorClusterConfig.scheduler_memory = '256 M'",
        "c.HTCondorClusterConfig.worker_memory = '256 M'",
    ]


def pool_gateway_env(pool: PoolThread) -> dict[str, str]:
    """The gateway host's environment: HTCondor's tools on PATH, no configuration file."""
    return {"PATH": pool.tools_path, "CONDOR_CONFIG": "ONLY_ENV"}


def start_gateway_hub(workdir: Path, users=("alice", "bob")) -> HubProcess:
    """A real JupyterHub that knows ``users`` and the gateway service; ``hub.user_tokens[name]`` are their API tokens."""
    service_token = secrets.token_hex(32)
    hub = start_hub(workdir, [
        "c.JupyterHub.authenticator_class = 'dummy'",
        f"c.JupyterHub.services.append({{'name': {SERVICE!r}, 'api_token': {service_token!r}}})",
        f"c.JupyterHub.load_roles.append({{'name': 'user', 'scopes': ['self', 'access:services!service={SERVICE}']}})",
        "c.JupyterHub.load_roles.append({'name': 'token-maker', 'scopes': ['tokens'], 'services': ['tester']})",
    ])
    try:
        hub.service_token = service_token
        hub.user_tokens = {}
        for user in users:
            status, _ = hub.api("POST", f"/users/{user}")
            assert status in (201, 409), f"creating {user}: {status}"
            status, body = hub.api("POST", f"/users/{user}/tokens", {"note": "tests", "expires_in": 3600})
            assert status == 201, f"a token for {user}: {status} {body}"
            hub.user_tokens[user] = body["token"]
    except BaseException:
        hub.stop()
        raise
    return hub


class GatewayProcess:
    """``python -m dask_gateway_server -f <workdir>/dask_gateway_config.py`` with a fresh set of ports."""

    def __init__(self, workdir: Path, hub: HubProcess | None, backend_lines: list[str], env: dict | None = None):
        """``hub``: authenticate through that JupyterHub; None: dask-gateway's SimpleAuthenticator."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hub = hub
        self.backend_lines = list(backend_lines)
        self.env = dict(env or {})
        self.api_port, self.proxy_port, self.tcp_port = random_port(), random_port(), random_port()
        self.log_path = self.workdir / "gateway.log"
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def proxy_address(self) -> str:
        return f"gateway://127.0.0.1:{self.tcp_port}"

    def config_text(self) -> str:
        if self.hub is not None:
            auth = [
                "c.DaskGateway.authenticator_class = 'dask_gateway_server.auth.JupyterHubAuthenticator'",
                f"c.JupyterHubAuthenticator.jupyterhub_api_url = '{self.hub.url}/hub/api'",
                f"c.JupyterHubAuthenticator.jupyterhub_api_token = '{self.hub.service_token}'",
                f"c.JupyterHubAuthenticator.jupyterhub_service_name = '{SERVICE}'",
            ]
        else:
            auth = [
                "c.DaskGateway.authenticator_class = 'dask_gateway_server.auth.SimpleAuthenticator'",
                f"c.SimpleAuthenticator.password = {SIMPLE_PASSWORD!r}",
            ]
        return "\n".join([
            "c.DaskGateway.backend_class = 'casa_spawner.gateway.HTCondorBackend'",
            f"c.DaskGateway.address = '127.0.0.1:{self.api_port}'",
            f"c.Proxy.address = '127.0.0.1:{self.proxy_port}'",
            f"c.Proxy.tcp_address = '127.0.0.1:{self.tcp_port}'",
            *auth,
            *self.backend_lines,
        ]) + "\n"

    def start(self, timeout: float = 60.0) -> "GatewayProcess":
        config = self.workdir / "dask_gateway_config.py"
        config.write_text(self.config_text())
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dask_gateway_server", "-f", str(config)], cwd=self.workdir, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"dask-gateway-server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.address}/api/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dask-gateway-server did not answer within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 90.0) -> int | None:
        """SIGTERM, wait (the gateway stops its clusters unless told not to), then SIGKILL.  Idempotent."""
        proc, self.process = self.process, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the proxy, if the gateway left it behind
        except ProcessLookupError:
            pass
        return proc.wait()

    def client(self, user: str, **kwargs):
        """A ``dask_gateway.Gateway`` as ``user``: with the user's JupyterHub API token, or the simple password."""
        from dask_gateway import BasicAuth, Gateway, JupyterHubAuth

        if self.hub is not None:
            auth = JupyterHubAuth(api_token=self.hub.user_tokens[user])
        else:
            auth = BasicAuth(user, SIMPLE_PASSWORD)
        return Gateway(self.address, proxy_address=self.proxy_address, auth=auth, **kwargs)


# -- the pool, as the tests look at it ------------------------------------------------------------


def wait_until(what: str, predicate, timeout: float = 90.0, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(interval)


def remove_cluster_jobs(pool, name: str) -> None:
    pool.tool("condor_rm", "-constraint", f'DaskGatewayCluster == "{name}"')


def hold_jobs(pool, constraint: str, reason: str) -> None:
    """What a pool administrator's ``condor_hold`` does (this build has no condor_hold: htcondor2's act)."""
    script = ("import sys, htcondor2; r = htcondor2.Schedd().act(htcondor2.JobAction.Hold, sys.argv[1], sys.argv[2]);"
              "sys.exit(0 if r['TotalSuccess'] else 1)")
    done = subprocess.run([sys.executable, "-c", script, constraint, reason], capture_output=True, text=True,
                          env={**os.environ, **pool.pool.admin_environment()}, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
