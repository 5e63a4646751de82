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
import datetime as dt

import aiohttp
from jupyterhub.utils import maybe_future
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from kubespawner.utils import get_k8s_model
from kubernetes_asyncio.client.models import V1Container, V1Volume, V1VolumeMount
from traitlets import Callable, Dict, Float, Instance, Int, List, Unicode, default, validate

from casa_hub import bundle as b
from casa_hub.auth_state import AccessToken, access_token_from
from casa_hub.bundle import CredentialBundle, CredentialFile
from casa_hub.facility import Facility
from casa_hub.plan import SessionPlan, plan_session

from casa_hub import metrics
from casa_hub.metrics import spawn_step

from ..session_jobs import SessionJobs
from . import objects as ko
from ..refresh import RENEW, STOP, session_started, upkeep
from .api import CasaKubeError, RouteResource, SessionCleanupError, SessionObjectError, SessionObjectsApi

RENEWABLE_KINDS = ("condor-token", "xcache-token", "bearer-token")
#: kept in the state too: when the Dask certificates expire (casa_spawner.refresh stops the session before)
STATE_KINDS = (*RENEWABLE_KINDS, "dask-ca")

__all__ = ["CasaKubeSpawner", "CasaKubeError", "SessionObjectError", "SessionCleanupError"]


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

    _access_token: AccessToken | None = None
    _plan: SessionPlan | None = None
    _bundle: CredentialBundle | None = None
    _session_id: str = ""  #: this start's CASA_SESSION_ID, kept in the state: stop() removes its jobs

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
        self._access_token = access_token_from(auth_state)
        await super().run_auth_state_hook(auth_state)

    async def plan_new_session(self) -> SessionPlan:
        """Issue a fresh bundle (off the event loop: key files, signatures, keygens) and plan the session."""
        username = self.user.name
        token = self._access_token
        bundle = await asyncio.to_thread(
            self.facility.issue_bundle,
            username,
            access_token=token.token if token else None,
            access_token_expires_at=token.expires_at if token else None,
        )
        return plan_session(self.facility, username, bundle, entry_point=self.ingress_route_entry_points[0])

    # -- start ----------------------------------------------------------------

    async def start(self):
        if self.name:
            raise CasaKubeError(
                f"named server {self.name!r}: a user has one Dask scheduler address "
                f"({self.facility.names(self.user.name).scheduler_address}), so CasaKubeSpawner runs the default server only"
            )
        self._plan = await self.plan_new_session()
        self._bundle, self._session_id = self._plan.bundle, self._plan.session_id
        try:
            url = await super().start()
            session_started(self, self._bundle)  # metrics and background refresh (casa_spawner.refresh)
            return url
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
        plan = await self.plan_new_session()
        self._plan = dataclasses.replace(plan, session_id="<a new id at each start>")  # the same text on every render
        pod = ko.to_json(await self.get_pod_manifest())
        return [pod, *self.build_session_objects(pod_uid)]

    @spawn_step("session-objects")
    async def create_session_objects(self, pod: dict) -> None:
        """Create (or replace) the Secrets, Service and IngressRouteTCP, owned by ``pod``."""
        api = self.session_api
        for obj in self.build_session_objects(pod["metadata"]["uid"]):
            await api.ensure(obj)
            self.log.info("Created %s %s for %s", obj["kind"], obj["metadata"]["name"], self.user.name)

    # -- API clients ------------------------------------------------------------

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
            finally:  # the notebook is gone: nothing submits any more; never raises
                await SessionJobs(parent=self, facility=self.facility).remove(self.user.name, self._session_id)

    # -- renewal ----------------------------------------------------------------

    async def poll(self):
        status = await super().poll()
        if status is None and self._bundle is not None:
            action = await upkeep(self, self._bundle)  # IdP refresh, group re-check, certificate age (casa_spawner.refresh)
            if action == STOP:
                await self.stop(now=True)
                return 1
            try:
                if action == RENEW:
                    await self.renew_credentials()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the next poll retries; the session keeps its current files
                self.log.warning("Credential renewal for %s failed: %s", self.user.name, e)
                metrics.renewal_failed_at_patch(e)
        return status

    async def renew_credentials(self, now: dt.datetime | None = None) -> list[str]:
        """Re-issue what passed the renewal fraction of its life, patch the Secret; returns the renewed paths."""
        bundle = self._bundle
        access_token = self._access_token
        current = bundle.get(b.BEARER_TOKEN_PATH)
        if current is not None and current.kind == "bearer-token":
            # the authenticator refreshes the access token in auth_state; pass the fresh one on
            auth_state = await self.user.get_auth_state()
            access_token = access_token_from(auth_state) or access_token
        renewed = await asyncio.to_thread(
            self.facility.renew_bundle,
            self.user.name,
            bundle,
            access_token=access_token.token if access_token else None,
            access_token_expires_at=access_token.expires_at if access_token else None,
            now=now,
        )
        if renewed is None:
            return []
        changed = [f for f in renewed.for_audience(b.NOTEBOOK).files if bundle.get(f.path) is not f]
        if not changed:
            self._bundle = renewed
            return []
        data = {f.key: base64.b64encode(f.content).decode("ascii") for f in changed}
        await self.session_api.patch_secret_data(self.session_names.secret, data)
        self._bundle = renewed
        if self._plan is not None:
            self._plan = dataclasses.replace(self._plan, bundle=renewed)
        self._access_token = access_token
        if self.orm_spawner is not None:  # the new expiry times survive a hub restart
            self.orm_spawner.state = self.get_state()
            self.db.commit()
        paths = [f.path for f in changed]
        self.log.info("Renewed %s for %s", ", ".join(paths), self.user.name)
        return paths

    # -- state (expiry metadata only: never a credential) ----------------------

    def get_state(self):
        state = super().get_state()
        if self._bundle is not None:
            state["casa_renewable"] = [f.metadata() for f in self._bundle.files if f.kind in STATE_KINDS]
        if self._session_id:
            state["casa_session_id"] = self._session_id
        return state

    def load_state(self, state):
        """After a hub restart, renewal resumes from the saved expiry times; the placeholder
        contents are never sent (only re-issued files are patched)."""
        super().load_state(state)
        saved = state.get("casa_renewable")
        if saved is not None and self._bundle is None:
            self._bundle = CredentialBundle(tuple(CredentialFile.from_metadata(s, b"") for s in saved))
        self._session_id = state.get("casa_session_id", self._session_id)

    def clear_state(self):
        super().clear_state()
        self._plan = None
        self._bundle = None
        self._session_id = ""
