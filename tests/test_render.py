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
from tests.paths import REFERENCE, REPO

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


# -- with the chart's values: the pod the chart deploys ----------------------------------

Z2JH_DEFAULTS = str(REFERENCE / "z2jh" / "values.yaml")
CMS_VALUES = str(REPO / "config/cms/values.yaml")


def render_with_values(tmp_path, *values, config=CMS, extra=()):
    args = ["render", "alice", "--config", config, "--namespace", "cmsaf", "--chart-values", Z2JH_DEFAULTS]
    for path in values:
        args += ["--values", str(path)]
    done = casa(tmp_path, *args, *extra)
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(done.stdout))


def images(pod) -> dict[str, str]:
    spec = pod["spec"]
    return {c["name"]: c["image"] for c in [*spec.get("initContainers", []), *spec["containers"]]}


def test_the_cms_values_put_the_facility_s_images_in_every_container(tmp_path):
    values = yaml.safe_load(Path(CMS_VALUES).read_text())
    facility_image = f"{values['singleuser']['image']['name']}:{values['singleuser']['image']['tag']}"
    hub_image = f"{values['hub']['image']['name']}:{values['hub']['image']['tag']}"
    pod, *_ = render_with_values(tmp_path, CMS_VALUES)
    validate_kubernetes(pod)
    shown = images(pod)
    assert shown["notebook"] == shown["dask-scheduler"] == facility_image
    # the credential-sync sidecar and its init container run jupyterhub-casa: the hub image
    assert {shown[n] for n in shown if n not in ("notebook", "dask-scheduler")} == {hub_image}
    # the chart's own settings are in the pod: scheduler, storage, resources, labels, uid/gid
    spec = pod["spec"]
    assert spec["schedulerName"] == "user-scheduler"
    assert {"name": "volume-alice", "persistentVolumeClaim": {"claimName": "claim-alice"}} in spec["volumes"]
    notebook = next(c for c in spec["containers"] if c["name"] == "notebook")
    assert notebook["resources"]["limits"]["memory"] == 8 * 1024**3
    assert spec["securityContext"]["fsGroup"] == 100
    assert pod["metadata"]["labels"]["app.kubernetes.io/instance"] == "casa"
    assert pod["metadata"]["labels"]["hub.jupyter.org/network-access-hub"] == "true"


def test_without_the_values_the_config_alone_is_shown(cms_render):
    """What `casa render` showed before: KubeSpawner's default image, not the facility's."""
    pod = next(yaml.safe_load_all(cms_render))
    assert images(pod)["notebook"] == "quay.io/jupyterhub/singleuser:latest"


def test_later_values_files_win_and_null_deletes(tmp_path):
    more = tmp_path / "more.yaml"
    more.write_text(
        "singleuser:\n"
        "  image: {tag: '2025.3.0'}\n"          # a map merges: the name stays
        "  extraLabels: null\n"                 # null deletes the chart's default label
        "  extraTolerations: [{key: gpu, operator: Exists}]\n"
        "scheduling: {userScheduler: {enabled: false}}\n"
    )
    pod, *_ = render_with_values(tmp_path, CMS_VALUES, more)
    assert images(pod)["notebook"] == "coffeateam/coffea-casa:2025.3.0"
    assert "hub.jupyter.org/network-access-hub" not in pod["metadata"]["labels"]
    assert "schedulerName" not in pod["spec"]
    assert {"key": "gpu", "operator": "Exists"} in pod["spec"]["tolerations"]
    # the other order: the CMS values win
    pod, *_ = render_with_values(tmp_path, more, CMS_VALUES)
    assert images(pod)["notebook"] == "coffeateam/coffea-casa:2024.11.0"
    assert pod["spec"]["schedulerName"] == "user-scheduler"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--values", CMS_VALUES], "--values needs --chart-values"),
        (["--values", "/nonexistent.yaml", "--chart-values", Z2JH_DEFAULTS], "values file /nonexistent.yaml does not exist"),
    ],
)
def test_bad_values_are_one_clear_line(tmp_path, args, message):
    done = casa(tmp_path, "render", "alice", "--config", CMS, *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_a_values_file_that_is_not_a_map_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    done = casa(tmp_path, "render", "alice", "--config", CMS, "--chart-values", Z2JH_DEFAULTS, "--values", str(bad))
    assert done.returncode == 2 and "must hold a map of values, not a list" in done.stderr
