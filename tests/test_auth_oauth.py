"""CasaOAuthenticator against an in-memory IdP (tests/auth_mocks.py), through JupyterHub's outer login API."""

import asyncio
import time

import pytest
from tornado import web

from tests.auth_mocks import CLIENT_ID, CLIENT_SECRET, ISSUER, MockHandler, MockIdP
from tests.fake_hub import FakeUser
from casa_auth import CasaOAuthenticator, LoginProblem, LoginRefused
from casa_hub.names import user_slug


@pytest.fixture
def idp():
    return MockIdP()


@pytest.fixture
def make_authenticator(idp):
    def make(**config):
        config.setdefault("idp", "cms-iam")
        config.setdefault("issuer", ISSUER)
        config.setdefault("allowed_groups", {"cms"})
        config.setdefault("admin_groups", {"/cms/admins"})
        config.setdefault("signup_url", "https://idp.example.org/register")
        config.setdefault("oauth_callback_url", "https://hub.example.org/hub/oauth_callback")
        return CasaOAuthenticator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, http_client=idp, **config)

    return make


async def login(authenticator, idp, userinfo, id_token_claims=None):
    """The hub's outer login call: authenticate, normalise, check_allowed, admin — as after the IdP redirect."""
    code = idp.login(userinfo, id_token_claims)
    return await authenticator.get_authenticated_user(MockHandler(code), None)


ALICE = {"sub": "a1", "preferred_username": "alice", "email": "alice@cern.ch"}

# claim shapes -> (allowed, admin): the table an operator would check
CLAIM_TABLE = [
    pytest.param({"wlcg.groups": ["/cms"]}, None, (True, False), id="wlcg.groups-list-with-slash"),
    pytest.param({"groups": "/cms"}, None, (True, False), id="groups-single-string"),
    pytest.param({"groups": ["cms", "/atlas"]}, None, (True, False), id="groups-without-slash"),
    pytest.param({"wlcg": {"groups": ["/cms"]}}, None, (True, False), id="nested-wlcg-groups"),
    pytest.param({"groups": ["/cms", "/cms/admins"]}, None, (True, True), id="admin-group"),
    pytest.param({"groups": ["/cms/admins"]}, None, (True, True), id="admin-group-only"),
    pytest.param({}, {"groups": ["/cms"]}, (True, False), id="groups-only-in-id-token"),
    pytest.param({"wlcg.groups": [" /cms "]}, None, (True, False), id="whitespace"),
    pytest.param({"groups": ["/atlas"]}, None, (False, False), id="other-group"),
    pytest.param({"groups": ["/cms/uscms"]}, None, (False, False), id="subgroup-is-not-group"),
    pytest.param({"groups": []}, None, (False, False), id="empty-list"),
    pytest.param({}, None, (False, False), id="no-group-claim"),
    pytest.param({"groups": None}, None, (False, False), id="null-groups"),
    pytest.param({"isMemberOf": ["cms"]}, None, (False, False), id="claim-not-configured"),
]


@pytest.mark.parametrize("userinfo_extra, id_token_claims, expected", CLAIM_TABLE)
async def test_claim_shapes_decide_access_and_admin(make_authenticator, idp, userinfo_extra, id_token_claims, expected):
    authenticator = make_authenticator()
    allowed, admin = expected
    if allowed:
        model = await login(authenticator, idp, {**ALICE, **userinfo_extra}, id_token_claims)
        assert model["name"] == "alice"
        assert bool(model["admin"]) is admin
        assert "cms" in model["groups"] or "cms/admins" in model["groups"]
        assert model["auth_state"]["casa"]["groups"] == model["groups"]
    else:
        with pytest.raises(LoginRefused) as refused:
            await login(authenticator, idp, {**ALICE, **userinfo_extra}, id_token_claims)
        assert refused.value.status_code == 403
        assert refused.value.casa_refusal["required"] == ["cms"]
        assert "cms" in refused.value.jupyterhub_message
        assert 'href="https://idp.example.org/register"' in refused.value.jupyterhub_html_message


MALFORMED = [
    pytest.param({**ALICE, "groups": 42}, "'groups' should be a group name or a list", id="groups-int"),
    pytest.param({**ALICE, "groups": {"cms": True}}, "it is a dict", id="groups-dict"),
    pytest.param({**ALICE, "wlcg.groups": ["/cms", 7]}, "contains a int", id="group-item-int"),
    pytest.param({"sub": "x", "email": "x@y"}, "no 'preferred_username' claim", id="username-missing"),
    pytest.param({**ALICE, "preferred_username": ["alice"]}, "should be a non-empty string", id="username-list"),
    pytest.param({**ALICE, "preferred_username": "  "}, "should be a non-empty string", id="username-blank"),
    pytest.param(["alice"], "should be a JSON object", id="userinfo-list"),
    pytest.param("alice", "should be a JSON object", id="userinfo-string"),
]


@pytest.mark.parametrize("userinfo, says", MALFORMED)
async def test_malformed_answer_is_a_clear_403_not_a_500(make_authenticator, idp, userinfo, says):
    with pytest.raises(LoginProblem) as problem:
        await login(make_authenticator(), idp, userinfo)
    assert problem.value.status_code == 403
    assert says in problem.value.jupyterhub_message
    assert problem.value.jupyterhub_message.startswith("Sign-in failed")


async def test_id_token_for_another_client_is_refused(make_authenticator, idp):
    with pytest.raises(LoginProblem) as problem:
        await login(make_authenticator(), idp, {**ALICE, "groups": ["/cms"]}, {"aud": "someone-else"})
    assert "not for this hub" in problem.value.jupyterhub_message


@pytest.mark.parametrize(
    "path, status, body, says",
    [
        pytest.param("/token", 500, b"oops", "answered HTTP 500", id="token-endpoint-500"),
        pytest.param("/token", 200, b'{"token_type": "Bearer"}', "could not be understood", id="no-access-token"),
        pytest.param("/token", 200, b"not json", "could not be understood", id="token-not-json"),
        pytest.param("/userinfo", 200, b"<html>", "could not be understood", id="userinfo-not-json"),
        pytest.param("/userinfo", 503, b"", "answered HTTP 503", id="userinfo-503"),
        # tornado's 599: no HTTP answer at all, so the page must not claim the IdP answered
        pytest.param("/token", 599, b"", "could not be reached", id="token-endpoint-unreachable"),
    ],
)
async def test_idp_failures_are_a_clear_502(make_authenticator, idp, path, status, body, says):
    idp.overrides[path] = (status, body)
    with pytest.raises(LoginProblem) as problem:
        await login(make_authenticator(), idp, {**ALICE, "groups": ["/cms"]})
    assert problem.value.status_code == 502
    assert says in problem.value.jupyterhub_message
    assert "access_token" not in problem.value.jupyterhub_message


@pytest.mark.parametrize(
    "config, userinfo, username",
    [
        ({}, {**ALICE, "preferred_username": "Alice"}, "alice"),
        ({"username_claim": "email"}, {**ALICE, "email": "Alice@CERN.ch"}, "alice@cern.ch"),
        ({"username_claim": "email", "username_strip_domains": ["cern.ch"]}, {**ALICE, "email": "Alice@CERN.ch"}, "alice"),
        ({"username_claim": "email", "username_strip_domains": ["cern.ch"]}, {**ALICE, "email": "alice@fnal.gov"}, "alice@fnal.gov"),
        ({"username_claim": "sub"}, {**ALICE, "sub": "8d1c-44"}, "8d1c-44"),
        ({"username_claim": "account.name"}, {**ALICE, "account": {"name": "Zoë"}}, "zoë"),
    ],
)
async def test_username_mapping_and_facility_slug(make_authenticator, idp, config, userinfo, username):
    model = await login(make_authenticator(**config), idp, {**userinfo, "groups": ["/cms"]})
    assert model["name"] == username
    casa = model["auth_state"]["casa"]
    assert casa["username"] == username
    assert casa["slug"] == user_slug(username)


async def test_auth_state_carries_tokens_expiry_and_id_token_claims(make_authenticator, idp):
    before = int(time.time())
    model = await login(make_authenticator(), idp, {**ALICE, "groups": ["/cms"]}, {"email": "alice@cern.ch", "nonce": "n"})
    state = model["auth_state"]
    assert state["access_token"] in idp.access_tokens
    assert state["refresh_token"] in idp.refresh_tokens
    casa = state["casa"]
    assert before + 3600 <= casa["access_token_expires_at"] <= int(time.time()) + 3600
    assert casa["claims"]["email"] == "alice@cern.ch"
    assert casa["claims"]["aud"] == CLIENT_ID
    assert "nonce" not in casa["claims"]
    assert casa["idp"] == "cms-iam"


async def test_manage_groups_is_on_by_default_so_allowed_groups_just_work():
    authenticator = CasaOAuthenticator(allowed_groups={"/cms"})
    assert authenticator.manage_groups is True
    assert authenticator.allowed_groups == {"cms"}


# -- refresh ----------------------------------------------------------------------


async def logged_in_user(make_authenticator, idp, **config):
    authenticator = make_authenticator(**config)
    model = await login(authenticator, idp, {**ALICE, "groups": ["/cms"]})
    return authenticator, FakeUser.from_model(model)


async def test_refresh_keeps_casa_keys(make_authenticator, idp):
    authenticator, user = await logged_in_user(make_authenticator, idp)
    assert await authenticator.refresh_user(user) is True  # nothing changed: the hub writes nothing
    idp.set_userinfo({**ALICE, "groups": ["/cms", "/cms/uscms"]})
    refreshed = await authenticator.refresh_user(user)
    assert refreshed["auth_state"]["casa"]["groups"] == ["cms", "cms/uscms"]
    assert refreshed["auth_state"]["casa"]["slug"] == "alice"
    assert refreshed["auth_state"]["casa"]["access_token_expires_at"] == user.auth_state["casa"]["access_token_expires_at"]
    assert refreshed["groups"] == ["cms", "cms/uscms"]


async def test_refresh_with_revoked_access_token_uses_refresh_token_and_keeps_casa_keys(make_authenticator, idp):
    authenticator, user = await logged_in_user(make_authenticator, idp)
    old_token = user.auth_state["access_token"]
    idp.revoke_access_tokens()
    refreshed = await authenticator.refresh_user(user)
    assert refreshed["auth_state"]["access_token"] not in (None, old_token)
    assert refreshed["auth_state"]["casa"]["groups"] == ["cms"]
    assert idp.grant_types() == ["authorization_code", "refresh_token"]


async def test_refresh_renews_a_token_about_to_expire_before_using_it(make_authenticator, idp):
    idp.expires_in = 120  # less than the 300 s margin
    authenticator, user = await logged_in_user(make_authenticator, idp)
    old_token = user.auth_state["access_token"]
    refreshed = await authenticator.refresh_user(user)
    assert idp.grant_types() == ["authorization_code", "refresh_token"]
    assert refreshed["auth_state"]["access_token"] != old_token
    assert refreshed["auth_state"]["casa"]["access_token_expires_at"] >= int(time.time()) + 100


async def test_concurrent_refreshes_renew_the_token_once(make_authenticator, idp, monkeypatch):
    """Two requests refreshing the same user at once: one renewal, and both keep the login
    (the mock IdP, like one that rotates refresh tokens, accepts each refresh token once)."""
    fetch = idp.fetch

    async def slow_fetch(request, **kwargs):
        await asyncio.sleep(0.01)  # a real IdP answers later: the other refresh runs meanwhile
        return await fetch(request, **kwargs)

    idp.expires_in = 120  # inside the 300 s margin: both refreshes find the token due
    authenticator, user = await logged_in_user(make_authenticator, idp)
    idp.expires_in = 3600  # the renewed token is not due again
    monkeypatch.setattr(idp, "fetch", slow_fetch)
    results = await asyncio.gather(authenticator.refresh_user(user), authenticator.refresh_user(user))
    assert False not in results, results
    assert idp.grant_types() == ["authorization_code", "refresh_token"]
    # the first renewed (and saved) the token; the second found it renewed: nothing left to change
    (renewed,) = [r for r in results if r is not True]
    assert renewed["auth_state"]["access_token"] == user.auth_state["access_token"] in idp.access_tokens


async def test_failed_refresh_forces_a_new_login(make_authenticator, idp):
    authenticator, user = await logged_in_user(make_authenticator, idp)
    idp.revoke_access_tokens()
    idp.revoke_refresh_tokens()
    assert await authenticator.refresh_user(user) is False


async def test_expired_token_without_refresh_token_forces_a_new_login(make_authenticator, idp):
    authenticator, user = await logged_in_user(make_authenticator, idp)
    user.auth_state["refresh_token"] = None
    user.auth_state["casa"]["access_token_expires_at"] = int(time.time()) - 1
    assert await authenticator.refresh_user(user) is False
    assert idp.requests.count(("/userinfo", None)) == 1  # the dead token was not even tried


async def test_refresh_when_idp_is_down_forces_a_new_login(make_authenticator, idp):
    authenticator, user = await logged_in_user(make_authenticator, idp)
    idp.overrides["/userinfo"] = (503, b"")
    assert await authenticator.refresh_user(user) is False


async def test_refresh_after_losing_the_group_forces_a_new_login(make_authenticator, idp):
    authenticator, user = await logged_in_user(make_authenticator, idp)
    idp.set_userinfo({**ALICE, "groups": ["/atlas"]})
    assert await authenticator.refresh_user(user) is False


async def test_operator_hook_runs_and_casa_keys_stay(make_authenticator, idp):
    calls = []

    def hook(authenticator, auth_state):
        calls.append(auth_state["access_token"])
        auth_state["oauth_user"]["groups"] = ["/cms"]  # e.g. groups fetched from another service
        auth_state["site"] = "T2_US_Nebraska"
        return auth_state

    authenticator, user = await logged_in_user(make_authenticator, idp, modify_auth_state_hook=hook)
    assert authenticator.modify_auth_state_hook is hook
    assert user.auth_state["site"] == "T2_US_Nebraska" and user.auth_state["casa"]["groups"] == ["cms"]
    idp.set_userinfo({**ALICE})  # the IdP stops listing groups; the operator's hook still adds them
    idp.revoke_access_tokens()  # and the refresh goes through the refresh token: a new auth_state
    refreshed = await authenticator.refresh_user(user)
    assert len(calls) == 2  # oauthenticator runs the hook on refresh too
    assert refreshed["auth_state"]["site"] == "T2_US_Nebraska"
    assert refreshed["auth_state"]["casa"]["groups"] == ["cms"] and refreshed["groups"] == ["cms"]


# -- presets, environment, discovery ----------------------------------------------


def test_cms_iam_preset_derives_endpoints_and_scopes():
    a = CasaOAuthenticator(idp="cms-iam", issuer="https://iam.example.org/")
    assert (a.authorize_url, a.token_url, a.userdata_url) == (
        "https://iam.example.org/authorize",
        "https://iam.example.org/token",
        "https://iam.example.org/userinfo",
    )
    assert a.scope == ["openid", "profile", "email", "offline_access", "wlcg.groups", "storage.read:/"]
    assert a.group_claims == ["wlcg.groups", "groups"]
    assert a.login_service == "CMS IAM"


def test_cilogon_preset_reads_ismemberof():
    a = CasaOAuthenticator(idp="cilogon")
    assert a.token_url == "https://cilogon.org/oauth2/token"
    assert a.group_claims == ["isMemberOf"]
    assert a.username_claim == "email"


def test_explicit_config_and_env_vars_beat_the_preset(monkeypatch):
    monkeypatch.setenv("OAUTH2_TOKEN_URL", "https://secret.example.org/token")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "from-env")
    monkeypatch.setenv("OAUTH_CLIENT_SECRET", "env-secret")
    a = CasaOAuthenticator(idp="cms-iam", authorize_url="https://mine.example.org/auth", scope=["openid"])
    assert a.token_url == "https://secret.example.org/token"
    assert a.authorize_url == "https://mine.example.org/auth"
    assert a.client_id == "from-env" and a.client_secret == "env-secret"
    assert a.scope == ["openid"]


async def test_discovery_fills_endpoints_for_generic(idp):
    a = CasaOAuthenticator(idp="generic", issuer=ISSUER, client_id=CLIENT_ID, http_client=idp, token_url="https://mine.example.org/token")
    assert a.oidc_discovery and a.authorize_url == ""
    await a.discover_endpoints()
    assert a.authorize_url == f"{ISSUER}/oidc/auth"
    assert a.userdata_url == f"{ISSUER}/userinfo"
    assert a.token_url == "https://mine.example.org/token"


@pytest.mark.parametrize(
    "document, says",
    [
        ({"issuer": "https://evil.example.org"}, "is for issuer"),
        ({"issuer": ISSUER, "token_endpoint": "ftp://x"}, "no valid 'authorization_endpoint'"),
        (["not", "an", "object"], "not a JSON object"),
    ],
)
async def test_bad_discovery_document_is_a_clear_502(idp, document, says):
    idp.discovery = document
    a = CasaOAuthenticator(idp="generic", issuer=ISSUER, http_client=idp)
    with pytest.raises(LoginProblem) as problem:
        await a.discover_endpoints()
    assert problem.value.status_code == 502 and says in problem.value.jupyterhub_message


def test_unknown_preset_is_refused_at_config_time():
    with pytest.raises(Exception, match="cms-iam"):
        CasaOAuthenticator(idp="keycloak")


def test_refusal_is_an_http_403():
    refused = CasaOAuthenticator(signup_url="https://x/apply", signup_text="Join CMS").refusal("bob", ["atlas"], {"cms"})
    assert isinstance(refused, web.HTTPError) and refused.status_code == 403
    assert refused.jupyterhub_message == "You signed in as bob, but this facility is open only to members of cms. Join CMS: https://x/apply"


@pytest.mark.parametrize(
    "template, exception, shows",
    [
        ("403.html", LoginRefused("bob", ["atlas"], ["cms"], "https://x/apply", "Join"),
         ['<code class="casa-required-group">cms</code>', 'href="https://x/apply"']),
        ("403.html", LoginProblem(403, "Sign-in failed: no 'email' claim"), ["Sign-in failed: no &#39;email&#39; claim"]),
        ("502.html", LoginProblem(502, "Sign-in failed: HTTP 503"), ['<p id="casa-problem">Sign-in failed: HTTP 503</p>']),
        ("403.html", web.HTTPError(403, "plain"), ["plain"]),
        # a hub without casa_auth.TEMPLATE_DIR in template_paths still names the group and links to apply
        ("error.html", LoginRefused("bob", [], ["cms"], "https://x/apply", "Join"), ["<code>cms</code>", '<a href="https://x/apply">Join</a>']),
    ],
)
def test_packaged_error_pages_render_with_jupyterhubs_templates(template, exception, shows):
    import jinja2
    from jupyterhub.app import JupyterHub

    from casa_auth import TEMPLATE_DIR

    stock = JupyterHub().template_paths[0]
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([
            jinja2.PrefixLoader({"templates": jinja2.FileSystemLoader([stock])}, "/"),
            jinja2.FileSystemLoader([TEMPLATE_DIR, stock]),
        ]),
        autoescape=True,
    )
    html = env.get_template(template).render(
        static_url=lambda *a, **k: "/static", base_url="/hub/", prefix="/", user=None, services=[],
        exception=exception, status_code=exception.status_code, status_message="x", message=exception.log_message,
        message_html=getattr(exception, "jupyterhub_html_message", ""), parsed_scopes=set(), expanded_scopes=set(),
    )
    for text in shows:
        assert text in html


async def test_unreachable_idp_is_a_502_that_says_so():
    """Nothing listens at the token endpoint (port 9, discard): tornado raises the connection error itself."""
    authenticator = CasaOAuthenticator(idp="cms-iam", issuer="http://127.0.0.1:9", client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                                       allowed_groups={"cms"}, oauth_callback_url="https://hub.example.org/hub/oauth_callback")
    with pytest.raises(LoginProblem) as problem:
        await authenticator.get_authenticated_user(MockHandler("any-code"), None)
    assert problem.value.status_code == 502
    assert "could not be reached" in problem.value.jupyterhub_message


async def test_tokens_in_an_unusable_token_response_reach_neither_page_nor_log(make_authenticator, idp, caplog):
    caplog.set_level("DEBUG")
    idp.overrides["/token"] = (200, b'{"token_type": "Bearer", "refresh_token": "RT-SECRET-123", "id_token": "ID-SECRET-456"}')
    with pytest.raises(LoginProblem) as problem:
        await login(make_authenticator(), idp, {**ALICE, "groups": ["/cms"]})
    assert problem.value.status_code == 502
    for secret in ("RT-SECRET-123", "ID-SECRET-456", CLIENT_SECRET):
        assert secret not in str(problem.value) and secret not in problem.value.jupyterhub_message
        assert secret not in caplog.text


async def test_tokens_in_an_unusable_refresh_answer_reach_no_log(make_authenticator, idp, caplog):
    """A refresh whose token response lacks the access token: oauthenticator quotes the whole
    response in its error; the refresh fails without writing those tokens to the log."""
    caplog.set_level("DEBUG")
    idp.expires_in = 120  # inside the refresh margin: refresh_user renews through the token endpoint
    authenticator, user = await logged_in_user(make_authenticator, idp)
    idp.overrides["/token"] = (200, b'{"token_type": "Bearer", "refresh_token": "RT-SECRET-123", "id_token": "ID-SECRET-456"}')
    assert await authenticator.refresh_user(user) is False
    assert "Refreshing the login of alice failed" in caplog.text
    for secret in ("RT-SECRET-123", "ID-SECRET-456", user.auth_state["refresh_token"], CLIENT_SECRET):
        assert secret not in caplog.text


async def test_tokens_of_a_response_without_id_token_reach_no_log(make_authenticator, idp, caplog):
    """userdata_from_id_token with a token response that has no ID token (refresh answers may omit
    it): the refresh fails without logging the access and refresh tokens oauthenticator quotes."""
    caplog.set_level("DEBUG")
    authenticator = make_authenticator(userdata_from_id_token=True)
    model = await login(authenticator, idp, {**ALICE, "groups": ["/cms"]}, {**ALICE, "groups": ["/cms"]})
    user = FakeUser(model["name"], model["auth_state"])
    del user.auth_state["token_response"]["id_token"]
    assert await authenticator.refresh_user(user) is False
    assert "Refreshing the login of alice failed" in caplog.text
    for secret in (user.auth_state["access_token"], user.auth_state["refresh_token"]):
        assert secret not in caplog.text


# -- what a failed refresh tells the operator -------------------------------------------


def _broken_hook(authenticator, auth_state):
    return auth_state["oauth_user"]["sub"] + 1  # a bug (TypeError), not a problem of the IdP


async def test_an_unexpected_error_in_refresh_is_logged_with_its_traceback(make_authenticator, idp, caplog):
    caplog.set_level("INFO")
    authenticator, user = await logged_in_user(make_authenticator, idp)
    authenticator.modify_auth_state_hook = _broken_hook
    assert await authenticator.refresh_user(user) is False  # fail closed: a login the hub could not check ends
    (record,) = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert record.levelname == "ERROR" and record.exc_info[0] is TypeError
    assert "Traceback" in caplog.text and "_broken_hook" in caplog.text


@pytest.mark.parametrize(
    "path, status, says",
    [
        pytest.param("/userinfo", 503, "the identity provider answered HTTP 503", id="idp-down"),
        pytest.param("/userinfo", 599, "the identity provider could not be reached", id="idp-unreachable"),
        pytest.param("/userinfo", 200, "Expecting value", id="userinfo-not-json"),
    ],
)
async def test_expected_refresh_failures_are_one_line(make_authenticator, idp, caplog, path, status, says):
    caplog.set_level("INFO")
    authenticator, user = await logged_in_user(make_authenticator, idp)
    idp.overrides[path] = (status, b"<html>")
    assert await authenticator.refresh_user(user) is False
    (record,) = [r for r in caplog.records if "Refreshing the login of alice failed" in r.getMessage()]
    assert record.levelname == "WARNING" and record.exc_info is None and says in record.getMessage()


async def test_an_unexpected_error_at_login_is_a_500_page_and_a_traceback(make_authenticator, idp, caplog):
    with pytest.raises(LoginProblem) as problem:
        await login(make_authenticator(modify_auth_state_hook=_broken_hook), idp, {**ALICE, "groups": ["/cms"]})
    assert problem.value.status_code == 500 and "hub's log" in problem.value.jupyterhub_message
    (record,) = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert record.exc_info[0] is TypeError
