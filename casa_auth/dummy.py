"""CasaDummyAuthenticator: fixed users for test instances and the one-machine demo.

Same group rules, refusal page and auth_state shape as CasaOAuthenticator, without an IdP:
users, their groups and admin flags come from config.
"""

from __future__ import annotations

import hmac

from jupyterhub.auth import Authenticator
from tornado import web
from traitlets import Dict, Set, Unicode, validate

from .groups import decide, normalise_groups
from .pages import CasaLoginPage
from .rules import CasaGroupRules
from .state import CASA_KEY, casa_state

_USER_KEYS = {"groups", "admin", "password", "email", "name"}


def _check_user(name, entry) -> dict:
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        raise ValueError(f"CasaDummyAuthenticator.users[{name!r}] must be a dict, not {type(entry).__name__}")
    unknown = set(entry) - _USER_KEYS
    if unknown:
        raise ValueError(f"CasaDummyAuthenticator.users[{name!r}]: unknown keys {sorted(unknown)} (use {sorted(_USER_KEYS)})")
    groups = entry.get("groups", [])
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, (list, tuple, set)) or not all(isinstance(g, str) for g in groups):
        raise ValueError(f"CasaDummyAuthenticator.users[{name!r}]['groups'] must be a list of strings")
    if not isinstance(entry.get("admin", False), bool):
        raise ValueError(f"CasaDummyAuthenticator.users[{name!r}]['admin'] must be True or False")
    for key in ("password", "email", "name"):
        if key in entry and not isinstance(entry[key], str):
            raise ValueError(f"CasaDummyAuthenticator.users[{name!r}][{key!r}] must be a string")
    return {**entry, "groups": sorted(normalise_groups(groups)), "admin": entry.get("admin", False)}


class CasaDummyAuthenticator(CasaGroupRules, CasaLoginPage, Authenticator):
    """Username/password form for the users in ``users``; group rules as in CasaOAuthenticator."""

    users = Dict(
        config=True,
        help="""The only users who can log in, with their groups and admin flag.

        Example::

            c.CasaDummyAuthenticator.users = {
                "alice": {"groups": ["cms"], "admin": True},
                "bob": {"groups": ["cms"], "password": "bob-demo"},
            }
            c.CasaDummyAuthenticator.allowed_groups = {"cms"}

        Keys per user: ``groups`` (list; a leading ``/`` is stripped), ``admin`` (bool),
        ``password`` (else ``password`` below applies), ``email``, ``name``.
        """,
    )
    password = Unicode(
        "",
        config=True,
        help="""Password for users without their own; empty: any password is accepted (test instances only).""",
    )
    allowed_groups = Set(
        Unicode(),
        config=True,
        help="""Members of these groups may log in (a leading ``/`` is ignored). Empty (and no ``admin_groups``):
        every user in ``users`` may log in.""",
    )
    admin_groups = Set(
        Unicode(),
        config=True,
        help="""Members of these groups are admins (and may log in).""",
    )

    @validate("users")
    def _validate_users(self, proposal):
        users = {}
        for name, entry in proposal["value"].items():
            normalised = self.normalize_username(str(name))
            if not normalised or not self.validate_username(normalised):
                raise ValueError(f"CasaDummyAuthenticator.users: {name!r} is not a valid username")
            users[normalised] = _check_user(name, entry)
        return users

    def check_allow_config(self):
        # the users dict is this authenticator's allow list: JupyterHub need not warn that nobody can log in
        if not self.users:
            self.log.warning("CasaDummyAuthenticator.users is empty: nobody can log in")

    def _auth_model(self, username: str) -> dict:
        entry = self.users[username]
        decision = decide(entry["groups"], self.allowed_groups, self.admin_groups)
        claims = {"sub": username, "preferred_username": username}
        for key in ("email", "name"):
            if key in entry:
                claims[key] = entry[key]
        return {
            "name": username,
            "admin": entry["admin"] or decision.admin,
            "groups": list(decision.groups),
            "auth_state": {
                "access_token": None,
                "refresh_token": None,
                "id_token": None,
                "scope": [],
                "token_response": {},
                "oauth_user": claims,
                CASA_KEY: casa_state(username=username, groups=decision.groups, idp="dummy", claims=claims),
            },
        }

    async def authenticate(self, handler, data):
        username = self.normalize_username((data or {}).get("username", "").strip())
        if username not in self.users:
            self.log.warning("Dummy login for unknown user %r", username[:32])
            return None
        expected = self.users[username].get("password", self.password)
        if expected and not hmac.compare_digest(expected.encode(), str(data.get("password", "")).encode()):
            self.log.warning("Dummy login for %s with a wrong password", username)
            return None
        return self._auth_model(username)

    async def check_allowed(self, username, auth_model):
        if auth_model is None:
            return True
        if self.allow_all or username in self.allowed_users or auth_model.get("admin"):
            return True
        if not (self.allowed_groups or self.admin_groups):
            return username in self.users
        if set(auth_model.get("groups") or []) & (self.allowed_groups | self.admin_groups):
            return True
        raise self.refusal(username, auth_model.get("groups") or [], self.allowed_groups or self.admin_groups)

    async def refresh_user(self, user, handler=None, **kwargs):
        """Config is the truth: a user removed from ``users`` or from the groups must log in again."""
        if user.name not in self.users:
            return False
        model = self._auth_model(user.name)
        try:
            allowed = await self.check_allowed(user.name, model)
        except web.HTTPError:
            allowed = False
        return model if allowed else False
