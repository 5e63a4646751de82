"""``casa check-config``: every problem of a bad configuration in one line each, exit 1; shipped configs pass.

The table's configurations are one good kube-facility config plus one change each; each case
names the words its one line must hold.  The shipped configs are checked by the console script
with their keys in place (``CASA_KEYS_DIR``), as an operator runs it before ``helm upgrade``.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest

from casa_hub.check_config import check_config
from tests.casa_cli import run_casa
from tests.paths import REFERENCE, REPO
from tests.secret_files import write_secret_file

CRDS = str(REFERENCE / "traefik-crds-v1.yml")

GOOD = """\
c = c  # noqa: F821
c.JupyterHub.authenticator_class = "casa"
c.Authenticator.enable_auth_state = True
c.CasaOAuthenticator.idp = "cms-iam"
c.CasaOAuthenticator.allowed_groups = {{"cms"}}
c.JupyterHub.spawner_class = "casa-kube"
c.Facility.domain = "coffea.casa"
c.Facility.trust_domain = "red-condor.unl.edu"
c.Facility.schedd_host = "t3.unl.edu"
c.Facility.signing_key_file = "{keys}/POOL"
c.Facility.macaroon_secret_file = "{keys}/macaroon-secret"
c.Facility.xcache_paths = ["/store/user/{{username}}"]
"""


def write_keys(directory: Path) -> Path:
    directory.mkdir(exist_ok=True)
    write_secret_file(directory / "POOL", secrets.token_bytes(64))
    write_secret_file(directory / "macaroon-secret", base64.b64encode(secrets.token_bytes(32)))
    return directory


def write_config(tmp_path: Path, extra: str = "") -> Path:
    keys = write_keys(tmp_path / "keys")
    path = tmp_path / "jupyterhub_config.py"
    path.write_text(GOOD.format(keys=keys) + extra + "\n")
    return path


def short_key(keys: Path) -> None:
    write_secret_file(keys / "POOL", b"0123456789abcdef")


def open_macaroon(keys: Path) -> None:
    (keys / "macaroon-secret").chmod(0o644)


def short_macaroon(keys: Path) -> None:
    write_secret_file(keys / "macaroon-secret", base64.b64encode(b"x" * 16))


def missing_key(keys: Path) -> None:
    (keys / "POOL").unlink()


def key_is_a_directory(keys: Path) -> None:
    (keys / "POOL").unlink()
    (keys / "POOL").mkdir()


BAD = [
    # (id, extra config lines, change to the key files, words of the one problem line)
    ("key-missing", "", missing_key, ["signing_key_file", "does not exist"]),
    ("key-unreadable", "", key_is_a_directory, ["signing_key_file", "not a regular file"]),
    ("key-too-open", "", open_macaroon, ["macaroon_secret_file", "readable by group or others", "chmod 600"]),
    ("key-too-short", "", short_key, ["signing_key_file", "holds 16 bytes", "at least 32"]),
    ("macaroon-too-short", "", short_macaroon, ["macaroon_secret_file", "decodes to 16 bytes"]),
    ("domain", 'c.Facility.domain = "coffea_casa.org"', None, ["Dask domain", "coffea_casa", "not a DNS label"]),
    ("trust-domain", 'c.Facility.trust_domain = "red condor"', None, ["Facility.trust_domain", "invalid HTCondor trust domain"]),
    ("macaroon-lifetime", "c.Facility.xcache_token_lifetime = 2 * 86400", None, ["xcache_token_lifetime=172800", "xcache_max_lifetime=86400"]),
    ("server-limit-lowered", "c.Facility.xcache_max_lifetime = 3600", None, ["xcache_token_lifetime=43200", "xcache_max_lifetime=3600"]),
    ("renewed-too-late", "c.Facility.condor_token_lifetime = 60", None, ["condor_token_lifetime=60", "30s between renewal checks"]),
    ("template-field", 'c.Facility.condor_identity = "{user}@{trust_domain}"', None, ["Facility.condor_identity", "unknown field {user}"]),
    ("template-expand", 'c.Facility.xcache_paths = ["/store/user/{username:d}"]', None,
     ["Facility.xcache_paths", "does not expand for user 'Jane.Doe'", "ValueError", "format code"]),
    ("template-result", 'c.Facility.xcache_paths = ["store/{username}"]', None, ["cannot be issued", "absolute path"]),
    ("typo", 'c.Facility.domian = "coffea.casa"', None, ["Facility.domian is not a setting"]),
    ("authenticator", 'c.JupyterHub.authenticator_class = "dummy"', None, ["authenticator_class 'dummy' is not casa's"]),
    ("authenticator-unset", "del c.JupyterHub.authenticator_class", None, ["authenticator_class is not set", "PAMAuthenticator"]),
    ("auth-state", "c.Authenticator.enable_auth_state = False", None, ["enable_auth_state is False"]),
    ("nobody-allowed", "c.CasaOAuthenticator.allowed_groups = set()", None, ["nobody can log in"]),
    ("spawner", 'c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"', None, ["spawner_class 'kubespawner.KubeSpawner' is not one of casa's"]),
    ("spawner-import", 'c.JupyterHub.spawner_class = "casa_spawner.kube.NoSuchSpawner"', None, ["spawner_class", "cannot be imported"]),
    ("certificate-margin", "c.Facility.tls_lifetime = 3600\nc.SessionRefresh.certificate_margin = 3600", None,
     ["certificate_margin=3600 is not below Facility.tls_lifetime=3600"]),
    ("refresh-mode", 'c.SessionRefresh.on_access_lost = "ignore"', None, ["SessionRefresh", "on_access_lost", "ignore"]),
    ("credd-service", 'c.Facility.data_token_service = "x_cache"', None, ["Facility.data_token_service", "not an HTCondor OAuth service name"]),
    ("credd-without-idtokens", 'c.Facility.data_token_service = "xcache"\nc.Facility.signing_key_file = ""', None,
     ["data_token_service='xcache' needs Facility.signing_key_file"]),
    ("route-group", 'c.CasaKubeSpawner.ingress_route_group = "traefik.containo.us"', None,
     ["traefik.containo.us/v1alpha1 ingressroutetcps", "define no such IngressRouteTCP", "traefik.io/v1alpha1"]),
    ("route-version", 'c.CasaKubeSpawner.ingress_route_version = "v1"', None, ["traefik.io/v1 ingressroutetcps", "define no such IngressRouteTCP"]),
]


@pytest.mark.parametrize("extra, change, words", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_each_bad_configuration_is_one_line(tmp_path, extra, change, words):
    path = write_config(tmp_path, extra)
    if change:
        change(tmp_path / "keys")
    report = check_config(str(path), traefik_crds=[CRDS])
    assert len(report.problems) == 1, report.problems
    (line,) = report.problems
    assert "\n" not in line
    for word in words:
        assert word in line, line


def test_the_good_configuration_has_no_problem(tmp_path):
    report = check_config(str(write_config(tmp_path)), traefik_crds=[CRDS])
    assert report.problems == []
    summary = "\n".join(report.notes)
    assert "condor-token" in summary and "xcache-token" in summary and "tls://jane-doe---" in summary
    assert "IngressRouteTCP traefik.io/v1alpha1" in summary


def test_the_command_prints_every_problem_and_exits_1(tmp_path):
    path = write_config(tmp_path, 'c.Facility.domain = "Bad Domain"\nc.Facility.trust_domain = "a b"\nc.JupyterHub.spawner_class = "simple"')
    short_key(tmp_path / "keys")
    done = run_casa("check-config", path, "--traefik-crds", CRDS)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 5, lines  # four problems and the count
    assert all(line.startswith(f"{path}: ") for line in lines)
    for words in ("Dask domain", "trust domain", "holds 16 bytes", "not one of casa's", "4 problem(s)"):
        assert any(words in line for line in lines), (words, lines)
    assert done.stdout == ""


def test_a_file_that_does_not_load_is_one_problem(tmp_path):
    path = tmp_path / "jupyterhub_config.py"
    path.write_text("c = c  # noqa: F821\nc.Facility.domain = (\n")
    done = run_casa("check-config", path)
    assert done.returncode == 1
    assert "SyntaxError" in done.stderr and len(done.stderr.splitlines()) == 2
    assert run_casa("check-config", tmp_path / "absent.py").returncode == 1


def test_key_contents_never_reach_the_output(tmp_path):
    path = write_config(tmp_path, "c.Facility.condor_token_lifetime = 60")
    done = run_casa("check-config", path)
    key = (tmp_path / "keys" / "POOL").read_bytes()
    macaroon = (tmp_path / "keys" / "macaroon-secret").read_bytes()
    out = (done.stdout + done.stderr).encode()
    assert done.returncode == 1
    for secret in (key, macaroon, base64.b64encode(key), base64.b64decode(macaroon)):
        assert secret not in out


@pytest.mark.parametrize("deployment", ["cms", "opendata", "local"])
def test_every_shipped_config_passes(tmp_path, deployment):
    env = {"PATH": __import__("os").environ["PATH"], "CASA_KEYS_DIR": str(write_keys(tmp_path / "keys")),
           "CASA_LOCAL_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path)}
    done = run_casa("check-config", REPO / "config" / deployment / "jupyterhub_config.py", "--traefik-crds", CRDS, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{REPO / 'config' / deployment / 'jupyterhub_config.py'}: OK")
    assert "spawner casa_spawner." in done.stdout


# -- online: the real IdP and the real schedd -------------------------------------------------------


def online_config(tmp_path: Path, pool, issuer: str, key_file: str, trust_domain: str = "casa.test") -> Path:
    path = write_config(tmp_path, "\n".join([
        'c.CasaOAuthenticator.idp = "generic"',
        f"c.CasaOAuthenticator.issuer = {issuer!r}",
        f"c.Facility.trust_domain = {trust_domain!r}",
        f"c.Facility.collector_host = {pool.pool.collector_host!r}",
        f"c.Facility.schedd_host = {pool.pool.schedd_name!r}",
        f"c.Facility.signing_key_file = {key_file!r}",
    ]))
    return path


def condor_path(pool) -> dict:
    import os

    return {**os.environ, "PATH": f"{Path(pool.install.tool('condor_ping')).parent}:{os.environ['PATH']}"}


@pytest.mark.e2e
def test_online_reads_the_idp_and_pings_the_schedd_with_a_minted_token(tmp_path, condor_pool):
    from tests.auth_servers import oidc_provider

    with oidc_provider(tmp_path, ["http://127.0.0.1:1/hub/oauth_callback"]) as issuer:
        path = online_config(tmp_path, condor_pool, issuer, str(condor_pool.workdir / "POOL"))
        done = run_casa("check-config", "--online", path, env=condor_path(condor_pool), timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"IdP {issuer}: discovery document read" in done.stdout
    assert "accepts a minted IDTOKEN for WRITE as jane-doe---4e148699@casa.test" in done.stdout


@pytest.mark.e2e
def test_online_reports_an_unreachable_idp_and_a_schedd_that_refuses_the_key(tmp_path, condor_pool):
    from jupyterhub.utils import random_port

    wrong_key = write_secret_file(tmp_path / "OTHER-POOL", secrets.token_bytes(64))
    path = online_config(tmp_path, condor_pool, f"http://127.0.0.1:{random_port()}", wrong_key)
    done = run_casa("check-config", "--online", path, env=condor_path(condor_pool), timeout=120)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 3, lines
    assert "discovery document" in lines[0] and "could not be read" in lines[0]
    assert f"schedd {condor_pool.pool.schedd_name}" in lines[1] and "jane-doe---4e148699@casa.test" in lines[1]
