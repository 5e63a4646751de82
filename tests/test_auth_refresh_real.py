"""CasaOAuthenticator in-process against the real oidc-provider: discovery, login, and token refresh.

The browser test proves the pages; this one proves what a hub does later with the tokens:
``refresh_user`` trades a short-lived access token for a new one through the real provider and
the ``casa`` auth_state keys survive it.
"""

import asyncio
import base64
import hashlib
import time
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
import requests

from tests.auth_mocks import MockHandler
from tests.fake_hub import FakeUser
from tests.auth_servers import CLIENT_ID, CLIENT_SECRET, oidc_provider, provider_sign_in
from casa_auth import CasaOAuthenticator

pytestmark = pytest.mark.e2e

CALLBACK = "http://127.0.0.1:9/hub/oauth_callback"  # never contacted: the test stops at the redirect
VERIFIER = "v" * 43  # what MockHandler's state cookie carries


def authorization_code(authenticator, username, password):
    """The code the provider sends back to the hub, obtained through its login form with an HTTP client."""
    challenge = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).decode().rstrip("=")
    query = urlencode({
        "client_id": authenticator.client_id, "redirect_uri": CALLBACK, "response_type": "code",
        "scope": " ".join(authenticator.scope), "state": "s1",
        "code_challenge": challenge, "code_challenge_method": "S256",
    })
    with requests.Session() as session:
        url = provider_sign_in(session, f"{authenticator.authorize_url}?{query}", username, password, CALLBACK)
    return parse_qs(urlparse(url).query)["code"][0]


@pytest.fixture
def provider(tmp_path):
    with oidc_provider(tmp_path, [CALLBACK], access_token_ttl=60) as issuer:
        yield issuer


async def test_discovery_login_and_refresh_through_the_real_provider(provider):
    authenticator = CasaOAuthenticator(
        idp="generic", issuer=provider, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
        oauth_callback_url=CALLBACK, scope=["openid", "profile", "email", "offline_access", "wlcg.groups"],
        group_claims=["wlcg.groups", "groups"], allowed_groups={"cms"},
    )
    await authenticator.discover_endpoints()
    assert authenticator.authorize_url == f"{provider}/authorize"
    assert authenticator.userdata_url == f"{provider}/userinfo"

    code = await asyncio.to_thread(authorization_code, authenticator, "alice", "alice-pw")
    model = await authenticator.get_authenticated_user(MockHandler(code), None)
    assert model["name"] == "alice" and model["groups"] == ["cms", "cms/uscms"]
    first = model["auth_state"]
    assert first["casa"]["claims"]["sub"] == "alice" and first["casa"]["claims"]["iss"] == provider
    assert first["casa"]["access_token_expires_at"] <= time.time() + 60

    # 60 s tokens are inside the 300 s refresh margin: refresh_user renews through the provider
    user = FakeUser("alice", first)
    refreshed = await authenticator.refresh_user(user)
    state = refreshed["auth_state"]
    assert state["access_token"] != first["access_token"]
    assert state["casa"]["groups"] == ["cms", "cms/uscms"]
    assert state["casa"]["slug"] == "alice"
    assert state["casa"]["access_token_expires_at"] >= first["casa"]["access_token_expires_at"]
    assert refreshed["groups"] == ["cms", "cms/uscms"]

    # a refresh token the provider no longer accepts: a new login is required
    # (stored where oauthenticator reads it back on refresh: beside the access token and in the token response)
    user.auth_state = {**state, "refresh_token": "not-a-refresh-token",
                       "token_response": {**state["token_response"], "refresh_token": "not-a-refresh-token"}}
    assert await authenticator.refresh_user(user) is False
