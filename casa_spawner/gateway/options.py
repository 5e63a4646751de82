"""The cluster options users choose from (cores, memory, image, environment), within the operator's limits.

:func:`cluster_options` builds dask-gateway's own ``Options`` form; the gateway refuses a request
outside the limits with the field's message (HTTP 422), which ``Gateway.new_cluster()`` raises.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

from dask_gateway_server.options import Float, Integer, Options, Select
from dask_gateway_server.options import Mapping as MappingField

from .jobs import check_environment

GIB = 2**30
#: names the backend sets for dask-gateway, distributed's TLS and HTCondor: never the user's to change
RESERVED_ENV_PREFIXES = ("DASK_GATEWAY_", "DASK_DISTRIBUTED__COMM__", "_CONDOR_", "CONDOR_")


def check_user_environment(env: Mapping[str, str], allowed: Sequence[str] = ("*",)) -> dict[str, str]:
    """A user's environment variables if every name is allowed (glob patterns) and none is reserved."""
    env = check_environment(env, "environment")
    for name in env:
        if name.upper().startswith(RESERVED_ENV_PREFIXES):
            raise ValueError(f"environment: {name} is set by the gateway and cannot be changed")
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in allowed):
            raise ValueError(f"environment: {name} is not among the variables this gateway lets users set "
                             f"({', '.join(allowed) or 'none'})")
    return env


def cluster_options(*, max_cores: int, max_memory: int, images: Mapping[str, str],
                    allowed_environment: Sequence[str]) -> Options:
    """The form: worker cores (1..``max_cores``), worker memory in GiB (up to ``max_memory`` bytes),
    an image among ``images`` (label -> reference; the first is the default) and environment variables."""
    max_gib = max_memory / GIB
    fields = [
        Integer("worker_cores", default=1, min=1, max=max_cores, label="Worker cores"),
        Float("worker_memory", default=min(2.0, max_gib), min=0.25, max=max_gib, label="Worker memory (GiB)"),
    ]
    if images:
        fields.append(Select("image", list(images), label="Image"))
    if allowed_environment:
        fields.append(MappingField("environment", {}, label="Environment variables"))

    def to_config(options):
        config = {
            "worker_cores": options.worker_cores,
            "worker_memory": int(options.worker_memory * GIB),
        }
        if images:
            config["image"] = images[options.image]
        if allowed_environment:
            config["user_environment"] = check_user_environment(options.environment, allowed_environment)
        return config

    return Options(*fields, handler=to_config)
