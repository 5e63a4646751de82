"""A real one-machine HTCondor pool for tests (``casa_spawner.demo.condor.CondorPool``), and its helpers.

HTCondor is taken from PATH like on a site; without one the tests fall back to the build in
``shared/htcondor`` beside the checkout (``bin/``, ``sbin/``; :mod:`tests.paths`).  The pool runs on its own event loop in a background
thread, so one pool serves every test of a session, sync or async.  Jobs run as ``nobody``,
who cannot read root's home (where this Python lives): :func:`worker_python` is the Dask
workers' interpreter that ``scripts/install-test-deps`` builds outside it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from casa_hub.condor_token import make_idtoken
from casa_hub.errors import ConfigurationError
from casa_spawner.demo.condor import CondorPool, HTCondorInstall
from tests.paths import SHARED
from tests.secret_files import write_secret_file

SHARED_HTCONDOR = SHARED / "htcondor"
WORKER_ENV = Path(os.environ.get("CASA_TEST_WORKER_ENV", "/opt/casa-worker-env"))
TRUST_DOMAIN = "casa.test"
#: the tests' pool copies a stored data token into running jobs this often (SEC_CREDENTIAL_REFRESH)
CREDENTIAL_REFRESH = 5


def find_test_htcondor() -> HTCondorInstall:
    """An installed HTCondor, else ``shared/htcondor``; fails (never skips) when neither is there."""
    try:
        return HTCondorInstall.find()
    except ConfigurationError:
        pass
    try:
        return HTCondorInstall.find(SHARED_HTCONDOR)
    except ConfigurationError as e:
        pytest.fail(f"no HTCondor for the tests: {e}")


def session_sleep_job(session: str, seconds: int) -> str:
    """A submit description of a job that only sleeps, tagged ``+CasaSession`` as a session's workers are."""
    return (
        "executable = /bin/sleep\n"
        f"arguments = {seconds}\n"
        "transfer_executable = false\n"
        "should_transfer_files = YES\n"
        f'+CasaSession = "{session}"\n'
        "queue\n"
    )


def worker_python() -> str:
    """A Python with dask and distributed that the slot user can run (built by scripts/install-test-deps)."""
    python = WORKER_ENV / "bin" / "python"
    if not os.access(python, os.X_OK):
        pytest.fail(f"{python} is missing: run scripts/install-test-deps (it builds the workers' environment)")
    return str(python)


class PoolThread:
    """A started :class:`CondorPool` on an event loop of its own, in a daemon thread."""

    def __init__(self, workdir: Path, **options):
        self.workdir = workdir
        self.signing_key = secrets.token_bytes(32)
        key_file = write_secret_file(workdir / "POOL", self.signing_key)
        self.pool = CondorPool(find_test_htcondor(), key_file, trust_domain=TRUST_DOMAIN,
                               log_copy_dir=workdir / "logs", **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="condor-pool", daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> "PoolThread":
        self.run(self.pool.start())
        return self

    @property
    def tools_dir(self) -> Path:
        """A directory for PATH with ``condor_reschedule``, which HTCondor's packages install (the same binary as
        ``condor_on``: the tool acts by its name) and the build in shared/htcondor lacks."""
        directory = self.workdir / "tools"
        if not (directory / "condor_reschedule").exists():
            directory.mkdir(exist_ok=True)
            found = self.install.bin / "condor_reschedule"
            (directory / "condor_reschedule").symlink_to(found if found.exists() else self.install.bin / "condor_on")
        return directory

    @property
    def tools_path(self) -> str:
        """PATH for code that runs HTCondor's tools against this pool: the installation's and :attr:`tools_dir`."""
        return os.pathsep.join([str(self.install.bin), str(self.tools_dir), os.environ.get("PATH", "")])

    def stop(self) -> None:
        try:
            self.run(self.pool.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    # -- what the tests use -----------------------------------------------------

    @property
    def install(self) -> HTCondorInstall:
        return self.pool.install

    def token(self, identity: str, lifetime: int = 3600, key: bytes | None = None, **claims) -> str:
        return make_idtoken(key or self.signing_key, trust_domain=TRUST_DOMAIN, identity=identity,
                            lifetime=lifetime, **claims).token

    def token_dir(self, identity: str, lifetime: int = 3600, key: bytes | None = None) -> Path:
        """A private directory holding one IDTOKEN for ``identity`` (``_CONDOR_SEC_TOKEN_DIRECTORY``)."""
        directory = Path(tempfile.mkdtemp(prefix="tokens-", dir=self.workdir))
        write_secret_file(directory / "casa", (self.token(identity, lifetime, key) + "\n").encode())
        return directory

    @property
    def credd_host(self) -> str:
        return self.pool.credd_host

    def session_environment(self, token_dir: Path) -> dict[str, str]:
        """What a session is given to reach this pool as the token's identity, and nothing else."""
        return {
            "CONDOR_CONFIG": "ONLY_ENV",
            "_CONDOR_COLLECTOR_HOST": self.pool.collector_host,
            "_CONDOR_SCHEDD_HOST": self.pool.schedd_name,
            "_CONDOR_TRUST_DOMAIN": TRUST_DOMAIN,
            "_CONDOR_SEC_TOKEN_DIRECTORY": str(token_dir),
            "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS": "IDTOKENS",
        }

    def tool(self, name: str, *args: str, token_dir: Path | None = None, timeout: float = 30.0,
             cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
        """Run an HTCondor tool: as the token's identity when ``token_dir`` is given, else as the pool's admin."""
        if token_dir is None:
            env = {**os.environ, **self.pool.admin_environment()}
        else:
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.session_environment(token_dir)}
        return subprocess.run([self.install.tool(name), *args], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)

    def queue(self, constraint: str = "true", *attrs: str) -> list[list[str]]:
        """Every job in the queue matching ``constraint`` (read as the admin): ``attrs`` of each."""
        done = self.tool("condor_q", "-all", "-constraint", constraint, "-af", *(attrs or ("ClusterId",)))
        assert done.returncode == 0, done.stdout + done.stderr
        return [line.split() for line in done.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def condor_pool(tmp_path_factory):
    """One real pool for the whole test session, with a credd; tests remove the jobs they submit (and are marked ``e2e``)."""
    pool = PoolThread(tmp_path_factory.mktemp("condor"), credential_refresh=CREDENTIAL_REFRESH).start()
    try:
        yield pool
    finally:
        pool.stop()
