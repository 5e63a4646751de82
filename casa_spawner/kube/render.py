"""``casa render USERNAME --config jupyterhub_config.py``: every object CasaKubeSpawner would
create for a user, as YAML, for operators to review and diff in GitOps.

With ``--chart-values`` (the zero-to-jupyterhub chart's defaults) and ``--values`` (the operator's
values files, in ``helm -f`` order) the config is the one the chart's hub runs: the chart's
KubeSpawner settings from the merged values, its ``hub.config``, ``hub.extraEnv`` in the
environment, then the config file -- so the pod shown is the pod the chart deploys.

Nothing is sent to a cluster and the facility's master secrets are never read: the
session is planned with throwaway keys (so the same code path runs, including the
checks of the configuration), and every credential is printed as ``<redacted>``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import sys
import tempfile
from pathlib import Path

import yaml

from casa_hub.errors import ConfigurationError

from . import chart
from .objects import EXPIRES_ANNOTATION

REDACTED = "<redacted>"
SENSITIVE_ENV_SUFFIXES = ("TOKEN", "SECRET", "PASSWORD")
SPAWNER_NAMES = {"casa-kube", "casa_spawner.kube.CasaKubeSpawner"}
#: never contacted: KubeSpawner insists on loading *some* cluster configuration at construction
PLACEHOLDER_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "http://127.0.0.1:9"}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
users: [{name: none, user: {}}]
"""


class _User:
    """What a spawner reads of ``jupyterhub.user.User``."""

    def __init__(self, name: str):
        self.name = name
        self.id = 0
        self.url = f"/user/{name}/"
        self.base_url = "/"

    async def get_auth_state(self):
        return None


class _Hub:
    public_host = ""
    url = "http://hub:8081/hub/"
    base_url = "/hub/"
    api_url = "http://hub:8081/hub/api"


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    """``os.environ`` with the hub container's variables while its config file runs, restored after."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_hub_config(path: str, values: dict | None = None, release: str = "casa"):
    """The config file alone, or -- given the chart's merged values -- as the chart's hub loads it."""
    from traitlets.config import PyFileConfigLoader

    config_file = Path(path)
    if not config_file.is_file():
        raise ConfigurationError(f"config file {path} does not exist")
    with _environment(chart.hub_environment(values) if values is not None else {}):
        file_config = PyFileConfigLoader(config_file.name, path=str(config_file.parent.resolve())).load_config()
    if values is None:
        return file_config
    config = chart.chart_hub_config(values, release=release)
    config.merge(file_config)
    return config


def merged_chart_values(args) -> dict | None:
    """``--chart-values`` then each ``--values`` in order, merged as Helm merges them; None without either."""
    if not args.values and not args.chart_values:
        return None
    if not args.chart_values:
        raise ConfigurationError(
            "--values needs --chart-values, the chart's own defaults (helm show values jupyterhub/jupyterhub "
            "--version <the version you deploy> > z2jh-values.yaml): Helm merges your values over them"
        )
    values = chart.chart_values(chart.read_values(args.chart_values), *(chart.read_values(v) for v in args.values or []))
    if (values.get("hub") or {}).get("extraConfig"):
        print("casa render: hub.extraConfig is Python the chart's hub runs; render does not run it", file=sys.stderr)
    return values


def _spawner_class(config):
    from .spawner import CasaKubeSpawner

    cls = config.JupyterHub.get("spawner_class", "")
    if cls in SPAWNER_NAMES or (isinstance(cls, type) and issubclass(cls, CasaKubeSpawner)):
        return cls if isinstance(cls, type) else CasaKubeSpawner
    raise ConfigurationError(f"casa render needs c.JupyterHub.spawner_class = 'casa-kube' (the config has {cls!r})")


def _throwaway_keys(facility, directory: Path) -> None:
    """Point the facility at random keys: the real ones stay unread (and may not be here at all)."""
    if facility.signing_key_file:
        path = directory / "POOL"
        path.write_bytes(secrets.token_bytes(32))
        os.chmod(path, 0o600)
        facility.signing_key_file = str(path)
    if facility.macaroon_secret_file:
        path = directory / "macaroon-secret"
        path.write_bytes(base64.b64encode(secrets.token_bytes(32)))
        os.chmod(path, 0o600)
        facility.macaroon_secret_file = str(path)


def redact(obj: dict) -> dict:
    """Secret values and token-like env values replaced by ``<redacted>`` (keys kept, for review)."""
    if obj.get("kind") == "Secret":
        obj["data"] = {key: REDACTED for key in obj.get("data") or {}}
        annotations = obj["metadata"].get("annotations") or {}
        if EXPIRES_ANNOTATION in annotations:  # a time, different on every render: noise in a diff
            annotations[EXPIRES_ANNOTATION] = "<set at spawn>"
    for container in obj.get("spec", {}).get("containers", []) if obj.get("kind") == "Pod" else []:
        for var in container.get("env") or []:
            if var["name"].endswith(SENSITIVE_ENV_SUFFIXES) and "value" in var:
                var["value"] = REDACTED
    return obj


async def render_objects(config, username: str, namespace: str | None, workdir: Path) -> list[dict]:
    from casa_hub.facility import Facility

    cls = _spawner_class(config)
    facility = Facility(config=config)
    _throwaway_keys(facility, workdir)
    from kubernetes_asyncio.config import ConfigException

    try:
        spawner = cls(config=config, user=_User(username), hub=_Hub(), facility=facility)
    except ConfigException as e:
        raise ConfigurationError(
            f"KubeSpawner needs some kubeconfig to start ({e}); set KUBECONFIG to any kubeconfig: render contacts no cluster"
        ) from None
    if namespace:
        spawner.namespace = namespace
    spawner.api_token = REDACTED
    # the login's access token (CasaOAuthenticator always has one): shows where it lands
    await spawner.run_auth_state_hook({"access_token": REDACTED})
    objects = await spawner.preview_manifests(pod_uid=f"<uid of pod {spawner.pod_name}>")
    for obj in objects:
        obj["metadata"]["namespace"] = spawner.namespace
    return [redact(obj) for obj in objects]


def _render(args) -> int:
    config = load_hub_config(args.config, merged_chart_values(args), release=args.release)
    with tempfile.TemporaryDirectory(prefix="casa-render-") as tmp:
        workdir = Path(tmp)
        if "KUBECONFIG" not in os.environ and "kubernetes_asyncio" not in sys.modules:
            placeholder = workdir / "kubeconfig"
            placeholder.write_text(PLACEHOLDER_KUBECONFIG)
            os.environ["KUBECONFIG"] = str(placeholder)
        objects = asyncio.run(render_objects(config, args.username, args.namespace, workdir))
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=False, default_flow_style=False)
    return 0


def _nonempty(text: str) -> str:
    import argparse

    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "render",
        help="print, as YAML, every Kubernetes object CasaKubeSpawner would create for a user (secrets redacted)",
    )
    parser.add_argument("username", type=_nonempty)
    parser.add_argument("--config", required=True, metavar="FILE", help="the hub's jupyterhub_config.py")
    parser.add_argument("--namespace", help="namespace to render for (default: the spawner's)")
    parser.add_argument("--values", action="append", metavar="FILE",
                        help="a zero-to-jupyterhub values file, as given to helm -f (repeatable, in helm's order)")
    parser.add_argument("--chart-values", metavar="FILE",
                        help="the chart's defaults, from `helm show values jupyterhub/jupyterhub --version V`")
    parser.add_argument("--release", default="casa", help="the Helm release name (labels, chart resource names)")
    parser.set_defaults(func=_render)
