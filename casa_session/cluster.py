"""CasaCluster: Dask workers for the scheduler that already runs beside the notebook.

The cluster never starts a scheduler: it attaches to the session's sidecar, named
``tls://<slug>.dask.<domain>:<port>`` (``CASA_SCHEDULER_ADDRESS``) and reached
through Traefik.  Where workers run is a :class:`WorkerLauncher`'s business, so
``scale``/``adapt``/``close`` do not change with it: :class:`LocalProcessWorkers`
(the one-machine facility) or ``casa_session.htcondor_workers.HTCondorWorkers`` (one
HTCondor job per worker, under the session's own IDTOKEN), chosen by the session:
HTCondor when it was given a schedd (``_CONDOR_SCHEDD_HOST``), local processes otherwise.

Scaling down retires workers first (``retire_workers``: the data in their memory moves to
the others), then stops them; ``adapt`` is distributed's ``AdaptiveCore``
(:mod:`casa_session.adapt`).

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
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from distributed import Client
from distributed.security import Security

__all__ = ["CasaCluster", "SchedulerConnection", "SNISecurity", "WorkerLauncher", "LocalProcessWorkers", "WorkersDidNotStart"]

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

    def problems(self) -> list[str]:
        """Why some launched workers cannot come now (e.g. a held job and its HoldReason)."""
        return []

    def history(self) -> list[str]:
        """What happened to workers that are gone without being stopped (e.g. a job that left the queue); newest last."""
        return []

    def describe(self) -> list[tuple[str, str, str]]:
        """``(worker, where, state)`` of every worker launched and not gone, for repr."""
        return [(name, "", "launched") for name in self.running()]


#: how often ``wait_for_workers`` asks the scheduler (a launcher reads its queue at its own, slower pace)
WAIT_INTERVAL = 0.1


class WorkersDidNotStart(RuntimeError):
    """``wait_for_workers`` gave up: the message says why (held jobs and their reasons, or the time bound)."""


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


WORKER_KINDS = ("htcondor", "local")


def pick_launcher(kind: str | None, env=None, cluster_name: str | None = None) -> WorkerLauncher:
    """HTCondor jobs when the session was given a schedd (or ``kind == "htcondor"``), else local processes."""
    env = os.environ if env is None else env
    if kind is None:
        kind = "htcondor" if env.get("_CONDOR_SCHEDD_HOST") else "local"
    if kind not in WORKER_KINDS:
        raise ValueError(f"workers must be one of {', '.join(map(repr, WORKER_KINDS))}, not {kind!r}")
    if kind == "local":
        return LocalProcessWorkers()
    from .htcondor_workers import HTCondorWorkers  # imports dask-jobqueue; local sessions do without

    return HTCondorWorkers(env, cluster_name=cluster_name)


class CasaCluster:
    """Workers for the session's existing scheduler: ``scale``, ``adapt``, ``close``, ``get_client``.

    ``CasaCluster()`` in a session that was given an HTCondor schedd runs each worker as a job
    of the user's own identity; ``CasaCluster(workers="local")`` or ``"htcondor"`` forces one.
    """

    def __init__(self, connection: SchedulerConnection | None = None, launcher: WorkerLauncher | None = None,
                 name_prefix: str | None = None, workers: str | None = None):
        self.connection = connection or SchedulerConnection.from_environment()
        self._prefix = name_prefix or f"casa-{uuid.uuid4().hex[:6]}"
        self.launcher = launcher or pick_launcher(workers, cluster_name=self._prefix)
        self._counter = itertools.count()
        self._adapt_stop: threading.Event | None = None
        self._adapt_thread: threading.Thread | None = None
        self._client: Client | None = None
        self._client_lock = threading.Lock()
        self._scaling = threading.RLock()  # scale() runs from the adapt thread and the notebook's

    @property
    def scheduler_address(self) -> str:
        return self.connection.address

    def get_client(self, **kwargs) -> Client:
        """A new ``Client`` for the session's scheduler, through Traefik."""
        return Client(self.connection.connect_address, security=self.connection.security("client"), **kwargs)

    def _control(self) -> Client:
        """The cluster's own client (retiring workers, asking the scheduler what it wants)."""
        with self._client_lock:
            if self._client is None:
                self._client = self.get_client(timeout="30s", set_as_default=False)
            return self._client

    def _connected(self) -> dict[str, list[str]]:
        """Our launched workers the scheduler sees: ``{launched name: [worker addresses]}``
        (a job of ``processes > 1`` workers names them ``<name>-<i>``)."""
        ours = set(self.launcher.running())
        found: dict[str, list[str]] = {}
        for address, info in self._control().scheduler_info(n_workers=-1)["workers"].items():
            name = str(info.get("name", ""))
            owner = name if name in ours else name.rpartition("-")[0]
            if owner in ours:
                found.setdefault(owner, []).append(address)
        return found

    def scale(self, n: int) -> None:
        """Run ``n`` workers: launch the missing ones; retire the extra ones (their data moves), then stop them."""
        if n < 0:
            raise ValueError("cannot scale to a negative number of workers")
        with self._scaling:
            running = self.launcher.running()
            if len(running) < n:
                self.launcher.launch([f"{self._prefix}-{next(self._counter)}" for _ in range(n - len(running))], self.connection)
            elif len(running) > n:
                self._retire_and_stop(self._pick_extra(running, len(running) - n))

    def _pick_extra(self, running: list[str], count: int) -> list[str]:
        """Workers to let go: those not connected yet first (held, idle), then the newest."""
        try:
            connected = set(self._connected())
        except (OSError, TimeoutError) as e:
            log.warning("the scheduler did not say which workers are connected (%s): stopping the newest", e)
            connected = set()
        order = [w for w in reversed(running) if w not in connected] + [w for w in reversed(running) if w in connected]
        return order[:count]

    def _retire_and_stop(self, names: list[str]) -> None:
        """``retire_workers`` (the scheduler moves their data to the other workers), then stop them."""
        try:
            addresses = [a for name, addrs in self._connected().items() if name in names for a in addrs]
            if addresses:
                self._control().retire_workers(workers=addresses, close_workers=True)
        except (OSError, TimeoutError) as e:
            log.warning("could not retire %s (%s); stopping them anyway", ", ".join(names), e)
        self.launcher.stop(names)

    def wait_for_workers(self, n: int, timeout: float | None = None) -> None:
        """Wait until ``n`` of this cluster's workers are connected; raise :class:`WorkersDidNotStart`
        as soon as a job is held (with its HoldReason) or leaves the queue, or after ``timeout`` seconds
        (default: dask config ``jobqueue.casa.worker-start-timeout``)."""
        import dask.config

        timeout = float(timeout if timeout is not None else dask.config.get("jobqueue.casa.worker-start-timeout", 600))
        self.launcher.running()  # a fresh look at the queue: what is known before waiting is not news
        known = set(self.launcher.history())
        deadline = time.monotonic() + timeout
        while True:
            connected = sum(len(a) for a in self._connected().values())
            if connected >= n:
                return
            problems = self.launcher.problems() + [e for e in self.launcher.history() if e not in known]
            if problems:
                raise WorkersDidNotStart(f"{connected} of {n} workers connected: " + "; ".join(problems))
            if len(self.launcher.running()) < n:
                raise WorkersDidNotStart(f"only {len(self.launcher.running())} workers were launched: call scale({n}) first")
            if time.monotonic() >= deadline:
                states = ", ".join(f"{name} {state}" for name, _, state in self.launcher.describe())
                raise WorkersDidNotStart(f"{connected} of {n} workers connected after {timeout:g}s ({states})")
            time.sleep(WAIT_INTERVAL)

    def adapt(self, minimum: int = 0, maximum: int = 4, interval: float = 2.0, wait_count: int = 3) -> None:
        """Follow the scheduler's wish as distributed's ``Adaptive`` does, within ``[minimum, maximum]``;
        a worker whose job left the queue is replaced at the next round."""
        from .adapt import AdaptiveLoop

        if not 0 <= minimum <= maximum:
            raise ValueError("adapt needs 0 <= minimum <= maximum")
        self._stop_adapting()
        self.scale(minimum)
        stop = self._adapt_stop = threading.Event()
        adaptive = AdaptiveLoop(self, minimum=minimum, maximum=maximum, wait_count=wait_count)
        self._adapt_thread = threading.Thread(target=adaptive.run, args=(stop, interval), name="casa-adapt", daemon=True)
        self._adapt_thread.start()

    def _stop_adapting(self) -> None:
        if self._adapt_stop is not None:
            self._adapt_stop.set()
            self._adapt_thread.join()
            self._adapt_stop = self._adapt_thread = None

    def close(self) -> None:
        """Stop every worker this cluster started (the scheduler stays: it belongs to the session)."""
        self._stop_adapting()
        try:
            self.launcher.close()
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> "CasaCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _kind(self) -> str:
        identity = getattr(self.launcher, "identity", None)
        return f"HTCondor jobs of {identity}" if identity else "local processes"

    def _look(self) -> str:
        """Refresh the launcher's view (the queue) for a repr; a failure is shown, never raised."""
        try:
            self.launcher.running()
        except Exception as e:
            return f"could not read the workers' state: {e}"
        return ""

    def __repr__(self) -> str:
        failed = self._look()
        rows = self.launcher.describe()
        states: dict[str, int] = {}
        for _, _, state in rows:
            key = state.split(":")[0]
            states[key] = states.get(key, 0) + 1
        summary = ", ".join(f"{count} {state}" for state, count in states.items())
        summary = failed or summary
        return f"CasaCluster({self.scheduler_address!r}, workers={len(rows)} {self._kind()}{': ' + summary if summary else ''})"

    def _repr_html_(self) -> str:
        from html import escape

        failed = self._look()
        rows = "".join(f"<tr><td>{escape(n)}</td><td>{escape(j)}</td><td>{escape(s)}</td></tr>" for n, j, s in self.launcher.describe())
        problems = "".join(f"<li>{escape(p)}</li>" for p in [failed] * bool(failed) + self.launcher.problems() + self.launcher.history())
        return (f"<div><strong>CasaCluster</strong> {escape(self.scheduler_address)} &mdash; workers as {escape(self._kind())}"
                f"<table><tr><th>worker</th><th>job</th><th>state</th></tr>{rows}</table>"
                + (f"<p>Problems:</p><ul>{problems}</ul>" if problems else "") + "</div>")
