"""An HTTP-level fake Kubernetes API server for whole spawn/stop lifecycles.

It speaks the REST dialect that ``kubernetes_asyncio`` (and so KubeSpawner)
uses: namespaced core resources and custom objects, create / get / list with
label and field selectors / replace / merge, strategic-merge and json patch /
delete, and ``?watch=1`` streams with resource versions.  Pods turn Running
with a loopback pod IP shortly after they are created, and objects whose
ownerReferences point at a deleted owner are garbage-collected.  Every request
is recorded (method, path, query, body) so tests can scan what a spawner sent,
and :class:`~tests.fake_kube.faults.Fault` rules inject errors, delays and
dropped connections.

Run it in a background thread (:class:`~fake_kube.thread.FakeKube`, for tests:
the objects are inspectable directly) or as a process (``python3 -m fake_kube``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from aiohttp import web

from .faults import STATUS_REASONS, Fault, FaultRules
from .store import KINDS, ApiError, Store, json_patch, merge_patch, now_iso, parse_field_selector, parse_label_selector

MERGE_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")


@dataclass(frozen=True)
class Request:
    """One request as the fake received it."""

    method: str
    path: str
    query: str
    content_type: str
    body: bytes
    time: float


@dataclass(frozen=True)
class Target:
    resource: str
    namespace: str | None
    name: str | None
    subresource: str | None
    group_version: str
    kind: str | None


def parse_path(path: str) -> Target:
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        rest, group_version = parts[2:], "v1"
        group = ""
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version = parts[1], parts[2]
        rest, group_version = parts[3:], f"{group}/{version}"
    else:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource {path}")
    namespace = None
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource {path}")
    plural = rest[0]
    resource = f"{plural}.{group}" if group else plural
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if plural == "namespaces":
        namespace = ""
    return Target(resource, namespace, name, sub, group_version, KINDS.get(plural) if not group else None)


class FakeKubeApp:
    """The aiohttp application and the cluster's behaviour (pods starting, GC)."""

    def __init__(self, *, latency: float = 0.0, pod_start_delay: float = 0.05, pod_stop_delay: float = 0.02,
                 garbage_collection: bool = True, seed: int = 0, namespaces=("default",)):
        self.latency = latency
        self.pod_start_delay = pod_start_delay
        self.pod_stop_delay = pod_stop_delay
        self.garbage_collection = garbage_collection
        self.store = Store()
        self.faults = FaultRules(seed)
        self.requests: list[Request] = []
        self._ip_counter = 0
        self._tasks: set[asyncio.Task] = set()
        self._watch_tasks: dict[asyncio.Task, web.Request] = {}
        for ns in namespaces:
            self.store.create("namespaces", "", {"metadata": {"name": ns}, "status": {"phase": "Active"}}, "Namespace")
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_get("/_fake/stats", self._stats)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self.app.on_shutdown.append(self._on_shutdown)

    # -- cluster behaviour -----------------------------------------------

    def _later(self, delay: float, func, *args) -> None:
        async def run():
            await asyncio.sleep(delay)
            func(*args)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _pod_created(self, namespace: str, name: str, uid: str) -> None:
        self._later(self.pod_start_delay, self._pod_running, namespace, name, uid)

    def _pod_running(self, namespace: str, name: str, uid: str) -> None:
        pod = self.store.objects.get(("pods", namespace, name))
        if pod is None or pod["metadata"]["uid"] != uid or pod["metadata"].get("deletionTimestamp"):
            return
        if self._missing_secrets(namespace, pod):
            # like the kubelet: ContainerCreating until every mounted Secret exists
            self._later(self.pod_start_delay, self._pod_running, namespace, name, uid)
            return
        self._ip_counter += 1
        pod = copy.deepcopy(pod)
        containers = pod.get("spec", {}).get("containers", [])
        started = now_iso()
        pod["status"] = {
            "phase": "Running",
            "podIP": f"127.0.{(self._ip_counter // 250) % 250}.{self._ip_counter % 250 + 1}",
            "hostIP": "127.0.0.1",
            "startTime": started,
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": started}},
                }
                for c in containers
            ],
        }
        self.store.replace("pods", namespace, name, pod, check_version=False)

    def _missing_secrets(self, namespace: str, pod: dict) -> list[str]:
        wanted = [
            v["secret"]["secretName"]
            for v in pod.get("spec", {}).get("volumes") or []
            if v.get("secret") and not v["secret"].get("optional")
        ]
        return [n for n in wanted if ("secrets", namespace, n) not in self.store.objects]

    def _pod_gone(self, namespace: str, name: str, uid: str) -> None:
        pod = self.store.objects.get(("pods", namespace, name))
        if pod is not None and pod["metadata"]["uid"] == uid:
            self.store.delete("pods", namespace, name)
        self._collect()

    def _collect(self) -> None:
        if self.garbage_collection:
            self.store.collect_garbage()

    # -- HTTP ----------------------------------------------------------------

    async def _stats(self, request: web.Request) -> web.Response:
        counts: dict[str, int] = {}
        for r in self.requests:
            counts[r.method] = counts.get(r.method, 0) + 1
        objects: dict[str, int] = {}
        for (res, _, _) in self.store.objects:
            objects[res] = objects.get(res, 0) + 1
        return web.json_response({"requests": len(self.requests), "by_method": counts, "objects": objects})

    def cut_watches(self) -> int:
        """Abort every open watch connection, as an API server restart does."""
        for request in list(self._watch_tasks.values()):
            if request.transport is not None:
                request.transport.abort()
        return len(self._watch_tasks)

    async def _on_shutdown(self, app) -> None:
        for task in list(self._watch_tasks) + list(self._tasks):
            task.cancel()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Request(request.method, request.path, request.query_string, request.content_type, body, time.time())
        )
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = self.faults.pick(request.method, request.path, after=False, query=request.query_string)
        if fault is not None:
            early = await self._apply_fault(request, fault)
            if early is not None:
                return early
        try:
            response = await self._dispatch(request, body)
        except ApiError as e:
            response = web.json_response(e.status(), status=e.code)
        fault = self.faults.pick(request.method, request.path, after=True, query=request.query_string)
        if fault is not None:
            late = await self._apply_fault(request, fault)
            if late is not None:
                return late
        return response

    async def _apply_fault(self, request: web.Request, fault: Fault) -> web.StreamResponse | None:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.drop:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if fault.status:
            reason = STATUS_REASONS.get(fault.status, "InternalError")
            err = ApiError(fault.status, reason, f"injected fault: {fault.describe()}")
            return web.json_response(err.status(), status=fault.status)
        return None

    async def _dispatch(self, request: web.Request, body: bytes) -> web.StreamResponse:
        path = request.path
        if path in ("/version", "/version/"):
            return web.json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake"})
        if path in ("/api", "/apis"):
            return web.json_response({"kind": "APIVersions", "versions": ["v1"]})
        target = parse_path(path)
        query = {k: v[-1] for k, v in parse_qs(request.query_string).items()}
        method = request.method
        if target.name is None:
            if method == "GET" and query.get("watch") in ("1", "true", "True"):
                return await self._watch(request, target, query)
            if method == "GET":
                return self._list(target, query)
            if method == "POST":
                return self._create(target, self._json(body))
            raise ApiError(405, "MethodNotAllowed", f"{method} not allowed on a collection")
        if target.subresource not in (None, "status"):
            raise ApiError(404, "NotFound", f"no subresource {target.subresource}")
        ns = target.namespace if target.namespace is not None else ""
        if method == "GET":
            return web.json_response(self.store.get(target.resource, ns, target.name))
        if method == "PUT":
            obj = self.store.replace(target.resource, ns, target.name, self._json(body))
            return web.json_response(obj)
        if method == "PATCH":
            return self._patch(target, ns, request.content_type, self._json(body))
        if method == "DELETE":
            return self._delete(target, ns, self._json(body) if body else {}, query)
        raise ApiError(405, "MethodNotAllowed", f"{method} not allowed")

    @staticmethod
    def _json(body: bytes):
        try:
            return json.loads(body or b"null")
        except ValueError:
            raise ApiError(400, "BadRequest", "the body of the request is not valid JSON") from None

    def _list(self, target: Target, query: dict) -> web.Response:
        items = self.store.list(
            target.resource, target.namespace, query.get("labelSelector", ""), query.get("fieldSelector", "")
        )
        kind = (target.kind or "") + "List"
        return web.json_response(
            {"kind": kind, "apiVersion": target.group_version, "metadata": {"resourceVersion": str(self.store.rv)}, "items": items}
        )

    def _create(self, target: Target, obj) -> web.Response:
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body of a create must be an object")
        if target.kind is None:  # custom object: the body names its own kind and group/version
            if obj.get("apiVersion") != target.group_version or not obj.get("kind"):
                raise ApiError(
                    400, "BadRequest",
                    f"apiVersion {obj.get('apiVersion')!r} / kind {obj.get('kind')!r} do not match {target.group_version}",
                )
        if target.namespace is None:
            raise ApiError(405, "MethodNotAllowed", "create needs a namespace")
        if target.namespace and ("namespaces", "", target.namespace) not in self.store.objects:
            raise ApiError(404, "NotFound", f'namespaces "{target.namespace}" not found')
        if target.resource == "pods":
            obj = copy.deepcopy(obj)
            obj["status"] = {"phase": "Pending", "podIP": None}
        created = self.store.create(target.resource, target.namespace, obj, target.kind)
        if target.resource == "pods":
            self._pod_created(target.namespace, created["metadata"]["name"], created["metadata"]["uid"])
        elif created["metadata"].get("ownerReferences"):
            # Kubernetes collects a dependent whose owner is already gone.
            self._later(self.pod_stop_delay, self._collect)
        return web.json_response(created, status=201)

    def _patch(self, target: Target, ns: str, content_type: str, patch) -> web.Response:
        current = self.store.get(target.resource, ns, target.name)
        if content_type in MERGE_TYPES:
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            new = merge_patch(current, patch)
        elif content_type == "application/json-patch+json":
            if not isinstance(patch, list):
                raise ApiError(
                    400, "BadRequest",
                    "json: cannot unmarshal object into Go value of type jsonpatch.Patch (send a list, or use merge-patch)",
                )
            new = json_patch(current, patch)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}")
        new.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
        return web.json_response(self.store.replace(target.resource, ns, target.name, new))

    def _delete(self, target: Target, ns: str, options, query: dict) -> web.Response:
        obj = self.store.get(target.resource, ns, target.name)
        if target.resource == "pods":
            grace = (options or {}).get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
            if not obj["metadata"].get("deletionTimestamp"):
                pod = copy.deepcopy(obj)
                pod["metadata"]["deletionTimestamp"] = now_iso()
                pod["metadata"]["deletionGracePeriodSeconds"] = int(grace or 0)
                obj = self.store.replace("pods", ns, target.name, pod, check_version=False)
                self._later(self.pod_stop_delay, self._pod_gone, ns, target.name, obj["metadata"]["uid"])
            return web.json_response(obj)
        deleted = self.store.delete(target.resource, ns, target.name)
        self._later(self.pod_stop_delay, self._collect)
        return web.json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": target.name, "kind": target.resource, "uid": deleted["metadata"]["uid"]},
            }
        )

    async def _watch(self, request: web.Request, target: Target, query: dict) -> web.StreamResponse:
        labels_ok = parse_label_selector(query.get("labelSelector", ""))
        fields_ok = parse_field_selector(query.get("fieldSelector", ""))
        timeout = min(float(query.get("timeoutSeconds", 1800)), 1800)
        since = query.get("resourceVersion") or "0"

        def wanted(event) -> bool:
            return (
                event.resource == target.resource
                and (target.namespace is None or event.namespace == target.namespace)
                and labels_ok(event.obj["metadata"].get("labels"))
                and fields_ok(event.obj)
            )

        queue: asyncio.Queue = asyncio.Queue()
        backlog = []
        if since == "0":
            for obj in self.store.list(target.resource, target.namespace):
                backlog.append({"type": "ADDED", "object": obj})
        else:
            rv = int(since)
            oldest = self.store.events[0].rv if self.store.events else self.store.rv + 1
            if rv < oldest - 1 and rv < self.store.rv:
                backlog.append({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "message": f"too old resource version: {rv} ({oldest})", "reason": "Expired", "code": 410}})
            else:
                backlog.extend({"type": e.type, "object": e.obj} for e in self.store.events if e.rv > rv and wanted(e))

        def listener(event):
            if wanted(event):
                queue.put_nowait({"type": event.type, "object": event.obj})

        self.store.listeners.add(listener)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        self._watch_tasks[asyncio.current_task()] = request
        try:
            await response.prepare(request)
            for item in backlog:
                await response.write(json.dumps(item).encode() + b"\n")
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                await response.write(json.dumps(item).encode() + b"\n")
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.store.listeners.discard(listener)
            self._watch_tasks.pop(asyncio.current_task(), None)
        try:
            await response.write_eof()
        except Exception:
            pass
        return response
