"""What every Casa session has, whichever spawner runs it (casa_spawner.session.SessionCore):
one session per user, the IdP token handed over, renewal with its glue, saved state.

Each test runs against both hub spawners, without starting one: the renewal's last step is
each spawner's own (a Secret patch for Kubernetes, files for the local one) and is checked
through what it sends or writes.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from jupyterhub.objects import Hub

from casa_hub import bundle as b
from casa_hub.errors import ConfigurationError
from casa_spawner.kube import CasaKubeSpawner
from casa_spawner.local import CasaLocalSpawner
from casa_spawner.session import NamedServerError, SessionCore
from tests.fake_hub import FakeUser
from tests.fake_kube.spawners import make_spawner as make_kube_spawner
from tests.fake_kube.spawners import reset_kubespawner
from tests.test_kube_spawner import RecordingApi

LATER = dt.timedelta(hours=10)  # past 2/3 of the facility's 12 h macaroon


class Database:
    def __init__(self):
        self.commits = 0

    def commit(self):
        self.commits += 1


@pytest.fixture(params=["kube", "local"])
async def make(request, tmp_path, make_facility):
    """``make(username, facility=..., auth_state=...)``: a spawner of the parametrised kind, not started."""

    def factory(username="alice", *, facility=None, auth_state=None, name=""):
        facility = facility or make_facility()
        if request.param == "kube":
            sp = make_kube_spawner(CasaKubeSpawner, "http://127.0.0.1:9", username, facility=facility)
            sp.api, sp.custom_api = RecordingApi(), RecordingApi()
        else:
            sp = CasaLocalSpawner(user=FakeUser(username), hub=Hub(), facility=facility, state_dir=str(tmp_path / "state"))
            sp.session_dir = str(tmp_path / "state" / "users" / username)
        sp.user.auth_state = auth_state
        sp.orm_spawner = SimpleNamespace(name=name, display_name=name, server=None, state=None)
        sp.db = Database()
        return sp

    factory.kind = request.param
    yield factory
    if request.param == "kube":
        await reset_kubespawner()


def materialised(sp, path: str) -> bytes:
    """The content of ``path`` as the session last received it."""
    if isinstance(sp, CasaKubeSpawner):
        patch = sp.api.calls[-1][1][2]["data"]
        return base64.b64decode(patch[sp.bundle.get(path).key])
    return Path(sp.credentials_dir, path).read_bytes()


async def session_of(sp):
    """Issue the session's credentials as ``start`` would, and put them in place."""
    sp.bundle = await sp.issue_credentials()
    if isinstance(sp, CasaLocalSpawner):
        Path(sp.session_dir).mkdir(parents=True)
        sp._write_credentials(sp.bundle)
    return sp


def test_both_spawners_share_the_core():
    assert issubclass(CasaKubeSpawner, SessionCore) and issubclass(CasaLocalSpawner, SessionCore)
    for cls in (CasaKubeSpawner, CasaLocalSpawner):
        for name in ("refuse_named_server", "issue_credentials", "renew_credentials", "renew_in_poll", "save_state", "run_auth_state_hook",
                     "remove_session_jobs"):
            assert name not in cls.__dict__, f"{cls.__name__} redefines {name}"


async def test_a_named_server_is_refused_with_one_error(make):
    sp = make(name="gpu")
    with pytest.raises(NamedServerError, match="one session per user .* named server 'gpu'") as err:
        await sp.start()
    assert isinstance(err.value, ConfigurationError)
    assert "tls://alice.dask." in str(err.value)  # the one address the user has
    assert sp.bundle is None


async def test_the_hubs_idp_token_becomes_the_bearer_token(make, make_facility):
    sp = make(facility=make_facility(macaroon_secret_file=""))
    expiry = int(time.time()) + 3600
    await sp.run_auth_state_hook({"access_token": "idp-token-1", "casa": {"access_token_expires_at": expiry}})
    await session_of(sp)
    bearer = sp.bundle.get(b.BEARER_TOKEN_PATH)
    assert bearer.content == b"idp-token-1\n"
    assert bearer.expires_at == dt.datetime.fromtimestamp(expiry, dt.timezone.utc)


async def test_without_the_hook_the_token_is_read_from_auth_state(make, make_facility):
    sp = make(facility=make_facility(macaroon_secret_file=""), auth_state={"access_token": "idp-token-2"})
    await session_of(sp)
    assert sp.bundle.get(b.BEARER_TOKEN_PATH).content == b"idp-token-2\n"


async def test_renewal_passes_the_refreshed_token_on_and_saves_the_new_expiry(make, make_facility):
    sp = make(facility=make_facility(macaroon_secret_file=""))
    expiry = int(time.time()) + 3600
    await sp.run_auth_state_hook({"access_token": "idp-token-1", "casa": {"access_token_expires_at": expiry}})
    await session_of(sp)
    assert await sp.renew_credentials() == []  # the same token, nothing due: nothing sent, nothing saved
    assert sp.db.commits == 0

    sp.user.auth_state = {"access_token": "idp-token-3", "casa": {"access_token_expires_at": expiry + 3600}}  # refresh_user did it
    assert await sp.renew_credentials() == [b.BEARER_TOKEN_PATH]
    assert materialised(sp, b.BEARER_TOKEN_PATH) == b"idp-token-3\n"
    assert sp.db.commits == 1 and sp.orm_spawner.state == sp.get_state()
    assert sp.bundle.get(b.BEARER_TOKEN_PATH).expires_at == dt.datetime.fromtimestamp(expiry + 3600, dt.timezone.utc)


async def test_renewal_reissues_only_what_is_due(make):
    sp = await session_of(make())
    before = sp.bundle
    renewed = await sp.renew_credentials(now=dt.datetime.now(dt.timezone.utc) + LATER)
    assert renewed == [b.BEARER_TOKEN_PATH]
    assert materialised(sp, b.BEARER_TOKEN_PATH) == sp.bundle.get(b.BEARER_TOKEN_PATH).content != before.get(b.BEARER_TOKEN_PATH).content
    assert sp.bundle.get(b.CONDOR_TOKEN_PATH) is before.get(b.CONDOR_TOKEN_PATH)
    assert sp.db.commits == 1


def renewing_later(monkeypatch, facility):
    """Make every renewal happen as if ``LATER`` had passed (``poll`` passes no time)."""
    real = facility.renew_bundle

    def later(*args, **kwargs):
        return real(*args, **{**kwargs, "now": dt.datetime.now(dt.timezone.utc) + LATER})

    monkeypatch.setattr(facility, "renew_bundle", later)


async def test_an_expected_renewal_failure_is_one_log_line_and_keeps_the_session(make, tmp_path, monkeypatch, caplog):
    sp = await session_of(make())
    before = sp.bundle
    sp.facility.macaroon_secret_file = str(tmp_path / "gone")
    sp.facility._macaroon_secret = None  # as after a hub restart: the file is read again
    renewing_later(monkeypatch, sp.facility)
    with caplog.at_level(logging.ERROR):
        for _ in range(2):  # and the next poll tries again
            await sp.renew_in_poll()
    assert sp.bundle is before and sp.db.commits == 0
    lines = [r for r in caplog.records if "Could not renew credentials of alice" in r.getMessage()]
    assert len(lines) == 2 and "Traceback" not in caplog.text
    assert "gone" in lines[0].getMessage()


async def test_an_unexpected_renewal_failure_is_logged_with_its_traceback(make, monkeypatch, caplog):
    sp = await session_of(make())

    def broken(*args, **kwargs):
        raise TypeError("renew_bundle() got an unexpected keyword argument")

    monkeypatch.setattr(sp.facility, "renew_bundle", broken)
    with caplog.at_level(logging.ERROR):
        await sp.renew_in_poll()
    assert "Could not renew credentials of alice" in caplog.text and "Traceback" in caplog.text and "TypeError" in caplog.text
    assert sp.db.commits == 0


def test_the_start_up_heap_is_frozen_only_when_the_operator_asks_and_once():
    """``freeze_startup_heap`` is process-wide: checked in a fresh interpreter."""
    code = """if True:
        import asyncio, gc
        from jupyterhub.objects import Hub
        from casa_hub.facility import Facility
        from casa_spawner.local import CasaLocalSpawner
        from tests.fake_hub import FakeUser

        async def main():
            f = Facility(domain="casa.test")
            CasaLocalSpawner(user=FakeUser("alice"), hub=Hub(), facility=f)
            await asyncio.sleep(0)
            print(gc.get_freeze_count())
            CasaLocalSpawner(user=FakeUser("bob"), hub=Hub(), facility=f, freeze_startup_heap=True)
            await asyncio.sleep(0)
            frozen = gc.get_freeze_count()
            junk = [[i] for i in range(1000)]
            CasaLocalSpawner(user=FakeUser("carol"), hub=Hub(), facility=f, freeze_startup_heap=True)
            await asyncio.sleep(0)
            print(frozen, gc.get_freeze_count() <= frozen, len(junk))  # frozen objects may die; the junk was not frozen

        asyncio.run(main())
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    before, frozen, once, _ = out.stdout.split()
    assert before == "0"  # off by default
    assert int(frozen) > 10_000 and once == "True"  # the hub's modules and objects; a later spawner freezes nothing more
