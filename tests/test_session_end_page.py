"""A real hub stops a session whose Dask certificates are about to expire, and its home page says why.

JupyterHub (subprocess), casa's login pages and home page, CasaLocalSpawner with the real
``jupyterhub-singleuser``: alice's certificates live 75 s and sessions stop 45 s before that, so the
hub's own 1-second poll stops her server about 30 s after its start -- no request of hers involved.
Her next visit to /hub/home shows the message, and the server is gone from the REST API.
"""

from __future__ import annotations

import re
import time

import pytest
import requests

from tests.hub_process import running_hub

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def logged_in_session(hub, username: str, password: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{hub.url}/hub/login", timeout=30).text
    xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', page)
    form = {"username": username, "password": password, **({"_xsrf": xsrf.group(1)} if xsrf else {})}
    answer = session.post(f"{hub.url}/hub/login?next=/hub/home", data=form, allow_redirects=False, timeout=30)
    assert answer.status_code == 302, answer.text[:500]
    return session


def test_the_hub_stops_a_session_before_its_certificates_expire_and_says_so(tmp_path):
    config = [
        "import casa_auth",
        "c.JupyterHub.template_paths = [casa_auth.TEMPLATE_DIR]",
        "c.JupyterHub.authenticator_class = 'casa-dummy'",
        "c.CasaDummyAuthenticator.users = {'alice': {'password': 'alice-pw'}}",
        "c.JupyterHub.spawner_class = 'casa-local'",
        f"c.CasaLocalSpawner.state_dir = {str(tmp_path / 'state')!r}",
        f"c.CasaLocalSpawner.routes_dir = {str(tmp_path / 'routes')!r}",
        "c.Spawner.poll_interval = 1",
        "c.Facility.domain = 'casa.test'",
        "c.Facility.tls_lifetime = 75",
        "c.SessionRefresh.certificate_margin = 45",
    ]
    with running_hub(tmp_path / "hub", config) as hub:
        browser = logged_in_session(hub, "alice", "alice-pw")
        assert "casa-session-ended" not in browser.get(f"{hub.url}/hub/home", timeout=30).text
        status, body = hub.api("POST", "/users/alice/server")
        assert status in (201, 202), f"{body}\n{hub.log_text()[-3000:]}"
        hub.wait_for_server("alice", ready=True)
        started = time.monotonic()
        hub.wait_for_server("alice", ready=False, timeout=90)  # stopped by the hub itself
        assert time.monotonic() - started < 75  # before the certificates expired
        page = browser.get(f"{hub.url}/hub/home", timeout=30).text
        message = re.search(r'id="casa-session-ended"[^>]*>([^<]+)<', page)
        assert message, page[-2000:]
        assert "Dask certificates expire at" in message.group(1) and "Start a new server" in message.group(1)
        assert not list((tmp_path / "routes").glob("*.yml"))  # the route went with the session
        assert "session-ended user=alice reason=certificates-expire" in hub.log_text()
