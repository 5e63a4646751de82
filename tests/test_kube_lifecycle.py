"""Whole spawn / poll / stop lifecycles of real KubeSpawner code against the fake API."""

from __future__ import annotations

import asyncio
from urllib.parse import urlparse

from kubespawner import KubeSpawner

from fake_kube.fixtures import fake_kube, kube  # noqa: F401  (pytest fixtures)
from fake_kube.spawners import make_spawner

USERS = ("alice", "bob")


async def test_plain_kubespawner_starts_polls_and_stops_alice_and_bob(kube):
    spawners = {u: make_spawner(KubeSpawner, kube.url, u) for u in USERS}
    urls = await asyncio.wait_for(asyncio.gather(*(s.start() for s in spawners.values())), 60)

    pods = {p["metadata"]["name"]: p for p in kube.objects("pods", "default")}
    assert sorted(pods) == ["jupyter-alice", "jupyter-bob"]
    for (user, spawner), url in zip(spawners.items(), urls):
        pod = pods[f"jupyter-{user}"]
        assert urlparse(url).hostname == pod["status"]["podIP"]
        assert urlparse(url).port == 8888
        assert pod["metadata"]["labels"]["hub.jupyter.org/username"] == user
        assert await spawner.poll() is None

    await asyncio.wait_for(spawners["alice"].stop(), 30)
    assert await spawners["alice"].poll() == 1
    assert await spawners["bob"].poll() is None
    assert kube.names("pods", "default") == ["jupyter-bob"]

    await asyncio.wait_for(spawners["bob"].stop(), 30)
    assert await spawners["bob"].poll() == 1
    assert kube.names("pods", "default") == []


async def test_plain_kubespawner_restart_replaces_a_stale_pod(kube):
    """A pod left over from an earlier hub (409 on create) is deleted and created again."""
    stale = kube.create(
        "pods",
        "default",
        {"metadata": {"name": "jupyter-alice", "labels": {"component": "singleuser-server"}},
         "spec": {"containers": [{"name": "notebook", "image": "old"}]}},
    )
    spawner = make_spawner(KubeSpawner, kube.url, "alice")
    await asyncio.wait_for(spawner.start(), 60)
    pod = kube.get("pods", "default", "jupyter-alice")
    assert pod["metadata"]["uid"] != stale["metadata"]["uid"]
    assert pod["spec"]["containers"][0]["image"] == "quay.io/jupyter/base-notebook:test"
    await asyncio.wait_for(spawner.stop(), 30)
    assert kube.names("pods") == []


async def test_owned_service_is_garbage_collected_with_the_pod(kube):
    """KubeSpawner's own Service (services_enabled) carries an ownerReference; the fake's GC honours it."""
    spawner = make_spawner(KubeSpawner, kube.url, "alice", services_enabled=True)
    url = await asyncio.wait_for(spawner.start(), 60)
    assert urlparse(url).hostname == "jupyter-alice.default.svc.cluster.local"
    (service,) = kube.objects("services", "default")
    pod = kube.get("pods", "default", "jupyter-alice")
    assert service["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]

    await asyncio.wait_for(spawner.stop(), 30)  # deletes only the pod
    await _eventually(lambda: kube.names("services") == [], "service collected")
    assert kube.names("pods") == []


async def _eventually(predicate, what: str, timeout: float = 10):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)
