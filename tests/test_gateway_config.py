"""The ready configuration of a dask-gateway in front of the CMS pool (config/cms-gateway) loads,
names real traits, configures the pool through the same ``c.Facility`` values as the CMS hub, and
registers the gateway as a JupyterHub service users may reach."""

from __future__ import annotations

from pathlib import Path

import pytest
from dask_gateway_server.app import DaskGateway
from dask_gateway_server.auth import JupyterHubAuthenticator
from dask_gateway_server.proxy import Proxy
from jupyterhub.app import JupyterHub
from kubespawner import KubeSpawner
from traitlets.config import PyFileConfigLoader

from casa_hub.facility import Facility
from casa_spawner.gateway import HTCondorBackend, HTCondorClusterConfig

CONFIG = Path(__file__).resolve().parents[1] / "config"
SITE_ENV = ["CASA_DASK_DOMAIN", "CASA_TRUST_DOMAIN", "CASA_COLLECTOR_HOST", "CASA_SCHEDD_HOST", "CASA_KEYS_DIR",
            "CASA_GATEWAY_URL", "CASA_GATEWAY_IMAGE", "CASA_PUBLIC_URL", "CASA_GATEWAY_TCP_ADDRESS"]


def load(*parts):
    path = CONFIG.joinpath(*parts)
    return PyFileConfigLoader(path.name, path=str(path.parent)).load_config()


@pytest.fixture(autouse=True)
def no_site_env(monkeypatch):
    for var in SITE_ENV:
        monkeypatch.delenv(var, raising=False)
    yield
    Facility.clear_instance()


def test_the_gateway_config_names_only_real_traits():
    cfg = load("cms-gateway", "dask_gateway_config.py")
    for section, cls in [("DaskGateway", DaskGateway), ("Proxy", Proxy), ("JupyterHubAuthenticator", JupyterHubAuthenticator),
                         ("HTCondorBackend", HTCondorBackend), ("HTCondorClusterConfig", HTCondorClusterConfig),
                         ("Facility", Facility)]:
        unknown = set(cfg[section]) - set(cls.class_traits(config=True))
        assert unknown == set(), f"{section}: {unknown}"
    assert cfg.DaskGateway.backend_class == "casa_spawner.gateway.HTCondorBackend"


def test_the_gateway_and_the_cms_hub_configure_the_same_pool():
    gateway, hub = load("cms-gateway", "dask_gateway_config.py"), load("cms", "jupyterhub_config.py")
    for trait in ("domain", "trust_domain", "collector_host", "schedd_host", "signing_key_file", "condor_token_lifetime"):
        assert gateway.Facility[trait] == hub.Facility[trait], trait
    Facility.clear_instance()
    backend = HTCondorBackend(config=gateway)
    assert backend.facility.condor_identity_of("alice") == "alice@red-condor.unl.edu"
    tools = backend.condor_tools()
    assert tools.environment["_CONDOR_SCHEDD_HOST"] == "t3.unl.edu"
    fields = {f["field"]: f for f in backend.cluster_options.get_specification()}
    assert fields["worker_cores"]["spec"]["max"] == 8 and fields["worker_memory"]["spec"]["max"] == 32
    assert fields["image"]["spec"]["options"] == ["coffea"]
    cluster = HTCondorClusterConfig(config=gateway)
    assert cluster.image.startswith("/cvmfs/unpacked.cern.ch/") and "+AccountingGroup" in cluster.job_extra_directives


def test_the_hub_registers_the_gateway_as_a_service_users_may_reach(monkeypatch):
    monkeypatch.setenv("DASK_GATEWAY_API_TOKEN", "t" * 64)
    cfg = load("cms", "jupyterhub_config.py")
    cfg.merge(load("cms-gateway", "jupyterhub_services.py"))
    hub = JupyterHub(config=cfg)
    (service,) = [s for s in hub.services if s["name"] == "dask-gateway"]
    assert service["api_token"] == "t" * 64 and service["url"].startswith("http")
    (user_role,) = [r for r in hub.load_roles if r["name"] == "user"]
    assert "access:services!service=dask-gateway" in user_role["scopes"]
    assert "environment" in KubeSpawner.class_traits(config=True)
    env = cfg.KubeSpawner.environment  # what config/cms set (a dict), updated; or only the update (a lazy value)
    env = env.get_value({}) if hasattr(env, "get_value") else env
    assert env["DASK_GATEWAY__AUTH__TYPE"] == "jupyterhub"
    assert env["DASK_GATEWAY__ADDRESS"].endswith("/services/dask-gateway")
    assert load("cms-gateway", "dask_gateway_config.py").Proxy.prefix == "/services/dask-gateway"
