"""The one launcher of a real JupyterHub for tests and bench/: a subprocess on 127.0.0.1, driven through its REST API.

Used by the local-facility tests, the login tests and bench/login.py::

    hub = start_hub(workdir, config_lines=[...])       # already answering /hub/api
    hub.api("POST", "/users/alice/server")              # admin token of a "tester" service
    ...
    hub.stop()                                          # SIGTERM (the hub stops its servers), then SIGKILL

    with running_hub(workdir, [...], port=port) as hub:  # the same, stopped on the way out
        ...

The hub uses ``configurable-http-proxy`` (npm, installed by scripts/install-test-deps),
which it starts and stops itself.  The config gives a service ``tester`` an API token
with the ``admin:users``/``admin:servers`` scopes (the latter includes reading spawner
state), ``admin:auth_state`` and ``read:groups``.  Everything the hub writes (database,
cookie secret, log) stays in ``workdir``; ``OAUTH_*`` settings from the environment do not
reach it.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from jupyterhub.utils import random_port

LOG_TAIL_LINES = 60
TESTER_SCOPES = ["admin:users", "admin:servers", "admin:auth_state", "read:groups"]
#: oauthenticator reads these from the environment; a hub under test takes its settings from its config only
OAUTH_ENV = ("OAUTH2_AUTHORIZE_URL", "OAUTH2_TOKEN_URL", "OAUTH2_USERDATA_URL", "OAUTH_CALLBACK_URL",
             "OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET")


class HubStartError(RuntimeError):
    """The hub did not come up; the message ends with the tail of its log."""


@dataclass
class HubProcess:
    url: str  #: ``http://127.0.0.1:<port>`` (the proxy's public address)
    token: str = field(repr=False)
    process: subprocess.Popen
    log_path: Path

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def api(self, method: str, path: str, body=None, timeout: float = 30.0):
        """``(status, json-or-None)`` of a REST call under ``/hub/api``."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}/hub/api{path}", data=data, method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, raw.decode(errors="replace")

    def login(self, username: str, password: str) -> bool:
        """Log in through the hub's login form, as a browser would; True if the hub let the user in.

        The redirect after a successful login is not followed (it would start the server).
        """
        jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
        with opener.open(f"{self.url}/hub/login", timeout=30) as resp:
            page = resp.read().decode()
        match = re.search(r'name="_xsrf"\s+value="([^"]+)"', page)
        form = {"username": username, "password": password}
        if match:
            form["_xsrf"] = match.group(1)
        req = urllib.request.Request(f"{self.url}/hub/login", data=urllib.parse.urlencode(form).encode(), method="POST")
        try:
            with opener.open(req, timeout=30) as resp:
                return False  # 200: the form again, with an error
        except urllib.error.HTTPError as err:
            if err.code != 302:
                return False
        return any(c.name == "jupyterhub-hub-login" for c in jar)

    def wait_for_server(self, username: str, ready: bool, timeout: float = 120.0) -> dict:
        """Poll until the user's default server is (or is no longer) ready; its model (or {})."""
        deadline = time.monotonic() + timeout
        while True:
            status, model = self.api("GET", f"/users/{username}")
            server = (model or {}).get("servers", {}).get("", {}) if status == 200 else {}
            if bool(server.get("ready")) == ready and (ready or not server):
                return server
            if self.process.poll() is not None:
                raise HubStartError(f"the hub exited ({self.process.returncode}):\n{self._tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{username}'s server ready={ready} not reached in {timeout}s: {server}\n{self._tail()}")
            time.sleep(0.5)

    def _tail(self) -> str:
        return "\n".join(self.log_text().splitlines()[-LOG_TAIL_LINES:])

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (the hub stops users' servers and its proxy), then SIGKILL the group.  Idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the proxy, if the hub left it behind
        except ProcessLookupError:
            pass
        self.process.wait()


def hub_ports() -> tuple[int, str]:
    """A free port for a hub's public address, and that address: for config that must name it before the start."""
    port = random_port()
    return port, f"http://127.0.0.1:{port}"


def start_hub(workdir: os.PathLike | str, config_lines: list[str], timeout: float = 90.0, env: dict | None = None,
              port: int | None = None, python: str = sys.executable) -> HubProcess:
    """Write ``jupyterhub_config.py`` (ports, proxy, API token + ``config_lines``) and start the hub.

    ``port`` is the public port (default: a free one).  ``JUPYTERHUB_CRYPT_KEY`` is set to a fresh
    key (auth_state needs one) unless ``env`` gives one; ``python`` is the interpreter whose
    JupyterHub runs (another virtual environment's, say).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port, hub_port, proxy_api_port = port or random_port(), random_port(), random_port()
    token = secrets.token_hex(32)
    config = [
        f"c.JupyterHub.bind_url = 'http://127.0.0.1:{port}'",
        f"c.JupyterHub.hub_bind_url = 'http://127.0.0.1:{hub_port}'",
        f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{proxy_api_port}'",
        f"c.JupyterHub.db_url = 'sqlite:///{workdir / 'jupyterhub.sqlite'}'",
        f"c.JupyterHub.cookie_secret_file = '{workdir / 'cookie_secret'}'",
        f"c.ConfigurableHTTPProxy.pid_file = '{workdir / 'proxy.pid'}'",
        "c.JupyterHub.services = [{'name': 'tester', 'api_token': %r}]" % token,
        "c.JupyterHub.load_roles = [{'name': 'tester', 'scopes': %r, 'services': ['tester']}]" % TESTER_SCOPES,
        "c.Spawner.http_timeout = 120",
        "c.Spawner.start_timeout = 120",
        *config_lines,
    ]
    config_path = workdir / "jupyterhub_config.py"
    config_path.write_text("\n".join(config) + "\n")
    log_path = workdir / "jupyterhub.log"
    hub_env = {k: v for k, v in os.environ.items() if k not in OAUTH_ENV}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [python, "-m", "jupyterhub", "-f", str(config_path)],
            cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**hub_env, "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32), **(env or {})},
        )
    hub = HubProcess(url=f"http://127.0.0.1:{port}", token=token, process=proc, log_path=log_path)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise HubStartError(f"the hub exited with status {proc.returncode}:\n{hub._tail()}")
            try:
                if hub.api("GET", "/", timeout=2.0)[0] == 200:
                    return hub
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise HubStartError(f"the hub did not answer within {timeout}s:\n{hub._tail()}")
            time.sleep(0.3)
    except BaseException:
        hub.stop()
        raise


@contextlib.contextmanager
def running_hub(workdir: os.PathLike | str, config_lines: list[str], **options):
    """:func:`start_hub` as a context manager: the hub is stopped on the way out, even on failure."""
    hub = start_hub(workdir, config_lines, **options)
    try:
        yield hub
    finally:
        hub.stop()
