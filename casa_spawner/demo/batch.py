"""The demo's batch system: a one-machine HTCondor pool, its signing key, and the Python its workers run.

``casa demo`` starts :class:`DemoBatch` when HTCondor's daemons are found (PATH, or ``--htcondor
DIR``).  The pool signing key is generated afresh for each run into the demo's ``secrets/``
(0600), read only by the pool (a private copy) and the hub (which issues every session an
IDTOKEN with it), and deleted when the demo stops; it is never printed, never in a session's
files, environment or jobs.

Jobs run as the pool's slot user: the demo's own user, or ``nobody`` when the demo runs as root.
The workers' Python must be runnable by that user with ``distributed`` importable; the demo checks
exactly that (``python -c "import distributed"`` as the slot user) before it tells sessions to use it.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from casa_hub.errors import ConfigurationError

from .condor import CondorPool, HTCondorInstall

#: the demo pool's TRUST_DOMAIN: the IDTOKENs' ``iss`` and the identities' ``@...`` (``alice@casa.demo``)
DEMO_TRUST_DOMAIN = "casa.demo"
#: seconds between two copies of a session's stored data token into its running workers (the pool's
#: SEC_CREDENTIAL_REFRESH; HTCondor's default is 300): a minute, against the demo's 12-hour macaroons
DEMO_CREDENTIAL_REFRESH = 60
KEY_BYTES = 32
CHECK_TIMEOUT = 60.0


def write_pool_key(path: Path) -> Path:
    """A fresh random signing key at ``path``, 0600, written atomically (blocking: run in a thread)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pool-key-")
    try:
        with os.fdopen(fd, "wb") as fh:  # mkstemp: 0600 from the start
            fh.write(secrets.token_bytes(KEY_BYTES))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def slot_user() -> str | None:
    """Who runs the jobs: ``nobody`` when the demo is root (the pool then runs as it), else the demo's user (None)."""
    return "nobody" if os.geteuid() == 0 else None


async def worker_python_problem(python: str, user: str | None, timeout: float = CHECK_TIMEOUT) -> str:
    """Why ``python`` cannot run the workers as ``user`` (None: as this process's user); "" when it can."""
    who = user or "the demo's user"
    # the user's own group and no other: a job runs without root's groups too
    as_user = dict(user=user, group=pwd.getpwnam(user).pw_gid, extra_groups=[]) if user else {}
    try:
        proc = await asyncio.create_subprocess_exec(
            python, "-c", "import distributed", cwd="/", **as_user, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/"},
        )
    except OSError as e:
        return f"{who} cannot run {python}: {e.strerror}"
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return f"{python} did not import distributed within {timeout:g}s"
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return f"{who} cannot run {python} with distributed: {last}"
    return ""


def worker_python_candidates() -> list[str]:
    """The demo's own Python, then ``python3`` on PATH (often the one a root user's slot user can run)."""
    found = [sys.executable]
    system = shutil.which("python3")
    if system and os.path.realpath(system) != os.path.realpath(sys.executable):
        found.append(system)
    return found


async def default_worker_python() -> tuple[str, str]:
    """The first candidate the slot user can run with distributed, and ""; else the first one and why it cannot."""
    first_problem = ""
    for python in worker_python_candidates():
        problem = await worker_python_problem(python, slot_user())
        if not problem:
            return python, ""
        first_problem = first_problem or problem
    return sys.executable, first_problem


@dataclass
class DemoBatch:
    """The pool and what the hub is told about it."""

    install: HTCondorInstall
    key_file: Path
    logs_dir: Path
    worker_python: str = ""  #: empty: the demo's own Python, if the slot user can run it
    ready_timeout: float = 60.0
    credential_refresh: int = DEMO_CREDENTIAL_REFRESH  #: the credd's copies into running jobs, every this many seconds
    pool: CondorPool | None = None
    problem: str = ""  #: why workers cannot run (the banner says it), "" when they can
    _python: str = field(default="", repr=False)

    async def start(self) -> None:
        """Check the workers' Python, generate the key, start the pool.  An explicitly given Python that
        cannot run is a ConfigurationError before anything starts; the default one is only reported."""
        if self.worker_python:
            python, problem = self.worker_python, await worker_python_problem(self.worker_python, slot_user())
            if problem:
                raise ConfigurationError(f"--worker-python: {problem}")
        else:
            python, problem = await default_worker_python()
            if problem:
                problem += "; pass --worker-python with a Python that it can run (dask and distributed installed)"
        self._python, self.problem = python, problem
        await asyncio.to_thread(write_pool_key, self.key_file)
        self.pool = CondorPool(self.install, self.key_file, trust_domain=DEMO_TRUST_DOMAIN,
                               log_copy_dir=self.logs_dir / "condor", ready_timeout=self.ready_timeout,
                               credential_refresh=self.credential_refresh)
        await self.pool.start()

    async def stop(self) -> None:
        """Stop the pool (every daemon and job), delete its run directory and the key; idempotent."""
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.stop()
        await asyncio.to_thread(_unlink, self.key_file)  # the next run makes a new one: no key at rest

    @property
    def process(self):
        """The pool's ``condor_master`` (an asyncio process), to notice it dying."""
        return self.pool.master.process if self.pool is not None and self.pool.master is not None else None

    def hub_environment(self) -> dict[str, str]:
        """The ``CASA_LOCAL_CONDOR_*`` variables of the packaged hub configuration: a path to the key, never the key."""
        pool = self.pool
        return {
            "CASA_LOCAL_CONDOR_SIGNING_KEY_FILE": str(self.key_file),
            "CASA_LOCAL_CONDOR_TRUST_DOMAIN": DEMO_TRUST_DOMAIN,
            "CASA_LOCAL_CONDOR_COLLECTOR": pool.collector_host,
            "CASA_LOCAL_CONDOR_SCHEDD": pool.schedd_name,
            "CASA_LOCAL_CONDOR_BIN": str(self.install.bin),
            "CASA_LOCAL_CONDOR_SBIN": str(self.install.sbin),
            "CASA_LOCAL_CONDOR_CREDD": pool.credd_host,
            "CASA_LOCAL_WORKER_PYTHON": self._python,
        }

    def banner_lines(self) -> list[str]:
        pool = self.pool
        who = slot_user() or "your user"
        lines = [
            f"  Workers:  HTCondor jobs on this machine's pool (schedd {pool.schedd_name}, collector {pool.collector_host}),",
            f"            each submitted with the session's own IDTOKEN (<user>@{DEMO_TRUST_DOMAIN}); they run as {who}",
            f"            with {self._python}; the pool's credd copies each renewed data token into running",
            f"            workers every {self.credential_refresh}s; in a notebook:",
            "            from casa_session.cluster import CasaCluster; cluster = CasaCluster(); cluster.scale(2)",
        ]
        if self.problem:
            lines.append(f"            WARNING: workers cannot start: {self.problem}")
        return lines
