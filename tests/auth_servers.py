"""Real servers for the login tests and bench/login.py: the OIDC provider (node) and JupyterHub.

Each is a context manager that picks free 127.0.0.1 ports, waits (bounded) until the
server answers, and stops it — process group and all — on the way out, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from casa_spawner.ports import free_port

HERE = Path(__file__).resolve().parent
PROVIDER_DIR = HERE / "oidc_provider"
CLIENT_ID = "casa-hub"
CLIENT_SECRET = "casa-e2e-client-secret"

#: the test accounts: groups the way INDIGO IAM spells them, in both claims it uses
ACCOUNTS = {
    "alice": {"password": "alice-pw", "claims": {"email": "alice@example.org", "preferred_username": "alice", "name": "Alice",
                                                 "wlcg.groups": ["/cms", "/cms/uscms"]}},
    "carol": {"password": "carol-pw", "claims": {"email": "carol@example.org", "preferred_username": "carol", "groups": ["/cms", "/cms/admins"]}},
    "bob": {"password": "bob-pw", "claims": {"email": "bob@example.org", "preferred_username": "bob", "groups": ["/atlas"]}},
    "mallory": {"password": "mallory-pw", "claims": {"email": "mallory@example.org", "preferred_username": "mallory", "groups": 42}},
}


def _stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def oidc_provider(workdir: Path, redirect_uris: list[str], accounts: dict = ACCOUNTS, access_token_ttl: int = 3600, timeout: float = 60):
    """npm's oidc-provider on 127.0.0.1 with ``accounts``; yields its issuer URL."""
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        raise RuntimeError("tests/oidc_provider/node_modules is missing: run scripts/install-test-deps (npm ci)")
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    config = workdir / "oidc-provider.json"
    config.write_text(
        json.dumps(
            {
                "issuer": issuer,
                "port": port,
                "clients": [{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": redirect_uris}],
                "accounts": accounts,
                "access_token_ttl": access_token_ttl,
            }
        )
    )
    log = workdir / "oidc-provider.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [shutil.which("node") or "node", str(PROVIDER_DIR / "server.mjs"), str(config)],
            cwd=PROVIDER_DIR, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_http(f"{issuer}/.well-known/openid-configuration", proc, log, timeout)
        yield issuer
    finally:
        _stop(proc)


HUB_CONFIG = """
import casa_auth
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = {pid_file!r}
c.JupyterHub.db_url = "sqlite:///{workdir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = {cookie_file!r}
c.JupyterHub.template_paths = [casa_auth.TEMPLATE_DIR]
c.JupyterHub.authenticator_class = {authenticator!r}
c.Authenticator.auth_refresh_age = 300
c.Spawner.options_form = '<p id="casa-test-options">Choose your resources</p>'
c.JupyterHub.services = [{{"name": "casa-test", "api_token": {api_token!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "casa-test", "scopes": ["admin:users", "admin:auth_state", "read:groups"], "services": ["casa-test"]}},
]
{extra}
"""


def oauth_config(issuer: str, hub_url: str, authenticator: str = "CasaOAuthenticator") -> str:
    """Hub config lines for ``authenticator`` against the test provider."""
    lines = [
        f"c.{authenticator}.client_id = {CLIENT_ID!r}",
        f"c.{authenticator}.client_secret = {CLIENT_SECRET!r}",
        f"c.{authenticator}.oauth_callback_url = {hub_url + '/hub/oauth_callback'!r}",
    ]
    return "\n".join(lines)


class Hub:
    def __init__(self, url: str, api_token: str, workdir: Path):
        self.url = url
        self.api_token = api_token
        self.workdir = workdir

    def api(self, path: str):
        request = urllib.request.Request(f"{self.url}/hub/api{path}", headers={"Authorization": f"token {self.api_token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def log(self) -> str:
        return (self.workdir / "jupyterhub.log").read_text(errors="replace")


def hub_ports() -> tuple[int, str]:
    port = free_port()
    return port, f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def jupyterhub(workdir: Path, port: int, authenticator: str, extra_config: str, timeout: float = 90):
    """A real JupyterHub (with configurable-http-proxy) in a subprocess; yields a :class:`Hub`."""
    workdir.mkdir(parents=True, exist_ok=True)
    api_token = secrets.token_hex(16)
    config = workdir / "jupyterhub_config.py"
    config.write_text(
        HUB_CONFIG.format(
            port=port,
            hub_port=free_port(),
            proxy_api_port=free_port(),
            pid_file=str(workdir / "proxy.pid"),
            workdir=workdir,
            cookie_file=str(workdir / "cookie_secret"),
            authenticator=authenticator,
            api_token=api_token,
            extra=extra_config,
        )
    )
    env = {**os.environ, "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32)}
    for var in ("OAUTH2_AUTHORIZE_URL", "OAUTH2_TOKEN_URL", "OAUTH2_USERDATA_URL", "OAUTH_CALLBACK_URL", "OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET"):
        env.pop(var, None)
    log = workdir / "jupyterhub.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/hub/api", proc, log, timeout)
        yield Hub(f"http://127.0.0.1:{port}", api_token, workdir)
    finally:
        _stop(proc, timeout=15)


def provider_sign_in(session, start_url: str, username: str, password: str, stop_prefix: str, max_hops: int = 20):
    """Follow redirects from ``start_url`` with a ``requests.Session``, filling the provider's login form
    when it appears, until a redirect to ``stop_prefix``; returns that URL (not fetched).

    An HTTP client stands in for the browser here (bench and in-process refresh test): same
    provider, same login form, same redirects.
    """
    import re
    from urllib.parse import urljoin

    url, method, data = start_url, "GET", None
    for _ in range(max_hops):
        response = session.request(method, url, data=data, allow_redirects=False, timeout=30)
        if response.status_code in (301, 302, 303, 307):
            url = urljoin(url, response.headers["Location"])
            method, data = "GET", None
            if url.startswith(stop_prefix):
                return url
            continue
        if response.status_code == 200 and 'id="idp-username"' in response.text:
            if data is not None:
                raise RuntimeError(f"the provider refused the password of {username}")
            action = re.search(r'<form method="post" action="([^"]+)"', response.text).group(1)
            url, method, data = urljoin(url, action), "POST", {"username": username, "password": password}
            continue
        raise RuntimeError(f"unexpected answer {response.status_code} from {url}: {response.text[:300]}")
    raise RuntimeError(f"no redirect to {stop_prefix} after {max_hops} hops")
