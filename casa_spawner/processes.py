"""One way to run a helper process: start it in its own session with its output in a log, wait
(bounded) until it is ready, say why it failed from the log's last lines, stop it: SIGTERM, then SIGKILL.
Beside it, the two port checks the launchers need: is a port still free, does it accept connections.

Used for the processes the one-machine facility runs beside the hub.  Nothing here blocks the
event loop: readiness probes are coroutines, and waits are ``asyncio`` waits with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from casa_hub.errors import CasaError

LOG_TAIL_LINES = 30


class ProcessStartError(CasaError):
    """A helper process exited while starting, or was not ready in time; the message quotes its log."""


class ChildProcess:
    """A child process in its own process group, its stdout and stderr appended to ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: str | os.PathLike,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        user: str | int | None = None,
        group: str | int | None = None,
    ):
        self.name = name  #: what the messages call it, e.g. ``"Traefik"``
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user, self.group = user, group  #: run as this account (the caller must be root)
        self.process: asyncio.subprocess.Process | None = None
        self._log_start = 0  #: where this run's lines begin in the (appended) log

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        extra = {}
        if self.user is not None:
            extra["user"] = self.user
        if self.group is not None:
            extra["group"] = self.group
            extra["extra_groups"] = []
        with open(self.log_path, "ab") as log:
            self._log_start = log.seek(0, os.SEEK_END)
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                env=self.env, cwd=self.cwd, start_new_session=True, **extra,
            )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines this run wrote (earlier runs' lines stay above them)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_start)
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait_ready(self, probe: Callable[[], Awaitable[bool]], timeout: float, *, interval: float = 0.1,
                         what: str = "ready") -> None:
        """Return once ``probe()`` is true; raise :class:`ProcessStartError` if the process exits
        first or ``timeout`` seconds pass (the process is left running: the caller stops it)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise ProcessStartError(self.failure(f"{self.name} exited with status {self.returncode} while starting"))
            if await probe():
                return
            if time.monotonic() >= deadline:
                raise ProcessStartError(self.failure(f"{self.name} was not {what} within {timeout:g}s"))
            await asyncio.sleep(interval)

    def failure(self, what: str) -> str:
        """``what`` went wrong, followed by the last lines of this run's log."""
        return f"{what}\n--- {self.name} log tail ---\n{self.log_tail()}"

    async def wait(self) -> int:
        """Wait until the process exits (it must have been started); its exit status."""
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        return await self.process.wait()

    async def stop(self, timeout: float = 10.0, *, term_group: bool = True) -> int | None:
        """SIGTERM the process group (only its leader if not ``term_group``: a process that stops
        its own children, like JupyterHub), wait up to ``timeout``, then SIGKILL the group; reap.
        Idempotent.  Returns the exit status (None if it was never started)."""
        proc = self.process
        if proc is None:
            return None
        if proc.returncode is None:
            if term_group:
                signal_group(proc.pid, signal.SIGTERM)
            else:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        # whatever the leader left in its group goes too (start_new_session: the group is its own)
        signal_group(proc.pid, signal.SIGKILL)
        return await proc.wait()


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group ``pid`` leads; one already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def port_is_free(host: str, port: int) -> bool:
    """True if ``host:port`` can be bound now (``""`` or ``0.0.0.0``: every IPv4 interface)."""
    family = socket.AF_INET6 if ":" in (host or "") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "0.0.0.0", port))
        except OSError:
            return False
    return True


async def tcp_accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if something accepts a TCP connection on ``host:port`` within ``timeout`` (a readiness probe)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
