"""Drive real KubeSpawner subclasses against the fake API without a hub.

A spawner needs a user and a hub object only for names and environment
variables; tests.fake_hub's stand-ins give it those.  KubeSpawner keeps
process-wide state (shared API clients per event loop, class-level pod and
event reflectors, an lru-cached client configuration): :func:`reset_kubespawner`
clears it so each test starts with a fresh connection to its own fake server.
"""

from __future__ import annotations

import asyncio

from kubespawner import KubeSpawner
from kubespawner import clients as kube_clients

from tests.fake_hub import FakeHub, FakeUser


def spawner_traits(fake_url: str, **overrides) -> dict:
    """Settings that point a KubeSpawner at the fake and keep its waits short but bounded."""
    traits = dict(
        k8s_api_host=fake_url,
        namespace="default",
        image="quay.io/jupyter/base-notebook:test",
        start_timeout=30,
        http_timeout=30,
        k8s_api_request_timeout=3,
        k8s_api_request_retry_timeout=15,
        delete_grace_period=0,
        events_enabled=True,
    )
    traits.update(overrides)
    return traits


def make_spawner(cls, fake_url: str, username: str, **overrides):
    """A spawner of ``cls`` for ``username`` talking to the fake at ``fake_url``."""
    spawner = cls(user=FakeUser(username), hub=FakeHub(), **spawner_traits(fake_url, **overrides))
    spawner.api_token = f"token-for-{username}"
    return spawner


async def reset_kubespawner() -> None:
    """Stop class-level reflectors and close this loop's shared API clients."""
    await KubeSpawner._stop_all_reflectors()
    loop = asyncio.get_running_loop()
    for key, client in list(kube_clients._client_cache.items()):
        if key[0] is loop:
            kube_clients._client_cache.pop(key, None)
            await client.api_client.close()
    kube_clients.load_config.cache_clear()
