"""Stand-ins for the hub objects a spawner or an authenticator reads: ``User`` and ``Hub``.

Tests that need the whole hub start a real one (tests.hub_process).
"""

from __future__ import annotations

import itertools
import json

_ids = itertools.count(1)


class FakeUser:
    """``jupyterhub.user.User`` as spawners and ``refresh_user`` read it: name, id, URLs, auth_state.

    Like the hub's (JSON, encrypted at rest), ``get_auth_state`` returns a fresh copy on each read,
    so a change only counts once it is saved.
    """

    def __init__(self, name: str, auth_state: dict | None = None):
        self.name = name
        self.id = next(_ids)
        self.url = f"/user/{name}/"
        self.base_url = "/"
        self.auth_state = auth_state

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
