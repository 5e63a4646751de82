"""CasaOAuthenticator: OIDC login for a facility, with group rules that survive token refresh.

A plain subclass of oauthenticator's ``GenericOAuthenticator``: presets for the IdPs
facilities use (``idp``), groups from configurable claim paths, and the ``casa`` part of
auth_state added in ``build_auth_state_dict`` -- which oauthenticator calls on login and on
``refresh_user`` alike, so a refresh keeps it.  Every GenericOAuthenticator setting keeps its
meaning (``claim_groups_key``, ``auth_state_groups_key``, ``modify_auth_state_hook``,
``refresh_user_hook`` ...); the README lists what casa changes on purpose.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import weakref
from inspect import isawaitable

import jwt
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthCallbackHandler, OAuthLoginHandler
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets import Bool, CaselessStrEnum, Int, List, Unicode, default

from .groups import MalformedClaims, extract_groups, normalise_groups, string_claim
from .pages import CasaLoginPage, LoginProblem
from .rules import CasaGroupRules
from .presets import ENDPOINT_TRAITS, PRESETS, DiscoveryError, discovery_url, parse_discovery, preset_endpoints
from .state import CASA_KEY, casa_state, token_expires_at

_ENDPOINT_ENV = {
    "authorize_url": "OAUTH2_AUTHORIZE_URL",
    "token_url": "OAUTH2_TOKEN_URL",
    "userdata_url": "OAUTH2_USERDATA_URL",
}


def _scrubbed(error: web.HTTPError, says: str) -> web.HTTPError:
    """``error`` without its message: oauthenticator's 500s quote the whole token response
    (access, refresh and ID tokens), and an HTTPError's message reaches logs through ``str()``."""
    if error.status_code < 500:
        return error
    return web.HTTPError(error.status_code, "%s", says)


def _safe_reason(error: BaseException) -> str:
    """Why a login or refresh failed, for the log: never an HTTPError's message (see _scrubbed)."""
    if isinstance(error, web.HTTPError) and not isinstance(error, LoginProblem):
        return f"HTTP {error.status_code}"
    return str(error)


class CasaLoginHandler(OAuthLoginHandler):
    """The stock login redirect, after the endpoints are known (OIDC discovery is async)."""

    async def get(self):
        await self.authenticator.discover_endpoints()
        return super().get()


class CasaCallbackHandler(OAuthCallbackHandler):
    async def get(self):
        await self.authenticator.discover_endpoints()
        return await super().get()


class CasaOAuthenticator(CasaGroupRules, CasaLoginPage, GenericOAuthenticator):
    """Log facility users in with their experiment's OIDC provider; admit members of the right groups."""

    login_handler = CasaLoginHandler
    callback_handler = CasaCallbackHandler

    idp = CaselessStrEnum(
        sorted(PRESETS),
        default_value="generic",
        config=True,
        help="""Identity-provider preset: ``"cms-iam"`` (INDIGO IAM), ``"cilogon"`` or ``"generic"``.

        A preset gives defaults for the endpoints (derived from ``issuer``), ``scope``,
        ``group_claims``, ``username_claim`` and ``login_service``; set any of them to override.
        Example: ``c.CasaOAuthenticator.idp = "cms-iam"``.
        """,
    )
    issuer = Unicode(
        config=True,
        help="""The IdP's issuer URL; endpoints are derived from it (presets) or discovered.

        Example: ``c.CasaOAuthenticator.issuer = "https://cms-auth.cern.ch/"``. Defaults to the preset's.
        """,
    )
    oidc_discovery = Bool(
        config=True,
        help="""Read endpoints from ``<issuer>/.well-known/openid-configuration`` at the first login.

        Endpoints set in config or by ``OAUTH2_*_URL`` environment variables win.
        Defaults to True for ``idp = "generic"`` with an ``issuer``, False otherwise.
        """,
    )
    group_claims = List(
        Unicode(),
        config=True,
        help="""Claim paths holding the user's groups (dotted for nested claims).

        A claim may be a string or a list of strings; a leading ``/`` is stripped
        (``/cms`` -> ``cms``).  ``wlcg.groups`` matches the flat WLCG claim as well as
        ``{"wlcg": {"groups": ...}}``.  Example: ``["wlcg.groups", "groups", "eduperson_entitlement"]``.
        """,
    )
    group_claim_sources = List(
        CaselessStrEnum(["userinfo", "id_token"]),
        ["userinfo", "id_token"],
        config=True,
        help="""Where ``group_claims`` are read: the userinfo answer and/or the ID token's claims.""",
    )
    username_strip_domains = List(
        Unicode(),
        config=True,
        help="""E-mail domains removed from the username claim: ``["cern.ch"]`` turns ``Alice@cern.ch`` into ``alice``.

        Only the listed domains are stripped, so two people at different domains never share a name.
        """,
    )
    storage_scopes = List(
        Unicode(),
        config=True,
        help="""WLCG storage scopes added to ``scope``, e.g. ``["storage.read:/", "storage.create:/store/user"]``.""",
    )
    id_token_claims = List(
        Unicode(),
        ["iss", "sub", "aud", "exp", "auth_time", "email", "name", "preferred_username"],
        config=True,
        help="""ID-token claims kept in ``auth_state["casa"]["claims"]`` for spawners and services.""",
    )
    access_token_refresh_margin = Int(
        300,
        config=True,
        help="""On ``refresh_user``, renew the access token with the refresh token when it expires within this many seconds.

        So a spawn (``refresh_pre_spawn``) never starts with a token about to die. 0: only renew expired tokens.
        """,
    )

    # -- defaults that differ from GenericOAuthenticator ------------------------

    @property
    def preset(self):
        return PRESETS[self.idp]

    @default("issuer")
    def _default_issuer(self):
        return self.preset.issuer

    @default("oidc_discovery")
    def _default_oidc_discovery(self):
        return self.idp == "generic" and bool(self.issuer)

    def _preset_endpoint(self, trait):
        env = os.environ.get(_ENDPOINT_ENV[trait], "")
        if env:
            return env
        if self.oidc_discovery:
            return ""
        return preset_endpoints(self.preset, self.issuer).get(trait, "")

    @default("authorize_url")
    def _default_authorize_url(self):
        return self._preset_endpoint("authorize_url")

    @default("token_url")
    def _default_token_url(self):
        return self._preset_endpoint("token_url")

    @default("userdata_url")
    def _default_userdata_url(self):
        if self.userdata_from_id_token:
            return ""
        return self._preset_endpoint("userdata_url")

    @default("login_service")
    def _default_login_service(self):
        return os.environ.get("LOGIN_SERVICE") or self.preset.login_service

    @default("scope")
    def _default_scope(self):
        return list(dict.fromkeys([*self.preset.scopes, *self.storage_scopes]))

    @default("storage_scopes")
    def _default_storage_scopes(self):
        return list(self.preset.storage_scopes)

    @default("group_claims")
    def _default_group_claims(self):
        return list(self.preset.group_claims)

    @default("username_claim")
    def _default_username_claim(self):
        return os.environ.get("OAUTH2_USERNAME_KEY") or self.preset.username_claim

    @default("auth_state_groups_key")
    def _default_auth_state_groups_key(self):
        # GenericOAuthenticator's OAUTH2_GROUPS_KEY (the userinfo claim with the groups) still works;
        # otherwise casa's group_claims
        claim = os.environ.get("OAUTH2_GROUPS_KEY")
        if claim:
            return f"{self.user_auth_state_key}.{claim}"
        return self.groups_from_claims

    # -- endpoints ----------------------------------------------------------------

    _discovered = False

    async def discover_endpoints(self):
        """Fill unset endpoints from the issuer's discovery document (once); a failure is a clear 502."""
        if not self.oidc_discovery or self._discovered:
            return
        if not self.issuer:
            raise LoginProblem(502, "OIDC discovery is on but no issuer is configured (CasaOAuthenticator.issuer)")
        url = discovery_url(self.issuer)
        try:
            document = await self.httpfetch(url, label="reading the OIDC discovery document", validate_cert=self.validate_server_cert)
            endpoints = parse_discovery(document, self.issuer)
        except asyncio.CancelledError:
            raise
        except (DiscoveryError, HTTPClientError, OSError, ValueError) as e:
            self.log.error("OIDC discovery at %s failed: %s", url, e)
            raise LoginProblem(502, f"The hub could not read its identity provider's configuration at {url}: {e}") from None
        for trait in ENDPOINT_TRAITS:
            if trait == "userdata_url" and self.userdata_from_id_token:
                continue
            if not getattr(self, trait) and trait in endpoints:
                setattr(self, trait, endpoints[trait])
        self._discovered = True
        self.log.info("OIDC endpoints of %s: %s", self.issuer, {t: getattr(self, t) for t in ENDPOINT_TRAITS})

    # -- the IdP's answers ----------------------------------------------------------

    async def get_token_info(self, handler, params):
        """The token response, stamped with ``expires_at`` so later refreshes know the token's real age."""
        try:
            token_info = await super().get_token_info(handler, params)
        except web.HTTPError as e:
            raise _scrubbed(e, "the token endpoint's answer has no access token") from None
        if isinstance(token_info, dict):
            expires_at = token_expires_at(token_info)
            if expires_at is not None:
                token_info["expires_at"] = expires_at
        return token_info

    async def token_to_user(self, token_info):
        """oauthenticator's userinfo (or ID-token) lookup, its errors scrubbed of the tokens they quote."""
        try:
            return await super().token_to_user(token_info)
        except web.HTTPError as e:
            raise _scrubbed(e, "the token response has no usable ID token") from None

    def user_info_to_username(self, user_info):
        if callable(self.username_claim):
            value = self.username_claim(user_info)
            if not isinstance(value, str) or not value.strip():
                raise MalformedClaims(f"the username_claim callable returned {value!r} instead of a name")
        else:
            value = string_claim(user_info, self.username_claim)
        return self.map_username(value)

    def map_username(self, value: str) -> str:
        """JupyterHub username from the username claim: lower-cased, listed e-mail domains stripped."""
        name = value.strip().lower()
        local, at, domain = name.rpartition("@")
        if at and domain in {d.lower().lstrip("@") for d in self.username_strip_domains}:
            name = local
        return name

    def id_token_claims_of(self, auth_state) -> dict | None:
        """Claims of the ID token in this token response (signature not checked: it came straight from the
        token endpoint, OIDC Core 3.1.3.7), after checking it is meant for this client."""
        id_token = auth_state.get("id_token")
        if not id_token:
            return None
        try:
            claims = jwt.decode(id_token, options={"verify_signature": False, "verify_exp": False, "verify_aud": False})
        except jwt.PyJWTError as e:
            raise MalformedClaims(f"the identity provider's ID token cannot be decoded ({e})") from None
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.client_id and self.client_id not in audiences:
            raise MalformedClaims(f"the identity provider's ID token is for {aud!r}, not for this hub ({self.client_id})")
        return claims

    def groups_from_claims(self, auth_state: dict) -> list[str]:
        """The default ``auth_state_groups_key``: groups at ``group_claims`` in ``group_claim_sources``."""
        sources = {}
        if "userinfo" in self.group_claim_sources:
            sources["userinfo"] = auth_state.get(self.user_auth_state_key)
        if "id_token" in self.group_claim_sources:
            claims = self.id_token_claims_of(auth_state)
            # a refresh that kept the old token response re-reads userinfo but keeps the login's ID token:
            # once expired, its groups are stale (a user removed from a group would keep it), so a fresh
            # userinfo answer alone counts
            stale = isinstance(claims, dict) and isinstance(claims.get("exp"), (int, float)) and claims["exp"] < time.time()
            if not (stale and sources.get("userinfo") is not None):
                sources["id_token"] = claims
        return list(extract_groups(sources, self.group_claims))

    async def build_auth_state_dict(self, token_info, user_info):
        """oauthenticator's auth_state plus ``auth_state["casa"]`` (username, slug, token expiry, ID-token claims);
        its ``groups`` are filled in :meth:`update_auth_model`, after ``modify_auth_state_hook`` ran."""
        auth_state = super().build_auth_state_dict(token_info, user_info)
        if isawaitable(auth_state):
            auth_state = await auth_state
        id_claims = self.id_token_claims_of(auth_state)
        kept = {k: id_claims[k] for k in self.id_token_claims if id_claims and k in id_claims}
        auth_state[CASA_KEY] = casa_state(
            username=self.normalize_username(self.user_info_to_username(user_info)),
            groups=(),
            idp=self.idp,
            access_token_expires_at=token_expires_at(auth_state.get("token_response")),
            claims=kept,
        )
        return auth_state

    async def get_user_groups(self, auth_state):
        """oauthenticator's groups (``auth_state_groups_key``), spelled as casa spells them (``/cms`` is ``cms``)."""
        groups = await super().get_user_groups(auth_state)
        bad = [g for g in groups if not isinstance(g, str)]
        if bad:
            raise MalformedClaims(f"the identity provider's groups contain a {type(bad[0]).__name__} ({bad[0]!r:.40}) where a group name was expected")
        return set(normalise_groups(groups))

    async def update_auth_model(self, auth_model):
        """``auth_state["casa"]["groups"]``: the groups of the final auth_state (the operator's hook included)."""
        auth_model = await super().update_auth_model(auth_model)
        auth_state = auth_model.get("auth_state")
        if isinstance(auth_state, dict) and isinstance(auth_state.get(CASA_KEY), dict):
            auth_state[CASA_KEY]["groups"] = sorted(await self.get_user_groups(auth_state))
        return auth_model

    # -- login ------------------------------------------------------------------------

    async def authenticate(self, handler, data=None, **kwargs):
        """oauthenticator's flow, with every failure turned into a page that says what went wrong."""
        try:
            return await super().authenticate(handler, data, **kwargs)
        except asyncio.CancelledError:
            raise
        except MalformedClaims as e:
            self.log.warning("Login refused, malformed IdP answer: %s", e)
            raise LoginProblem(403, f"Sign-in failed: {e}. Please tell the facility's administrators.") from None
        except LoginProblem:
            raise
        except web.HTTPError as e:
            if e.status_code < 500:
                raise
            # not e.log_message: oauthenticator puts the whole token response (tokens included) there
            self.log.error("Login failed: oauthenticator could not use the IdP's answer (HTTP %s)", e.status_code)
            raise LoginProblem(502, "Sign-in failed: the identity provider's answer could not be understood.") from None
        except HTTPClientError as e:
            if e.code == 599:  # tornado's code for no answer at all (refused, timed out, TLS failure)
                raise LoginProblem(502, "Sign-in failed: the identity provider could not be reached. Please try again later.") from None
            raise LoginProblem(502, f"Sign-in failed: the identity provider answered HTTP {e.code}. Please try again later.") from None
        except OSError as e:  # tornado raises the connection's own error when nothing answered
            self.log.error("Login failed, the identity provider could not be reached: %s", e)
            raise LoginProblem(502, "Sign-in failed: the identity provider could not be reached. Please try again later.") from None
        except (ValueError, KeyError) as e:
            self.log.error("Login failed, unusable IdP answer: %r", e)
            raise LoginProblem(502, "Sign-in failed: the identity provider's answer could not be understood.") from None
        except Exception:  # a bug (here, in a hook): the traceback is for the operator, not the page
            self.log.exception("Login failed with an unexpected error")
            raise LoginProblem(500, "Sign-in failed because of an error in the hub; its administrators will find it in the hub's log.") from None

    async def check_allowed(self, username, auth_model):
        """oauthenticator's rules (allowed_users, admin, allowed_groups ...); a refusal is a 403 page naming the groups."""
        if auth_model is None:
            return True
        if await super().check_allowed(username, auth_model):
            return True
        raise self.refusal(username, auth_model.get("groups") or [], self.allowed_groups or self.admin_groups)

    # -- refresh ------------------------------------------------------------------------

    def _access_token_due(self, auth_state) -> tuple[bool, bool]:
        """(due for renewal, already expired) for the stored access token."""
        expires_at = ((auth_state or {}).get(CASA_KEY) or {}).get("access_token_expires_at")
        if not expires_at:
            return False, False
        now = time.time()
        return now >= expires_at - self.access_token_refresh_margin, now >= expires_at

    def _renewal_lock(self, username: str) -> asyncio.Lock:
        """The lock of one user's token renewal (kept only while someone holds or awaits it)."""
        locks = self.__dict__.setdefault("_casa_renewal_locks", weakref.WeakValueDictionary())
        lock = locks.get(username)
        if lock is None:
            lock = locks[username] = asyncio.Lock()
        return lock

    async def _renew_if_due(self, user, model: dict, handler) -> dict:
        """The model with a fresh access token when the one it holds expires within the margin."""
        auth_state = model["auth_state"]
        due, _ = self._access_token_due(auth_state)
        if not due or not auth_state.get("refresh_token"):
            return model
        refresh_token = auth_state["refresh_token"]
        token_info = await self.get_token_info(handler, self.build_refresh_token_request_params(refresh_token))
        if not token_info.get("refresh_token"):
            token_info["refresh_token"] = refresh_token
        renewed = {
            **auth_state,
            "access_token": token_info["access_token"],
            "refresh_token": token_info["refresh_token"],
            "token_response": token_info,
        }
        if isinstance(auth_state.get(CASA_KEY), dict):
            renewed[CASA_KEY] = {**auth_state[CASA_KEY], "access_token_expires_at": token_expires_at(token_info)}
        self.log.info("Renewed the access token of %s", user.name)
        return {**model, "auth_state": renewed}

    def _unchanged(self, user, model: dict, stored) -> bool:
        """Whether the refreshed model changes nothing the hub keeps (auth_state, groups, admin): then
        ``refresh_user`` answers True, as JupyterHub's contract allows, and the hub writes nothing."""
        try:
            if json.dumps(model.get("auth_state"), sort_keys=True) != json.dumps(stored, sort_keys=True):
                return False
        except (TypeError, ValueError):
            return False
        if self.manage_groups and model.get("groups") is not None:
            current = getattr(user, "groups", None)
            if current is None or sorted(model["groups"]) != sorted(g.name for g in current):
                return False
        if model.get("admin") is not None and model["admin"] != getattr(user, "admin", None):
            return False
        return not (self.manage_roles and model.get("roles") is not None)

    async def _refresh(self, user, handler, **kwargs):
        """oauthenticator's refresh, then renewal of a token about to expire, one at a time per user."""
        # one refresh per user at a time: concurrent requests would spend the same refresh
        # token twice, and an IdP that rotates refresh tokens refuses (or revokes) the second
        async with self._renewal_lock(user.name):
            stored = await user.get_auth_state()
            _, expired = self._access_token_due(stored)
            if self.refresh_user_hook is None and expired and not (stored or {}).get("refresh_token"):
                # nothing can make this token work again: no round trip to the IdP
                self.log.info("The access token of %s expired and there is no refresh token", user.name)
                return self._refresh_failed(user, "idp-refused", "the access token expired and there is no refresh token")
            # the operator's refresh_user_hook first, then the stored token, the refresh token on a 4xx
            model = await super().refresh_user(user, handler, **kwargs)
            if model is False:
                return self._refresh_failed(user, "idp-refused", "the identity provider refused the login's tokens")
            if not isinstance(model, dict):
                return model
            model = await self._renew_if_due(user, model, handler)
            if (model.get("auth_state") or {}).get("refresh_token") != (stored or {}).get("refresh_token"):
                # a spent refresh token: save the new one now, before the next refresh of this user runs
                await user.save_auth_state(model["auth_state"])
        if not await super().check_allowed(user.name, model):
            self.log.warning("%s is no longer in an allowed group (has %s)", user.name, model.get("groups"))
            return self._refresh_failed(user, "group-removed", f"no longer in an allowed group (has {', '.join(sorted(model.get('groups') or [])) or 'none'})")
        self._refresh_failures.pop(user.name, None)
        return True if self._unchanged(user, model, stored) else model

    async def refresh_user(self, user, handler=None, **kwargs):
        """oauthenticator's refresh (casa keys rebuilt by ``build_auth_state_dict``), a token about to expire renewed.

        True when nothing changed; False -- a new login -- when the IdP refuses the refresh token,
        cannot be reached, answers something unusable, or the user lost their group.  An unexpected
        error (a bug) is logged with its traceback and also ends the login: the hub must not keep a
        login it could not check, and raising would fail every request of that user, the login page's too.
        """
        if not self.enable_auth_state:
            return True
        try:
            await self.discover_endpoints()
            return await self._refresh(user, handler, **kwargs)
        except asyncio.CancelledError:
            raise
        except HTTPClientError as e:
            reason = "could not be reached" if e.code == 599 else f"answered HTTP {e.code}"
            self.log.warning("Refreshing the login of %s failed, a new login is required: the identity provider %s", user.name, reason)
            return self._refresh_failed(user, "idp-refused" if 400 <= e.code < 500 else "idp-unreachable", f"the identity provider {reason}")
        except OSError as e:
            self.log.warning("Refreshing the login of %s failed, a new login is required: the identity provider could not be reached (%s)",
                             user.name, e)
            return self._refresh_failed(user, "idp-unreachable", "the identity provider could not be reached")
        except (web.HTTPError, ValueError, KeyError) as e:  # scrubbed oauthenticator errors, MalformedClaims, bad JSON
            self.log.warning("Refreshing the login of %s failed, a new login is required: %s", user.name, _safe_reason(e))
            return self._refresh_failed(user, "other", _safe_reason(e))
        except Exception:
            self.log.exception("Refreshing the login of %s failed with an unexpected error; a new login is required", user.name)
        return self._refresh_failed(user, "other", "an unexpected error in the hub")

    # why the last refresh of a user failed, for the background refresh of running sessions
    # (casa_spawner.refresh): a refused token or a lost group ends access, an unreachable IdP does not

    @property
    def _refresh_failures(self) -> dict:
        return self.__dict__.setdefault("_casa_refresh_failures", {})

    def _refresh_failed(self, user, category: str, reason: str) -> bool:
        self._refresh_failures[user.name] = (category, reason)
        return False

    def refresh_failure(self, username: str) -> tuple[str, str] | None:
        """``(category, reason)`` of the last failed ``refresh_user`` of ``username`` (None after a success).

        Categories: ``idp-refused`` (the refresh token or the login is refused), ``group-removed``
        (no longer in an allowed group), ``idp-unreachable``, ``other``."""
        return self._refresh_failures.get(username)
