"""CasaKubeSpawner: KubeSpawner plus the session's Dask scheduler, credentials and route.

Lifecycle (KubeSpawner's own steps in brackets):

1. ``run_auth_state_hook``: remember the IdP access token (``auth_state["access_token"]``).
2. ``start``: issue the credential bundle (in a thread) and plan the session, then
   [KubeSpawner ``_start``: ``get_pod_manifest`` -> create the pod -> wait for its uid].
3. ``get_pod_manifest``: KubeSpawner's pod + the scheduler and credential-sync
   sidecars, the credsync init container, the Secret volumes and the emptyDir;
   ``get_env`` adds the notebook's Dask/HTCondor/XCache environment.
4. ``after_pod_created_hook`` (KubeSpawner's documented slot, called once the pod has
   a uid; on failure KubeSpawner calls ``stop(now=True)``): create the two Secrets,
   the Service and the IngressRouteTCP, each with an ownerReference to the pod.  An
   existing object (409, e.g. left by a crashed hub) is replaced, so its
   ownerReference moves to the new pod.  The pod's init container waits for the
   Secret, so the notebook starts with its files in place.
   [wait for the pod to be Running and ready: the scheduler's readiness probe included]
5. ``poll``: [KubeSpawner's check]; while running, re-issue credentials past 2/3 of
   their life and patch the Secret (the sync sidecar follows the kubelet's update).
6. ``stop``: [delete the pod]; then delete every extra object, each on its own (404
   is fine; one failure does not skip the next), and report what could not be deleted.

Kubernetes API calls made here, beyond KubeSpawner's pod/event calls (note for the
fake API server in tests/fake_kube):

- ``POST   /api/v1/namespaces/{ns}/secrets``                create
- ``PUT    /api/v1/namespaces/{ns}/secrets/{name}``         replace after a 409
- ``PATCH  /api/v1/namespaces/{ns}/secrets/{name}``         renewal, strategic-merge ``{"data": {...}}``
- ``DELETE /api/v1/namespaces/{ns}/secrets/{name}``
- ``POST   /api/v1/namespaces/{ns}/services``
- ``PATCH  /api/v1/namespaces/{ns}/services/{name}``        after a 409, ``application/merge-patch+json``
- ``DELETE /api/v1/namespaces/{ns}/services/{name}``
- ``POST   /apis/{group}/{version}/namespaces/{ns}/{plural}``            (IngressRouteTCP)
- ``PATCH  /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}``     after a 409, merge-patch
- ``DELETE /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}``

Timeouts and 5xx/429 answers are retried with ``jupyterhub.utils.exponential_backoff``
(each request bounded by ``k8s_api_request_timeout``, all retries by
``k8s_api_request_retry_timeout``); other errors fail at once with a clear message.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
from functools import partial

import aiohttp
from jupyterhub.utils import exponential_backoff, maybe_future
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from kubespawner.utils import get_k8s_model
from kubernetes_asyncio.client.models import V1Container, V1Volume, V1VolumeMount
from traitlets import Callable, Dict, Float, Instance, Int, List, Unicode, default, validate

from casa_hub import bundle as b
from casa_hub.bundle import CredentialBundle, CredentialFile
from casa_hub.facility import Facility
from casa_hub.plan import SessionPlan, plan_session

from . import kube_objects as ko

MERGE_PATCH = "application/merge-patch+json"
RETRIABLE = {429, 500, 502, 503, 504}
RENEWABLE_KINDS = ("condor-token", "xcache-token", "bearer-token")


class CasaKubeError(RuntimeError):
    """A session could not be started or stopped; the message says what failed."""


class SessionObjectError(CasaKubeError):
    """Kubernetes refused one of the session's objects; the message says which and why."""


class SessionCleanupError(CasaKubeError):
    """Some of the session's objects could not be deleted on stop (each was tried)."""


def _api_reason(e: ApiException) -> str:
    return f"{e.status} {e.reason or ''}".strip()


async def _run_casa_after_pod_created(spawner, pod):
    await spawner.create_session_objects(pod)


class CasaKubeSpawner(KubeSpawner):
    """KubeSpawner for an analysis facility: a Dask scheduler beside every notebook,
    reachable at ``tls://<slug>.dask.<domain>:8786``, with HTCondor/XCache credentials
    kept private and renewed."""

    facility = Instance(
        Facility,
        help="""The facility (``c.Facility.*``): domain, ports, key files, lifetimes.
        Defaults to the hub's shared ``Facility.instance()``.""",
    )

    @default("facility")
    def _default_facility(self):
        return Facility.instance(config=self.config)

    ingress_route_group = Unicode(
        "traefik.io",
        config=True,
        help="""API group of Traefik's IngressRouteTCP. Traefik < 2.10 used ``traefik.containo.us``.

        Example: ``c.CasaKubeSpawner.ingress_route_group = "traefik.containo.us"``""",
    )
    ingress_route_version = Unicode("v1alpha1", config=True, help="API version of the IngressRouteTCP CRD, e.g. ``v1alpha1``.")
    ingress_route_plural = Unicode("ingressroutetcps", config=True, help="Resource (plural) name of the IngressRouteTCP CRD.")
    ingress_route_entry_points = List(
        Unicode(),
        ["dask"],
        minlen=1,
        config=True,
        help="""Traefik entry points the scheduler routes bind to (TLS passthrough, SNI routing).

        Example: ``c.CasaKubeSpawner.ingress_route_entry_points = ["dask"]``""",
    )
    scheduler_image = Unicode(
        "",
        config=True,
        help="""Image of the Dask scheduler sidecar; empty: the notebook image (it must have ``distributed``).

        Example: ``c.CasaKubeSpawner.scheduler_image = "coffeateam/coffea-casa:2026.1"``""",
    )
    scheduler_python = Unicode("python3", config=True, help="Python interpreter inside the scheduler image.")
    scheduler_resources = Dict(
        {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        config=True,
        help="""Kubernetes ``resources`` of the scheduler sidecar.

        Example: ``c.CasaKubeSpawner.scheduler_resources = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}``""",
    )
    credsync_image = Unicode(
        "",
        config=True,
        help="""Image of the credential-sync containers; it must contain ``jupyterhub-casa``
        (the hub image does). Empty: the notebook image.

        Example: ``c.CasaKubeSpawner.credsync_image = "ghcr.io/example/casa-hub:0.1.0"``""",
    )
    credsync_command = List(
        Unicode(),
        ["python3", "-m", "casa_spawner.credsync"],
        minlen=1,
        config=True,
        help="Command that runs ``casa_spawner.credsync`` in ``credsync_image`` (its arguments are added).",
    )
    credsync_interval = Float(5.0, config=True, help="Seconds between the sync sidecar's checks of the Secret volume.")
    credentials_mount_path = Unicode(
        "/var/run/casa",
        config=True,
        help="""Mount point of the in-memory volume; the notebook's credentials are in
        ``<this>/credentials`` (``$CASA_CREDENTIALS``).""",
    )

    credentials_uid = Int(
        None,
        allow_none=True,
        config=True,
        help="""Owner (uid) of the notebook's credential files; the sync and scheduler sidecars run as it.

        None: the notebook container's ``runAsUser`` (``c.KubeSpawner.uid``), else 1000 (jovyan).
        Set it when the notebook starts as root and drops to another uid (docker-stacks' ``NB_UID``).""",
    )
    credentials_gid = Int(
        None,
        allow_none=True,
        config=True,
        help="""Group of the credential files. None: the notebook's ``runAsGroup``, else 100 (users).""",
    )

    @validate("credsync_interval")
    def _validate_interval(self, proposal):
        if not 0 < proposal["value"] <= 300:
            raise ValueError("CasaKubeSpawner.credsync_interval must be within (0, 300] seconds")
        return proposal["value"]

    after_pod_created_hook = Callable(
        config=True,
        help="""Callable ``hook(spawner, pod)`` (may be async) run once the pod exists.

        CasaKubeSpawner creates the session's Secrets, Service and IngressRouteTCP in this
        slot; a hook set here runs after them. Example:
        ``c.CasaKubeSpawner.after_pod_created_hook = my_hook``""",
    )

    # KubeSpawner's documented slot after the pod exists; an operator's own hook still runs, after ours.
    @default("after_pod_created_hook")
    def _default_after_pod_created_hook(self):
        return _run_casa_after_pod_created

    @validate("after_pod_created_hook")
    def _keep_session_objects_hook(self, proposal):
        hook = proposal["value"]
        if hook is None or hook is _run_casa_after_pod_created:
            return _run_casa_after_pod_created

        async def casa_then_operator_hook(spawner, pod):
            await spawner.create_session_objects(pod)
            await maybe_future(hook(spawner, pod))

        return casa_then_operator_hook

    _access_token: str | None = None
    _plan: SessionPlan | None = None
    _bundle: CredentialBundle | None = None

    # -- names and options ----------------------------------------------------

    @property
    def session_names(self) -> ko.ObjectNames:
        return ko.object_names(self.facility.names(self.user.name).slug)

    def session_options(self, uid: int | None = None, gid: int | None = None) -> ko.KubeSessionOptions:
        return ko.KubeSessionOptions(
            route_api_version=f"{self.ingress_route_group}/{self.ingress_route_version}",
            route_entry_points=tuple(self.ingress_route_entry_points),
            scheduler_image=self.scheduler_image or self.image,
            scheduler_python=self.scheduler_python,
            scheduler_resources=dict(self.scheduler_resources),
            credsync_image=self.credsync_image or self.image,
            credsync_command=tuple(self.credsync_command),
            credsync_interval=self.credsync_interval,
            uid=1000 if uid is None else uid,
            gid=100 if gid is None else gid,
            credentials_mount=self.credentials_mount_path,
            secret_mount=self.credentials_mount_path.rstrip("/") + "-secret",
            scheduler_mount=self.credentials_mount_path.rstrip("/") + "-scheduler",
            extra_labels=self._build_common_labels(self._expand_all(self.extra_labels)),
        )

    # -- credentials --------------------------------------------------------

    async def run_auth_state_hook(self, auth_state):
        """Keep the IdP access token: it becomes the WLCG bearer token when no XCache secret is set."""
        self._access_token = (auth_state or {}).get("access_token")
        await super().run_auth_state_hook(auth_state)

    async def plan_new_session(self) -> SessionPlan:
        """Issue a fresh bundle (off the event loop: key files, signatures, keygens) and plan the session."""
        username = self.user.name
        bundle = await asyncio.to_thread(self.facility.issue_bundle, username, access_token=self._access_token)
        return plan_session(self.facility, username, bundle, entry_point=self.ingress_route_entry_points[0])

    # -- start ----------------------------------------------------------------

    async def start(self):
        if self.name:
            raise CasaKubeError(
                f"named server {self.name!r}: a user has one Dask scheduler address "
                f"({self.facility.names(self.user.name).scheduler_address}), so CasaKubeSpawner runs the default server only"
            )
        self._plan = await self.plan_new_session()
        self._bundle = self._plan.bundle
        try:
            return await super().start()
        except aiohttp.ClientError as e:  # KubeSpawner lets a dropped connection escape as is
            raise CasaKubeError(f"lost the connection to the Kubernetes API while starting pod {self.pod_name}: {e}") from e

    def get_env(self):
        env = super().get_env()
        if self._plan is not None:
            env.update(ko.notebook_environment(self._plan, self.session_options()))
        return env

    async def get_pod_manifest(self):
        """KubeSpawner's pod with the session's sidecars, init container, volumes and label."""
        if self._plan is None:
            raise RuntimeError("get_pod_manifest before the session was planned (start() plans it)")
        pod = await super().get_pod_manifest()
        notebook = pod.spec.containers[0]
        sc = notebook.security_context
        uid = self.credentials_uid if self.credentials_uid is not None else getattr(sc, "run_as_user", None)
        gid = self.credentials_gid if self.credentials_gid is not None else getattr(sc, "run_as_group", None)
        parts = ko.session_pod_parts(self._plan, self.session_options(uid, gid))
        pod.metadata.labels = {**(pod.metadata.labels or {}), **parts.labels}
        pod.spec.init_containers = [get_k8s_model(V1Container, c) for c in parts.init_containers] + list(pod.spec.init_containers or [])
        pod.spec.containers = list(pod.spec.containers) + [get_k8s_model(V1Container, c) for c in parts.containers]
        pod.spec.volumes = list(pod.spec.volumes or []) + [get_k8s_model(V1Volume, v) for v in parts.volumes]
        notebook.volume_mounts = list(notebook.volume_mounts or []) + [
            get_k8s_model(V1VolumeMount, m) for m in parts.notebook_volume_mounts
        ]
        return pod

    def build_session_objects(self, pod_uid: str) -> list[dict]:
        if self._plan is None:
            raise RuntimeError("no session planned")
        owner = ko.owner_reference(self.pod_name, pod_uid)
        return ko.session_objects(self._plan, self.session_options(), [owner])

    async def preview_manifests(self, pod_uid: str = "<uid of the pod>") -> list[dict]:
        """Plan a session and return, as JSON, the pod and every extra object this spawner
        would create (``casa render``); nothing is sent to Kubernetes."""
        self._plan = await self.plan_new_session()
        pod = ko.to_json(await self.get_pod_manifest())
        return [pod, *self.build_session_objects(pod_uid)]

    async def create_session_objects(self, pod: dict) -> None:
        """Create (or replace) the Secrets, Service and IngressRouteTCP, owned by ``pod``."""
        for obj in self.build_session_objects(pod["metadata"]["uid"]):
            kind, name = obj["kind"], obj["metadata"]["name"]
            await exponential_backoff(
                partial(self._create_or_replace, obj),
                f"Could not create {kind} {name} in {self.k8s_api_request_retry_timeout} seconds",
                timeout=self.k8s_api_request_retry_timeout,
            )
            self.log.info("Created %s %s for %s", kind, name, self.user.name)

    # -- API calls ------------------------------------------------------------

    _custom_api = None

    @property
    def custom_api(self):
        """CustomObjectsApi for the IngressRouteTCP (shared per event loop, like KubeSpawner's ``api``)."""
        if self._custom_api is None:
            self._custom_api = shared_client("CustomObjectsApi")
        return self._custom_api

    @custom_api.setter
    def custom_api(self, client):
        self._custom_api = client

    def _route_args(self) -> dict:
        return dict(
            group=self.ingress_route_group,
            version=self.ingress_route_version,
            namespace=self.namespace,
            plural=self.ingress_route_plural,
        )

    def _create_call(self, obj: dict):
        kind = obj["kind"]
        if kind == "Secret":
            return self.api.create_namespaced_secret(self.namespace, obj)
        if kind == "Service":
            return self.api.create_namespaced_service(self.namespace, obj)
        return self.custom_api.create_namespaced_custom_object(body=obj, **self._route_args())

    def _replace_call(self, obj: dict):
        """Secrets are replaced whole (no stale keys); the others get a merge patch
        (a Service's clusterIP is immutable, a custom object's PUT needs a resourceVersion)."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "Secret":
            return self.api.replace_namespaced_secret(name, self.namespace, obj)
        if kind == "Service":
            return self.api.patch_namespaced_service(name, self.namespace, obj, _content_type=MERGE_PATCH)
        return self.custom_api.patch_namespaced_custom_object(name=name, body=obj, _content_type=MERGE_PATCH, **self._route_args())

    def _delete_call(self, kind: str, name: str):
        if kind == "Secret":
            return self.api.delete_namespaced_secret(name, self.namespace)
        if kind == "Service":
            return self.api.delete_namespaced_service(name, self.namespace)
        return self.custom_api.delete_namespaced_custom_object(name=name, **self._route_args())

    async def _request(self, call) -> None:
        await asyncio.wait_for(call, self.k8s_api_request_timeout)

    async def _create_or_replace(self, obj: dict) -> bool:
        """One attempt, for exponential_backoff: True when done, False to retry."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            try:
                await self._request(self._create_call(obj))
            except ApiException as e:
                if e.status != 409:
                    raise
                self.log.info("%s %s exists, replacing it", kind, name)
                await self._request(self._replace_call(obj))
            return True
        except (asyncio.TimeoutError, aiohttp.ClientError) as e:
            # the object may have been created all the same: the retry meets a 409 and replaces it
            self.log.warning("No answer creating %s %s (%s), retrying", kind, name, type(e).__name__)
            return False
        except ApiException as e:
            if e.status in RETRIABLE or e.status == 404:  # 404: deleted between our 409 and the replace
                self.log.warning("Kubernetes answered %s creating %s %s, retrying", _api_reason(e), kind, name)
                return False
            raise SessionObjectError(f"Kubernetes refused {kind} {name}: {_api_reason(e)}") from None

    async def _delete_attempt(self, kind: str, name: str) -> bool:
        try:
            await self._request(self._delete_call(kind, name))
            return True
        except (asyncio.TimeoutError, aiohttp.ClientError):
            return False
        except ApiException as e:
            if e.status == 404:
                return True
            if e.status in RETRIABLE:
                self.log.warning("Kubernetes answered %s deleting %s %s, retrying", _api_reason(e), kind, name)
                return False
            raise SessionObjectError(f"Kubernetes refused to delete {kind} {name}: {_api_reason(e)}") from None

    # -- stop -----------------------------------------------------------------

    async def delete_session_objects(self) -> None:
        """Delete route, Service and Secrets, each on its own; raise once at the end if any failed."""
        names = self.session_names
        failures = []
        for kind, name in [
            ("IngressRouteTCP", names.route),
            ("Service", names.service),
            ("Secret", names.secret),
            ("Secret", names.scheduler_secret),
        ]:
            try:
                await exponential_backoff(
                    partial(self._delete_attempt, kind, name),
                    f"{kind} {name} not deleted in {self.k8s_api_request_retry_timeout} seconds",
                    timeout=self.k8s_api_request_retry_timeout,
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.log.error("Could not delete %s %s of %s: %s", kind, name, self.user.name, e)
                failures.append(f"{kind} {name} ({e})")
        if failures:
            raise SessionCleanupError(
                f"could not delete {'; '.join(failures)}; they are owned by the pod and will be garbage-collected with it"
            )

    async def stop(self, now=False):
        # no clearing of the plan here: KubeSpawner itself calls stop() in the middle of a
        # start (a leftover pod); clear_state() forgets the session once it is over
        try:
            await super().stop(now)
        finally:
            await self.delete_session_objects()

    # -- renewal ----------------------------------------------------------------

    async def poll(self):
        status = await super().poll()
        if status is None and self._bundle is not None:
            try:
                await self.renew_credentials()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the next poll retries; the session keeps its current files
                self.log.warning("Credential renewal for %s failed: %s", self.user.name, e)
        return status

    async def renew_credentials(self, now: dt.datetime | None = None) -> list[str]:
        """Re-issue what passed the renewal fraction of its life, patch the Secret; returns the renewed paths."""
        bundle = self._bundle
        access_token = self._access_token
        current = bundle.get(b.BEARER_TOKEN_PATH)
        if current is not None and current.kind == "bearer-token":
            # the authenticator refreshes the access token in auth_state; pass the fresh one on
            auth_state = await self.user.get_auth_state()
            access_token = (auth_state or {}).get("access_token") or access_token
        renewed = await asyncio.to_thread(
            self.facility.renew_bundle, self.user.name, bundle, access_token=access_token, now=now
        )
        if renewed is None:
            return []
        changed = [f for f in renewed.for_audience(b.NOTEBOOK).files if bundle.get(f.path) is not f]
        if not changed:
            self._bundle = renewed
            return []
        body = {"data": {f.key: base64.b64encode(f.content).decode("ascii") for f in changed}}
        name = self.session_names.secret
        await exponential_backoff(
            partial(self._patch_secret_attempt, name, body),
            f"Could not patch Secret {name} in {self.k8s_api_request_retry_timeout} seconds",
            timeout=self.k8s_api_request_retry_timeout,
        )
        self._bundle = renewed
        if self._plan is not None:
            self._plan = dataclasses.replace(self._plan, bundle=renewed)
        self._access_token = access_token
        paths = [f.path for f in changed]
        self.log.info("Renewed %s for %s", ", ".join(paths), self.user.name)
        return paths

    async def _patch_secret_attempt(self, name: str, body: dict) -> bool:
        try:
            await self._request(self.api.patch_namespaced_secret(name, self.namespace, body))
            return True
        except (asyncio.TimeoutError, aiohttp.ClientError):
            return False
        except ApiException as e:
            if e.status in RETRIABLE:
                return False
            raise SessionObjectError(f"Kubernetes refused the renewal of Secret {name}: {_api_reason(e)}") from None

    # -- state (expiry metadata only: never a credential) ----------------------

    def get_state(self):
        state = super().get_state()
        if self._bundle is not None:
            state["casa_renewable"] = [
                {
                    "path": f.path,
                    "kind": f.kind,
                    "audiences": sorted(f.audiences),
                    "issued_at": f.issued_at.isoformat() if f.issued_at else None,
                    "expires_at": f.expires_at.isoformat() if f.expires_at else None,
                }
                for f in self._bundle.files
                if f.kind in RENEWABLE_KINDS
            ]
        return state

    def load_state(self, state):
        """After a hub restart, renewal resumes from the saved expiry times; the placeholder
        contents are never sent (only re-issued files are patched)."""
        super().load_state(state)
        saved = state.get("casa_renewable")
        if saved is not None and self._bundle is None:
            self._bundle = CredentialBundle(
                tuple(
                    CredentialFile(
                        s["path"],
                        b"",
                        s["kind"],
                        frozenset(s["audiences"]),
                        issued_at=dt.datetime.fromisoformat(s["issued_at"]) if s["issued_at"] else None,
                        expires_at=dt.datetime.fromisoformat(s["expires_at"]) if s["expires_at"] else None,
                    )
                    for s in saved
                )
            )

    def clear_state(self):
        super().clear_state()
        self._plan = None
        self._bundle = None
