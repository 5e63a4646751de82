"""The hub gives the pool's credd each session's data token, as the user, so running workers get every renewal.

``casa_spawner.data_token.DataTokenStore`` runs ``condor_store_cred add-oauth -P -s <service> -i -`` with the
token on standard input and the user's own short-lived IDTOKEN (``casa_spawner.condor_user``); both spawners
call it once the credentials are issued (before the notebook exists) and after every renewal that changed
the token.  A credd that is down, or a hub without ``condor_store_cred``, never stops a spawn or a renewal:
one warning line, ``casa_credd_stores_total{outcome="failed"}``, and the next poll tries again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from jupyterhub.objects import Hub
from jupyterhub.utils import random_port
from traitlets.config import Config

from casa_hub import metrics
from casa_hub.bundle import BEARER_TOKEN_PATH
from casa_spawner.data_token import DataTokenStore
from casa_spawner.kube import CasaKubeSpawner
from casa_spawner.local import CasaLocalSpawner
from tests.condor_pool import TRUST_DOMAIN
from tests.fake_hub import FakeUser
from tests.fake_kube.spawners import make_spawner as make_kube_spawner
from tests.recording_tool import recording_tool, what_it_saw
from tests.secret_scan import encoded_forms

TOKEN = b"macaroon-of-alice-" + secrets.token_hex(16).encode() + b"\n"
STORED = "Account: <current> (root)\nCredType: oauth\n\nOperation succeeded. Credential was stored on 2026-12-07 12:00:00"


def failed_stores() -> float:
    return metrics.CREDD_STORES.labels("failed")._value.get()


def store_facility(make_facility, **traits):
    return make_facility(schedd_host="casa@127.0.0.1", collector_host="127.0.0.1:9618", data_token_service="xcache",
                         credd_host="credd.example.org", **traits)


# -- the call itself ----------------------------------------------------------------------------


async def test_the_token_goes_on_stdin_with_one_short_lived_token_of_the_user_and_nothing_of_the_hub(
        make_facility, master_secrets, tmp_path, monkeypatch):
    import jwt

    tool, record = recording_tool(tmp_path, "condor_store_cred", STORED)
    monkeypatch.setenv("CASA_HUB_ONLY", "not for condor_store_cred")
    monkeypatch.delenv("CONDOR_CONFIG", raising=False)
    store = DataTokenStore(facility=store_facility(make_facility), store_command=tool)
    assert store.enabled
    assert await store.store("alice", TOKEN) is True
    seen = what_it_saw(record)
    assert seen["argv"] == ["add-oauth", "-P", "-s", "xcache", "-i", "-"] and seen["stdin"] == TOKEN.decode()
    env = seen["env"]
    assert "CASA_HUB_ONLY" not in env and env["_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS"] == "IDTOKENS"
    assert env["_CONDOR_CREDD_HOST"] == "credd.example.org" and env["CONDOR_CONFIG"] == "ONLY_ENV"
    (idtoken,) = seen["tokens"].values()
    assert list(seen["modes"].values()) == ["0o600"] and seen["dir_mode"] == "0o700"
    claims = jwt.decode(idtoken.strip(), options={"verify_signature": False})
    assert claims["sub"] == "alice@cms-af.example.org" and claims["exp"] - claims["iat"] == 300
    outside = json.dumps({k: v for k, v in seen.items() if k != "stdin"}).encode()
    assert not any(form in outside for form in encoded_forms(TOKEN.strip()))  # only on standard input
    assert not any(form in json.dumps(seen).encode() for form in encoded_forms(master_secrets.signing_key))
    assert not Path(env["_CONDOR_SEC_TOKEN_DIRECTORY"]).exists()


async def test_nothing_is_stored_without_a_service_or_without_idtokens(make_facility):
    assert not DataTokenStore(facility=make_facility(schedd_host="casa@127.0.0.1")).enabled
    assert not DataTokenStore(facility=make_facility(data_token_service="xcache", signing_key_file="")).enabled


@pytest.mark.parametrize("service", ["x cache", "xcache_v2", "-x", "a" * 65])
def test_a_service_htcondor_would_misread_is_refused(make_facility, service):
    from casa_hub.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="not an HTCondor OAuth service name"):
        make_facility(data_token_service=service)


async def test_no_condor_store_cred_on_the_hub_is_one_warning_and_a_metric(make_facility, caplog):
    caplog.set_level(logging.WARNING)
    before = failed_stores()
    store = DataTokenStore(facility=store_facility(make_facility), store_command="/nonexistent/sbin/condor_store_cred")
    assert await store.store("alice", TOKEN) is False
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Could not give the HTCondor credd the data token of alice (service xcache; retried at the next poll)" in warning
    assert "cannot run /nonexistent/sbin/condor_store_cred: No such file or directory" in warning and "\n" not in warning
    assert failed_stores() == before + 1
    assert not list(Path(tempfile.gettempdir()).glob("casa-as-user-*"))


async def test_a_hanging_condor_store_cred_is_bounded(make_facility, tmp_path, caplog):
    hang = tmp_path / "condor_store_cred"
    hang.write_text(f"#!{sys.executable}\nimport time; time.sleep(60)\n")
    hang.chmod(0o755)
    store = DataTokenStore(facility=store_facility(make_facility), store_command=str(hang), timeout=1)
    started = time.monotonic()
    assert await store.store("alice", TOKEN) is False
    assert time.monotonic() - started < 10 and "did not answer within 1s" in caplog.text


# what HTCondor 25.14's tools printed here (condor_submit of a use_oauth_services job; condor_store_cred with no credd)
SUBMIT_NO_TOKEN = "Failed to process job credential requests: 'OAuth error: ERROR: Credential 'xcache' of unknown type is missing.'; BAILING OUT."
SUBMIT_NO_CREDD = "Failed to process job credential requests: 'CRED: startCommand to CredD failed!'; BAILING OUT."
SUBMIT_UNKNOWN_CREDD = "Failed to process job credential requests: 'Can't find address of credd casa@127.0.0.1'; BAILING OUT."
STORE_FAILED = "Account: <current> (root)\nCredType: oauth\n\nOperation failed.\n    Make sure your ALLOW_WRITE setting includes this host.\n"


@pytest.mark.parametrize("output, words", [
    (SUBMIT_NO_TOKEN, "the HTCondor credd holds no 'xcache' token of this user for the job to read data with"),
    (SUBMIT_NO_CREDD, "the HTCondor credd, which hands the job its data token, is unreachable"),
    (SUBMIT_UNKNOWN_CREDD, "the HTCondor credd, which hands the job its data token, is unreachable"),
])
def test_a_submission_the_credd_cannot_serve_says_so(output, words):
    from casa_condor.output import CreddUnavailable, classify_failure

    error = classify_failure("submit a job as alice@casa.test", 1, output, "schedd casa@127.0.0.1")
    assert isinstance(error, CreddUnavailable) and words in str(error) and "schedd is unreachable" not in str(error)


def test_a_failed_store_names_the_likely_causes_without_the_tools_preamble():
    from casa_condor.output import CreddUnavailable, store_cred_failure

    error = store_cred_failure("store the xcache token of alice@casa.test in the HTCondor credd", 1, STORE_FAILED)
    assert isinstance(error, CreddUnavailable) and "Account:" not in str(error)
    assert "Operation failed." in str(error) and "is the credd running" in str(error)


# -- the real credd ------------------------------------------------------------------------------


def store_cred(pool) -> str:
    return pool.install.sbin_tool("condor_store_cred")


def pool_facility(make_facility, pool, **traits):
    return make_facility(trust_domain=TRUST_DOMAIN, signing_key_file=str(pool.workdir / "POOL"), schedd_host=pool.pool.schedd_name,
                         collector_host=pool.pool.collector_host, credd_host=pool.credd_host, data_token_service="xcache",
                         xcache_paths=["/store/user/{username}"], **traits)


def credds_copy(pool, user: str) -> bytes | None:
    """What the credd keeps for ``user`` (read from its directory, as the pool's admin)."""
    path = pool.pool.run_dir / "oauth_credentials" / user / "xcache.use"
    return path.read_bytes() if path.exists() else None


def query_as(pool, identity: str) -> str:
    """``condor_store_cred query-oauth`` as ``identity`` (its own IDTOKEN only)."""
    env = {"PATH": os.environ.get("PATH", ""), **pool.session_environment(pool.token_dir(identity)), "_CONDOR_CREDD_HOST": pool.credd_host}
    done = subprocess.run([store_cred(pool), "query-oauth", "-s", "xcache"], env=env, capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


@pytest.mark.e2e
async def test_the_credd_keeps_the_token_as_the_users_own(condor_pool, make_facility):
    token = b"alice-" + secrets.token_hex(20).encode() + b"\n"
    store = DataTokenStore(facility=pool_facility(make_facility, condor_pool), store_command=store_cred(condor_pool))
    assert await store.store("alice", token) is True
    assert credds_copy(condor_pool, "alice") == token
    assert "A credential was stored and is valid" in query_as(condor_pool, "alice@casa.test")
    assert "No credential is stored" in query_as(condor_pool, "zed@casa.test")  # another identity has none of it


def local_spawner(facility, tmp_path, pool) -> CasaLocalSpawner:
    config = Config()
    config.DataTokenStore.store_command = store_cred(pool)
    config.SessionJobs.remove_command = pool.install.tool("condor_rm")
    spawner = CasaLocalSpawner(
        user=FakeUser("alice"), hub=Hub(), cmd=[sys.executable, "-c", "import time; time.sleep(600)"],
        facility=facility, state_dir=str(tmp_path / "state"), routes_dir=str(tmp_path / "routes"), config=config,
    )
    spawner.api_token = secrets.token_hex(16)
    return spawner


def notebook_token(spawner) -> bytes:
    return Path(spawner.credentials_dir, BEARER_TOKEN_PATH).read_bytes()


@pytest.mark.e2e
async def test_a_spawn_stores_the_token_before_the_notebook_and_a_renewal_stores_the_new_one(condor_pool, make_facility, tmp_path):
    facility = pool_facility(make_facility, condor_pool, xcache_token_lifetime=6, renew_fraction=0.5)
    spawner = local_spawner(facility, tmp_path, condor_pool)
    try:
        await spawner.start()
        first = notebook_token(spawner)
        assert credds_copy(condor_pool, "alice") == first
        await asyncio.sleep(3.5)  # half its life: due
        assert await spawner.poll() is None
        assert notebook_token(spawner) != first and credds_copy(condor_pool, "alice") == notebook_token(spawner)
    finally:
        await spawner.stop(now=True)


@pytest.mark.e2e
async def test_a_credd_that_is_down_neither_stops_the_spawn_nor_the_renewal_and_the_next_poll_retries(
        condor_pool, make_facility, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    facility = pool_facility(make_facility, condor_pool, xcache_token_lifetime=6, renew_fraction=0.5)
    facility.credd_host = f"127.0.0.1:{random_port()}"  # nothing listens there
    before = failed_stores()
    spawner = local_spawner(facility, tmp_path, condor_pool)
    try:
        await spawner.start()  # the spawn goes on
        assert "Could not give the HTCondor credd the data token of alice" in caplog.text and failed_stores() == before + 1
        assert credds_copy(condor_pool, "alice") != notebook_token(spawner)

        facility.credd_host = condor_pool.credd_host  # back: the next poll stores it
        assert await spawner.poll() is None
        assert credds_copy(condor_pool, "alice") == notebook_token(spawner)

        facility.credd_host = f"127.0.0.1:{random_port()}"  # down again, at a renewal
        caplog.clear()
        stored = credds_copy(condor_pool, "alice")
        await asyncio.sleep(3.5)
        assert await spawner.poll() is None  # the session runs on, with its renewed token
        assert notebook_token(spawner) != stored and credds_copy(condor_pool, "alice") == stored
        assert "Renewed bearer_token for alice" in caplog.text
        assert "Could not give the HTCondor credd the data token of alice" in caplog.text
        assert failed_stores() == before + 2

        facility.credd_host = condor_pool.credd_host
        assert await spawner.poll() is None
        assert credds_copy(condor_pool, "alice") == notebook_token(spawner)
    finally:
        await spawner.stop(now=True)


@pytest.mark.e2e
async def test_the_kube_spawner_stores_the_token_before_it_creates_the_pod(condor_pool, make_facility, kube):
    import base64

    facility = pool_facility(make_facility, condor_pool)
    config = Config()
    config.DataTokenStore.store_command = store_cred(condor_pool)
    spawner = make_kube_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility, config=config)
    try:
        await asyncio.wait_for(spawner.start(), 60)
        secret = kube.get("secrets", "default", spawner.session_names.secret)
        in_pod = base64.b64decode(secret["data"][BEARER_TOKEN_PATH.replace("/", "__")])
        assert credds_copy(condor_pool, "alice") == in_pod
        env = {e["name"]: e.get("value") for e in kube.get("pods", "default", spawner.pod_name)["spec"]["containers"][0]["env"]}
        assert env["CASA_DATA_TOKEN_SERVICE"] == "xcache"
    finally:
        await asyncio.wait_for(spawner.stop(), 60)
