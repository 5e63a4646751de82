"""HTCondorWorkers: each Dask worker of a CasaCluster is an HTCondor job of the session's own identity.

The schedd, the collector and the trust domain come from the session's ``_CONDOR_*``
environment, the identity from the one IDTOKEN in ``_CONDOR_SEC_TOKEN_DIRECTORY``: every
tool call (``casa_condor.schedd.UserSchedd``) carries that token and nothing else, and is
bounded in time.  Jobs are built by :mod:`casa_session.worker_jobs` and spooled (the files
travel with the submission; the notebook's disk is not needed afterwards).  Every job
carries ``+CasaSession = "<CASA_SESSION_ID>"``, so the spawner can remove what a stopped
session left.

The notebook's API is synchronous and may be called from a running event loop (Jupyter's),
so the tools run on a private event loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from casa_condor.output import HELD, STATUS_NAMES, CondorError, JobState
from casa_condor.schedd import CondorTools, UserSchedd
from casa_condor.submit import attribute_equals, job_ids_constraint, string_literal
from casa_hub.errors import ConfigurationError

from .cluster import SchedulerConnection, WorkerLauncher
from .worker_jobs import CLUSTER_ATTR, SESSION_ATTR, WorkerTarget, casa_config, worker_data_access, worker_job

log = logging.getLogger("casa.cluster")

#: what a session is given to find its schedd (casa_hub.plan); CONDOR_CONFIG when the image sets one
POOL_VARIABLES = ("CONDOR_CONFIG", "_CONDOR_SCHEDD_HOST", "_CONDOR_COLLECTOR_HOST", "_CONDOR_TRUST_DOMAIN")
TOOLS = ("condor_submit", "condor_rm", "condor_q", "condor_history")


class LoopThread:
    """An event loop of its own in a daemon thread: ``run(coro)`` from any thread, even one with a running loop."""

    def __init__(self, name: str):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def spawn(self, coro) -> None:
        """Run ``coro`` on the loop without waiting for it (it must handle its own errors)."""
        asyncio.run_coroutine_threadsafe(coro, self._loop)

    @property
    def closed(self) -> bool:
        return self._loop.is_closed()

    def close(self) -> None:
        """Cancel what was spawned (a tool it runs is killed), stop the loop."""
        if self._loop.is_closed():
            return
        try:
            self.run(_cancel_others(), 10)
        except Exception:  # a cancellation that does not finish in time: the loop stops all the same
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def _cancel_others() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def token_identity(token_dir: Path) -> str:
    """The ``sub`` of the first IDTOKEN in ``token_dir`` (for messages; the schedd checks the token itself)."""
    try:
        for path in sorted(p for p in token_dir.iterdir() if p.is_file()):
            token = path.read_text().split()[0]
            payload = token.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            return str(claims.get("sub") or "the session's HTCondor identity")
    except (OSError, IndexError, ValueError):
        pass
    return "the session's HTCondor identity"


class HTCondorWorkers(WorkerLauncher):
    """Workers as HTCondor jobs of the session's identity, one job per worker."""

    def __init__(self, env=None, *, cluster_name: str | None = None, session_id: str | None = None,
                 min_refresh: float = 1.0):
        env = os.environ if env is None else env
        if not env.get("_CONDOR_SCHEDD_HOST"):
            raise ConfigurationError("this session was given no HTCondor schedd (_CONDOR_SCHEDD_HOST is not set)")
        token_dir = env.get("_CONDOR_SEC_TOKEN_DIRECTORY")
        if not token_dir or not os.path.isdir(token_dir):
            raise ConfigurationError(
                "this session has no HTCondor token (_CONDOR_SEC_TOKEN_DIRECTORY is not a directory): "
                "ask the facility to enable HTCondor tokens")
        path = env.get("PATH", os.defpath)
        found = {tool: shutil.which(tool, path=path) for tool in TOOLS}
        missing = [tool for tool, where in found.items() if not where]
        if missing:
            raise ConfigurationError(f"HTCondor's tools are not on PATH ({', '.join(missing)}): the session image needs HTCondor")
        self.session_id = session_id or env.get("CASA_SESSION_ID") or ""
        if not self.session_id:
            self.session_id = f"unnamed-{uuid.uuid4().hex[:12]}"
            log.warning("CASA_SESSION_ID is not set: the session's jobs are tagged %s, and stopping the session "
                        "will not remove them (close() will)", self.session_id)
        try:
            string_literal(self.session_id, "CASA_SESSION_ID")
        except ValueError as e:
            raise ConfigurationError(f"{e}: the session's jobs could not be tagged with it") from None
        self.cluster_name = cluster_name or f"casa-{uuid.uuid4().hex[:6]}"
        self.env = env  #: the session's environment: what the workers get to read data (worker_data_access)
        tools = CondorTools(
            submit=found["condor_submit"], remove=found["condor_rm"], query=found["condor_q"], history=found["condor_history"],
            environment={k: env[k] for k in POOL_VARIABLES if env.get(k)},
            schedd_name=env["_CONDOR_SCHEDD_HOST"], timeout=float(casa_config("condor-timeout")),
            reschedule=shutil.which("condor_reschedule", path=path) or "",
        )
        self.schedd = UserSchedd(tools, token_identity(Path(token_dir)), Path(token_dir))
        self.min_refresh = min_refresh
        self._loop = LoopThread(f"casa-condor-{self.cluster_name}")
        self._lock = threading.RLock()
        self._jobs: dict[str, str] = {}  #: worker name -> job id, of jobs in the queue (as last seen), oldest first
        self._states: dict[str, JobState] = {}  #: job id -> its state in the queue
        self._descriptions: dict[str, str] = {}
        self._refreshed = 0.0
        self._reported: set[str] = set()
        self.events: deque[str] = deque(maxlen=20)  #: what went wrong with jobs, newest last (shown in repr)

    @property
    def identity(self) -> str:
        return self.schedd.identity

    def _report(self, key: str, message: str, remember: bool = True) -> None:
        if key not in self._reported:
            self._reported.add(key)
            if remember:
                self.events.append(message)
            log.warning("%s", message)

    # -- WorkerLauncher ----------------------------------------------------------

    def launch(self, names, connection: SchedulerConnection):
        data = worker_data_access(self.env)
        if data.token is not None and not data.token_is_renewed:
            self._report("token-not-renewed", "the data token (BEARER_TOKEN_FILE) travels once with each worker job and is "
                         "not renewed in running workers: they lose data access when it expires (the facility renews it "
                         "inside running jobs when it sets c.Facility.data_token_service and the pool runs a credd)",
                         remember=False)
        target = WorkerTarget(
            address=connection.address, connect_address=connection.connect_address,
            sni=connection.sni if connection.connect_host else None, ca_file=connection.ca_file,
            worker_cert=connection.worker_cert, worker_key=connection.worker_key, data=data,
        )
        jobs = [worker_job(name, session=self.session_id, cluster=self.cluster_name, target=target) for name in names]
        results = self._loop.run(self._submit_all(jobs))
        errors = []
        with self._lock:
            for job, result in zip(jobs, results):
                if isinstance(result, BaseException):
                    errors.append(result)
                else:
                    self._jobs[job.name] = result
                    self._descriptions[job.name] = job.description
                    log.info("worker %s is HTCondor job %s of %s", job.name, result, self.identity)
        submitted = [r for r in results if not isinstance(r, BaseException)]
        if submitted:  # their match need not wait for the schedd's next update (best effort, in the background)
            self._loop.spawn(self.schedd.reschedule_when_spooled(submitted))
        if errors:
            raise errors[0]

    async def _submit_all(self, jobs):
        return await asyncio.gather(*(self._submit(job) for job in jobs), return_exceptions=True)

    async def _submit(self, job) -> str:
        directory = tempfile.mkdtemp(prefix="casa-worker-")  # 0700; removed once the files are spooled
        try:
            description = await asyncio.to_thread(job.write, directory)
            return await self.schedd.submit(directory, description)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def stop(self, names):
        with self._lock:
            ids = [self._jobs.pop(n) for n in names if n in self._jobs]
        if ids:
            self._loop.run(self.schedd.remove(job_ids_constraint(ids)))

    def running(self):
        """Workers whose jobs are in the queue (idle, running or held); a job that left is reported and forgotten."""
        with self._lock:
            if time.monotonic() - self._refreshed >= self.min_refresh:
                self.refresh()
            return list(self._jobs)

    def close(self) -> None:
        """Remove every job this cluster submitted (found by its attributes, not only the ones remembered)."""
        if self._loop.closed:
            return  # closed before
        try:
            if not self._descriptions:
                return  # nothing was ever submitted: no need to ask the schedd (it may be the problem)
            constraint = f"{attribute_equals(SESSION_ATTR, self.session_id)} && {attribute_equals(CLUSTER_ATTR, self.cluster_name)}"
            self._loop.run(self.schedd.remove(constraint))
            with self._lock:
                self._jobs.clear()
                self._states.clear()
        finally:
            self._loop.close()

    # -- what the cluster shows ---------------------------------------------------

    def refresh(self) -> None:
        """Read the jobs' states from the schedd; report held jobs and jobs that left the queue (with the reason)."""
        with self._lock:
            ids = dict(self._jobs)
            states = self._loop.run(self.schedd.query(ids.values())) if ids else {}
            self._refreshed = time.monotonic()
            self._states = states
            for name, job_id in ids.items():
                state = states.get(job_id)
                if state is None:
                    del self._jobs[name]
                    why = self._loop.run(self.schedd.why_not_running(job_id, f"worker {name}", None))
                    self._report(job_id + "/left", why)
                elif state.status == HELD and not state.spooling:
                    self._report(job_id + "/held", f"the worker {name} job {job_id} {state.describe()}", remember=False)

    def problems(self) -> list[str]:
        """The jobs held at the last look at the queue (``running()``), each with its HoldReason."""
        with self._lock:
            return [f"the worker {n} job {j} {self._states[j].describe()}" for n, j in self._jobs.items()
                    if j in self._states and self._states[j].status == HELD and not self._states[j].spooling]

    def history(self) -> list[str]:
        """Jobs that left the queue, and how they ended (newest last)."""
        return list(self.events)

    def job_script(self, name: str) -> str:
        """The submit description worker ``name`` was submitted with (as dask-jobqueue's ``job_script()``)."""
        return self._descriptions[name]

    def describe(self) -> list[tuple[str, str, str]]:
        """``(worker, job id, state)`` of every job in the queue, for repr."""
        with self._lock:
            rows = []
            for name, job_id in self._jobs.items():
                state = self._states.get(job_id)
                if state is None:
                    text = "submitted"
                elif state.spooling:
                    text = "spooling input"
                elif state.status == HELD:
                    text = f"held: {state.hold_reason}"
                else:
                    text = STATUS_NAMES.get(state.status, str(state.status))
                rows.append((name, job_id, text))
            return rows


__all__ = ["HTCondorWorkers", "LoopThread", "CondorError"]
