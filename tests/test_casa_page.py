"""The casa page's parts without a server: what it reads from a session, the bundle, ``casa connect``'s checks.

A real bundle of credentials (``Facility.issue_bundle``, both master secrets configured) is written
as the local spawner writes it; the page's expiry times must be the ones the hub issued, and the
client bundle must hold the client's certificate and key and nothing else secret.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile

import pytest

from casa_hub import bundle as b
from casa_hub.errors import CasaError
from casa_session.connect import read_bundle
from casa_session.page.bundle import build_bundle, bundle_name
from casa_session.page.html import render_page
from casa_session.page.info import dashboard_link, session_info, token_expiry
from tests.casa_cli import run_casa
from tests.secret_scan import master_secret_forms

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def session(tmp_path, make_facility, master_secrets):
    facility = make_facility(domain="casa.test")
    issued = facility.issue_bundle("alice", now=NOW)
    creds = tmp_path / "credentials"
    issued.for_audience(b.NOTEBOOK).write_to(creds)
    env = {
        "CASA_SCHEDULER_ADDRESS": "tls://alice.dask.casa.test:8786",
        "CASA_CREDENTIALS": str(creds),
        "CASA_SCHEDULER_CONNECT_HOST": "127.0.0.1",
        "DASK_DISTRIBUTED__DASHBOARD__LINK": "http://127.0.0.1:8787/status",
    }
    return env, issued


def test_info_shows_every_credential_with_the_expiry_it_was_issued_with(session):
    env, issued = session
    info = session_info(env)
    assert info.connect_address == "tls://127.0.0.1:8786" and info.sni == "alice.dask.casa.test"
    shown = {c.path: c.expires_at for c in info.credentials}
    expected = {f.path: f.expires_at for f in issued.for_audience(b.NOTEBOOK).files}
    assert set(shown) == set(expected) == {"dask/ca.pem", "dask/client.pem", "dask/worker.pem", "bearer_token", "condor/tokens.d/casa"}
    for path, when in expected.items():
        assert abs((shown[path] - when).total_seconds()) < 1, path
    assert all(c.problem == "" for c in info.credentials)


def test_not_in_a_session_is_said_plainly():
    with pytest.raises(LookupError, match="CASA_SCHEDULER_ADDRESS"):
        session_info({})
    assert "not running in a casa session" in render_page(None, bundle_url="/b", user="alice")


def test_an_unreadable_token_is_shown_as_such(session):
    env, _ = session
    with open(f"{env['CASA_CREDENTIALS']}/bearer_token", "w") as fh:
        fh.write("garbage")
    token = next(c for c in session_info(env).credentials if c.path == "bearer_token")
    assert token.expires_at is None and token.problem.startswith("unreadable")
    with pytest.raises(ValueError):
        token_expiry("not-a-token")


def test_the_bundle_holds_the_client_credentials_and_nothing_else_secret(session, master_secrets):
    env, issued = session
    info = session_info(env)
    data = build_bundle(info)
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(zf.namelist()) == ["README.txt", "ca.pem", "casa-connection.json", "client.pem", "connect.py"]
    assert zf.read("client.pem") == issued.get(b.DASK_CLIENT_PATH).content
    assert zf.read("ca.pem") == issued.get(b.DASK_CA_PATH).content
    assert (zf.getinfo("client.pem").external_attr >> 16) & 0o777 == 0o600
    connection = json.loads(zf.read("casa-connection.json"))
    assert connection["connect_address"] == "tls://127.0.0.1:8786" and connection["sni"] == "alice.dask.casa.test"
    # never the scheduler's key, the worker certificate, a token, or a master secret
    everything = b"".join(zf.read(name) for name in zf.namelist())
    for name in (b.DASK_SCHEDULER_PATH, b.DASK_WORKER_PATH):  # their keys' base64 lines
        key = issued.get(name).content.split(b"-----BEGIN PRIVATE KEY-----")[1].split()[0]
        assert key not in everything, name
    for name in (b.BEARER_TOKEN_PATH, b.CONDOR_TOKEN_PATH):
        assert issued.get(name).content.strip() not in everything, name
    for label, forms in master_secret_forms(master_secrets).items():
        assert not any(form in everything or form in data for form in forms), label
    assert bundle_name(info) == "casa-bundle-alice.zip"


def test_the_page_shows_address_expiries_and_the_download(session):
    env, _ = session
    html = render_page(session_info(env), bundle_url="/user/alice/casa/bundle", user="alice<script>", now=NOW)
    assert "tls://alice.dask.casa.test:8786" in html and "tls://127.0.0.1:8786" in html
    assert "http://127.0.0.1:8787/status" in html and 'href="/user/alice/casa/bundle"' in html
    assert "alice&lt;script&gt;" in html and "<script>" not in html
    assert html.count("<td class='expires'>") == 5


@pytest.mark.parametrize("link, shown", [
    # what the spawners publish: the dashboard through the notebook server's jupyter-server-proxy
    ("{JUPYTERHUB_SERVICE_PREFIX}proxy/41234/status", "/user/alice/proxy/41234/status"),
    ("http://127.0.0.1:8787/status", "http://127.0.0.1:8787/status"),
    ("", ""),
    # distributed's default, {host} and {port}: only a client knows them, the page shows none
    ("{scheme}://{host}:{port}/status", ""),
    ("{JUPYTERHUB_SERVICE_PREFIX", ""),
])
def test_the_dashboard_link_is_filled_from_the_session_as_distributed_fills_it(session, link, shown):
    env, _ = session
    env = {**env, "JUPYTERHUB_SERVICE_PREFIX": "/user/alice/", "DASK_DISTRIBUTED__DASHBOARD__LINK": link}
    assert dashboard_link(env) == shown
    assert session_info(env).dashboard_link == shown
    html = render_page(session_info(env), bundle_url="/user/alice/casa/bundle", user="alice", now=NOW)
    assert (f"href='{shown}'" in html) if shown else ("not published for this session" in html)


def test_read_bundle_from_zip_and_directory(session, tmp_path):
    env, _ = session
    zipped = tmp_path / "bundle.zip"
    zipped.write_bytes(build_bundle(session_info(env)))
    bundle = read_bundle(zipped)
    assert bundle.connect_host == "127.0.0.1" and bundle.sni == "alice.dask.casa.test"
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(zipped).extractall(unpacked)
    assert read_bundle(unpacked) == bundle
    assert "BEGIN" not in repr(bundle)


def test_casa_connect_refuses_what_is_not_a_bundle(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    partial = tmp_path / "partial.zip"
    with zipfile.ZipFile(partial, "w") as zf:
        zf.writestr("ca.pem", "x")
    for path, message in ((tmp_path / "none.zip", "no such bundle"), (tmp_path / "notes.txt", "not a zip file"),
                          (partial, "client.pem, casa-connection.json missing")):
        result = run_casa("connect", str(path))
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(CasaError):
        read_bundle(partial)
