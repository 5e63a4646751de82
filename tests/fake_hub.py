"""Stand-ins for the hub objects a spawner or an authenticator reads: ``User`` and ``Hub``.

Tests that need the whole hub start a real one (tests.hub_process).
"""

from __future__ import annotations

import itertools
import json

_ids = itertools.count(1)


class FakeGroup:
    """A hub group as ``User.groups`` lists it: only its name is read."""

    def __init__(self, name: str):
        self.name = name


class FakeUser:
    """``jupyterhub.user.User`` as spawners and ``refresh_user`` read it: name, id, URLs, auth_state, groups, admin.

    Like the hub's (JSON, encrypted at rest), ``get_auth_state`` returns a fresh copy on each read,
    so a change only counts once it is saved.
    """

    def __init__(self, name: str, auth_state: dict | None = None, groups=(), admin: bool = False):
        self.name = name
        self.id = next(_ids)
        self.url = f"/user/{name}/"
        self.base_url = "/"
        self.auth_state = auth_state
        self.groups = [FakeGroup(g) for g in groups]
        self.admin = admin

    @classmethod
    def from_model(cls, model: dict) -> "FakeUser":
        """The user as the hub stores a login's auth model (groups synced, admin set when given)."""
        return cls(model["name"], json.loads(json.dumps(model["auth_state"])), model.get("groups") or (), bool(model.get("admin")))

    def apply(self, refreshed) -> None:
        """What the hub does with refresh_user's answer (JupyterHub's refresh_auth/auth_to_user): True or False keeps all."""
        if refreshed is True or refreshed is False:
            return
        self.auth_state = json.loads(json.dumps(refreshed["auth_state"]))
        if refreshed.get("groups") is not None:
            self.groups = [FakeGroup(g) for g in refreshed["groups"]]
        if refreshed.get("admin") is not None:
            self.admin = refreshed["admin"]

    async def get_auth_state(self):
        return json.loads(json.dumps(self.auth_state)) if self.auth_state is not None else None

    async def save_auth_state(self, auth_state):
        self.auth_state = auth_state


class FakeHub:
    """What a spawner reads from ``jupyterhub.objects.Hub``, for a hub at ``hub.test``."""

    public_host = ""
    url = "http://hub.test:8081/hub/"
    base_url = "/hub/"
    api_url = "http://hub.test:8081/hub/api"
