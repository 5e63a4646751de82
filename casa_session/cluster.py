"""CasaCluster: Dask workers for the scheduler that already runs beside the notebook.

The cluster never starts a scheduler: it attaches to the session's sidecar, named
``tls://<slug>.dask.<domain>:<port>`` (``CASA_SCHEDULER_ADDRESS``) and reached
through Traefik.  Where workers run is a :class:`WorkerLauncher`'s business, so
``scale``/``adapt``/``close`` do not change with it.  The only launcher here is
:class:`LocalProcessWorkers` (the one-machine facility); one that submits HTCondor
jobs would implement the same three methods.

Connect address versus name: when ``<slug>.dask.<domain>`` does not resolve (a
laptop, a test), ``CASA_SCHEDULER_CONNECT_HOST`` says where to connect instead
(e.g. ``127.0.0.1``) and the scheduler name is still sent as TLS SNI, which is all
Traefik routes on.

In a notebook::

    from casa_session.cluster import CasaCluster
    cluster = CasaCluster()
    cluster.scale(4)
    client = cluster.get_client()
"""

from __future__ import annotations

import abc
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from distributed import Client
from distributed.security import Security

__all__ = ["CasaCluster", "SchedulerConnection", "SNISecurity", "WorkerLauncher", "LocalProcessWorkers"]

log = logging.getLogger("casa.cluster")


class SNISecurity(Security):
    """distributed's ``Security`` that also sends ``server_hostname`` (TLS SNI) on every connection."""

    def __init__(self, server_hostname: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.server_hostname = server_hostname

    def get_connection_args(self, role):
        args = super().get_connection_args(role)
        if self.server_hostname:
            args["server_hostname"] = self.server_hostname
        return args


@dataclass(frozen=True)
class SchedulerConnection:
    """How to reach the session's scheduler, and with which certificates."""

    address: str  #: the public name, ``tls://<slug>.dask.<domain>:<port>``
    ca_file: str
    client_cert: str
    client_key: str
    worker_cert: str
    worker_key: str
    connect_host: str = ""  #: where to connect instead of resolving the name (SNI stays the name)

    @classmethod
    def from_environment(cls, env=None) -> "SchedulerConnection":
        """From the notebook's environment (``CASA_SCHEDULER_ADDRESS`` and the ``DASK_DISTRIBUTED__COMM__TLS__*`` files)."""
        env = os.environ if env is None else env
        missing = [k for k in ("CASA_SCHEDULER_ADDRESS", "DASK_DISTRIBUTED__COMM__TLS__CA_FILE") if not env.get(k)]
        if missing:
            raise RuntimeError(f"not in a casa session: {', '.join(missing)} not set")
        tls = "DASK_DISTRIBUTED__COMM__TLS__"
        return cls(
            address=env["CASA_SCHEDULER_ADDRESS"],
            ca_file=env[tls + "CA_FILE"],
            client_cert=env.get(tls + "CLIENT__CERT", ""),
            client_key=env.get(tls + "CLIENT__KEY", ""),
            worker_cert=env.get(tls + "WORKER__CERT", ""),
            worker_key=env.get(tls + "WORKER__KEY", ""),
            connect_host=env.get("CASA_SCHEDULER_CONNECT_HOST", ""),
        )

    @property
    def sni(self) -> str:
        return urlsplit(self.address).hostname

    @property
    def port(self) -> int:
        return urlsplit(self.address).port

    @property
    def connect_address(self) -> str:
        return f"tls://{self.connect_host}:{self.port}" if self.connect_host else self.address

    def security(self, role: str = "client") -> SNISecurity:
        cert, key = (self.client_cert, self.client_key) if role == "client" else (self.worker_cert, self.worker_key)
        return SNISecurity(
            server_hostname=self.sni if self.connect_host else None,
            require_encryption=True,
            tls_ca_file=self.ca_file,
            tls_client_cert=cert,
            tls_client_key=key,
        )

    def worker_command(self, name: str, nthreads: int = 1, memory_limit: str = "auto", python: str | None = None) -> list[str]:
        """``dask worker`` joining this scheduler (no nanny: it would connect without the SNI)."""
        cmd = [
            python or sys.executable, "-m", "distributed.cli.dask_worker", self.connect_address,
            "--name", name, "--nthreads", str(nthreads), "--memory-limit", memory_limit,
            "--no-nanny", "--no-dashboard",
            "--tls-ca-file", self.ca_file, "--tls-cert", self.worker_cert, "--tls-key", self.worker_key,
        ]
        if self.connect_host:
            cmd += ["--scheduler-sni", self.sni]
        return cmd


class WorkerLauncher(abc.ABC):
    """Where workers run.  Names are chosen by the cluster; a launcher starts and stops them."""

    @abc.abstractmethod
    def launch(self, names: list[str], connection: SchedulerConnection) -> None:
        """Start one worker per name, joining ``connection``; returns without waiting for them to join."""

    @abc.abstractmethod
    def stop(self, names: list[str]) -> None:
        """Stop these workers (unknown names are ignored)."""

    @abc.abstractmethod
    def running(self) -> list[str]:
        """Names of the workers launched and not yet gone, oldest first."""

    def close(self) -> None:
        self.stop(self.running())


class LocalProcessWorkers(WorkerLauncher):
    """Each worker a ``dask worker`` process on this machine (the stand-in for batch jobs)."""

    def __init__(self, nthreads: int = 1, memory_limit: str = "auto", stop_timeout: float = 10.0,
                 log_dir: str | os.PathLike | None = None):
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.stop_timeout = stop_timeout
        self.log_dir = log_dir  #: each worker's output goes to ``<log_dir>/<name>.log`` (else discarded)
        self._procs: dict[str, subprocess.Popen] = {}
        self._gone: dict[str, subprocess.Popen] = {}

    def launch(self, names, connection):
        for name in names:
            cmd = connection.worker_command(name, self.nthreads, self.memory_limit)
            if self.log_dir is None:
                out = subprocess.DEVNULL
            else:
                os.makedirs(self.log_dir, exist_ok=True)
                out = open(os.path.join(self.log_dir, f"{name}.log"), "ab")
            try:
                self._procs[name] = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )
            finally:
                if out is not subprocess.DEVNULL:
                    out.close()

    def stop(self, names):
        stopping = {n: self._procs.pop(n) for n in names if n in self._procs}
        self._gone.update(stopping)
        procs = list(stopping.values())
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def running(self):
        for name in [n for n, p in self._procs.items() if p.poll() is not None]:
            self._gone[name] = self._procs.pop(name)  # exited by itself: remembered for pids()
        return list(self._procs)

    def pids(self) -> list[int]:
        """Process ids of every worker launched so far (running or not)."""
        return [p.pid for p in (*self._gone.values(), *self._procs.values())]


class CasaCluster:
    """Workers for the session's existing scheduler: ``scale``, ``adapt``, ``close``, ``get_client``."""

    def __init__(self, connection: SchedulerConnection | None = None, launcher: WorkerLauncher | None = None,
                 name_prefix: str | None = None):
        self.connection = connection or SchedulerConnection.from_environment()
        self.launcher = launcher or LocalProcessWorkers()
        self._prefix = name_prefix or f"casa-{uuid.uuid4().hex[:6]}"
        self._counter = itertools.count()
        self._adapt_stop: threading.Event | None = None
        self._adapt_thread: threading.Thread | None = None
        self._client: Client | None = None
        self._scaling = threading.Lock()  # scale() runs from the adapt thread and the notebook's

    @property
    def scheduler_address(self) -> str:
        return self.connection.address

    def get_client(self, **kwargs) -> Client:
        """A new ``Client`` for the session's scheduler, through Traefik."""
        return Client(self.connection.connect_address, security=self.connection.security("client"), **kwargs)

    def scale(self, n: int) -> None:
        """Run ``n`` workers: launch the missing ones, stop the newest extra ones."""
        if n < 0:
            raise ValueError("cannot scale to a negative number of workers")
        with self._scaling:
            running = self.launcher.running()
            if len(running) < n:
                self.launcher.launch([f"{self._prefix}-{next(self._counter)}" for _ in range(n - len(running))], self.connection)
            elif len(running) > n:
                self.launcher.stop(running[n:])

    def adapt(self, minimum: int = 0, maximum: int = 4, interval: float = 2.0) -> None:
        """Follow the scheduler's own wish (``adaptive_target``), clamped to ``[minimum, maximum]``."""
        if not 0 <= minimum <= maximum:
            raise ValueError("adapt needs 0 <= minimum <= maximum")
        self._stop_adapting()
        self.scale(minimum)
        client = self._client = self._client or self.get_client()
        stop = self._adapt_stop = threading.Event()

        def loop():
            while not stop.wait(interval):
                try:
                    target = client.sync(client.scheduler.adaptive_target)
                except Exception:  # scheduler briefly unreachable: try again next round
                    continue
                try:
                    self.scale(max(minimum, min(maximum, int(target))))
                except Exception:  # e.g. a batch submission refused: adapting goes on
                    log.exception("CasaCluster.adapt could not scale; trying again in %s s", interval)

        self._adapt_thread = threading.Thread(target=loop, name="casa-adapt", daemon=True)
        self._adapt_thread.start()

    def _stop_adapting(self) -> None:
        if self._adapt_stop is not None:
            self._adapt_stop.set()
            self._adapt_thread.join()
            self._adapt_stop = self._adapt_thread = None

    def close(self) -> None:
        """Stop every worker this cluster started (the scheduler stays: it belongs to the session)."""
        self._stop_adapting()
        self.launcher.close()
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "CasaCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CasaCluster({self.scheduler_address!r}, workers={len(self.launcher.running())})"
