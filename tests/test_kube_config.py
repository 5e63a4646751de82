"""The ready-made Kubernetes configs (config/cms, config/opendata) load, name real traits, and agree
with each other: hub config, z2jh values, the hub's extra RBAC and Traefik's entry point."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml
from traitlets.config import PyFileConfigLoader

from casa_auth import CasaOAuthenticator
from casa_hub.facility import Facility
from casa_spawner.kube import CasaKubeSpawner
from tests.casa_kube_helpers import validate_kubernetes

CONFIG = Path(__file__).resolve().parents[1] / "config"
DEPLOYMENTS = ["cms", "opendata"]
ENV_VARS = ["CASA_PUBLIC_URL", "CASA_DASK_DOMAIN", "CASA_TRUST_DOMAIN", "CASA_COLLECTOR_HOST", "CASA_SCHEDD_HOST",
            "CASA_XCACHE_HOST", "CASA_KEYS_DIR", "CASA_SESSION_IMAGE"]


def load_config(deployment: str):
    path = CONFIG / deployment / "jupyterhub_config.py"
    return PyFileConfigLoader(path.name, path=str(path.parent)).load_config()


def load_yaml(deployment: str, name: str):
    return list(yaml.safe_load_all((CONFIG / deployment / name).read_text()))


@pytest.fixture(autouse=True)
def no_site_env(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def entry_point(group: str, name: str):
    (ep,) = [e for e in entry_points(group=group) if e.name == name]
    return ep.load()


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_config_loads_without_a_cluster_and_names_real_traits(deployment):
    cfg = load_config(deployment)
    assert entry_point("jupyterhub.spawners", cfg.JupyterHub.spawner_class) is CasaKubeSpawner
    assert entry_point("jupyterhub.authenticators", cfg.JupyterHub.authenticator_class) is CasaOAuthenticator
    for section, cls in [("CasaOAuthenticator", CasaOAuthenticator), ("CasaKubeSpawner", CasaKubeSpawner), ("Facility", Facility)]:
        known = set(cls.class_traits(config=True))
        unknown = set(cfg[section]) - known
        assert not unknown, f"{deployment}: {section} has no trait(s) {sorted(unknown)}"
    assert cfg.Authenticator.enable_auth_state is True

    fac = Facility(config=cfg)  # validators run: domain, templates, lifetimes
    assert fac.names("Alice@Example.org").scheduler_address.endswith(f".dask.{fac.domain}:8786")
    auth = CasaOAuthenticator(config=cfg)
    assert auth.oauth_callback_url.endswith("/hub/oauth_callback")
    assert auth.signup_url.startswith("https://")


def test_cms_admits_cms_members_with_iam():
    cfg = load_config("cms")
    auth = CasaOAuthenticator(config=cfg)
    assert auth.idp == "cms-iam" and auth.allowed_groups == {"cms"}
    assert "wlcg.groups" in auth.group_claims
    fac = Facility(config=cfg)
    assert fac.domain == "coffea.casa" and fac.xcache_site == "T2_US_Nebraska"
    assert fac.issues_condor_tokens and fac.issues_xcache_tokens


def test_opendata_admits_the_cilogon_group():
    cfg = load_config("opendata")
    auth = CasaOAuthenticator(config=cfg)
    assert auth.idp == "cilogon"
    assert auth.allowed_groups == {"CO:COU:OpenData Facility:members:active"}
    assert auth.group_claims == ["isMemberOf"]
    assert "org.cilogon.userinfo" in auth.scope
    fac = Facility(config=cfg)
    assert fac.domain == "coffea-opendataaf.casa"
    assert not fac.issues_xcache_tokens  # the bearer token is the CILogon access token


def test_site_values_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CASA_DASK_DOMAIN", "af.example.org")
    monkeypatch.setenv("CASA_KEYS_DIR", "/run/keys")
    fac = Facility(config=load_config("cms"))
    assert fac.domain == "af.example.org"
    assert fac.signing_key_file == "/run/keys/POOL"


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_z2jh_values_match_the_hub_config(deployment):
    (values,) = load_yaml(deployment, "values.yaml")
    cfg = load_config(deployment)
    hub = values["hub"]
    assert hub["config"]["JupyterHub"]["spawner_class"] == cfg.JupyterHub.spawner_class
    assert hub["config"]["JupyterHub"]["authenticator_class"] == cfg.JupyterHub.authenticator_class
    assert hub["extraFiles"]["casa-config"]["mountPath"].startswith("/usr/local/etc/jupyterhub/jupyterhub_config.d/")
    # secrets only by reference, never in the values
    for name in ["OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "JUPYTERHUB_CRYPT_KEY"]:
        assert set(hub["extraEnv"][name]) == {"valueFrom"}
    # the key files the Facility reads are where the init container puts them
    keys_dir = hub["extraEnv"]["CASA_KEYS_DIR"]
    assert Facility(config=cfg).signing_key_file.startswith(keys_dir + "/")
    (init,) = hub["initContainers"]
    assert init["command"][:3] == ["python3", "-m", "casa_session.credsync"] and "--once" in init["command"]
    assert init["command"][init["command"].index("--to") + 1] == keys_dir
    # the hub's extra containers and volumes are valid Kubernetes
    validate_kubernetes({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hub"},
        "spec": {
            "initContainers": hub["initContainers"],
            "containers": [{"name": "hub", "image": f"{hub['image']['name']}:{hub['image']['tag']}",
                            "volumeMounts": hub["extraVolumeMounts"]}],
            "volumes": hub["extraVolumes"],
        },
    })
    assert init["image"].startswith(hub["image"]["name"])  # the hub image has jupyterhub-casa


API_CALLS = {  # what casa_spawner.kube calls (its module docstring), as RBAC (group, resource, verb)
    ("", "secrets", "create"), ("", "secrets", "update"), ("", "secrets", "patch"), ("", "secrets", "delete"),
    ("", "services", "create"), ("", "services", "patch"), ("", "services", "delete"),
    ("traefik.io", "ingressroutetcps", "create"), ("traefik.io", "ingressroutetcps", "patch"),
    ("traefik.io", "ingressroutetcps", "delete"),
}


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_hub_rbac_grants_exactly_the_calls_the_spawner_makes(deployment):
    role, binding = load_yaml(deployment, "rbac.yaml")
    for obj in (role, binding):
        validate_kubernetes(obj)
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    cfg = load_config(deployment)
    group = cfg.CasaKubeSpawner.get("ingress_route_group", CasaKubeSpawner.ingress_route_group.default_value)
    needed = {(group if r == "ingressroutetcps" else g, r, v) for g, r, v in API_CALLS}
    assert granted == needed, {"missing": sorted(needed - granted), "not needed": sorted(granted - needed)}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hub", "namespace": role["metadata"]["namespace"]}]


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_traefik_has_the_dask_entry_point_the_routes_use(deployment):
    (values,) = load_yaml(deployment, "traefik-values.yaml")
    cfg = load_config(deployment)
    fac = Facility(config=cfg)
    assert values["providers"]["kubernetesCRD"]["enabled"] is True
    for entry_point_name in cfg.CasaKubeSpawner.ingress_route_entry_points:
        port = values["ports"][entry_point_name]
        assert port["protocol"] == "TCP"
        assert port["exposedPort"] == fac.dask_port
        assert port["expose"]["default"] is True
    # z2jh's network policy lets Traefik's pods reach the scheduler port of user pods
    (z2jh,) = load_yaml(deployment, "values.yaml")
    (rule,) = z2jh["singleuser"]["networkPolicy"]["ingress"]
    assert rule["ports"] == [{"port": fac.scheduler_port, "protocol": "TCP"}]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "traefik"}}}]
    (namespace,) = values["providers"]["kubernetesCRD"]["namespaces"]
    role, _ = load_yaml(deployment, "rbac.yaml")
    assert namespace == role["metadata"]["namespace"]
