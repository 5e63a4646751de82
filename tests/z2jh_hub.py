"""How the zero-to-jupyterhub chart's hub loads a ``hub.extraFiles`` config file, reproduced for tests.

The chart's ``jupyterhub_config.py`` is run by traitlets' loader (so ``c`` exists), then does
``from z2jh import get_config, get_secret_value, ...`` -- from then on ``get_config`` is z2jh's
``get_config(key, default=None)`` over the chart values -- sets its own settings (KubeSpawner from
``singleuser``, ``c.CryptKeeper.keys`` from the chart's Secret, the ``hub.config`` pass-through),
``exec()``s each ``jupyterhub_config.d/*.py`` in its own namespace and finally looks
``hub.extraConfig`` up with that same ``get_config``.  ``load_config_d`` does those steps with
the chart values it is given; ``chart_values`` merges them as Helm does.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import yaml

from casa_spawner.kube.chart import chart_hub_config, chart_values, get_config_of, read_values
from tests.paths import REFERENCE, REPO

Z2JH = REFERENCE / "z2jh"
CONFIG = REPO / "config"
CONFIG_D = "/usr/local/etc/jupyterhub/jupyterhub_config.d"


def z2jh_defaults() -> dict:
    return read_values(Z2JH / "values.yaml")


def z2jh_schema() -> dict:
    return yaml.safe_load((Z2JH / "values.schema.yaml").read_text())


def site_values(deployment: str) -> dict:
    """``helm ... -f config/<deployment>/values.yaml --set-file hub.extraFiles.casa-config.stringData=...``"""
    return chart_values(
        z2jh_defaults(),
        read_values(CONFIG / deployment / "values.yaml"),
        set_values={"hub.extraFiles.casa-config.stringData": (CONFIG / deployment / "jupyterhub_config.py").read_text()},
    )


def z2jh_module(values: dict, secrets: dict[str, str]) -> types.ModuleType:
    """The chart's ``z2jh`` helper module: values by dotted key, secrets from the chart's Secret."""
    module = types.ModuleType("z2jh")
    module.get_config = get_config_of(values)

    def get_secret_value(key, default="never-explicitly-set"):
        if key in secrets:
            return secrets[key]
        if default != "never-explicitly-set":
            return default
        raise Exception(f"{key} not found in either k8s Secret!")

    module.get_secret_value = get_secret_value
    return module


def load_config_d(values: dict, workdir: Path, secrets: dict[str, str]):
    """The config the chart's hub ends with: its settings, then each ``hub.extraFiles`` file under
    ``jupyterhub_config.d/`` (written to ``workdir`` from the values, as the chart mounts them), exec'd
    in the chart's namespace.  Returns ``(config, namespace)``."""
    module = z2jh_module(values, secrets)
    sys.modules["z2jh"] = module
    try:
        namespace = {"__name__": "__main__", "c": chart_hub_config(values)}
        exec("from z2jh import get_config, get_secret_value", namespace)  # as the chart's file starts
        c = namespace["c"]
        c.CryptKeeper.keys = namespace["get_secret_value"]("hub.config.CryptKeeper.keys").split(";")
        files = []
        for key, spec in sorted((values["hub"].get("extraFiles") or {}).items()):
            mount = spec["mountPath"]
            if mount.startswith(CONFIG_D + "/") and mount.endswith(".py"):
                path = workdir / Path(mount).name
                path.write_text(spec["stringData"])
                files.append(path)
        for path in sorted(files):
            exec(compile(path.read_text(), path.name, "exec"), namespace)
        # the chart's last step, with whatever get_config the files left behind
        for _key, source in sorted(namespace["get_config"]("hub.extraConfig", {}).items()):
            exec(source, namespace)
        return namespace["c"], namespace
    finally:
        sys.modules.pop("z2jh", None)
