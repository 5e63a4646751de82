"""``casa render``: the objects an operator reviews are the ones the spawner creates, valid, redacted,
stable between runs, and made without a cluster or the master keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from casa_spawner.kube import objects as ko
from tests.casa_cli import run_casa
from tests.casa_kube_helpers import validate_ingress_route_tcp, validate_kubernetes

REPO = Path(__file__).resolve().parents[1]
CMS = str(REPO / "config/cms/jupyterhub_config.py")
OPENDATA = str(REPO / "config/opendata/jupyterhub_config.py")


def casa(tmp_path, *args, kubeconfig=None):
    """The real CLI in a clean process: no KUBECONFIG, an empty HOME (so no ~/.kube/config)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG" and not k.startswith("CASA_")}
    env["HOME"] = str(tmp_path)
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    return run_casa(*args, env=env, cwd=tmp_path, timeout=120)


@pytest.fixture(scope="module")
def cms_render(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("render")
    done = casa(tmp, "render", "Alice@CERN.ch", "--config", CMS, "--namespace", "cmsaf")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_renders_every_object_valid_and_redacted(cms_render):
    docs = list(yaml.safe_load_all(cms_render))
    assert [d["kind"] for d in docs] == ["Pod", "Secret", "Secret", "Service", "IngressRouteTCP"]
    pod, creds, sched, service, route = docs
    for doc in docs:
        assert doc["metadata"]["namespace"] == "cmsaf"
    validate_kubernetes(pod)
    for doc in (creds, sched, service):
        validate_kubernetes(doc)
    validate_ingress_route_tcp(route)

    slug = pod["metadata"]["labels"][ko.SESSION_LABEL]
    assert route["spec"]["routes"][0]["match"] == f"HostSNI(`{slug}.dask.coffea.casa`)"
    for doc in (creds, sched, service, route):
        (owner,) = doc["metadata"]["ownerReferences"]
        assert owner["kind"] == "Pod" and owner["name"] == pod["metadata"]["name"]
    # Secret keys are shown for review, their values never
    assert set(creds["data"]) == {"condor__tokens.d__casa", "bearer_token", "dask__ca.pem", "dask__client.pem", "dask__worker.pem"}
    assert set(sched["data"]) == {"dask__ca.pem", "dask__scheduler.pem"}
    assert set(creds["data"].values()) == set(sched["data"].values()) == {"<redacted>"}
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["JUPYTERHUB_API_TOKEN"] == "<redacted>"
    assert env["BEARER_TOKEN_FILE"] == "/var/run/casa/credentials/bearer_token"


def test_no_credential_in_the_output(cms_render):
    for marker in ["-----BEGIN", "eyJ", "MDAx", "PRIVATE KEY"]:  # PEM, JWT, base64 of a macaroon / PEM
        assert marker not in cms_render


def test_output_is_stable_for_gitops_diffs(tmp_path, cms_render):
    again = casa(tmp_path, "render", "Alice@CERN.ch", "--config", CMS, "--namespace", "cmsaf")
    assert again.returncode == 0, again.stderr
    assert again.stdout == cms_render


def test_master_keys_are_never_read(tmp_path):
    """The CMS config points at /etc/casa/secrets/keys/*, which does not exist here; render still works."""
    assert not Path("/etc/casa/secrets/keys/POOL").exists()
    done = casa(tmp_path, "render", "bob", "--config", OPENDATA)
    assert done.returncode == 0, done.stderr
    creds = list(yaml.safe_load_all(done.stdout))[1]
    assert "condor__tokens.d__casa" in creds["data"] and "bearer_token" in creds["data"]


@pytest.mark.parametrize(
    "config_text, username, message",
    [
        (None, "alice", "does not exist"),
        ("c.JupyterHub.spawner_class = 'simple'\n", "alice", "needs c.JupyterHub.spawner_class = 'casa-kube'"),
        ("c.JupyterHub.spawner_class = 'casa-kube'\nc.Facility.domain = 'Bad_Domain'\n", "alice", "invalid Dask domain"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, config_text, username, message):
    config = tmp_path / "jupyterhub_config.py"
    if config_text is not None:
        config.write_text(config_text)
    done = casa(tmp_path, "render", username, "--config", str(config))
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
