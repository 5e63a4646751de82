"""The fake API server's object store: resource versions, selectors, patches, watch events.

Objects are plain JSON dicts keyed by ``(resource, namespace, name)`` where
``resource`` is the plural (``pods``) for the core group and ``plural.group``
(``ingressroutetcps.traefik.io``) for the others.  Every change gets the next
global ``resourceVersion`` and an entry in a bounded event log that watch
streams replay from.  The store is touched only from the server's event loop.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import re
import uuid
from dataclasses import dataclass, field

KINDS = {
    "pods": "Pod",
    "secrets": "Secret",
    "services": "Service",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "events": "Event",
    "configmaps": "ConfigMap",
    "namespaces": "Namespace",
    "serviceaccounts": "ServiceAccount",
    "endpoints": "Endpoints",
}

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
EVENT_LOG_SIZE = 50_000


class ApiError(Exception):
    """An error the fake answers with a Kubernetes ``Status`` body."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> dict:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class WatchEvent:
    rv: int
    resource: str
    namespace: str
    type: str
    obj: dict


# -- selectors ---------------------------------------------------------------

_SET_TERM = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(selector: str) -> list[str]:
    """Split on commas that are not inside ``in (a,b)`` parentheses."""
    terms, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    terms.append(cur)
    return [t.strip() for t in terms if t.strip()]


def parse_label_selector(selector: str):
    """A predicate on a labels dict, for the selector syntax the API server accepts."""
    checks = []
    for term in _split_selector(selector or ""):
        m = _SET_TERM.match(term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif term.startswith("!"):
            checks.append(lambda labels, k=term[1:].strip(): k not in labels)
        elif LABEL_NAME.match(term.split("/")[-1]):
            checks.append(lambda labels, k=term: k in labels)
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
    return lambda labels: all(check(labels or {}) for check in checks)


def _field(obj: dict, path: str):
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def parse_field_selector(selector: str):
    checks = []
    for term in _split_selector(selector or ""):
        if "!=" in term:
            path, value = (s.strip() for s in term.split("!=", 1))
            checks.append(lambda o, p=path, v=value: str(_field(o, p) or "") != v)
        elif "=" in term:
            path, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            checks.append(lambda o, p=path, v=value: str(_field(o, p) or "") == v)
        else:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
    return lambda obj: all(check(obj) for check in checks)


# -- patches -----------------------------------------------------------------


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch (strategic merge is treated the same way here)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(target: dict, ops: list) -> dict:
    """RFC 6902 add / replace / remove / test (what clients send in practice)."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = _pointer(op.get("path", ""))
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1]
        kind = op.get("op")
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(index, op["value"])
            elif kind == "replace":
                parent[index] = op["value"]
            elif kind == "remove":
                del parent[index]
            else:
                raise ApiError(422, "Invalid", f"unsupported json-patch op {kind!r}")
        else:
            if kind in ("add", "replace"):
                if kind == "replace" and last not in parent:
                    raise ApiError(422, "Invalid", f"replace of missing path {op['path']}")
                parent[last] = op["value"]
            elif kind == "remove":
                if last not in parent:
                    raise ApiError(422, "Invalid", f"remove of missing path {op['path']}")
                del parent[last]
            elif kind == "test":
                if parent.get(last) != op.get("value"):
                    raise ApiError(422, "Invalid", f"test failed at {op['path']}")
            else:
                raise ApiError(422, "Invalid", f"unsupported json-patch op {kind!r}")
    return doc


# -- validation --------------------------------------------------------------


def validate(resource: str, obj: dict) -> None:
    """The checks a real API server makes that a spawner bug would trip."""
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    if not name:
        raise ApiError(422, "Invalid", f"{resource}: metadata.name: Required value")
    pattern = DNS1035_LABEL if resource == "services" else DNS1123_SUBDOMAIN
    limit = 63 if resource in ("services", "pods") else 253
    if len(name) > limit or not pattern.match(name):
        raise ApiError(422, "Invalid", f"{resource} {name!r}: metadata.name: Invalid value: not a valid DNS name")
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            raise ApiError(422, "Invalid", f"{resource} {name!r}: metadata.labels: Invalid value: {value!r}")
        if not LABEL_NAME.match(key.split("/")[-1]) or len(key.split("/")[-1]) > 63:
            raise ApiError(422, "Invalid", f"{resource} {name!r}: metadata.labels: Invalid key: {key!r}")
    if resource == "secrets":
        import base64
        import binascii

        for key, value in (obj.get("data") or {}).items():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise ApiError(400, "BadRequest", f"secret {name!r}: data[{key}] is not base64") from None


# -- the store ---------------------------------------------------------------


@dataclass
class Store:
    """Objects, resource versions and the event log."""

    objects: dict = field(default_factory=dict)
    events: list = field(default_factory=list)
    listeners: set = field(default_factory=set)
    _rv: itertools.count = field(default_factory=lambda: itertools.count(1))
    rv: int = 0

    def _next_rv(self) -> int:
        self.rv = next(self._rv)
        return self.rv

    def _emit(self, resource: str, namespace: str, type_: str, obj: dict) -> None:
        event = WatchEvent(self.rv, resource, namespace, type_, copy.deepcopy(obj))
        self.events.append(event)
        if len(self.events) > EVENT_LOG_SIZE:
            del self.events[: len(self.events) - EVENT_LOG_SIZE]
        for listener in list(self.listeners):
            listener(event)

    def get(self, resource: str, namespace: str, name: str) -> dict:
        try:
            return self.objects[(resource, namespace, name)]
        except KeyError:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found') from None

    def list(self, resource: str, namespace: str | None, label_selector="", field_selector="") -> list[dict]:
        labels_ok = parse_label_selector(label_selector)
        fields_ok = parse_field_selector(field_selector)
        return [
            obj
            for (res, ns, _), obj in sorted(self.objects.items())
            if res == resource
            and (namespace is None or ns == namespace)
            and labels_ok(obj["metadata"].get("labels"))
            and fields_ok(obj)
        ]

    def create(self, resource: str, namespace: str, obj: dict, kind: str | None = None) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {}) or {}
        obj["metadata"] = meta
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        validate(resource, obj)
        key = (resource, namespace, meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{resource} "{meta["name"]}" already exists')
        if kind and not obj.get("kind"):
            obj["kind"] = kind
        if namespace:
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        meta.pop("deletionTimestamp", None)
        meta["resourceVersion"] = str(self._next_rv())
        self.objects[key] = obj
        self._emit(resource, namespace, "ADDED", obj)
        return obj

    def replace(self, resource: str, namespace: str, name: str, obj: dict, *, check_version=True) -> dict:
        current = self.get(resource, namespace, name)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {}) or {}
        obj["metadata"] = meta
        if meta.get("name", name) != name:
            raise ApiError(400, "BadRequest", f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})")
        meta["name"] = name
        validate(resource, obj)
        wanted = meta.get("resourceVersion")
        if check_version and wanted and wanted != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified')
        for kept in ("uid", "creationTimestamp", "deletionTimestamp", "namespace"):
            if kept in current["metadata"]:
                meta[kept] = current["metadata"][kept]
        if not obj.get("kind") and current.get("kind"):
            obj["kind"] = current["kind"]
        meta["resourceVersion"] = str(self._next_rv())
        self.objects[(resource, namespace, name)] = obj
        self._emit(resource, namespace, "MODIFIED", obj)
        return obj

    def delete(self, resource: str, namespace: str, name: str) -> dict:
        obj = self.objects.pop((resource, namespace, name), None)
        if obj is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        self._next_rv()
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(resource, namespace, "DELETED", obj)
        return obj

    def collect_garbage(self) -> list[tuple]:
        """Delete dependents none of whose owners exist any more (Kubernetes' background GC)."""
        uids = {obj["metadata"]["uid"] for obj in self.objects.values()}
        orphans = [
            key
            for key, obj in self.objects.items()
            if obj["metadata"].get("ownerReferences")
            and not any(ref.get("uid") in uids for ref in obj["metadata"]["ownerReferences"])
        ]
        for key in orphans:
            self.delete(*key)
        return orphans
