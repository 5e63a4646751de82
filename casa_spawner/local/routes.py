"""Per-user Traefik routes of the one-machine facility: pure builders and atomically written files.

Each user's route is one file in a directory Traefik's file provider watches: SNI
``<slug>.dask.<domain>`` on the ``dask`` entry point, TLS passed through untouched to
the user's scheduler (the scheduler does the mutual TLS; Traefik never holds a key).
Traefik reloads the directory a moment after a file lands: callers that need the route
live must wait (bounded) until it answers.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from casa_hub import metrics
from casa_hub.files import atomic_write
from casa_hub.plan import TCPRoute

ROUTE_SUFFIX = ".yml"


def route_config(route: TCPRoute, address: str) -> dict:
    """One user's dynamic configuration: SNI ``route.host`` -> ``address``, TLS passed through."""
    if not address or ":" not in address:
        raise ValueError(f"route address must be host:port, got {address!r}")
    router = {
        "rule": route.rule,
        "entryPoints": [route.entry_point],
        "service": route.name,
        "tls": {"passthrough": bool(route.passthrough)},
    }
    return {
        "tcp": {
            "routers": {route.name: router},
            "services": {route.name: {"loadBalancer": {"servers": [{"address": address}]}}},
        }
    }


def route_file_name(route: TCPRoute | str) -> str:
    name = route if isinstance(route, str) else route.name
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad route name {name!r}")
    return name + ROUTE_SUFFIX


def write_route_file(routes_dir: str | os.PathLike, route: TCPRoute, address: str) -> Path:
    """Write the user's route atomically (temp file in the same directory, then rename).

    The temporary name ends in ``.tmp``, which Traefik's file provider ignores, so it
    never loads a half-written route.
    """
    with metrics.spawn_step("route"):
        directory = Path(routes_dir)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / route_file_name(route)
        text = yaml.safe_dump(route_config(route, address), sort_keys=False)
        atomic_write(target, text.encode(), mode=0o644, suffix=".tmp")
    return target


def remove_route_file(routes_dir: str | os.PathLike, route: TCPRoute | str) -> bool:
    """Remove the user's route file; False if it was not there."""
    try:
        os.unlink(Path(routes_dir) / route_file_name(route))
        return True
    except FileNotFoundError:
        return False
    except OSError:
        metrics.cleanup_failed("route-file")
        raise
