"""What the zero-to-jupyterhub chart makes of its values: merged as Helm merges them, then turned
into the KubeSpawner settings the chart's hub applies before it loads ``jupyterhub_config.d/``.

``casa render --values`` uses it so that the pod it shows is the pod the chart deploys; the tests
use it to load a config file the way the chart's hub does.  Pure: dicts in, dicts and a traitlets
``Config`` out.  Modelled on chart jupyterhub/jupyterhub 4.x (``files/hub/jupyterhub_config.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from traitlets.config import Config

from casa_hub.errors import ConfigurationError

#: ``get_config`` of the chart's hub: a missing key or a null value gives the default
_MISSING = object()

#: KubeSpawner traits the chart sets from ``singleuser.<key>`` when the value is not null
SINGLEUSER_TRAITS = {
    "pod_name_template": "podNameTemplate",
    "start_timeout": "startTimeout",
    "image_pull_policy": "image.pullPolicy",
    "events_enabled": "events",
    "extra_labels": "extraLabels",
    "extra_annotations": "extraAnnotations",
    "uid": "uid",
    "fs_gid": "fsGid",
    "service_account": "serviceAccountName",
    "storage_extra_labels": "storage.extraLabels",
    "node_selector": "nodeSelector",
    "node_affinity_required": "extraNodeAffinity.required",
    "node_affinity_preferred": "extraNodeAffinity.preferred",
    "pod_affinity_required": "extraPodAffinity.required",
    "pod_affinity_preferred": "extraPodAffinity.preferred",
    "pod_anti_affinity_required": "extraPodAntiAffinity.required",
    "pod_anti_affinity_preferred": "extraPodAntiAffinity.preferred",
    "lifecycle_hooks": "lifecycleHooks",
    "init_containers": "initContainers",
    "extra_containers": "extraContainers",
    "mem_limit": "memory.limit",
    "mem_guarantee": "memory.guarantee",
    "cpu_limit": "cpu.limit",
    "cpu_guarantee": "cpu.guarantee",
    "extra_resource_limits": "extraResource.limits",
    "extra_resource_guarantees": "extraResource.guarantees",
    "environment": "extraEnv",
    "profile_list": "profileList",
    "extra_pod_config": "extraPodConfig",
}
#: hub.config sections whose secrets the chart reads from its own Secret, never from the values
CHART_SECRETS = {"JupyterHub": ("proxy_auth_token", "cookie_secret", "services"),
                 "ConfigurableHTTPProxy": ("auth_token",), "CryptKeeper": ("keys",)}


# -- Helm's merge ----------------------------------------------------------------------


def merge_layers(*layers: Mapping) -> dict:
    """``-f a.yaml -f b.yaml``: later files win; maps merge key by key, anything else (lists too) replaces.

    A null is kept here (it means "delete" once merged over the chart's defaults, see :func:`over_defaults`).
    """
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merge_layers(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def over_defaults(user: Mapping, defaults: Mapping) -> dict:
    """The user's values over the chart's ``values.yaml``: maps merge, lists and scalars replace, a null deletes."""
    out = {key: copy.deepcopy(value) for key, value in defaults.items()}
    for key, value in user.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = over_defaults(value, out[key])
        elif isinstance(value, Mapping):
            out[key] = over_defaults(value, {})
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_values(path: str | Path) -> dict:
    """One values file; an empty file is ``{}``, anything but a map is a clear error."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"values file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigurationError(f"values file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"values file {path} must hold a map of values, not a {type(data).__name__}")
    return dict(data)


def chart_values(defaults: Mapping, *layers: Mapping, set_values: Mapping[str, Any] | None = None) -> dict:
    """What the chart's templates see: ``helm ... -f <layers> --set-file path=value`` over its defaults."""
    user = merge_layers(*layers)
    for dotted, value in (set_values or {}).items():
        node = user
        *parents, last = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return over_defaults(user, defaults)


# -- the chart's hub ------------------------------------------------------------------------


def get_config_of(values: Mapping):
    """The chart's ``get_config(key, default=None)`` over these values (dotted keys)."""

    def get_config(key: str, default=None):
        node: Any = values
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    return get_config


def resource_name(values: Mapping, short: str, release: str) -> str:
    """A chart resource's name (``user-scheduler``, ``singleuser`` ...), as the chart's name helpers make it."""
    override = values.get("fullnameOverride")
    if isinstance(override, str):
        prefix = override
    else:
        name = values.get("nameOverride") or "jupyterhub"
        prefix = release if name in release else f"{release}-{name}"
    return f"{prefix}-{short}" if prefix else short


def _set_if_not_none(section, trait: str, value) -> None:
    if value is not None:
        section[trait] = copy.deepcopy(value)


def _image(get, key: str) -> str | None:
    name = get(f"{key}.name")
    if not name:
        return None
    tag = get(f"{key}.tag")
    return f"{name}:{tag}" if tag else name


def _node_purpose_affinity(kube, get) -> None:
    purpose = get("scheduling.userPods.nodeAffinity.matchNodePurpose")
    term = {"matchExpressions": [{"key": "hub.jupyter.org/node-purpose", "operator": "In", "values": ["user"]}]}
    if purpose == "prefer":
        kube.node_affinity_preferred = [*kube.get("node_affinity_preferred", []), {"weight": 100, "preference": term}]
    elif purpose == "require":
        kube.node_affinity_required = [*kube.get("node_affinity_required", []), term]
    elif purpose not in (None, "ignore"):
        raise ConfigurationError(f"scheduling.userPods.nodeAffinity.matchNodePurpose: unknown value {purpose!r}")


def _storage(get) -> tuple[dict, dict, dict]:
    """(volumes, volume mounts, PVC settings) from ``singleuser.storage``."""
    storage_type = get("singleuser.storage.type")
    home = get("singleuser.storage.homeMountPath")
    volumes: dict = {}
    mounts: dict = {}
    pvc: dict = {}
    if storage_type == "dynamic":
        name = get("singleuser.storage.dynamic.volumeNameTemplate")
        if get("singleuser.storage.dynamic.pvcNameTemplate"):
            pvc["pvc_name_template"] = get("singleuser.storage.dynamic.pvcNameTemplate")
        pvc["storage_pvc_ensure"] = True
        for trait, key in (("storage_class", "dynamic.storageClass"), ("storage_access_modes", "dynamic.storageAccessModes"),
                           ("storage_capacity", "capacity")):
            if get(f"singleuser.storage.{key}") is not None:
                pvc[trait] = get(f"singleuser.storage.{key}")
        volumes[name] = {"name": name, "persistentVolumeClaim": {"claimName": "{pvc_name}"}}
        mounts[name] = {"mountPath": home, "name": name, "subPath": get("singleuser.storage.dynamic.subPath")}
    elif storage_type == "static":
        volumes["home"] = {"name": "home", "persistentVolumeClaim": {"claimName": get("singleuser.storage.static.pvcName")}}
        mounts["home"] = {"mountPath": home, "name": "home", "subPath": get("singleuser.storage.static.subPath")}
    return volumes, mounts, pvc


def _extra_files(get, values, release, volumes: dict, mounts: dict) -> None:
    files = get("singleuser.extraFiles", {}) or {}
    if not files:
        return
    items = [{"key": key, "path": key, **({"mode": spec["mode"]} if "mode" in spec else {})} for key, spec in files.items()]
    volumes["files"] = {"name": "files", "secret": {"secretName": resource_name(values, "singleuser", release), "items": items}}
    for i, (key, spec) in enumerate(files.items()):
        mounts[f"{i}-files"] = {"mountPath": spec["mountPath"], "subPath": key, "name": "files"}


def _extra_volumes(get, volumes: dict, mounts: dict) -> None:
    extra = get("singleuser.storage.extraVolumes", {}) or {}
    volumes.update(extra if isinstance(extra, Mapping) else {v["name"]: v for v in extra})
    extra_mounts = get("singleuser.storage.extraVolumeMounts", {}) or {}
    if isinstance(extra_mounts, Mapping):
        mounts.update(extra_mounts)
    else:
        mounts.update({f"{i}-{m['name']}": m for i, m in enumerate(extra_mounts)})


def _metadata_block(get) -> dict | None:
    """The privileged init container that blocks the cloud metadata server (``singleuser.cloudMetadata``)."""
    metadata = get("singleuser.cloudMetadata", {}) or {}
    if metadata.get("blockWithIptables") is not True:
        return None
    return {
        "name": "block-cloud-metadata",
        "image": _image(get, "singleuser.networkTools.image"),
        "command": ["iptables", "--append", "OUTPUT", "--protocol", "tcp", "--destination", metadata["ip"],
                    "--destination-port", "80", "--jump", "DROP"],
        "securityContext": {"privileged": True, "runAsUser": 0, "capabilities": {"add": ["NET_ADMIN"]}},
        "resources": get("singleuser.networkTools.resources") or {},
    }


def chart_hub_config(values: Mapping, release: str = "casa", namespace: str | None = None) -> Config:
    """The traitlets config the chart's hub holds when it reaches ``jupyterhub_config.d/``: its
    KubeSpawner settings from ``singleuser``/``scheduling`` and the ``hub.config`` pass-through.

    Secrets (cookie secret, proxy token, crypt keys) come from the chart's Secret and are left out.
    """
    get = get_config_of(values)
    c = Config()
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    kube = c.KubeSpawner
    labels = {"app.kubernetes.io/name": values.get("nameOverride") or "jupyterhub", "app.kubernetes.io/instance": release,
              "app.kubernetes.io/managed-by": "kubespawner"}
    labels.update({"app": labels["app.kubernetes.io/name"], "release": release})
    kube.common_labels = labels
    if namespace:
        kube.namespace = namespace
    _set_if_not_none(c.Spawner, "consecutive_failure_limit", get("hub.consecutiveFailureLimit"))
    for trait, key in SINGLEUSER_TRAITS.items():
        _set_if_not_none(kube, trait, get(f"singleuser.{key}"))
    image = _image(get, "singleuser.image")
    if image:
        kube.image = image
    kube.allow_privilege_escalation = get("singleuser.allowPrivilegeEscalation")

    pull_secrets = []
    if get("imagePullSecret.automaticReferenceInjection") and get("imagePullSecret.create"):
        pull_secrets.append(resource_name(values, "image-pull-secret", release))
    pull_secrets += [*(get("imagePullSecrets") or []), *(get("singleuser.image.pullSecrets") or [])]
    if pull_secrets:
        kube.image_pull_secrets = pull_secrets

    if get("scheduling.userScheduler.enabled"):
        kube.scheduler_name = resource_name(values, "user-scheduler", release)
    if get("scheduling.podPriority.enabled"):
        kube.priority_class_name = resource_name(values, "priority", release)
    _node_purpose_affinity(kube, get)
    tolerations = [*(get("scheduling.userPods.tolerations") or []), *(get("singleuser.extraTolerations") or [])]
    if tolerations:
        kube.tolerations = tolerations

    volumes, mounts, pvc = _storage(get)
    for trait, value in pvc.items():
        kube[trait] = value
    _extra_files(get, values, release, volumes, mounts)
    _extra_volumes(get, volumes, mounts)
    kube.volumes = volumes
    kube.volume_mounts = mounts

    cmd = get("singleuser.cmd", _MISSING)
    if cmd is not _MISSING:  # an explicit null is kept: the image's own command
        c.Spawner.cmd = cmd
    _set_if_not_none(c.Spawner, "default_url", get("singleuser.defaultUrl"))
    block = _metadata_block(get)
    if block:
        kube.init_containers = [*kube.get("init_containers", []), block]
    if get("debug.enabled", False):
        c.JupyterHub.log_level = "DEBUG"
        c.Spawner.debug = True

    for section, settings in (get("hub.config", {}) or {}).items():
        if not section[:1].isupper():
            raise ConfigurationError(f"hub.config.{section}: sections are Configurable class names (e.g. JupyterHub)")
        kept = {k: copy.deepcopy(v) for k, v in (settings or {}).items() if k not in CHART_SECRETS.get(section, ())}
        c[section].update(kept)
    return c


def hub_environment(values: Mapping) -> dict[str, str]:
    """The hub container's environment from ``hub.extraEnv`` (literal values only; ``valueFrom`` ones name a Secret)."""
    extra = (values.get("hub") or {}).get("extraEnv") or {}
    if isinstance(extra, Mapping):
        items = [(name, spec) for name, spec in extra.items()]
    else:
        items = [(spec.get("name"), spec) for spec in extra]
    env = {}
    for name, spec in items:
        if isinstance(spec, Mapping):
            if "value" in spec:
                env[name] = str(spec["value"])
        elif spec is not None:
            env[name] = str(spec)
    return env
