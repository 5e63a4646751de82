"""config/local/jupyterhub_config.py loads the packaged one-machine configuration, then site overrides."""

import os
from pathlib import Path

from traitlets.config.loader import PyFileConfigLoader

import casa_spawner

REPO = Path(__file__).resolve().parents[1]


def load(path: Path, env: dict, monkeypatch):
    # the config generates JUPYTERHUB_CRYPT_KEY into os.environ when none is set: through
    # monkeypatch, so that it does not leak into the tests that run after this one
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return PyFileConfigLoader(path.name, path=str(path.parent)).load_config()


def test_the_packaged_config_ships_inside_the_package():
    packaged = Path(casa_spawner.LOCAL_HUB_CONFIG)
    assert packaged.is_file() and packaged.parent == Path(casa_spawner.__file__).parent / "local"


def test_repo_config_loads_the_packaged_settings(tmp_path, monkeypatch):
    cfg = load(REPO / "config" / "local" / "jupyterhub_config.py",
               {"CASA_LOCAL_STATE_DIR": str(tmp_path), "CASA_LOCAL_DOMAIN": "casa.test", "CASA_LOCAL_PORT": "8123"},
               monkeypatch)
    assert cfg.JupyterHub.spawner_class == "casa-local"
    assert cfg.JupyterHub.bind_url == "http://127.0.0.1:8123"
    assert cfg.Facility.domain == "casa.test"
    assert cfg.JupyterHub.db_url.endswith(f"{tmp_path}/jupyterhub.sqlite")
    assert len(bytes.fromhex(os.environ["JUPYTERHUB_CRYPT_KEY"])) == 32  # auth_state works without one set


def test_an_ipv6_address_is_bracketed_in_urls(tmp_path, monkeypatch):
    from casa_spawner.demo.command import DemoSettings

    assert DemoSettings(state_dir=tmp_path, ip="::1", port=8123).public_url == "http://[::1]:8123/"
    cfg = load(Path(casa_spawner.LOCAL_HUB_CONFIG),
               {"CASA_LOCAL_STATE_DIR": str(tmp_path), "CASA_LOCAL_IP": "::1", "CASA_LOCAL_PORT": "8123",
                "CASA_LOCAL_OIDC_ISSUER": "http://[::1]:9000/", "CASA_LOCAL_OIDC_CLIENT_ID": "casa"},
               monkeypatch)
    assert cfg.JupyterHub.bind_url == "http://[::1]:8123"
    assert cfg.CasaOAuthenticator.oauth_callback_url == "http://[::1]:8123/hub/oauth_callback"


def test_with_the_pool_and_the_xcache_every_session_setting_survives(tmp_path, monkeypatch):
    """The XCache's CA, the casa page's Jupyter config and the pool's settings all reach the notebook's
    environment (a CasaLocalSpawner.environment of its own once replaced Spawner.environment's)."""
    import casa_session.page
    from jupyterhub.objects import Hub

    from casa_spawner.local import CasaLocalSpawner
    from tests.fake_hub import FakeUser

    cfg = load(Path(casa_spawner.LOCAL_HUB_CONFIG), {
        "CASA_LOCAL_STATE_DIR": str(tmp_path), "CASA_LOCAL_MACAROON_SECRET_FILE": str(tmp_path / "secret"),
        "CASA_LOCAL_XCACHE_HOST": "https://localhost:1094", "CASA_LOCAL_XCACHE_CA_FILE": str(tmp_path / "xcache-ca.pem"),
        "CASA_LOCAL_CONDOR_SCHEDD": "casa@127.0.0.1", "CASA_LOCAL_CONDOR_COLLECTOR": "127.0.0.1:9618",
        "CASA_LOCAL_CONDOR_SIGNING_KEY_FILE": str(tmp_path / "key"), "CASA_LOCAL_WORKER_PYTHON": "/opt/worker/bin/python",
        "CASA_LOCAL_CONDOR_CREDD": "127.0.0.1:9620", "CASA_LOCAL_CONDOR_SBIN": "/opt/condor/sbin",
    }, monkeypatch)
    spawner = CasaLocalSpawner(user=FakeUser("alice"), hub=Hub(), config=cfg)
    assert spawner.environment == {
        "JUPYTER_CONFIG_PATH": casa_session.page.CONFIG_DIR, "XCACHE_CA_FILE": str(tmp_path / "xcache-ca.pem"),
        "CONDOR_CONFIG": "ONLY_ENV", "DASK_JOBQUEUE__CASA__PYTHON": "/opt/worker/bin/python",
    }
    assert cfg.Facility.data_token_service == "xcache" and cfg.Facility.credd_host == "127.0.0.1:9620"
    assert cfg.DataTokenStore.store_command == "/opt/condor/sbin/condor_store_cred"


def test_the_xcache_addresses_the_demo_gives_are_read_by_both_protocols(tmp_path, monkeypatch):
    from casa_hub.facility import Facility
    from casa_hub.plan import facility_environment
    from casa_session.xcache import XCache

    secret = tmp_path / "macaroon-secret"
    secret.write_bytes(b"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC1zZWNyZXQ=\n")
    secret.chmod(0o600)
    for host in ("https://localhost:41094", "root://localhost:41094"):
        cfg = load(REPO / "config" / "local" / "jupyterhub_config.py",
                   {"CASA_LOCAL_STATE_DIR": str(tmp_path), "CASA_LOCAL_MACAROON_SECRET_FILE": str(secret),
                    "CASA_LOCAL_XCACHE_HOST": host, "CASA_LOCAL_XCACHE_CA_FILE": str(tmp_path / "ca.pem")}, monkeypatch)
        env = {**facility_environment(Facility(config=cfg)), **cfg.Spawner.environment}
        xc = XCache(host=env["XCACHE_HOST"], ca_file=env["XCACHE_CA_FILE"], token_file="/t")
        assert xc.url("/store/user/alice/events.root", "root") == "root://localhost:41094//store/user/alice/events.root"
        assert xc.url("/store/user/alice/events.root", "https") == "https://localhost:41094/store/user/alice/events.root"
