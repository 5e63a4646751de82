"""CasaDummyAuthenticator: fixed users, the same group rules and auth_state shape as the OIDC login."""

import pytest
from traitlets import TraitError

from tests.auth_mocks import ISSUER, MockHandler, MockIdP
from tests.fake_hub import FakeUser
from casa_auth import CasaDummyAuthenticator, CasaOAuthenticator, LoginRefused

USERS = {
    "alice": {"groups": ["/cms"], "admin": True, "email": "alice@example.org"},
    "bob": {"groups": ["cms"], "password": "bob-pw"},
    "carol": {"groups": ["/atlas"]},
    "dave": {"groups": ["/cms/admins"]},
}


def make(**config):
    config.setdefault("users", USERS)
    config.setdefault("allowed_groups", {"/cms"})
    config.setdefault("signup_url", "https://example.org/apply")
    return CasaDummyAuthenticator(**config)


async def login(authenticator, username, password=""):
    return await authenticator.get_authenticated_user(None, {"username": username, "password": password})


async def test_member_logs_in_with_groups_and_casa_state():
    model = await login(make(), "bob", "bob-pw")
    assert model["name"] == "bob" and model["groups"] == ["cms"] and not model["admin"]
    assert model["auth_state"]["casa"]["slug"] == "bob"
    assert model["auth_state"]["casa"]["groups"] == ["cms"]


async def test_admin_flag_and_admin_groups():
    assert (await login(make(), "alice"))["admin"] is True
    dave = await login(make(admin_groups={"cms/admins"}), "dave")
    assert dave["admin"] is True and dave["groups"] == ["cms/admins"]


async def test_non_member_gets_the_403_page_naming_the_group():
    with pytest.raises(LoginRefused) as refused:
        await login(make(), "carol")
    assert refused.value.casa_refusal["required"] == ["cms"]
    assert refused.value.casa_refusal["signup_url"] == "https://example.org/apply"


async def test_without_group_rules_every_configured_user_is_in():
    model = await login(make(allowed_groups=set()), "carol")
    assert model["name"] == "carol"


@pytest.mark.parametrize(
    "username, password",
    [("mallory", ""), ("bob", "wrong"), ("bob", ""), ("", "")],
)
async def test_unknown_user_or_wrong_password_fails_like_a_login_form(username, password):
    assert await login(make(), username, password) is None


async def test_shared_password():
    authenticator = make(password="demo")
    assert await login(authenticator, "alice", "nope") is None
    assert (await login(authenticator, "alice", "demo"))["name"] == "alice"
    assert (await login(authenticator, "bob", "bob-pw"))["name"] == "bob"  # a user's own password wins


@pytest.mark.parametrize(
    "users, says",
    [
        ({"alice": {"groups": "cms", "admin": "yes"}}, "'admin'] must be True or False"),
        ({"alice": {"groups": [1]}}, "list of strings"),
        ({"alice": {"group": ["cms"]}}, "unknown keys"),
        ({"alice": ["cms"]}, "must be a dict"),
        ({"": {}}, "not a valid username"),
    ],
)
def test_bad_users_config_is_a_clear_error(users, says):
    with pytest.raises((TraitError, ValueError), match=says):
        make(users=users)


async def test_auth_state_has_the_same_shape_as_the_oidc_login():
    idp = MockIdP()
    oauth = CasaOAuthenticator(idp="cms-iam", issuer=ISSUER, client_id=idp.client_id, http_client=idp,
                               allowed_groups={"cms"}, oauth_callback_url="https://hub.example.org/hub/oauth_callback")
    code = idp.login({"preferred_username": "bob", "groups": ["/cms"]})
    oauth_state = (await oauth.get_authenticated_user(MockHandler(code), None))["auth_state"]
    dummy_state = (await login(make(), "bob", "bob-pw"))["auth_state"]
    assert set(dummy_state) == set(oauth_state)
    assert set(dummy_state["casa"]) == set(oauth_state["casa"])
    assert dummy_state["casa"]["groups"] == oauth_state["casa"]["groups"] == ["cms"]


async def test_refresh_follows_the_config():
    authenticator = make()
    model = await login(authenticator, "bob", "bob-pw")
    user = FakeUser("bob", model["auth_state"])
    assert (await authenticator.refresh_user(user))["auth_state"]["casa"]["groups"] == ["cms"]
    authenticator.users = {**USERS, "bob": {"groups": ["atlas"]}}
    assert await authenticator.refresh_user(user) is False
    authenticator.users = {"alice": {}}
    assert await authenticator.refresh_user(user) is False
