"""The Kubernetes API calls for a session's extra objects, with KubeSpawner's retry pattern.

Each request is bounded by ``request_timeout``; timeouts, dropped connections and
5xx/429 answers are retried with ``jupyterhub.utils.exponential_backoff`` for at
most ``retry_timeout``; any other refusal fails at once with a message naming the
object.  Calls made (the fake API server in tests/fake_kube answers them):

- Secret:  ``POST``, ``PUT`` (replace after a 409), strategic-merge ``PATCH`` (renewal), ``DELETE``
  on ``/api/v1/namespaces/{ns}/secrets[/{name}]``
- Service: ``POST``, merge-patch ``PATCH`` (after a 409), ``DELETE``
  on ``/api/v1/namespaces/{ns}/services[/{name}]``
- IngressRouteTCP: ``POST``, merge-patch ``PATCH`` (after a 409), ``DELETE``
  on ``/apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}]``
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
from jupyterhub.utils import exponential_backoff
from kubernetes_asyncio.client.rest import ApiException

from casa_hub import metrics

MERGE_PATCH = "application/merge-patch+json"
RETRIABLE = {429, 500, 502, 503, 504}

# The spawner never reads the objects the API returns: skipping kubernetes_asyncio's
# model deserialisation keeps the hub's event loop free (bench/spawn.py's loop stall).
RAW = {"_preload_content": False}


async def raw_answer(call) -> bytes:
    """The body of a raw (``_preload_content=False``) call; a non-2xx answer raises ApiException as the client would."""
    response = await call
    try:
        body = await response.read()
    finally:
        response.release()
    if not 200 <= response.status <= 299:
        raise ApiException(status=response.status, reason=f"{response.reason}: {body[:200].decode(errors='replace')}")
    return body


class CasaKubeError(RuntimeError):
    """A session could not be started or stopped; the message says what failed."""


class SessionObjectError(CasaKubeError):
    """Kubernetes refused one of the session's objects; the message says which and why."""


class SessionCleanupError(CasaKubeError):
    """Some of the session's objects could not be deleted on stop (each was tried)."""


def _reason(e: ApiException) -> str:
    return f"{e.status} {e.reason or ''}".strip()


@dataclass(frozen=True)
class RouteResource:
    """Where the IngressRouteTCP CRD lives (Traefik < 2.10: group ``traefik.containo.us``)."""

    group: str = "traefik.io"
    version: str = "v1alpha1"
    plural: str = "ingressroutetcps"


@dataclass
class SessionObjectsApi:
    """Create, replace, patch and delete one namespace's session objects."""

    core: Any  # kubernetes_asyncio CoreV1Api
    custom: Any  # kubernetes_asyncio CustomObjectsApi
    namespace: str
    route: RouteResource
    request_timeout: float
    retry_timeout: float
    log: logging.Logger | logging.LoggerAdapter

    def _route_args(self) -> dict:
        r = self.route
        return dict(group=r.group, version=r.version, namespace=self.namespace, plural=r.plural)

    def _create(self, obj: dict):
        if obj["kind"] == "Secret":
            return self.core.create_namespaced_secret(self.namespace, obj, **RAW)
        if obj["kind"] == "Service":
            return self.core.create_namespaced_service(self.namespace, obj, **RAW)
        return self.custom.create_namespaced_custom_object(body=obj, **self._route_args(), **RAW)

    def _replace(self, obj: dict):
        """Secrets are replaced whole (no stale keys); the others get a merge patch
        (a Service's clusterIP is immutable, a custom object's PUT needs a resourceVersion).
        Either way the ownerReference moves to the new pod."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "Secret":
            return self.core.replace_namespaced_secret(name, self.namespace, obj, **RAW)
        if kind == "Service":
            return self.core.patch_namespaced_service(name, self.namespace, obj, _content_type=MERGE_PATCH, **RAW)
        return self.custom.patch_namespaced_custom_object(name=name, body=obj, _content_type=MERGE_PATCH, **self._route_args(), **RAW)

    def _delete(self, kind: str, name: str):
        if kind == "Secret":
            return self.core.delete_namespaced_secret(name, self.namespace, **RAW)
        if kind == "Service":
            return self.core.delete_namespaced_service(name, self.namespace, **RAW)
        return self.custom.delete_namespaced_custom_object(name=name, **self._route_args(), **RAW)

    async def _request(self, call) -> None:
        """Await one raw call; a non-2xx answer raises ApiException as the client would."""
        await asyncio.wait_for(raw_answer(call), self.request_timeout)

    async def _retrying(self, attempt, message: str) -> None:
        await exponential_backoff(attempt, f"{message} in {self.retry_timeout} seconds", timeout=self.retry_timeout)

    # -- one attempt each, for exponential_backoff: True when done, False to retry --

    async def _ensure_attempt(self, obj: dict) -> bool:
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            try:
                await self._request(self._create(obj))
            except ApiException as e:
                if e.status != 409:
                    raise
                self.log.info("%s %s exists, replacing it", kind, name)
                await self._request(self._replace(obj))
            return True
        except (asyncio.TimeoutError, aiohttp.ClientError) as e:
            # the object may have been created all the same: the retry meets a 409 and replaces it
            self.log.warning("No answer creating %s %s (%s), retrying", kind, name, type(e).__name__)
            return False
        except ApiException as e:
            if e.status in RETRIABLE or e.status == 404:  # 404: deleted between our 409 and the replace
                self.log.warning("Kubernetes answered %s creating %s %s, retrying", _reason(e), kind, name)
                return False
            raise SessionObjectError(f"Kubernetes refused {kind} {name}: {_reason(e)}") from None

    async def _delete_attempt(self, kind: str, name: str) -> bool:
        try:
            await self._request(self._delete(kind, name))
            return True
        except (asyncio.TimeoutError, aiohttp.ClientError) as e:
            self.log.warning("No answer deleting %s %s (%s), retrying", kind, name, type(e).__name__)
            return False
        except ApiException as e:
            if e.status == 404:
                return True
            if e.status in RETRIABLE:
                self.log.warning("Kubernetes answered %s deleting %s %s, retrying", _reason(e), kind, name)
                return False
            raise SessionObjectError(f"Kubernetes refused to delete {kind} {name}: {_reason(e)}") from None

    async def _patch_secret_attempt(self, name: str, body: dict) -> bool:
        try:
            await self._request(self.core.patch_namespaced_secret(name, self.namespace, body, **RAW))
            return True
        except (asyncio.TimeoutError, aiohttp.ClientError) as e:
            self.log.warning("No answer patching Secret %s (%s), retrying", name, type(e).__name__)
            return False
        except ApiException as e:
            if e.status in RETRIABLE:
                self.log.warning("Kubernetes answered %s patching Secret %s, retrying", _reason(e), name)
                return False
            raise SessionObjectError(f"Kubernetes refused the renewal of Secret {name}: {_reason(e)}") from None

    # -- what the spawner uses ------------------------------------------------------

    async def ensure(self, obj: dict) -> None:
        """Create ``obj``, or replace the one already there (409)."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        await self._retrying(partial(self._ensure_attempt, obj), f"Could not create {kind} {name}")

    async def ensure_all(self, objects: list[dict]) -> None:
        """:meth:`ensure` every object, all at once (none depends on another: each is owned by the
        pod, which waits for its Secrets); if any fails, the others are still finished, then the
        first failure is raised."""
        results = await asyncio.gather(*(self.ensure(obj) for obj in objects), return_exceptions=True)
        for result in results:
            if isinstance(result, asyncio.CancelledError):
                raise result
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def patch_secret_data(self, name: str, data: dict[str, str]) -> None:
        """Merge base64 ``data`` keys into Secret ``name`` (its other keys stay)."""
        await self._retrying(partial(self._patch_secret_attempt, name, {"data": data}), f"Could not patch Secret {name}")

    async def _delete_one(self, kind: str, name: str) -> str | None:
        """Delete one object, retrying; the failure as text, or None once it is gone."""
        try:
            await self._retrying(partial(self._delete_attempt, kind, name), f"{kind} {name} not deleted")
            return None
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log.error("Could not delete %s %s: %s", kind, name, e)
            return f"{kind} {name} ({e})"

    async def delete_each(self, objects: list[tuple[str, str]]) -> None:
        """Delete every ``(kind, name)``, each on its own and all at once (404 is fine), so a
        stop waits at most one ``retry_timeout``; raise once at the end if any failed."""
        results = await asyncio.gather(*(self._delete_one(kind, name) for kind, name in objects))
        failures = [f for f in results if f is not None]
        for (kind, _), failure in zip(objects, results):
            if failure is not None:
                metrics.cleanup_failed(kind)
        if failures:
            raise SessionCleanupError(
                f"could not delete {'; '.join(failures)}; they are owned by the pod and will be garbage-collected with it"
            )
