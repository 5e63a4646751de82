"""Whole spawn / poll / stop lifecycles of real KubeSpawner code against the fake API."""

from __future__ import annotations

import asyncio
import datetime as dt
from urllib.parse import urlparse

import pytest
from kubespawner import KubeSpawner

from casa_spawner.kube import CasaKubeSpawner, SessionCleanupError, SessionObjectError
from tests.fake_kube.spawners import make_spawner

USERS = ("alice", "bob")
ROUTES = "ingressroutetcps.traefik.io"
EXTRA = ("secrets", "services", ROUTES)


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


def casa_objects(kube, slug: str) -> dict[str, list[str]]:
    """Names of every object of one user's session, by resource."""
    return {r: [n for n in kube.names(r, "default") if slug in n] for r in ("pods",) + EXTRA}


async def test_casa_spawner_starts_polls_and_stops_alice_and_bob(kube, facility):
    kube.set_garbage_collection(False)  # gone after stop must mean: the spawner deleted them
    spawners = {u: make_spawner(CasaKubeSpawner, kube.url, u, facility=facility) for u in USERS}
    await asyncio.wait_for(asyncio.gather(*(s.start() for s in spawners.values())), 60)

    for user, spawner in spawners.items():
        slug = facility.names(user).slug
        assert await spawner.poll() is None
        pod = kube.get("pods", "default", spawner.pod_name)
        assert pod["status"]["phase"] == "Running"
        objects = casa_objects(kube, slug)
        assert len(objects["secrets"]) == 2 and len(objects["services"]) == 1 and len(objects[ROUTES]) == 1, objects

        (route,) = [kube.get(ROUTES, "default", n) for n in objects[ROUTES]]
        assert route["apiVersion"] == "traefik.io/v1alpha1" and route["kind"] == "IngressRouteTCP"
        assert route["spec"]["routes"][0]["match"] == f"HostSNI(`{slug}.dask.coffea.casa`)"
        assert route["spec"]["tls"] == {"passthrough": True}
        assert route["spec"]["entryPoints"] == ["dask"]
        (service,) = [kube.get("services", "default", n) for n in objects["services"]]
        assert route["spec"]["routes"][0]["services"][0]["name"] == service["metadata"]["name"]
        assert {p["port"] for p in service["spec"]["ports"]} == {8786, 8787}
        # the Service selects this user's pod and no other
        labels = pod["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
        # every extra object is owned by the pod, so Kubernetes collects it with the pod
        for resource in EXTRA:
            for name in objects[resource]:
                refs = kube.get(resource, "default", name)["metadata"]["ownerReferences"]
                assert [(r["kind"], r["name"], r["uid"]) for r in refs] == [("Pod", pod["metadata"]["name"], pod["metadata"]["uid"])]
        # the pod mounts exactly this user's Secrets
        mounted = {v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v}
        assert mounted == set(objects["secrets"])
        assert {c["name"] for c in pod["spec"]["containers"]} >= {"notebook", "dask-scheduler"}

    await asyncio.wait_for(spawners["alice"].stop(), 30)
    assert await spawners["alice"].poll() == 1
    assert casa_objects(kube, facility.names("alice").slug) == {r: [] for r in ("pods",) + EXTRA}
    assert await spawners["bob"].poll() is None
    assert all(casa_objects(kube, facility.names("bob").slug).values())

    await asyncio.wait_for(spawners["bob"].stop(), 30)
    assert {r: kube.names(r) for r in ("pods",) + EXTRA} == {r: [] for r in ("pods",) + EXTRA}


@pytest.mark.parametrize("section", ["KubeSpawner", "CasaKubeSpawner"])
async def test_no_after_pod_created_hook_is_valid_and_the_session_still_gets_its_objects(kube, facility, section):
    """``c.KubeSpawner.after_pod_created_hook = None`` is valid upstream; it switches nothing of the session off."""
    from traitlets.config import Config

    cfg = Config()
    cfg[section].after_pod_created_hook = None
    spawner = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility, config=cfg)
    assert spawner.after_pod_created_hook is None
    await asyncio.wait_for(spawner.start(), 60)
    assert all(casa_objects(kube, "alice").values())
    await asyncio.wait_for(spawner.stop(), 30)


async def test_an_operators_after_pod_created_hook_runs_once_the_sessions_objects_exist(kube, facility):
    seen = []

    async def operator_hook(spawner, pod):
        seen.append((pod["metadata"]["uid"], casa_objects(kube, "alice")))

    spawner = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility, after_pod_created_hook=operator_hook)
    await asyncio.wait_for(spawner.start(), 60)
    ((uid, objects),) = seen
    assert uid == kube.get("pods", "default", spawner.pod_name)["metadata"]["uid"]
    assert len(objects["secrets"]) == 2 and objects["services"] and objects[ROUTES]
    await asyncio.wait_for(spawner.stop(), 30)


async def test_a_refused_route_fails_the_start_and_leaves_nothing(kube, facility):
    """The Service and route are created while the pod starts; a refusal there still fails the start, cleanly."""
    kube.set_garbage_collection(False)  # gone must mean: the spawner deleted it
    kube.inject(method="POST", path=r"/ingressroutetcps$", status=403)
    spawner = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility)
    with pytest.raises(SessionObjectError, match="refused IngressRouteTCP casa-dask-alice: 403"):
        await asyncio.wait_for(spawner.start(), 60)
    assert {r: kube.names(r) for r in ("pods",) + EXTRA} == {r: [] for r in ("pods",) + EXTRA}


async def test_a_pod_that_never_runs_fails_with_kubespawners_timeout_in_bounded_time(kube, facility):
    """The close watch on the reflector after the Secrets is bounded: KubeSpawner's own wait and message follow."""
    kube.app.pod_start_delay = 60  # the kubelet never gets to it
    spawner = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility, start_timeout=4)
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError, match="did not start in 4 seconds"):
        await asyncio.wait_for(spawner.start(), 30)
    assert asyncio.get_running_loop().time() - started < 4 / 2 + 4 + 3  # our watch, KubeSpawner's wait, slack
    await asyncio.wait_for(spawner.stop(now=True), 30)
    assert {r: kube.names(r) for r in ("pods",) + EXTRA} == {r: [] for r in ("pods",) + EXTRA}


async def test_casa_restart_replaces_leftovers_of_a_crashed_hub(kube, facility):
    """Objects of an earlier session (same names, owner long gone) are taken over, not a 409 failure."""
    kube.set_garbage_collection(False)
    first = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility)
    await asyncio.wait_for(first.start(), 60)
    old = {r: {o["metadata"]["name"]: o for o in kube.objects(r)} for r in EXTRA}
    # the hub crashed: the pod is gone, the extra objects stayed
    await asyncio.wait_for(KubeSpawner.stop(first, now=True), 30)
    assert all(kube.names(r) for r in EXTRA)

    second = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility)
    await asyncio.wait_for(second.start(), 60)
    pod = kube.get("pods", "default", second.pod_name)
    for resource in EXTRA:
        for obj in kube.objects(resource):
            assert obj["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"], (resource, obj["metadata"]["name"])
    (secret_name,) = [n for n in old["secrets"] if n.startswith("casa-creds-")]
    assert kube.get("secrets", "default", secret_name)["data"] != old["secrets"][secret_name]["data"]

    await asyncio.wait_for(second.stop(), 30)
    assert {r: kube.names(r) for r in ("pods",) + EXTRA} == {r: [] for r in ("pods",) + EXTRA}


async def test_casa_start_over_a_whole_leftover_session(kube, facility):
    """The hub crashed and left everything, pod included: the new start replaces it all (pod 409 path)."""
    kube.set_garbage_collection(False)
    first = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility)
    await asyncio.wait_for(first.start(), 60)
    old_uid = kube.get("pods", "default", first.pod_name)["metadata"]["uid"]

    second = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility)
    await asyncio.wait_for(second.start(), 60)
    pod = kube.get("pods", "default", second.pod_name)
    assert pod["metadata"]["uid"] != old_uid and pod["status"]["phase"] == "Running"
    for resource in EXTRA:
        objs = kube.objects(resource)
        assert objs and all(o["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"] for o in objs), resource
    await asyncio.wait_for(second.stop(), 30)
    assert {r: kube.names(r) for r in ("pods",) + EXTRA} == {r: [] for r in ("pods",) + EXTRA}


async def test_casa_renewal_patches_only_the_renewed_token_in_the_secret(kube, facility):
    spawner = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility)
    await asyncio.wait_for(spawner.start(), 60)
    name = f"casa-creds-{facility.names('alice').slug}"
    before = kube.get("secrets", "default", name)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=20)  # the 12 h macaroon is past 2/3 of its life
    assert await spawner.renew_credentials(now=later) == ["bearer_token"]
    after = kube.get("secrets", "default", name)
    changed = {k for k in before["data"] if before["data"][k] != after["data"].get(k)}
    assert changed == {"bearer_token"} and set(after["data"]) == set(before["data"])
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # patched in place, not recreated
    await asyncio.wait_for(spawner.stop(), 30)


async def test_casa_stop_with_failing_deletes_says_what_is_left_and_gc_collects_it(kube, facility):
    spawner = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility, k8s_api_request_retry_timeout=2)
    await asyncio.wait_for(spawner.start(), 60)
    kube.inject(method="DELETE", path=r"/(secrets|services|ingressroutetcps)/", status=500)
    with pytest.raises(SessionCleanupError) as err:
        await asyncio.wait_for(spawner.stop(), 60)
    slug = facility.names("alice").slug
    for name in (f"Secret casa-creds-{slug}", f"Secret casa-scheduler-{slug}", f"Service casa-dask-{slug}", f"IngressRouteTCP casa-dask-{slug}"):
        assert name in str(err.value)  # each delete was tried on its own
    # the pod is gone, and with it (ownerReferences) everything else
    await _eventually(lambda: not any(kube.names(r) for r in ("pods",) + EXTRA), "garbage collection")


RBAC_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete", "GET": "get"}


async def test_casa_calls_are_those_the_hub_rbac_grants(kube, facility):
    """A start over leftovers (409 -> replace), a renewal and a stop: every call on the extra
    objects, as RBAC (group, resource, verb), is what config/*/rbac.yaml grants, no more."""
    from tests.test_kube_config import API_CALLS

    kube.set_garbage_collection(False)
    first = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility)
    await asyncio.wait_for(first.start(), 60)
    await asyncio.wait_for(KubeSpawner.stop(first, now=True), 30)  # a crashed hub: the extra objects stay
    kube.clear_requests()
    spawner = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility)
    await asyncio.wait_for(spawner.start(), 60)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=20)
    assert await spawner.renew_credentials(now=later)
    await asyncio.wait_for(spawner.stop(), 30)
    made = set()
    for r in kube.requests:
        parts = [p for p in r.path.split("/") if p]
        group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in ("secrets", "services", "ingressroutetcps"):
            made.add((group, rest[2], RBAC_VERBS[r.method]))
    assert made == API_CALLS


async def test_casa_route_group_is_configurable(kube, facility):
    spawner = make_spawner(
        CasaKubeSpawner, kube.url, "alice", facility=facility,
        ingress_route_group="traefik.containo.us", ingress_route_entry_points=["dask-tls"],
    )
    await asyncio.wait_for(spawner.start(), 60)
    assert kube.names(ROUTES) == []
    (route,) = kube.objects("ingressroutetcps.traefik.containo.us", "default")
    assert route["apiVersion"] == "traefik.containo.us/v1alpha1"
    assert route["spec"]["entryPoints"] == ["dask-tls"]
    await asyncio.wait_for(spawner.stop(), 30)
    assert kube.names("ingressroutetcps.traefik.containo.us") == []


async def _eventually(predicate, what: str, timeout: float = 10):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)
