"""The background refresh across many users: at most ``max_concurrent_refreshes`` at the IdP at once,
and one user's failing refresh neither stops the others nor ends that user's session.

The spawners and the authenticator are stand-ins with the attributes :func:`upkeep` reads (the
real provider and spawners are in tests/test_refresh_real.py); what is measured is upkeep's own
scheduling: how many ``refresh_user`` calls overlap.
"""

from __future__ import annotations

import asyncio
import logging
import time

from casa_spawner.refresh import RENEW, SessionRefresh, upkeep
from tests.fake_hub import FakeUser


class CountingAuthenticator:
    enable_auth_state = True
    access_token_refresh_margin = 300

    def __init__(self, broken: set[str]):
        self.broken, self.running, self.most = broken, 0, 0

    async def refresh_user(self, user, handler=None):
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.2)
            if user.name in self.broken:
                raise RuntimeError("a bug in an operator's refresh_user_hook")
            return True
        finally:
            self.running -= 1

    def refresh_failure(self, username):
        return None


class StandInSpawner:
    """What upkeep reads of a spawner (weakly referenced by the metrics, as spawners are)."""

    config = None
    pending = None
    log = logging.getLogger("test")

    def __init__(self, name: str, authenticator):
        state = {"access_token": f"at-{name}", "casa": {"access_token_expires_at": int(time.time()) + 60}}  # due: within the margin
        self.user, self.authenticator = FakeUser(name, state), authenticator


async def test_refreshes_are_bounded_and_a_failure_stays_with_its_user():
    SessionRefresh.clear_instance()
    SessionRefresh.instance(max_concurrent_refreshes=3)
    try:
        authenticator = CountingAuthenticator(broken={"user-4"})
        spawners = [StandInSpawner(f"user-{i}", authenticator) for i in range(12)]
        started = time.monotonic()
        actions = await asyncio.gather(*(upkeep(s, None) for s in spawners))
        elapsed = time.monotonic() - started
    finally:
        SessionRefresh.clear_instance()
    assert authenticator.most == 3
    assert elapsed >= 4 * 0.2 - 0.05  # 12 refreshes, 3 at a time
    assert actions == [RENEW] * 12  # user-4's bug ends nothing, for anyone
    assert not any(getattr(s.user, "casa_ended", "") for s in spawners)


def test_an_expired_id_token_no_longer_vouches_for_groups_the_userinfo_lacks():
    """A refresh re-reads userinfo but keeps the login's ID token: once that expired, its groups do not count."""
    import jwt

    from casa_auth import CasaOAuthenticator

    authenticator = CasaOAuthenticator(client_id="hub", group_claims=["groups"], allowed_groups={"cms"})

    def state(exp: int, userinfo_groups):
        id_token = jwt.encode({"aud": "hub", "exp": exp, "groups": ["/cms"]}, "k" * 32, algorithm="HS256")
        return {"id_token": id_token, authenticator.user_auth_state_key: {"groups": userinfo_groups}}

    now = int(time.time())
    assert authenticator.groups_from_claims(state(now + 600, [])) == ["cms"]  # a fresh login's ID token counts
    assert authenticator.groups_from_claims(state(now - 1, [])) == []  # expired: the userinfo answer decides
    assert authenticator.groups_from_claims(state(now - 1, ["/cms"])) == ["cms"]
    no_userinfo = state(now - 1, [])
    no_userinfo[authenticator.user_auth_state_key] = None
    assert authenticator.groups_from_claims(no_userinfo) == ["cms"]  # nothing fresher to go by
