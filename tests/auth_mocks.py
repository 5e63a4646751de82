"""An in-memory OIDC provider behind a mock HTTP client, in the style of oauthenticator's tests/mocks.py.

``MockIdP`` answers the token and userinfo endpoints the way a provider does (codes,
access/refresh tokens that expire or get revoked, signed ID tokens); tests pass it as the
authenticator's ``http_client``.  ``MockHandler`` and ``MockUser`` stand in for the hub's
request handler and ``User`` where oauthenticator reads them.
"""

from __future__ import annotations

import json
import secrets
import time
from io import BytesIO
from urllib.parse import parse_qs, urlparse

import jwt
from oauthenticator.oauth2 import _serialize_state
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse

CLIENT_ID = "casa-hub"
CLIENT_SECRET = "casa-hub-secret"
ISSUER = "https://idp.example.org"


class MockIdP:
    """Token endpoint ``/token``, userinfo ``/userinfo`` and discovery under :data:`ISSUER`."""

    def __init__(self, issuer: str = ISSUER, client_id: str = CLIENT_ID):
        self.issuer = issuer
        self.client_id = client_id
        self.signing_key = secrets.token_bytes(32)
        self.codes: dict[str, dict] = {}
        self.access_tokens: dict[str, dict] = {}
        self.refresh_tokens: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.expires_in = 3600
        # raw overrides for malformed-answer tests: (status, body bytes) per path
        self.overrides: dict[str, tuple[int, bytes]] = {}
        self.discovery = {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/oidc/auth",
            "token_endpoint": f"{issuer}/token",
            "userinfo_endpoint": f"{issuer}/userinfo",
        }

    # -- test set-up -------------------------------------------------------------

    def login(self, userinfo, id_token_claims=None) -> str:
        """An authorization code for a user whose userinfo answer is ``userinfo`` (any JSON value)."""
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"userinfo": userinfo, "id_token_claims": id_token_claims}
        return code

    def set_userinfo(self, userinfo) -> None:
        """What the IdP says about the user from now on (e.g. removed from a group)."""
        for grant in list(self.access_tokens.values()) + list(self.refresh_tokens.values()):
            grant["userinfo"] = userinfo

    def revoke_access_tokens(self) -> None:
        self.access_tokens.clear()

    def revoke_refresh_tokens(self) -> None:
        self.refresh_tokens.clear()

    def grant_types(self) -> list[str]:
        return [g for path, g in self.requests if path == "/token"]

    # -- the HTTP side ------------------------------------------------------------

    def _tokens(self, grant: dict) -> dict:
        access = secrets.token_urlsafe(24)
        refresh = secrets.token_urlsafe(24)
        now = int(time.time())
        self.access_tokens[access] = {**grant, "exp": now + self.expires_in}
        self.refresh_tokens[refresh] = grant
        claims = {"iss": self.issuer, "aud": self.client_id, "iat": now, "exp": now + 600, "sub": "subject-1"}
        claims.update(grant.get("id_token_claims") or {})
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": refresh,
            "id_token": jwt.encode(claims, self.signing_key, algorithm="HS256"),
            "scope": "openid profile email",
        }

    def _token(self, request: HTTPRequest):
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        self.requests.append(("/token", form.get("grant_type")))
        if form.get("client_id") != self.client_id:
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") == "authorization_code":
            grant = self.codes.pop(form.get("code"), None)
        elif form.get("grant_type") == "refresh_token":
            grant = self.refresh_tokens.pop(form.get("refresh_token"), None)
        else:
            return 400, {"error": "unsupported_grant_type"}
        if grant is None:
            return 400, {"error": "invalid_grant"}
        return 200, self._tokens(grant)

    def _userinfo(self, request: HTTPRequest):
        self.requests.append(("/userinfo", None))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        grant = self.access_tokens.get(token)
        if grant is None or grant["exp"] < time.time():
            return 401, {"error": "invalid_token"}
        return 200, grant["userinfo"]

    async def fetch(self, request, raise_error=True, **kwargs):
        if isinstance(request, str):
            request = HTTPRequest(request, **kwargs)
        path = urlparse(request.url).path
        if path in self.overrides:
            self.requests.append((path, "override"))
            status, body = self.overrides[path]
        else:
            if path == "/token":
                status, payload = self._token(request)
            elif path == "/userinfo":
                status, payload = self._userinfo(request)
            elif path == "/.well-known/openid-configuration":
                status, payload = 200, self.discovery
            else:
                status, payload = 404, {"error": "not found"}
            body = json.dumps(payload).encode()
        response = HTTPResponse(request, status, buffer=BytesIO(body), headers={"Content-Type": "application/json"})
        if raise_error and status >= 400:
            raise HTTPClientError(status, response=response)
        return response

    def close(self):
        pass


class MockHandler:
    """What oauthenticator reads from the callback request: ``code`` and the PKCE state cookie."""

    def __init__(self, code: str):
        self.code = code
        self._cookie = _serialize_state({"state_id": "s1", "code_verifier": "v" * 43})

    def get_argument(self, name, default=None):
        return self.code if name == "code" else default

    def get_state_cookie(self):
        return self._cookie


class MockGroup:
    def __init__(self, name: str):
        self.name = name


class MockUser:
    """A hub user as far as ``refresh_user`` cares: a name, encrypted-at-rest auth_state, groups and admin flag."""

    def __init__(self, name: str, auth_state: dict | None, groups=(), admin: bool = False):
        self.name = name
        self.auth_state = auth_state
        self.groups = [MockGroup(g) for g in groups]
        self.admin = admin

    @classmethod
    def from_model(cls, model: dict) -> "MockUser":
        """The user as the hub stores a login's auth model (groups synced, admin set when given)."""
        return cls(model["name"], json.loads(json.dumps(model["auth_state"])), model.get("groups") or (), bool(model.get("admin")))

    def apply(self, refreshed) -> None:
        """What the hub does with refresh_user's answer (JupyterHub's refresh_auth/auth_to_user): True keeps all."""
        if refreshed is True or refreshed is False:
            return
        self.auth_state = json.loads(json.dumps(refreshed["auth_state"]))
        if refreshed.get("groups") is not None:
            self.groups = [MockGroup(g) for g in refreshed["groups"]]
        if refreshed.get("admin") is not None:
            self.admin = refreshed["admin"]

    async def get_auth_state(self):
        return json.loads(json.dumps(self.auth_state)) if self.auth_state is not None else None

    async def save_auth_state(self, auth_state):
        self.auth_state = auth_state
