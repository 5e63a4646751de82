"""Background refresh of a running session against the real OIDC provider, with no hub request at all.

alice logs in at the real provider (through its login form); a CasaLocalSpawner (real Dask
scheduler, a stand-in notebook process) runs her session with the IdP access token as its bearer
token.  Only the spawner's ``poll()`` runs -- what JupyterHub does every ``poll_interval`` whether
or not she visits: her 6-second access tokens are refreshed through ``refresh_user`` and each new
one lands in the session's bearer-token file.  Then the provider takes her out of CMS: the next
poll ends the session, writes no new token, leaves an audit line and a message for the hub page.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import time
from pathlib import Path

import pytest
from jupyterhub.objects import Hub
from prometheus_client import REGISTRY

from casa_auth import CasaOAuthenticator
from casa_hub.facility import Facility
from casa_spawner.local import CasaLocalSpawner
from casa_spawner.refresh import SessionRefresh
from tests.auth_servers import CLIENT_ID, CLIENT_SECRET, change_account, oidc_provider
from tests.fake_hub import FakeUser
from tests.test_auth_refresh_real import CALLBACK, authorization_code
from tests.auth_mocks import MockHandler

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NOTEBOOK = [sys.executable, "-c", "import time; time.sleep(600)"]
TTL = 6


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def refresh_settings():
    SessionRefresh.clear_instance()
    yield SessionRefresh.instance(group_check_interval=2)
    SessionRefresh.clear_instance()


@pytest.fixture
def provider(tmp_path):
    with oidc_provider(tmp_path, [CALLBACK], access_token_ttl=TTL) as issuer:
        yield issuer


async def logged_in(provider, username="alice", password="alice-pw"):
    authenticator = CasaOAuthenticator(
        idp="generic", issuer=provider, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
        oauth_callback_url=CALLBACK, scope=["openid", "profile", "email", "offline_access", "wlcg.groups"],
        group_claims=["wlcg.groups", "groups"], allowed_groups={"cms"}, enable_auth_state=True,
        access_token_refresh_margin=TTL // 2,
    )
    await authenticator.discover_endpoints()
    code = await asyncio.to_thread(authorization_code, authenticator, username, password)
    model = await authenticator.get_authenticated_user(MockHandler(code), None)
    return authenticator, FakeUser.from_model(model)


def session(tmp_path, authenticator, user) -> CasaLocalSpawner:
    spawner = CasaLocalSpawner(
        user=user, hub=Hub(), cmd=NOTEBOOK, facility=Facility(domain="casa.test"), authenticator=authenticator,
        state_dir=str(tmp_path / "state"), routes_dir=str(tmp_path / "routes"),
    )
    spawner.api_token = secrets.token_hex(16)
    return spawner


async def test_an_idle_session_keeps_a_fresh_bearer_token_until_its_user_leaves_the_group(tmp_path, provider, refresh_settings, caplog):
    authenticator, user = await logged_in(provider)
    spawner = session(tmp_path, authenticator, user)
    renewed_before = sample("casa_credentials_renewed_total", kind="idp-access-token")
    await spawner.start()
    try:
        token_file = Path(spawner.get_env()["BEARER_TOKEN_FILE"])
        seen = [token_file.read_text().strip()]
        assert seen[0] == user.auth_state["access_token"]
        deadline = time.monotonic() + 4 * TTL + 20
        while len(seen) < 4 and time.monotonic() < deadline:  # three renewals of a 6 s token
            await asyncio.sleep(1)
            assert await spawner.poll() is None  # the hub's periodic poll: no request of alice's
            current = token_file.read_text().strip()
            if current != seen[-1]:
                seen.append(current)
                assert user.auth_state["access_token"] == current  # saved in auth_state too
        assert len(seen) == 4, f"{len(seen) - 1} renewals in {4 * TTL + 20}s"
        assert len(set(seen)) == 4
        assert sample("casa_credentials_renewed_total", kind="idp-access-token") - renewed_before >= 3
        assert time.time() < user.auth_state["casa"]["access_token_expires_at"]

        # the provider takes alice out of CMS; the next group check ends her session
        change_account(tmp_path, "alice", **{"wlcg.groups": ["/atlas"]})
        last = token_file.read_text()
        failures_before = sample("casa_credential_renewal_failures_total", kind="idp-access-token", reason="group-removed")
        with caplog.at_level(logging.INFO, logger="casa.audit"):
            status = None
            for _ in range(10):
                await asyncio.sleep(1)
                status = await spawner.poll()
                if status is not None:
                    break
                assert token_file.read_text() == last  # never a new token once she is out
        assert status is not None
        assert not token_file.exists() and spawner.bundle is None  # the session is gone, files and all
        assert "no longer in an allowed group" in spawner.user.casa_ended and "stopped" in spawner.user.casa_ended
        assert any("access-ended user=alice reason=group-removed action=stop" in r.getMessage() for r in caplog.records)
        assert sample("casa_credential_renewal_failures_total", kind="idp-access-token", reason="group-removed") == failures_before + 1
    finally:
        await spawner.stop(now=True)


async def test_a_refused_refresh_token_only_stops_renewing_when_so_configured(tmp_path, provider, caplog):
    SessionRefresh.clear_instance()
    SessionRefresh.instance(group_check_interval=1, on_access_lost="stop-renewing")
    try:
        authenticator, user = await logged_in(provider)
        user.auth_state = {**user.auth_state, "refresh_token": "not-a-refresh-token",
                           "token_response": {**user.auth_state["token_response"], "refresh_token": "not-a-refresh-token"}}
        spawner = session(tmp_path, authenticator, user)
        await spawner.start()
        try:
            token_file = Path(spawner.get_env()["BEARER_TOKEN_FILE"])
            first = token_file.read_text()
            with caplog.at_level(logging.INFO, logger="casa.audit"):
                for _ in range(TTL + 6):  # past the first token's expiry
                    await asyncio.sleep(1)
                    assert await spawner.poll() is None  # still running: only the renewals stop
            assert token_file.read_text() == first
            assert "no longer renewed" in spawner.user.casa_ended
            assert any("access-ended user=alice reason=idp-refused action=stop-renewing" in r.getMessage() for r in caplog.records)
        finally:
            await spawner.stop(now=True)
    finally:
        SessionRefresh.clear_instance()


async def test_an_unreachable_idp_ends_no_session(tmp_path, refresh_settings):
    with oidc_provider(tmp_path, [CALLBACK], access_token_ttl=TTL) as issuer:
        authenticator, user = await logged_in(issuer)
        spawner = session(tmp_path, authenticator, user)
        await spawner.start()
    # the provider is gone (an IdP outage): the session keeps running on what it has
    try:
        before = sample("casa_credential_renewal_failures_total", kind="idp-access-token", reason="idp-unreachable")
        token_file = Path(spawner.get_env()["BEARER_TOKEN_FILE"])
        first = token_file.read_text()
        for _ in range(4):
            await asyncio.sleep(1)
            assert await spawner.poll() is None
        assert token_file.read_text() == first and not getattr(user, "casa_ended", "")
        assert sample("casa_credential_renewal_failures_total", kind="idp-access-token", reason="idp-unreachable") > before
    finally:
        await spawner.stop(now=True)
