"""The fake API itself, through the real kubernetes_asyncio client: what the spawner tests rely on."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException


@pytest.fixture
async def api(fake_kube):
    async with client.ApiClient(client.Configuration(host=fake_kube.url)) as api_client:
        yield client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)


def secret(name, **labels):
    return {"metadata": {"name": name, "labels": labels}, "data": {"k": "dmFsdWU="}}


async def test_create_get_list_select_and_conflict(api):
    core, _ = api
    await core.create_namespaced_secret("default", secret("a", app="x", tier="1"))
    await core.create_namespaced_secret("default", secret("b", app="y"))
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_secret("default", secret("a"))
    assert e.value.status == 409
    assert (await core.read_namespaced_secret("a", "default")).data == {"k": "dmFsdWU="}
    names = lambda items: sorted(i.metadata.name for i in items.items)  # noqa: E731
    assert names(await core.list_namespaced_secret("default", label_selector="app=x")) == ["a"]
    assert names(await core.list_namespaced_secret("default", label_selector="app in (x,y),!tier")) == ["b"]
    assert names(await core.list_namespaced_secret("default", field_selector="metadata.name!=a")) == ["b"]
    with pytest.raises(ApiException) as e:
        await core.read_namespaced_secret("zzz", "default")
    assert e.value.status == 404


async def test_invalid_objects_are_refused_as_the_api_server_does(api):
    core, custom = api
    for bad in (secret("Has-Capitals"), secret("x" * 254), {"metadata": {"name": "s"}, "data": {"k": "not base64!"}}):
        with pytest.raises(ApiException) as e:
            await core.create_namespaced_secret("default", bad)
        assert e.value.status in (400, 422)
    with pytest.raises(ApiException) as e:  # a dict sent as json-patch (the client's default for custom objects)
        await custom.create_namespaced_custom_object("traefik.io", "v1alpha1", "default", "ingressroutetcps",
                                                     {"apiVersion": "traefik.io/v1alpha1", "kind": "IngressRouteTCP",
                                                      "metadata": {"name": "r"}, "spec": {}})
        await custom.patch_namespaced_custom_object("traefik.io", "v1alpha1", "default", "ingressroutetcps", "r", {"spec": {"x": 1}})
    assert e.value.status == 400


async def test_patches_and_replace(api, fake_kube):
    core, custom = api
    await core.create_namespaced_secret("default", secret("a"))
    await core.patch_namespaced_secret("a", "default", {"data": {"new": "eA=="}})  # strategic merge
    assert fake_kube.get("secrets", "default", "a")["data"] == {"k": "dmFsdWU=", "new": "eA=="}
    await core.patch_namespaced_secret("a", "default", [{"op": "remove", "path": "/data/k"}])  # json patch
    assert fake_kube.get("secrets", "default", "a")["data"] == {"new": "eA=="}
    current = fake_kube.get("secrets", "default", "a")
    stale = dict(current, metadata=dict(current["metadata"], resourceVersion="1"))
    with pytest.raises(ApiException) as e:
        await core.replace_namespaced_secret("a", "default", stale)
    assert e.value.status == 409
    await core.replace_namespaced_secret("a", "default", secret("a"))
    assert fake_kube.get("secrets", "default", "a")["data"] == {"k": "dmFsdWU="}
    route = {"apiVersion": "traefik.io/v1alpha1", "kind": "IngressRouteTCP", "metadata": {"name": "r"}, "spec": {"a": 1}}
    await custom.create_namespaced_custom_object("traefik.io", "v1alpha1", "default", "ingressroutetcps", route)
    await custom.patch_namespaced_custom_object("traefik.io", "v1alpha1", "default", "ingressroutetcps", "r",
                                                {"spec": {"b": 2}}, _content_type="application/merge-patch+json")
    assert fake_kube.get("ingressroutetcps.traefik.io", "default", "r")["spec"] == {"a": 1, "b": 2}
    await custom.delete_namespaced_custom_object("traefik.io", "v1alpha1", "default", "ingressroutetcps", "r")
    assert fake_kube.names("ingressroutetcps.traefik.io") == []


async def test_watch_resumes_from_a_resource_version_and_pods_run(api, fake_kube):
    core, _ = api
    listed = await core.list_namespaced_pod("default", label_selector="component=nb")
    pod = {"metadata": {"name": "p", "labels": {"component": "nb"}},
           "spec": {"containers": [{"name": "notebook", "image": "i"}], "volumes": [{"name": "s", "secret": {"secretName": "later"}}]}}
    await core.create_namespaced_pod("default", pod)
    await core.create_namespaced_secret("default", secret("other"))  # not selected
    seen = []
    w = watch.Watch()
    async with w.stream(core.list_namespaced_pod, "default", label_selector="component=nb",
                        resource_version=listed.metadata.resource_version, timeout_seconds=5) as stream:
        async for event in stream:
            seen.append((event["type"], event["raw_object"]["status"].get("phase")))
            if len(seen) == 1:
                await asyncio.sleep(0.2)
                assert fake_kube.get("pods", "default", "p")["status"]["phase"] == "Pending"  # waits for its Secret
                await core.create_namespaced_secret("default", secret("later"))
            if seen[-1] == ("MODIFIED", "Running"):
                await core.delete_namespaced_pod("p", "default")
            if seen[-1][0] == "DELETED":
                break
    assert seen[0] == ("ADDED", "Pending") and ("MODIFIED", "Running") in seen and seen[-1][0] == "DELETED"


async def test_garbage_collection_follows_owner_references(api, fake_kube):
    core, _ = api
    pod = await core.create_namespaced_pod("default", {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})
    owner = [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": pod.metadata.uid}]
    await core.create_namespaced_secret("default", {"metadata": {"name": "owned", "ownerReferences": owner}})
    await core.create_namespaced_secret("default", {"metadata": {"name": "free"}})
    await core.delete_namespaced_pod("p", "default")
    for _ in range(100):
        if fake_kube.names("secrets") == ["free"]:
            break
        await asyncio.sleep(0.05)
    assert fake_kube.names("secrets") == ["free"] and fake_kube.names("pods") == []


async def test_fault_rules(api, fake_kube):
    core, _ = api
    fake_kube.inject(method="POST", path=r"/secrets$", status=500, nth=2)
    await core.create_namespaced_secret("default", secret("one"))
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_secret("default", secret("two"))
    assert e.value.status == 500 and "injected fault" in e.value.body
    await core.create_namespaced_secret("default", secret("three"))
    fake_kube.clear_faults()
    fake_kube.inject(method="POST", path=r"/secrets$", status=500, after=True, times=1)  # done, answer lost
    with pytest.raises(ApiException):
        await core.create_namespaced_secret("default", secret("four"))
    assert "four" in fake_kube.names("secrets")
    fake_kube.clear_faults()
    fake_kube.inject(method="DELETE", path=r"/secrets/", status=None, delay=1.0)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(core.delete_namespaced_secret("one", "default"), 0.3)
    fake_kube.clear_faults()
    fake_kube.inject(method="GET", path=r"/secrets/one$", drop=True)
    with pytest.raises(Exception) as e:
        await core.read_namespaced_secret("one", "default")
    assert "disconnect" in str(e.value).lower()
    bodies = [r.body for r in fake_kube.requests if r.method == "POST"]
    assert len(bodies) == 4 and all(b'"name": "' in b or b'"name":"' in b for b in bodies)


async def test_cut_watches_breaks_open_streams_and_query_rules_match(api, fake_kube):
    core, _ = api
    fake_kube.inject(method="GET", path=r"/pods$", query=r"watch=", status=500, times=1)
    await core.list_namespaced_pod("default")  # a plain list is not matched
    w = watch.Watch()

    async def consume():
        async with w.stream(core.list_namespaced_pod, "default", resource_version="1", timeout_seconds=30) as stream:
            async for _ in stream:
                pass

    with pytest.raises(ApiException):  # the first watch request meets the rule
        await asyncio.wait_for(consume(), 5)
    task = asyncio.ensure_future(consume())
    for _ in range(100):
        if await asyncio.to_thread(fake_kube.cut_watches):
            break
        await asyncio.sleep(0.05)
    with pytest.raises(Exception) as e:
        await asyncio.wait_for(task, 5)
    assert not isinstance(e.value, asyncio.TimeoutError)
