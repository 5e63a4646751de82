"""The ready-made Kubernetes configs (config/cms, config/opendata) load, name real traits, and agree
with each other: hub config, z2jh values, the hub's extra RBAC and Traefik's entry point -- loaded both
by traitlets (``jupyterhub -f``) and as the z2jh chart's hub loads them, values checked against the
charts' own schemas (``shared/reference``)."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import jsonschema
import pytest
import yaml
from traitlets.config import PyFileConfigLoader

from casa_auth import CasaOAuthenticator
from casa_hub.facility import Facility
from casa_spawner.kube import CasaKubeSpawner
from casa_spawner.kube.chart import chart_values, hub_environment, read_values
from tests.casa_kube_helpers import validate_kubernetes
from tests.paths import REFERENCE
from tests.z2jh_hub import CONFIG, load_config_d, site_values, z2jh_schema

DEPLOYMENTS = ["cms", "opendata"]
ENV_VARS = ["CASA_PUBLIC_URL", "CASA_DASK_DOMAIN", "CASA_TRUST_DOMAIN", "CASA_COLLECTOR_HOST", "CASA_SCHEDD_HOST",
            "CASA_XCACHE_HOST", "CASA_XCACHE_HTTPS_HOST", "CASA_KEYS_DIR", "CASA_SESSION_IMAGE"]


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


@pytest.mark.parametrize("loader", ["plain", "chart"])
async def test_the_shipped_xcache_addresses_are_read_as_shipped(chart_hub, loader, monkeypatch):
    """The CMS notebooks' XCACHE_HOST (root://, as physicists read CMS data) works by both protocols;
    the Open Data facility has no XCache (its notebooks say so when asked to read through one)."""
    from casa_hub.plan import facility_environment
    from casa_session.xcache import XCache, XCacheError

    cfg = chart_hub("cms")[0] if loader == "chart" else load_config("cms")
    env = facility_environment(CasaKubeSpawner(config=cfg, _mock=True).facility)  # what the session plan gives notebooks
    assert env["XCACHE_HOST"] == "root://red-xcache1.unl.edu:1094" and "XCACHE_HTTPS_HOST" not in env
    xc = XCache(host=env["XCACHE_HOST"], token_file="/t")
    assert xc.protocol == "root" and xc.url("/store/mc/x.root") == "root://red-xcache1.unl.edu:1094//store/mc/x.root"
    assert xc.url("/store/mc/x.root", "https") == "https://red-xcache1.unl.edu:1094/store/mc/x.root"
    monkeypatch.setenv("CASA_XCACHE_HTTPS_HOST", "https://red-xcache1.unl.edu:8443")
    env = facility_environment(Facility(config=load_config("cms")))
    assert XCache(host=env["XCACHE_HOST"], https_host=env["XCACHE_HTTPS_HOST"], token_file="/t").url("/store/x", "https") == \
        "https://red-xcache1.unl.edu:8443/store/x"
    opendata = Facility(config=chart_hub("opendata")[0] if loader == "chart" else load_config("opendata"))
    monkeypatch.delenv("XCACHE_HOST", raising=False)
    assert "XCACHE_HOST" not in facility_environment(opendata)
    with pytest.raises(XCacheError, match="XCACHE_HOST is not set"):
        XCache(token_file="/t")


def test_an_xcache_address_that_cannot_carry_a_token_is_refused_at_load():
    from casa_hub.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="expected root://host:port or roots://host:port or https://host:port"):
        Facility(xcache_host="http://xcache.example.org:8000")
    with pytest.raises(ConfigurationError, match="xcache_https_host.*expected https://host:port"):
        Facility(xcache_https_host="root://xcache.example.org:1094")


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
    for name in ["OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET"]:
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


# -- as the charts take them ---------------------------------------------------------------

CRYPT_KEYS = "a" * 64 + ";" + "b" * 64  # what the chart's Secret holds: hex keys joined by ';'


@pytest.fixture
def chart_hub(tmp_path, monkeypatch):
    """Load a deployment's config the way the z2jh chart's hub does, with hub.extraEnv in the environment."""

    Facility.clear_instance()  # the spawners' shared Facility is built from the config of the first spawner

    def load(deployment: str):
        values = site_values(deployment)
        for name, value in hub_environment(values).items():
            monkeypatch.setenv(name, value)
        return load_config_d(values, tmp_path, {"hub.config.CryptKeeper.keys": CRYPT_KEYS})

    yield load
    Facility.clear_instance()


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
async def test_the_chart_s_hub_loads_the_config(chart_hub, deployment):
    cfg, namespace = chart_hub(deployment)
    assert namespace["get_config"]("hub.image.name") == "ghcr.io/coffeateam/jupyterhub-casa-hub"  # still z2jh's get_config
    assert entry_point("jupyterhub.spawners", cfg.JupyterHub.spawner_class) is CasaKubeSpawner
    assert entry_point("jupyterhub.authenticators", cfg.JupyterHub.authenticator_class) is CasaOAuthenticator
    auth = CasaOAuthenticator(config=cfg)
    assert auth.enable_auth_state and auth.allowed_groups
    spawner = CasaKubeSpawner(config=cfg, _mock=True)
    (values,) = load_yaml(deployment, "values.yaml")
    image = f"{values['singleuser']['image']['name']}:{values['singleuser']['image']['tag']}"
    assert spawner.image == image  # the chart's KubeSpawner settings still apply to CasaKubeSpawner
    assert spawner.scheduler_name == "user-scheduler" and spawner.uid == 1000
    assert spawner.facility.domain == values["hub"]["extraEnv"]["CASA_DASK_DOMAIN"]  # hub.extraEnv reached the config
    assert spawner.credsync_image == values["hub"]["extraEnv"]["CASA_SESSION_IMAGE"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_both_loaders_give_the_same_settings(chart_hub, deployment):
    chart_cfg, _ = chart_hub(deployment)  # sets hub.extraEnv in the environment, which both loaders read
    plain = load_config(deployment)
    for section in plain:
        assert chart_cfg[section] == {**chart_cfg[section], **plain[section]}, section


def test_a_file_that_calls_get_config_fails_under_the_chart(tmp_path):
    """The check above could fail: z2jh's get_config needs a key (the crash this file used to cause)."""
    values = site_values("cms")
    values["hub"]["extraFiles"]["casa-config"]["stringData"] = "c = get_config()\nc.Facility.domain = 'x'\n"
    with pytest.raises(TypeError, match="key"):
        load_config_d(values, tmp_path, {"hub.config.CryptKeeper.keys": CRYPT_KEYS})


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_auth_state_is_encrypted_with_the_chart_s_key(chart_hub, deployment, monkeypatch):
    from jupyterhub.crypto import CryptKeeper

    (values,) = load_yaml(deployment, "values.yaml")
    assert "JUPYTERHUB_CRYPT_KEY" not in values["hub"]["extraEnv"]  # the chart would ignore it: c.CryptKeeper.keys wins
    cfg, _ = chart_hub(deployment)
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "c" * 64)
    keeper = CryptKeeper(config=cfg)
    assert keeper.keys == [bytes.fromhex(k) for k in CRYPT_KEYS.split(";")]
    token = keeper._encrypt({"access_token": "x"})
    # a key rotated behind a new one still opens what it encrypted
    assert CryptKeeper(keys=[bytes.fromhex("d" * 64), bytes.fromhex("a" * 64)])._decrypt(token) == {"access_token": "x"}


def schema_errors(schema: dict, values: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(values)]


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_z2jh_values_pass_the_chart_s_schema(deployment):
    assert schema_errors(z2jh_schema(), site_values(deployment)) == []


def test_the_z2jh_schema_check_can_fail():
    values = site_values("cms")
    values["hub"]["extraFiles"]["casa-config"]["mountPth"] = "/typo"
    values["singleuser"]["cloudMetadata"]["blockWithIptables"] = "no"
    errors = schema_errors(z2jh_schema(), values)
    assert any("mountPth" in e for e in errors) and any("blockWithIptables" in e for e in errors)


TRAEFIK_CHART = REFERENCE / "traefik-helm-chart"


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_traefik_values_pass_the_chart_s_schema(deployment):
    schema = json.loads((TRAEFIK_CHART / "values.schema.json").read_text())
    assert yaml.safe_load((TRAEFIK_CHART / "Chart.yaml").read_text())["version"] == "41.3.0"
    values = chart_values(read_values(TRAEFIK_CHART / "values.yaml"), read_values(CONFIG / deployment / "traefik-values.yaml"))
    assert schema_errors(schema, values) == []
    web, websecure = values["ports"]["web"], values["ports"]["websecure"]
    assert web["http"]["redirections"]["entryPoint"] == {"to": "websecure", "scheme": "https"}
    assert websecure["http"]["tls"]["enabled"] is True


def test_the_traefik_schema_refuses_the_pre_39_layout():
    """What the charts refused before: entry-point options beside ``http``."""
    schema = json.loads((TRAEFIK_CHART / "values.schema.json").read_text())
    old = read_values(CONFIG / "cms" / "traefik-values.yaml")
    old["ports"]["websecure"]["tls"] = old["ports"]["websecure"].pop("http")["tls"]
    errors = schema_errors(schema, chart_values(read_values(TRAEFIK_CHART / "values.yaml"), old))
    assert any("'tls' was unexpected" in e for e in errors), errors


@pytest.mark.parametrize("loader", ["traitlets", "chart"])
async def test_cms_sessions_get_the_site_s_schedd_and_the_slides_docker_universe(chart_hub, loader):
    import dask.config

    cfg = chart_hub("cms")[0] if loader == "chart" else load_config("cms")
    spawner = CasaKubeSpawner(config=cfg, _mock=True)
    assert spawner.facility.schedd_host == "t3.unl.edu" and spawner.facility.collector_host == "red-condor.unl.edu:9619"
    env = spawner.environment
    assert env["CONDOR_CONFIG"] == "ONLY_ENV"
    casa = dask.config.collect_env(env)["jobqueue"]["casa"]  # as dask reads the notebook's environment
    assert casa["universe"] == "docker" and casa["worker_image"] == "coffeateam/coffea-casa-analysis:latest"
    assert casa["job_extra_directives"] == {"container_service_names": "dask", "dask_container_port": 8786}
    assert casa["cores"] == 2 and casa["memory"] == "6 GiB" and casa["python"] == "python3"
