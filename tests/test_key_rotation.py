"""Rotating a master key while sessions run: the hub notices the new key file and re-issues, at the
next renewal check, every credential the old key signed -- the rest stays as it was.

The pool case is end to end: the pool accepts two keys by ``kid`` (``POOL`` and ``NEW``), the
facility switches to ``NEW``, the session's next poll re-issues its IDTOKEN under ``NEW`` and the
real schedd accepts it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import secrets
import sys
from pathlib import Path

import jwt
import pytest
from jupyterhub.objects import Hub
from pymacaroons import Macaroon, Verifier

from casa_hub import bundle as b
from casa_hub.facility import Facility
from casa_spawner.local import CasaLocalSpawner
from tests.condor_pool import TRUST_DOMAIN
from tests.fake_hub import FakeUser
from tests.secret_files import write_secret_file

NOTEBOOK = [sys.executable, "-c", "import time; time.sleep(600)"]


def verifies(token: bytes, secret: bytes) -> bool:
    verifier = Verifier()
    verifier.satisfy_general(lambda caveat: True)
    try:
        return verifier.verify(Macaroon.deserialize(token.decode().strip()), secret)
    except Exception:
        return False


def replace_file(path: Path, data: bytes) -> None:
    """A new file renamed over the old one, as a Kubernetes Secret volume swaps its ``..data`` link."""
    tmp = path.with_name(path.name + ".new")
    write_secret_file(tmp, data)
    os.replace(tmp, path)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def test_a_rotated_macaroon_secret_reissues_only_the_macaroons(tmp_path):
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    secret_file = tmp_path / "macaroon-secret"
    write_secret_file(secret_file, base64.b64encode(old))
    write_secret_file(tmp_path / "POOL", secrets.token_bytes(64))
    facility = Facility(domain="casa.test", macaroon_secret_file=str(secret_file), signing_key_file=str(tmp_path / "POOL"))
    bundle = facility.issue_bundle("alice", now=now())
    assert facility.renew_bundle("alice", bundle, now=now()) is None  # nothing is due, no key changed
    assert verifies(bundle.get(b.BEARER_TOKEN_PATH).content, old)

    replace_file(secret_file, base64.b64encode(new))
    renewed = facility.renew_bundle("alice", bundle, now=now() + dt.timedelta(seconds=1))
    token = renewed.get(b.BEARER_TOKEN_PATH).content
    assert verifies(token, new) and not verifies(token, old)
    assert renewed.get(b.CONDOR_TOKEN_PATH) is bundle.get(b.CONDOR_TOKEN_PATH)  # its key did not change
    assert facility.renew_bundle("alice", renewed, now=now() + dt.timedelta(seconds=1)) is None  # once, not at every check


def test_a_new_signing_key_by_kid_reissues_the_idtokens(tmp_path):
    write_secret_file(tmp_path / "POOL", secrets.token_bytes(64))
    facility = Facility(domain="casa.test", signing_key_file=str(tmp_path / "POOL"))
    bundle = facility.issue_bundle("alice", now=now())
    write_secret_file(tmp_path / "NEW", secrets.token_bytes(64))
    facility.signing_key_file, facility.signing_key_id = str(tmp_path / "NEW"), "NEW"
    renewed = facility.renew_bundle("alice", bundle, now=now() + dt.timedelta(seconds=1))
    token = renewed.get(b.CONDOR_TOKEN_PATH).content.decode().strip()
    assert jwt.get_unverified_header(token)["kid"] == "NEW"


@pytest.mark.e2e
async def test_a_running_session_moves_to_the_pools_new_key_and_keeps_its_schedd(tmp_path, condor_pool):
    new_key = secrets.token_bytes(64)
    pool_copy = Path(condor_pool.pool.run_dir) / "passwords.d" / "NEW"  # the pool now accepts kid NEW as well as POOL
    write_secret_file(pool_copy, new_key)
    owner = Path(condor_pool.pool.run_dir).stat()
    os.chown(pool_copy, owner.st_uid, owner.st_gid)
    # a daemon lists the key ids it accepts once (the client offers only a token of a listed kid): reconfig
    reconfig = await asyncio.to_thread(condor_pool.tool, "condor_reconfig")
    assert reconfig.returncode == 0, reconfig.stdout + reconfig.stderr
    facility = Facility(domain="casa.test", trust_domain=TRUST_DOMAIN, collector_host=condor_pool.pool.collector_host,
                        schedd_host=condor_pool.pool.schedd_name, signing_key_file=str(condor_pool.workdir / "POOL"))
    spawner = CasaLocalSpawner(user=FakeUser("alice"), hub=Hub(), cmd=NOTEBOOK, facility=facility,
                               state_dir=str(tmp_path / "state"), routes_dir=str(tmp_path / "routes"))
    spawner.api_token = secrets.token_hex(16)
    await spawner.start()
    try:
        tokens = Path(spawner.credentials_dir) / "condor" / "tokens.d"
        first = (tokens / "casa").read_text()
        assert jwt.get_unverified_header(first.strip())["kid"] == "POOL"
        write_secret_file(tmp_path / "NEW", new_key)
        facility.signing_key_file, facility.signing_key_id = str(tmp_path / "NEW"), "NEW"
        await asyncio.sleep(1)
        assert await spawner.poll() is None
        second = (tokens / "casa").read_text()
        assert second != first and jwt.get_unverified_header(second.strip())["kid"] == "NEW"
        for _ in range(20):  # the reconfig reaches the schedd within a moment
            done = await asyncio.to_thread(condor_pool.tool, "condor_ping", "-type", "SCHEDD", "-name", condor_pool.pool.schedd_name,
                                           "-table", "WRITE", token_dir=tokens)
            rows = [line.split() for line in done.stdout.splitlines() if line.split()[:1] == ["WRITE"]]
            if rows and rows[0][4] == "ALLOW":
                break
            await asyncio.sleep(0.5)
        assert rows and rows[0][4] == "ALLOW", done.stdout + done.stderr
    finally:
        await spawner.stop(now=True)
        pool_copy.unlink()
        await asyncio.to_thread(condor_pool.tool, "condor_reconfig")  # the shared pool as it was


@pytest.mark.e2e
@pytest.mark.timeout(180)
async def test_a_running_session_reads_again_within_one_poll_of_a_macaroon_secret_rotation(tmp_path):
    """XRootD holds one secret: once it restarts with the new one, the session's next poll gives it a
    macaroon the new server accepts (the old macaroon is refused there)."""
    from tests.xrootd_server import start_xrootd
    from tests.test_renewal_facility import xrootd_status

    secret = tmp_path / "macaroon-secret"
    write_secret_file(secret, base64.b64encode(secrets.token_bytes(48)) + b"\n")
    data = tmp_path / "data"
    (data / "store" / "user" / "alice").mkdir(parents=True)
    (data / "store" / "user" / "alice" / "hist.txt").write_bytes(b"alice's histograms\n")
    facility = Facility(domain="casa.test", macaroon_secret_file=str(secret), xcache_site="CASA_ROTATE",
                        xcache_paths=["/store/user/{username}"])
    spawner = CasaLocalSpawner(user=FakeUser("alice"), hub=Hub(), cmd=NOTEBOOK, facility=facility,
                               state_dir=str(tmp_path / "state"), routes_dir=str(tmp_path / "routes"))
    spawner.api_token = secrets.token_hex(16)
    await spawner.start()
    try:
        token_file = Path(spawner.get_env()["BEARER_TOKEN_FILE"])
        first = token_file.read_text().strip()
        with start_xrootd(tmp_path / "xrootd-old", sitename="CASA_ROTATE", secret_b64_file=secret, data_dir=data, timeout=30) as old:
            assert await asyncio.to_thread(xrootd_status, f"{old.url}/store/user/alice/hist.txt", first) == 200
        replace_file(secret, base64.b64encode(secrets.token_bytes(48)) + b"\n")  # the Secret both mount
        with start_xrootd(tmp_path / "xrootd-new", sitename="CASA_ROTATE", secret_b64_file=secret, data_dir=data, timeout=30) as new:
            url = f"{new.url}/store/user/alice/hist.txt"
            assert await asyncio.to_thread(xrootd_status, url, first) in (401, 403)  # the old secret's macaroon
            assert await spawner.poll() is None  # the hub's next poll
            second = token_file.read_text().strip()
            assert second != first
            assert await asyncio.to_thread(xrootd_status, url, second) == 200
    finally:
        await spawner.stop(now=True)
