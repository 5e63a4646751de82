"""The real OIDC provider (node) for the login tests and bench/login.py, and the hub config they share.

:func:`oidc_provider` is a context manager that picks a free 127.0.0.1 port, waits (bounded)
until the provider answers, and stops it — process group and all — on the way out, even on
failure.  The hub itself is tests.hub_process's (``running_hub(workdir, login_hub_config(...) + [...])``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from jupyterhub.utils import random_port

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
    port = random_port()
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


def change_account(workdir: Path, username: str, **claims) -> None:
    """Change an account of the running provider started in ``workdir`` (it re-reads its accounts on every use):
    e.g. ``change_account(tmp_path, "alice", **{"wlcg.groups": ["/atlas"]})`` takes alice out of CMS."""
    config_file = workdir / "oidc-provider.json"
    config = json.loads(config_file.read_text())
    config["accounts"][username]["claims"].update(claims)
    tmp = config_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(config))
    tmp.replace(config_file)


def login_hub_config(authenticator: str) -> list[str]:
    """Hub config lines of the login tests: casa_auth's pages, ``authenticator``, auth refresh, an options form."""
    return [
        "import casa_auth",
        "c.JupyterHub.template_paths = [casa_auth.TEMPLATE_DIR]",
        f"c.JupyterHub.authenticator_class = {authenticator!r}",
        "c.Authenticator.auth_refresh_age = 300",
        "c.Spawner.options_form = '<p id=\"casa-test-options\">Choose your resources</p>'",
    ]


def oauth_config(issuer: str, hub_url: str, authenticator: str = "CasaOAuthenticator") -> str:
    """Hub config lines for ``authenticator`` against the test provider."""
    lines = [
        f"c.{authenticator}.client_id = {CLIENT_ID!r}",
        f"c.{authenticator}.client_secret = {CLIENT_SECRET!r}",
        f"c.{authenticator}.oauth_callback_url = {hub_url + '/hub/oauth_callback'!r}",
    ]
    return "\n".join(lines)


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
