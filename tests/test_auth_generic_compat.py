"""CasaOAuthenticator (idp ``generic``) is a drop-in GenericOAuthenticator: an operator's
``claim_groups_key``, ``auth_state_groups_key``, ``modify_auth_state_hook`` and ``refresh_user``
behave as oauthenticator's own -- same input, same outcome -- both run against one in-memory IdP."""

from __future__ import annotations

import pytest
from oauthenticator.generic import GenericOAuthenticator

from tests.auth_mocks import CLIENT_ID, CLIENT_SECRET, ISSUER, MockHandler, MockIdP
from tests.fake_hub import FakeUser
from casa_auth import CasaOAuthenticator

ENDPOINTS = {
    "authorize_url": f"{ISSUER}/oidc/auth",
    "token_url": f"{ISSUER}/token",
    "userdata_url": f"{ISSUER}/userinfo",
    "oauth_callback_url": "https://hub.example.org/hub/oauth_callback",
}
ALICE = {"sub": "a1", "preferred_username": "alice", "email": "alice@example.org"}


@pytest.fixture
def idp():
    return MockIdP()


def both(idp, **config):
    """The same operator config given to GenericOAuthenticator and to CasaOAuthenticator(idp="generic")."""
    common = dict(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, http_client=idp, manage_groups=True,
                  enable_auth_state=True, username_claim="preferred_username", **ENDPOINTS, **config)
    return GenericOAuthenticator(**common), CasaOAuthenticator(idp="generic", **common)


async def login(authenticator, idp, userinfo):
    return await authenticator.get_authenticated_user(MockHandler(idp.login(userinfo)), None)


def outcome(model):
    """What the hub keeps from an auth model; casa's own ``auth_state["casa"]`` aside."""
    if not isinstance(model, dict):
        return model
    state = {k: v for k, v in model["auth_state"].items() if k != "casa"}
    for volatile in ("access_token", "refresh_token", "id_token", "token_response"):
        state.pop(volatile, None)  # a new token per login
    return {"name": model["name"], "admin": model["admin"], "groups": model.get("groups"), "auth_state": state}


async def same_login(idp, userinfo, **config):
    generic, casa = both(idp, **config)
    expected, got = await login(generic, idp, userinfo), await login(casa, idp, userinfo)
    assert outcome(got) == outcome(expected)
    return expected, got


@pytest.mark.parametrize(
    "config, userinfo, groups",
    [
        pytest.param({"claim_groups_key": "realm_access.roles"}, {"realm_access": {"roles": ["cms", "atlas"]}},
                     ["atlas", "cms"], id="claim_groups_key-dotted"),
        pytest.param({"claim_groups_key": lambda user_info: [m["group"] for m in user_info["memberships"]]},
                     {"memberships": [{"group": "cms"}, {"group": "lhcb"}]}, ["cms", "lhcb"], id="claim_groups_key-callable"),
        pytest.param({"auth_state_groups_key": "oauth_user.org.teams"}, {"org": {"teams": ["cms"]}}, ["cms"],
                     id="auth_state_groups_key-dotted"),
        pytest.param({"auth_state_groups_key": lambda auth_state: auth_state["oauth_user"]["teams"][:1]},
                     {"teams": ["cms", "x"]}, ["cms"], id="auth_state_groups_key-callable"),
        pytest.param({}, {"groups": ["cms"]}, ["cms"], id="default-groups-claim"),
    ],
)
async def test_group_settings_give_the_same_groups(idp, config, userinfo, groups):
    expected, got = await same_login(idp, {**ALICE, **userinfo}, allowed_groups={"cms"}, **config)
    assert expected["groups"] == got["groups"] == groups
    assert got["auth_state"]["casa"]["groups"] == groups  # casa's copy follows the operator's setting


async def test_a_group_setting_that_misses_refuses_the_same_way(idp):
    generic, casa = both(idp, claim_groups_key="realm_access.roles", allowed_groups={"cms"}, allowed_users={"bob"})
    assert await login(generic, idp, {**ALICE, "groups": ["cms"]}) is None
    with pytest.raises(Exception) as refused:  # casa: the 403 page naming the group (a deliberate difference)
        await login(casa, idp, {**ALICE, "groups": ["cms"]})
    assert refused.value.status_code == 403


async def test_an_async_hook_is_kept_as_set_and_runs_on_login_and_refresh(idp):
    calls = []

    async def my_hook(authenticator, auth_state):
        calls.append(type(authenticator).__name__)
        auth_state["site"] = "T2_US_Nebraska"
        auth_state["oauth_user"]["groups"] = ["cms"]  # groups from another service
        return auth_state

    generic, casa = both(idp, modify_auth_state_hook=my_hook, allowed_groups={"cms"})
    assert generic.modify_auth_state_hook is my_hook and casa.modify_auth_state_hook is my_hook
    expected, got = await login(generic, idp, ALICE), await login(casa, idp, ALICE)
    assert outcome(got) == outcome(expected) and got["auth_state"]["site"] == "T2_US_Nebraska"
    assert got["groups"] == ["cms"] and got["auth_state"]["casa"]["groups"] == ["cms"]
    idp.revoke_access_tokens()  # both refresh through the refresh token: a new auth_state each
    g_user, c_user = FakeUser.from_model(expected), FakeUser.from_model(got)
    g_refreshed, c_refreshed = await generic.refresh_user(g_user), await casa.refresh_user(c_user)
    assert outcome(c_refreshed) == outcome(g_refreshed)
    assert c_refreshed["auth_state"]["casa"]["slug"] == "alice"  # casa's keys survive the refresh
    assert calls == ["GenericOAuthenticator", "CasaOAuthenticator", "GenericOAuthenticator", "CasaOAuthenticator"]


async def test_no_hook_is_none_as_upstream(idp):
    generic, casa = both(idp)
    assert generic.modify_auth_state_hook is None and casa.modify_auth_state_hook is None


async def test_refresh_without_auth_state_is_true_as_upstream(idp):
    generic, casa = both(idp, allowed_groups={"cms"})
    generic.enable_auth_state = casa.enable_auth_state = False
    user = FakeUser("alice", None, ["cms"])
    assert await generic.refresh_user(user) is True and await casa.refresh_user(user) is True


@pytest.mark.parametrize("answer", [True, False, None])
async def test_refresh_user_hook_decides_first_as_upstream(idp, answer):
    seen = []

    def refresh_hook(authenticator, user, auth_state):
        seen.append(auth_state["access_token"] if auth_state else None)
        return answer

    generic, casa = both(idp, refresh_user_hook=refresh_hook, allowed_groups={"cms"})
    expected, got = await login(generic, idp, {**ALICE, "groups": ["cms"]}), await login(casa, idp, {**ALICE, "groups": ["cms"]})
    requests_before = len(idp.requests)
    g_result = await generic.refresh_user(FakeUser.from_model(expected))
    c_result = await casa.refresh_user(FakeUser.from_model(got))
    assert len(seen) == 2  # each called its hook once
    if answer is None:  # the hook lets the default refresh run: nothing changed (casa says so with True)
        assert isinstance(g_result, dict) and c_result is True
    else:
        assert g_result is c_result is answer
        assert len(idp.requests) == requests_before  # nobody asked the IdP


async def test_refresh_with_nothing_changed_is_true_and_the_hub_ends_the_same(idp):
    """Upstream answers an equal model, casa True (JupyterHub then writes nothing): the user the hub
    keeps is the same either way; a change (a new group) is a model in both."""
    generic, casa = both(idp, allowed_groups={"cms"})
    expected, got = await login(generic, idp, {**ALICE, "groups": ["cms"]}), await login(casa, idp, {**ALICE, "groups": ["cms"]})
    g_user, c_user = FakeUser.from_model(expected), FakeUser.from_model(got)
    g_result, c_result = await generic.refresh_user(g_user), await casa.refresh_user(c_user)
    assert isinstance(g_result, dict) and c_result is True
    before = c_user.auth_state
    g_user.apply(g_result)
    c_user.apply(c_result)
    assert c_user.auth_state == before
    kept_by_casa = {"name": "alice", "admin": g_result["admin"], "groups": [g.name for g in c_user.groups], "auth_state": c_user.auth_state}
    assert outcome({**g_result, "auth_state": g_user.auth_state}) == outcome(kept_by_casa)
    idp.set_userinfo({**ALICE, "groups": ["cms", "cms-uscms"]})
    g_result, c_result = await generic.refresh_user(g_user), await casa.refresh_user(c_user)
    assert outcome(c_result) == outcome(g_result) and c_result["groups"] == ["cms", "cms-uscms"]


async def test_refresh_user_hook_decides_even_for_a_token_casa_would_give_up_on(idp):
    """An expired token without a refresh token: casa skips the IdP and asks for a login -- unless
    the operator's refresh_user_hook answers first, as it does upstream."""
    _, casa = both(idp, refresh_user_hook=lambda authenticator, user, auth_state: True, allowed_groups={"cms"})
    got = await login(casa, idp, {**ALICE, "groups": ["cms"]})
    user = FakeUser.from_model(got)
    user.auth_state["refresh_token"] = None
    user.auth_state["casa"]["access_token_expires_at"] = 1
    assert await casa.refresh_user(user) is True
    casa.refresh_user_hook = None
    assert await casa.refresh_user(user) is False


def test_oauth2_groups_key_still_names_the_claim(idp, monkeypatch):
    monkeypatch.setenv("OAUTH2_GROUPS_KEY", "roles")
    _, casa = both(idp)
    assert casa.auth_state_groups_key == "oauth_user.roles"  # GenericOAuthenticator's reading of it
