"""The physicist's path on the one-machine facility (``casa demo``), in Chromium and from a "laptop".

alice logs in with a browser, opens her casa page (``/user/alice/casa/``: scheduler address,
dashboard, every credential's expiry), and downloads her client bundle.  A process with nothing
of the notebook's environment (no ``CASA_*``, no ``DASK_*``, another home) runs ``casa connect``
with the bundle: it dials Traefik's Dask entry point with alice's scheduler name as SNI and runs a
task on workers of her session.  bob's bundle, pointed at alice's scheduler, is refused; bob's
browser session cannot fetch alice's bundle.  A screenshot of the casa page goes to ``artifacts/``.
(The example notebook and the Dask panes: ``tests/test_example_notebook.py``.)
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from casa_session.cluster import CasaCluster, LocalProcessWorkers, SchedulerConnection
from tests.casa_cli import casa_command
from tests.secret_scan import base64_file_forms
from tests.test_demo import CHROMIUM_ARGS, start_demo, stop_demo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    running = start_demo(tmp_path_factory.mktemp("demo"))
    try:
        yield running
    finally:
        stop_demo(running)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


def browser_login(browser, demo, user: str):
    """A browser context logged in as ``user`` with a running JupyterLab."""
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(180_000)
    page.goto(f"{demo.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", "demo")
    page.click("#login_submit")
    page.wait_for_url(re.compile(rf".*/user/{user}/lab.*"))
    demo.remember_processes()
    return context, page


@pytest.fixture(scope="module")
def alice(browser, demo):
    context, page = browser_login(browser, demo, "alice")
    yield context, page
    context.close()


@pytest.fixture(scope="module")
def bob(browser, demo):
    context, page = browser_login(browser, demo, "bob")
    yield context, page
    context.close()


def download_bundle(page, demo, user: str, path: Path) -> Path:
    page.goto(f"{demo.url}/user/{user}/casa/")
    page.wait_for_selector("#bundle")
    with page.expect_download() as download:
        page.click("#bundle")
    download.value.save_as(path)
    return path


def notebook_environment(demo, user: str) -> dict[str, str]:
    """The environment of ``user``'s running notebook server (what her kernels get)."""
    for pid in demo.seen_pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
        if b"jupyterhub-singleuser" in cmdline and env.get("JUPYTERHUB_USER") == user:
            return env
    raise AssertionError(f"no notebook server of {user} among the demo's processes")


def laptop_environment(tmp_path: Path) -> dict[str, str]:
    """Nothing of a session: PATH and a fresh home only."""
    home = tmp_path / "laptop-home"
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}


def casa_connect(bundle: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([casa_command(), "connect", str(bundle), *args], env=laptop_environment(tmp_path), cwd=tmp_path,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)


def test_alice_sees_her_casa_page(demo, alice):
    _, page = alice
    page.goto(f"{demo.url}/user/alice/casa/")
    address = f"tls://alice.dask.localhost:{demo.dask_port}"
    assert page.inner_text("#scheduler-address") == address
    assert page.inner_text("#connect-address") == f"tls://127.0.0.1:{demo.dask_port}"  # no wildcard DNS here: SNI
    assert re.fullmatch(r"/user/alice/proxy/\d+/status", page.inner_text("#dashboard"))  # through her server's proxy
    expiries = page.locator("#credentials td.expires").all_inner_texts()
    assert len(expiries) == 4  # CA, client, worker certificates and the XCache token (no HTCondor in the demo)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", e) for e in expiries), expiries
    token_row = page.inner_text("#cred-bearer_token")
    assert "XCache" in token_row and re.search(r"\d+ h \d+ min", token_row)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "casa-page.png"), full_page=True)


def test_bob_cannot_fetch_alices_bundle_or_page(demo, bob, alice):
    context, _ = bob
    for path in ("/user/alice/casa/bundle", "/user/alice/casa/"):
        resp = context.request.get(f"{demo.url}{path}")
        assert resp.status == 403, (path, resp.status, resp.url)
        assert b"BEGIN" not in resp.body()
    own = context.request.get(f"{demo.url}/user/bob/casa/bundle")
    assert own.status == 200 and own.headers["content-type"] == "application/zip"
    # and without any session at all: the hub's login, never the bundle
    anonymous = requests.get(f"{demo.url}/user/alice/casa/bundle", timeout=60)
    assert "BEGIN" not in anonymous.text and "application/zip" not in anonymous.headers.get("content-type", "")


def alice_workers(demo) -> CasaCluster:
    return CasaCluster(SchedulerConnection.from_environment(notebook_environment(demo, "alice")), LocalProcessWorkers())


def test_a_laptop_connects_with_alices_bundle_and_computes(demo, alice, tmp_path):
    _, page = alice
    bundle = download_bundle(page, demo, "alice", tmp_path / "casa-bundle-alice.zip")
    names = sorted(zipfile.ZipFile(bundle).namelist())
    assert names == ["README.txt", "ca.pem", "casa-connection.json", "client.pem", "connect.py"]
    cluster = alice_workers(demo)
    try:
        cluster.scale(1)
        with cluster.get_client(timeout="60s") as client:
            client.wait_for_workers(1, timeout=120)
        result = casa_connect(bundle, tmp_path, "--compute", "--timeout", "60s")
        assert result.returncode == 0, result.stdout + result.stderr
        # through Traefik's dask entry point, routed by the name alone
        assert f"dialled tls://127.0.0.1:{demo.dask_port}, TLS SNI alice.dask.localhost: <Client:" in result.stdout
        assert "processes=1" in result.stdout and "sum(range(100)) on the workers = 4950" in result.stdout
        # the bundle's own snippet, with only distributed: the same
        snippet_dir = tmp_path / "unpacked"
        zipfile.ZipFile(bundle).extractall(snippet_dir)
        snippet = subprocess.run([sys.executable, "connect.py"], cwd=snippet_dir, env=laptop_environment(tmp_path),
                                 capture_output=True, text=True, timeout=120)
        assert snippet.returncode == 0 and "<Client:" in snippet.stdout, snippet.stderr
    finally:
        cluster.close()


def test_bobs_bundle_is_refused_by_alices_scheduler(demo, bob, tmp_path):
    _, page = bob
    bundle = download_bundle(page, demo, "bob", tmp_path / "casa-bundle-bob.zip")
    assert casa_connect(bundle, tmp_path, "--timeout", "60s").returncode == 0  # his own scheduler admits him
    members = {n: zipfile.ZipFile(bundle).read(n) for n in zipfile.ZipFile(bundle).namelist()}
    info = json.loads(members["casa-connection.json"])
    info.update(scheduler_address=f"tls://alice.dask.localhost:{demo.dask_port}", sni="alice.dask.localhost")
    members["casa-connection.json"] = json.dumps(info).encode()
    at_alice = tmp_path / "bob-at-alice.zip"
    with zipfile.ZipFile(at_alice, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    refused = casa_connect(at_alice, tmp_path, "--timeout", "10s")
    assert refused.returncode == 2 and "could not connect" in refused.stderr, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_bundle_from_the_page_is_the_one_a_download_gets(demo, alice):
    context, _ = alice
    resp = context.request.get(f"{demo.url}/user/alice/casa/bundle")
    assert resp.status == 200 and "casa-bundle-alice.zip" in resp.headers["content-disposition"]
    assert resp.headers["cache-control"] == "no-store"
    zf = zipfile.ZipFile(io.BytesIO(resp.body()))
    creds = demo.state_dir / "sessions" / "users" / "alice" / "credentials"
    assert zf.read("client.pem") == (creds / "dask" / "client.pem").read_bytes()
    assert not (creds / "dask" / "scheduler.pem").exists()
    scheduler_key = (demo.state_dir / "sessions" / "users" / "alice" / "scheduler" / "dask" / "scheduler.pem").read_bytes()
    key_line = scheduler_key.split(b"-----BEGIN PRIVATE KEY-----")[1].split()[0]
    everything = b"".join(zf.read(name) for name in zf.namelist())
    assert key_line not in everything
    token = (creds / "bearer_token").read_bytes().strip()
    assert token not in everything
    for form in base64_file_forms((demo.state_dir / "secrets" / "macaroon-secret").read_bytes()):
        assert form not in everything and form not in resp.body()
