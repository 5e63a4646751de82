"""A running session keeps working across several expiries of its first credentials (one-machine facility).

CasaLocalSpawner runs alice's session with a 6-second macaroon and a 6-second IDTOKEN (renewed
at half their life by the spawner's poll, as the hub polls it).  A process with the notebook's
environment -- the one the spawner gives the notebook -- reads alice's file from the real XRootD
server with whatever ``BEARER_TOKEN_FILE`` holds, and asks the real schedd for WRITE with the
token in ``_CONDOR_SEC_TOKEN_DIRECTORY``, once a second for more than three lifetimes.  Every
read and every ping succeeds, while the first macaroon and the first IDTOKEN, kept aside, are
refused once they have expired: the session outlived them.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jupyterhub.objects import Hub

from casa_hub.facility import Facility
from casa_spawner.demo.xcache import ensure_macaroon_secret
from casa_spawner.local import CasaLocalSpawner
from tests.condor_pool import TRUST_DOMAIN
from tests.fake_hub import FakeUser
from tests.xrootd_server import start_xrootd

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LIFETIME = 6
RUN_FOR = 3 * LIFETIME + 4
SITE = "CASA_RENEWAL"
TEXT = b"alice's histograms\n"
NOTEBOOK = [sys.executable, "-c", "import time; time.sleep(600)"]

#: the "notebook": each second, a read through XRootD's HTTP door and a condor_ping WRITE, one JSON line each
READER = r"""
import json, os, subprocess, sys, time, urllib.request, urllib.error
url, ping, schedd, until = sys.argv[1], sys.argv[2], sys.argv[3], time.time() + float(sys.argv[4])
while time.time() < until:
    token = open(os.environ["BEARER_TOKEN_FILE"]).read().strip()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Bearer " + token}), timeout=10) as r:
            xrd = (r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        xrd = (e.code, "")
    idtoken = open(os.path.join(os.environ["_CONDOR_SEC_TOKEN_DIRECTORY"], "casa")).read().strip()
    done = subprocess.run([ping, "-type", "SCHEDD", "-name", schedd, "-table", "WRITE"], capture_output=True, text=True, timeout=30)
    row = [line.split() for line in done.stdout.splitlines() if line.split()[:1] == ["WRITE"]]
    print(json.dumps({"t": time.time(), "xrootd": xrd, "macaroon": token[-16:], "idtoken": idtoken[-16:],
                      "ping": row[0][4] if row and len(row[0]) > 4 else done.stderr.strip()[-200:]}), flush=True)
    time.sleep(1)
"""


def ping_decision(pool, token: str) -> str:
    directory = Path(pool.workdir) / f"aside-{secrets.token_hex(4)}"
    directory.mkdir(mode=0o700)
    fd = os.open(directory / "casa", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (token + "\n").encode())
    os.close(fd)
    done = pool.tool("condor_ping", "-type", "SCHEDD", "-name", pool.pool.schedd_name, "-table", "WRITE", token_dir=directory)
    rows = [line.split() for line in done.stdout.splitlines() if line.split()[:1] == ["WRITE"]]
    return rows[0][4] if rows and len(rows[0]) > 4 else "NO-ANSWER"


def xrootd_status(url: str, token: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


async def test_a_session_outlives_three_lifetimes_of_its_first_macaroon_and_idtoken(tmp_path, condor_pool):
    secret = ensure_macaroon_secret(tmp_path / "macaroon-secret")
    data = tmp_path / "data"
    (data / "store" / "user" / "alice").mkdir(parents=True)
    (data / "store" / "user" / "alice" / "hist.txt").write_bytes(TEXT)
    facility = Facility(
        domain="casa.test", trust_domain=TRUST_DOMAIN, collector_host=condor_pool.pool.collector_host,
        schedd_host=condor_pool.pool.schedd_name, signing_key_file=str(condor_pool.workdir / "POOL"),
        condor_token_lifetime=LIFETIME, macaroon_secret_file=str(secret), xcache_site=SITE,
        xcache_paths=["/store/user/{username}"], xcache_token_lifetime=LIFETIME, renew_fraction=0.5,
    )
    spawner = CasaLocalSpawner(user=FakeUser("alice"), hub=Hub(), cmd=NOTEBOOK, facility=facility,
                               state_dir=str(tmp_path / "state"), routes_dir=str(tmp_path / "routes"))
    spawner.api_token = secrets.token_hex(16)
    with start_xrootd(tmp_path / "xrootd", sitename=SITE, secret_b64_file=secret, data_dir=data, timeout=30) as xrootd:
        url = f"{xrootd.url}/store/user/alice/hist.txt"
        await spawner.start()
        try:
            env = spawner.get_env()
            creds = Path(spawner.credentials_dir)
            first_macaroon = (creds / "bearer_token").read_text().strip()
            first_idtoken = (creds / "condor" / "tokens.d" / "casa").read_text().strip()
            notebook_env = {**env, "CONDOR_CONFIG": "ONLY_ENV", "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS": "IDTOKENS",
                            "PATH": os.environ["PATH"]}
            reader = subprocess.Popen([sys.executable, "-c", READER, url, condor_pool.install.tool("condor_ping"),
                                       condor_pool.pool.schedd_name, str(RUN_FOR)],
                                      env=notebook_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            started = time.time()
            while reader.poll() is None:
                assert await spawner.poll() is None  # the hub's poll: renewals, nothing else
                await asyncio.sleep(1)
            out, err = reader.communicate()
            assert reader.returncode == 0, err
            lines = [json.loads(line) for line in out.splitlines()]

            assert time.time() - started >= 3 * LIFETIME
            assert len(lines) >= 3 * LIFETIME // 2, lines
            assert all(line["xrootd"] == [200, TEXT.decode()] for line in lines), [line["xrootd"] for line in lines]
            assert all(line["ping"] == "ALLOW" for line in lines), [line["ping"] for line in lines]
            # the tokens it used changed at least three times (one per lifetime and more)
            assert len({line["macaroon"] for line in lines}) >= 4
            assert len({line["idtoken"] for line in lines}) >= 4
            # and the first ones are dead: the session did outlive them
            assert xrootd_status(url, first_macaroon) in (401, 403)
            assert ping_decision(condor_pool, first_idtoken) == "FAIL"  # refused: expired
            assert ping_decision(condor_pool, (creds / "condor" / "tokens.d" / "casa").read_text().strip()) == "ALLOW"
        finally:
            await spawner.stop(now=True)
