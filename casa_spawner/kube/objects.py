"""Pure builders of the Kubernetes objects of one session, from a ``casa_hub`` plan.

Like ``kubespawner.objects``: no API calls, no I/O, plain JSON-ready dicts
(camelCase keys) that validate against Kubernetes' schemas.  ``casa_spawner.kube``
sends them; ``casa render`` prints them.

What a session adds to KubeSpawner's pod:

- Secret ``casa-creds-<slug>``: the notebook's credentials (IDTOKEN, bearer token,
  Dask CA/client/worker certificates), flat keys (``CredentialFile.key``); mounted
  only into the credential-sync containers, which copy it into an in-memory
  ``emptyDir`` (0700 dir, 0600 files, owned by the notebook uid).
- Secret ``casa-scheduler-<slug>``: the Dask CA and the scheduler's certificate and
  key, mounted only into the scheduler container.  A second Secret rather than a
  key of the first: the sync sidecar copies *its* Secret wholesale, renewals patch
  only the first, and the notebook's volume cannot contain the scheduler key.
- Service ``casa-dask-<slug>`` (scheduler and dashboard ports) and an
  ``IngressRouteTCP`` of the same name: ``HostSNI(`<slug>.dask.<domain>`)``,
  TLS passthrough, to the Service.
"""

from __future__ import annotations

import base64
import datetime as dt
import posixpath
from dataclasses import dataclass, field

from casa_hub import bundle as b
from casa_hub.plan import SessionPlan

#: label on the pod and every extra object; the Service selects the pod by it
SESSION_LABEL = "casa.hub.jupyter.org/session"
EXPIRES_ANNOTATION = "casa.hub.jupyter.org/credentials-expire"
MANAGED_BY = {"app.kubernetes.io/managed-by": "jupyterhub-casa"}

SECRET_VOLUME = "casa-secret"
SCHEDULER_VOLUME = "casa-scheduler"
CREDENTIALS_VOLUME = "casa-credentials"


@dataclass(frozen=True)
class ObjectNames:
    """Names of a user's extra objects; all DNS-1035 labels (the slug is at most 40 chars)."""

    secret: str
    scheduler_secret: str
    service: str
    route: str


def object_names(slug: str) -> ObjectNames:
    return ObjectNames(
        secret=f"casa-creds-{slug}",
        scheduler_secret=f"casa-scheduler-{slug}",
        service=f"casa-dask-{slug}",
        route=f"casa-dask-{slug}",
    )


@dataclass(frozen=True)
class KubeSessionOptions:
    """Deployment choices the builders need (filled from ``CasaKubeSpawner`` traits)."""

    route_api_version: str = "traefik.io/v1alpha1"
    route_entry_points: tuple[str, ...] = ("dask",)
    scheduler_image: str = "quay.io/jupyter/base-notebook:latest"
    scheduler_python: str = "python3"
    scheduler_resources: dict = field(default_factory=dict)
    credsync_image: str = "quay.io/jupyter/base-notebook:latest"
    credsync_command: tuple[str, ...] = ("python3", "-m", "casa_session.credsync")
    credsync_interval: float = 5.0
    uid: int = 1000
    gid: int = 100
    credentials_mount: str = "/var/run/casa"
    secret_mount: str = "/var/run/casa-secret"
    scheduler_mount: str = "/var/run/casa-scheduler"
    extra_labels: dict = field(default_factory=dict)

    @property
    def credentials_dir(self) -> str:
        """Where the notebook finds its files: a directory *inside* the emptyDir, so a
        non-root sync container can own it and make it 0700."""
        return posixpath.join(self.credentials_mount, "credentials")


# -- metadata ---------------------------------------------------------------


def owner_reference(pod_name: str, pod_uid: str) -> dict:
    """The user's pod owns every extra object: Kubernetes deletes them with the pod."""
    if not pod_uid:
        raise ValueError(f"pod {pod_name} has no uid yet; objects need it for their ownerReference")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod_name,
        "uid": pod_uid,
        "blockOwnerDeletion": True,
        "controller": False,
    }


def session_labels(plan: SessionPlan, opts: KubeSessionOptions, component: str) -> dict:
    labels = dict(opts.extra_labels)
    labels.update(MANAGED_BY)
    labels["app.kubernetes.io/component"] = component
    labels[SESSION_LABEL] = plan.names.slug
    return labels


def _metadata(name: str, labels: dict, owner_references: list[dict], annotations: dict | None = None) -> dict:
    meta = {"name": name, "labels": labels, "ownerReferences": [dict(o) for o in owner_references]}
    if annotations:
        meta["annotations"] = annotations
    return meta


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _iso(when: dt.datetime | None) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if when else "never"


# -- the extra objects ------------------------------------------------------


def credential_secret_data(bundle: b.CredentialBundle) -> dict[str, str]:
    """Base64 ``data`` of the notebook Secret: every file the notebook may read, never the scheduler's key."""
    return {key: _b64(content) for key, content in bundle.for_audience(b.NOTEBOOK).as_secret_data().items()}


def credential_secret(plan: SessionPlan, opts: KubeSessionOptions, owner_references: list[dict]) -> dict:
    name = object_names(plan.names.slug).secret
    notebook = plan.bundle.for_audience(b.NOTEBOOK)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(
            name,
            session_labels(plan, opts, "credentials"),
            owner_references,
            {EXPIRES_ANNOTATION: _iso(notebook.expires_at)},
        ),
        "data": credential_secret_data(plan.bundle),
    }


def scheduler_secret(plan: SessionPlan, opts: KubeSessionOptions, owner_references: list[dict]) -> dict:
    name = object_names(plan.names.slug).scheduler_secret
    files = plan.bundle.for_audience(b.SCHEDULER)
    missing = [p for p in plan.scheduler.files if files.get(p) is None]
    if missing:
        raise ValueError(f"the credential bundle lacks the scheduler's {', '.join(missing)}")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(name, session_labels(plan, opts, "dask-scheduler"), owner_references),
        "data": {key: _b64(content) for key, content in files.as_secret_data().items()},
    }


def scheduler_service(plan: SessionPlan, opts: KubeSessionOptions, owner_references: list[dict]) -> dict:
    name = object_names(plan.names.slug).service
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, session_labels(plan, opts, "dask-scheduler"), owner_references),
        "spec": {
            "type": "ClusterIP",
            "selector": {SESSION_LABEL: plan.names.slug},
            "ports": [
                {"name": "dask", "protocol": "TCP", "port": plan.scheduler.port, "targetPort": plan.scheduler.port},
                {
                    "name": "dashboard",
                    "protocol": "TCP",
                    "port": plan.scheduler.dashboard_port,
                    "targetPort": plan.scheduler.dashboard_port,
                },
            ],
        },
    }


def ingress_route_tcp(plan: SessionPlan, opts: KubeSessionOptions, owner_references: list[dict]) -> dict:
    """Traefik ``IngressRouteTCP``: SNI ``<slug>.dask.<domain>`` -> the Service, TLS passed through."""
    names = object_names(plan.names.slug)
    return {
        "apiVersion": opts.route_api_version,
        "kind": "IngressRouteTCP",
        "metadata": _metadata(names.route, session_labels(plan, opts, "dask-route"), owner_references),
        "spec": {
            "entryPoints": list(opts.route_entry_points),
            "routes": [
                {
                    "match": plan.route.rule,
                    "services": [{"name": names.service, "port": plan.scheduler.port}],
                }
            ],
            "tls": {"passthrough": plan.route.passthrough},
        },
    }


def session_objects(plan: SessionPlan, opts: KubeSessionOptions, owner_references: list[dict]) -> list[dict]:
    """Every extra object, in creation order (Secrets first: the pod waits for them)."""
    return [
        credential_secret(plan, opts, owner_references),
        scheduler_secret(plan, opts, owner_references),
        scheduler_service(plan, opts, owner_references),
        ingress_route_tcp(plan, opts, owner_references),
    ]


# -- what goes into the pod -------------------------------------------------


def _sidecar_security_context(opts: KubeSessionOptions, read_only_root: bool) -> dict:
    return {
        "runAsUser": opts.uid,
        "runAsGroup": opts.gid,
        "runAsNonRoot": opts.uid != 0,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
    }


def session_volumes(plan: SessionPlan, opts: KubeSessionOptions) -> list[dict]:
    """The two Secret volumes and the in-memory emptyDir the notebook reads from.

    Secret files are 0444 inside the containers that mount them (only the sync
    containers, resp. the scheduler): the sync runs as the notebook uid, which a
    root-owned 0400 file would shut out without an fsGroup.
    """
    names = object_names(plan.names.slug)
    return [
        {"name": SECRET_VOLUME, "secret": {"secretName": names.secret, "defaultMode": 0o444}},
        {
            "name": SCHEDULER_VOLUME,
            "secret": {
                "secretName": names.scheduler_secret,
                "defaultMode": 0o444,
                "items": [{"key": cred.key, "path": cred.path} for cred in plan.bundle.for_audience(b.SCHEDULER).files],
            },
        },
        {"name": CREDENTIALS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]


def notebook_volume_mount(opts: KubeSessionOptions) -> dict:
    return {"name": CREDENTIALS_VOLUME, "mountPath": opts.credentials_mount}


def _credsync_container(name: str, opts: KubeSessionOptions, extra_args: list[str]) -> dict:
    command = list(opts.credsync_command) + [
        "--from", opts.secret_mount,
        "--to", opts.credentials_dir,
        "--uid", str(opts.uid),
        "--gid", str(opts.gid),
    ] + extra_args
    return {
        "name": name,
        "image": opts.credsync_image,
        "command": command,
        "volumeMounts": [
            {"name": SECRET_VOLUME, "mountPath": opts.secret_mount, "readOnly": True},
            {"name": CREDENTIALS_VOLUME, "mountPath": opts.credentials_mount},
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": _sidecar_security_context(opts, read_only_root=True),
    }


def credsync_init_container(opts: KubeSessionOptions) -> dict:
    """Copies the credentials once, so the notebook starts with its files in place."""
    return _credsync_container("casa-credsync-init", opts, ["--once"])


def credsync_container(opts: KubeSessionOptions) -> dict:
    """Follows the kubelet's updates of the Secret (renewals) for the session's life."""
    return _credsync_container("casa-credsync", opts, ["--interval", f"{opts.credsync_interval:g}"])


def scheduler_container(plan: SessionPlan, opts: KubeSessionOptions) -> dict:
    """The Dask scheduler beside the notebook: TLS on the scheduler port, dashboard, readiness probe."""
    spec = plan.scheduler
    return {
        "name": "dask-scheduler",
        "image": opts.scheduler_image,
        "command": spec.command(opts.scheduler_mount, host="0.0.0.0", python=opts.scheduler_python),
        "ports": [
            {"name": "dask", "containerPort": spec.port, "protocol": "TCP"},
            {"name": "dashboard", "containerPort": spec.dashboard_port, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "tcpSocket": {"port": spec.port},
            "initialDelaySeconds": 2,
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "volumeMounts": [{"name": SCHEDULER_VOLUME, "mountPath": opts.scheduler_mount, "readOnly": True}],
        "resources": dict(opts.scheduler_resources),
        "securityContext": _sidecar_security_context(opts, read_only_root=False),
    }


@dataclass(frozen=True)
class PodParts:
    """What a session adds to KubeSpawner's pod."""

    init_containers: list
    containers: list
    volumes: list
    notebook_volume_mounts: list
    labels: dict


def session_pod_parts(plan: SessionPlan, opts: KubeSessionOptions) -> PodParts:
    return PodParts(
        init_containers=[credsync_init_container(opts)],
        containers=[scheduler_container(plan, opts), credsync_container(opts)],
        volumes=session_volumes(plan, opts),
        notebook_volume_mounts=[notebook_volume_mount(opts)],
        labels={SESSION_LABEL: plan.names.slug},
    )


def notebook_environment(plan: SessionPlan, opts: KubeSessionOptions) -> dict[str, str]:
    """The notebook's env: the sidecar scheduler on loopback, the dashboard through jupyter-server-proxy."""
    return plan.environment(
        opts.credentials_dir,
        f"tls://127.0.0.1:{plan.scheduler.port}",
        "{JUPYTERHUB_SERVICE_PREFIX}proxy/%d/status" % plan.scheduler.dashboard_port,
    )


def to_json(obj):
    """A kubernetes model (or a mix of models and dicts) as the JSON-ready dict the API receives."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [to_json(item) for item in obj]
    if isinstance(obj, dict):
        return {key: to_json(value) for key, value in obj.items()}
    if isinstance(obj, (dt.datetime, dt.date)):
        return obj.isoformat()
    if hasattr(obj, "openapi_types") and hasattr(obj, "attribute_map"):
        return {
            obj.attribute_map[attr]: to_json(getattr(obj, attr))
            for attr in obj.openapi_types
            if getattr(obj, attr) is not None
        }
    raise TypeError(f"cannot serialise {type(obj).__name__} as a Kubernetes object")
