"""CasaKubeSpawner: KubeSpawner plus the session's Dask scheduler, credentials and route.

Lifecycle (KubeSpawner's own steps in brackets):

1. ``run_auth_state_hook``: remember the IdP access token (``auth_state["access_token"]``).
2. ``start``: refuse a named server, issue the credential bundle (in a thread) and plan
   the session (``casa_spawner.session.SessionCore``), then
   [KubeSpawner ``_start``: ``get_pod_manifest`` -> create the pod].
3. ``get_pod_manifest``: KubeSpawner's pod + the scheduler and credential-sync
   sidecars, the credsync init container, the Secret volumes and the emptyDir;
   ``get_env`` adds the notebook's Dask/HTCondor/XCache environment.
4. ``_make_create_pod_request`` (KubeSpawner's pod-creation step): once the API answers
   with the pod's uid, create the two Secrets (the kubelet waits for them), then the Service
   and the IngressRouteTCP in the background (awaited at the end of ``start``), each with an
   ownerReference to the pod; on failure stop (``stop(now=True)``) and raise.  Then follow
   the pod reflector closely (every 20 ms, no API call) until the pod is Running, for at
   most 5 s, before KubeSpawner's coarser wait.  An existing object (409, e.g. left by a crashed hub) is replaced, so its
   ownerReference moves to the new pod.  The pod's init container waits for the
   Secret, so the notebook starts with its files in place.
   [the operator's ``after_pod_created_hook`` if set; wait for the pod to be Running and
   ready: the scheduler's readiness probe included]
5. ``poll``: [KubeSpawner's check]; while running, re-issue credentials past 2/3 of
   their life and patch the Secret (the sync sidecar follows the kubelet's update).
6. ``stop``: [delete the pod]; then delete every extra object, each on its own and all
   at once (404 is fine; one failure does not skip another; the wait is at most one
   ``k8s_api_request_retry_timeout``), and report what could not be deleted.

Kubernetes API calls beyond KubeSpawner's pods and events (made by ``casa_spawner.kube.api``,
which also holds the retry pattern; the fake API in tests/fake_kube answers them):

- ``POST /api/v1/namespaces/{ns}/secrets``; ``PUT .../secrets/{name}`` (replace after a 409);
  ``PATCH .../secrets/{name}`` (renewal, strategic merge of ``data``); ``DELETE .../secrets/{name}``
- ``POST /api/v1/namespaces/{ns}/services``; ``PATCH .../services/{name}`` (after a 409,
  ``application/merge-patch+json``); ``DELETE .../services/{name}``
- ``POST /apis/{group}/{version}/namespaces/{ns}/{plural}`` (IngressRouteTCP, default
  ``traefik.io/v1alpha1``, ``ingressroutetcps``); ``PATCH .../{name}`` (after a 409, merge patch);
  ``DELETE .../{name}``
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json

import aiohttp
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from kubespawner.utils import get_k8s_model
from kubernetes_asyncio.client.models import V1Container, V1Volume, V1VolumeMount
from kubernetes_asyncio.client.rest import ApiException
from traitlets import Dict, Float, Int, List, Unicode, validate

from casa_hub import bundle as b
from casa_hub import metrics
from casa_hub.bundle import CredentialBundle, CredentialFile
from casa_hub.metrics import spawn_step
from casa_hub.plan import SessionPlan

from ..refresh import RENEW, STOP, session_started, upkeep
from ..session import NamedServerError, SessionCore
from . import objects as ko
from .api import CasaKubeError, RouteResource, SessionCleanupError, SessionObjectError, SessionObjectsApi, raw_answer

RENEWABLE_KINDS = ("condor-token", "xcache-token", "bearer-token")
#: kept in the state too: when the Dask certificates expire (casa_spawner.refresh stops the session before)
STATE_KINDS = (*RENEWABLE_KINDS, "dask-ca")

__all__ = ["CasaKubeSpawner", "CasaKubeError", "NamedServerError", "SessionObjectError", "SessionCleanupError"]


class CasaKubeSpawner(SessionCore, KubeSpawner):
    """KubeSpawner for an analysis facility: a Dask scheduler beside every notebook,
    reachable at ``tls://<slug>.dask.<domain>:8786``, with HTCondor/XCache credentials
    kept private and renewed."""

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
        ["python3", "-m", "casa_session.credsync"],
        minlen=1,
        config=True,
        help="Command that runs ``casa_session.credsync`` in ``credsync_image`` (its arguments are added).",
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

    _plan: SessionPlan | None = None

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

    # -- the plan -------------------------------------------------------------

    async def plan_new_session(self) -> SessionPlan:
        """Issue a fresh bundle and plan the session (``SessionCore``)."""
        return self.plan(await self.issue_credentials(), self.ingress_route_entry_points[0])

    # -- start ----------------------------------------------------------------

    async def start(self):
        self.refuse_named_server()
        self._plan = await self.plan_new_session()
        self.bundle, self.session_id = self._plan.bundle, self._plan.session_id
        await self.store_data_token()  # before the pod exists: its first workers find the token in the credd
        try:
            url = await super().start()
            await self._routing_ready()
            session_started(self, self.bundle)  # metrics and background refresh (casa_spawner.refresh)
            return url
        except aiohttp.ClientError as e:  # KubeSpawner lets a dropped connection escape as is
            raise CasaKubeError(f"lost the connection to the Kubernetes API while starting pod {self.pod_name}: {e}") from e
        finally:
            self._abandon_routing()

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
        plan = await self.plan_new_session()
        self._plan = dataclasses.replace(plan, session_id="<a new id at each start>")  # the same text on every render
        pod = ko.to_json(await self.get_pod_manifest())
        return [pod, *self.build_session_objects(pod_uid)]

    @spawn_step("session-objects")
    async def create_session_objects(self, pod: dict) -> None:
        """Create (or replace) the Secrets, Service and IngressRouteTCP, owned by ``pod``, all at once."""
        await self._ensure(self.build_session_objects(pod["metadata"]["uid"]))

    async def _ensure(self, objects: list[dict]) -> None:
        await self.session_api.ensure_all(objects)
        self.log.info("Created %s for %s", ", ".join(f"{o['kind']} {o['metadata']['name']}" for o in objects), self.user.name)

    _routing: asyncio.Future | None = None  #: the Service and route, created while the pod starts

    async def _create_for_new_pod(self, pod: dict) -> None:
        """The Secrets now (the kubelet waits for them); the Service and route meanwhile, awaited
        once the pod is ready (``start``) -- unless an operator's ``after_pod_created_hook``
        is to see them all."""
        objects = self.build_session_objects(pod["metadata"]["uid"])
        secrets = [o for o in objects if o["kind"] == "Secret"]
        routing = [o for o in objects if o["kind"] != "Secret"]
        if self.after_pod_created_hook is not None:
            await self._ensure(objects)
            return
        self._routing = asyncio.ensure_future(self._ensure(routing))
        await self._ensure(secrets)
        await self._until_running_in_reflector()

    #: how long, and how often, to look for the new pod Running in the reflector before KubeSpawner's own wait
    REFLECTOR_WAIT = 5.0
    REFLECTOR_INTERVAL = 0.02

    async def _until_running_in_reflector(self) -> None:
        """Return once the pod reflector shows the pod Running, or after ``REFLECTOR_WAIT`` seconds.

        KubeSpawner then checks the same reflector with ``exponential_backoff`` (waits of up to
        0.2, 0.4, 0.8 ... s): a first check made while the kubelet is still mounting the just
        created Secrets doubles every later wait.  Looking every 20 ms here -- a dict lookup, no
        API request -- lets its first check succeed (bench/spawn.py).  Anything slower than
        ``REFLECTOR_WAIT`` (image pulls, scheduling; at most half of ``start_timeout``) is left to
        KubeSpawner's wait and its errors."""
        key = f"{self.namespace}/{self.pod_name}"
        deadline = asyncio.get_running_loop().time() + min(self.REFLECTOR_WAIT, self.start_timeout / 2)
        while not self.is_pod_running(self.pod_reflector.pods.get(key)):
            if asyncio.get_running_loop().time() >= deadline:
                return
            await asyncio.sleep(self.REFLECTOR_INTERVAL)

    async def _routing_ready(self) -> None:
        """Wait for the Service and route started in ``_create_for_new_pod``; on failure stop and raise."""
        routing, self._routing = self._routing, None
        if routing is None:
            return
        try:
            await routing
        except Exception:
            await self.stop(True)
            raise

    def _abandon_routing(self) -> None:
        """A start that failed before :meth:`_routing_ready`: no creation goes on behind its back (stop deletes)."""
        routing, self._routing = self._routing, None
        if routing is not None and not routing.done():
            routing.cancel()

    async def _make_create_pod_request(self, pod, request_timeout):
        """KubeSpawner's pod-creation step (True: created; False: try again, after stopping a pod
        left by an earlier hub on 409), with the session's objects created as soon as the API
        answers: their ownerReference needs the pod's uid, read here from the raw answer.

        Upstream's answer is a V1Pod deserialised on the event loop, and its uid is taken from
        the pod reflector, after a backoff sleep of up to 0.2 s when the watch event has not
        arrived yet; for 50 concurrent spawns these were the largest extra costs
        (bench/spawn.py).  ``after_pod_created_hook`` stays the operator's: KubeSpawner calls
        it after this, the session's objects in place."""
        self.log.info("Attempting to create pod %s, with timeout %s", pod.metadata.name, request_timeout)
        try:
            answer = await asyncio.wait_for(
                raw_answer(self.api.create_namespaced_pod(self.namespace, pod, _preload_content=False)), request_timeout
            )
        except asyncio.TimeoutError:
            return False
        except ApiException as e:
            if e.status != 409:
                raise
            self.log.info("Found existing pod %s, stopping it before creating it again", pod.metadata.name)
            await self.stop(True)
            return False
        try:
            await self._create_for_new_pod(json.loads(answer))
        except Exception:
            self._abandon_routing()
            await self.stop(True)  # like KubeSpawner when its own objects fail: no pod without its Secrets
            raise
        return True

    # -- API clients ------------------------------------------------------------

    _custom_api = None

    @property
    def custom_api(self):
        """CustomObjectsApi for the IngressRouteTCP, shared per event loop like KubeSpawner's ``api``.

        Its own API client, not ``api``'s: kubernetes_asyncio caps a client at 100 connections, and
        ``api``'s already carries every pod call and the reflectors' watches (bench/spawn.py: one
        shared client made 50 concurrent spawns slower, not faster)."""
        if self._custom_api is None:
            self._custom_api = shared_client("CustomObjectsApi")
        return self._custom_api

    @custom_api.setter
    def custom_api(self, client):
        self._custom_api = client

    @property
    def session_api(self) -> SessionObjectsApi:
        return SessionObjectsApi(
            core=self.api,
            custom=self.custom_api,
            namespace=self.namespace,
            route=RouteResource(self.ingress_route_group, self.ingress_route_version, self.ingress_route_plural),
            request_timeout=self.k8s_api_request_timeout,
            retry_timeout=self.k8s_api_request_retry_timeout,
            log=self.log,
        )

    # -- stop -----------------------------------------------------------------

    async def delete_session_objects(self) -> None:
        """Delete route, Service and Secrets, each on its own, concurrently; raise once at the end if any failed."""
        names = self.session_names
        await self.session_api.delete_each([
            ("IngressRouteTCP", names.route),
            ("Service", names.service),
            ("Secret", names.secret),
            ("Secret", names.scheduler_secret),
        ])

    async def stop(self, now=False):
        # no clearing of the plan here: KubeSpawner itself calls stop() in the middle of a
        # start (a leftover pod); clear_state() forgets the session once it is over
        try:
            await super().stop(now)
        finally:
            try:
                await self.delete_session_objects()
            finally:  # the notebook is gone: nothing submits any more
                await self.remove_session_jobs()

    # -- renewal ----------------------------------------------------------------

    async def poll(self):
        status = await super().poll()
        if status is None and self.bundle is not None:
            action = await upkeep(self, self.bundle)  # IdP refresh, group re-check, certificate age (casa_spawner.refresh)
            if action == STOP:
                await self.stop(now=True)
                return 1
            if action == RENEW:
                await self.renew_in_poll()
        return status

    async def materialise_renewal(self, renewed: CredentialBundle, changed: list[CredentialFile]) -> None:
        """Patch the re-issued notebook files into the Secret (the sync sidecar follows the kubelet's update)."""
        data = {f.key: base64.b64encode(f.content).decode("ascii") for f in changed if b.NOTEBOOK in f.audiences}
        if data:
            try:
                await self.session_api.patch_secret_data(self.session_names.secret, data)
            except Exception as e:
                metrics.renewal_failed_at_patch(e)
                raise
        if self._plan is not None:
            self._plan = dataclasses.replace(self._plan, bundle=renewed)

    # -- state (expiry metadata only: never a credential) ----------------------

    def get_state(self):
        state = super().get_state()
        if self.bundle is not None:
            state["casa_renewable"] = [f.metadata() for f in self.bundle.files if f.kind in STATE_KINDS]
        if self.session_id:
            state["casa_session_id"] = self.session_id
        return state

    def load_state(self, state):
        """After a hub restart, renewal resumes from the saved expiry times; the placeholder
        contents are never sent (only re-issued files are patched)."""
        super().load_state(state)
        saved = state.get("casa_renewable")
        if saved is not None and self.bundle is None:
            self.bundle = CredentialBundle(tuple(CredentialFile.from_metadata(s, b"") for s in saved))
        self.session_id = state.get("casa_session_id", self.session_id)

    def clear_state(self):
        super().clear_state()
        self._plan = None
        self.bundle = None
        self._stored_data_token = None
        self.session_id = ""
