"""A one-machine HTCondor pool (collector, negotiator, schedd, startd, credd) for ``casa demo`` and the tests.

HTCondor is found like on a site: ``condor_master`` on PATH (or in ``<dir>/sbin`` when a
directory is given), the tools beside it in ``bin``.  :func:`pool_config` is the pure builder
of the pool's configuration; :class:`CondorPool` lays out its local directory, copies the
pool signing key in, and runs ``condor_master -f``.

Started as root, the pool runs as ``nobody``: it then checks no OS accounts, so every
token identity (``alice@<trust domain>``) may submit, and every job runs as ``nobody``.
Everything the daemons read lives in a private run directory owned by that account (a
state directory under ``/root`` is not traversable by it) and is deleted on stop, the
copy of the signing key with it.  The pool listens on 127.0.0.1 only.

With ``credential_refresh`` set, the pool also runs a ``condor_credd`` on a fixed port
(:attr:`CondorPool.credd_host`): users store their data token there (``condor_store_cred
add-oauth``, authenticated by their own IDTOKEN), and the starter copies it into every job that
asks for it (``use_oauth_services``), refreshing the copy every ``credential_refresh`` seconds.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jupyterhub.utils import random_port

from casa_hub.condor_token import check_trust_domain
from casa_hub.errors import ConfigurationError
from casa_hub.secrets import read_secret_file

from ..processes import ChildProcess, ProcessStartError

LOCAL_SUBDIRS = ("log", "spool", "execute", "lock", "run", "passwords.d", "tokens.d", "oauth_credentials")
TOOL_TIMEOUT = 20.0


@dataclass(frozen=True)
class HTCondorInstall:
    """Where HTCondor's daemons (``sbin``) and tools (``bin``) are."""

    sbin: Path
    bin: Path

    @classmethod
    def find(cls, directory: str | os.PathLike | None = None) -> "HTCondorInstall":
        """``directory/{bin,sbin}`` if given, else ``condor_master`` and ``condor_submit`` on PATH.

        Raises :class:`ConfigurationError` saying what is missing."""
        if directory is not None:
            root = Path(directory).expanduser().resolve()
            found = cls(root / "sbin", root / "bin")
            for tool in (found.sbin / "condor_master", found.bin / "condor_submit"):
                if not os.access(tool, os.X_OK):
                    raise ConfigurationError(f"{directory} is not an HTCondor installation: {tool} is missing")
            return found
        path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
        master, submit = shutil.which("condor_master", path=path), shutil.which("condor_submit", path=path)
        if not master or not submit:
            raise ConfigurationError(
                "HTCondor's daemons were not found (condor_master and condor_submit on PATH); "
                "install HTCondor or point at an installation with bin/ and sbin/"
            )
        return cls(Path(master).resolve().parent, Path(submit).resolve().parent)

    @property
    def release_dir(self) -> Path:
        return self.sbin.parent

    def tool(self, name: str) -> str:
        return str(self.bin / name)

    def sbin_tool(self, name: str) -> str:
        """A tool packages put beside the daemons, e.g. ``condor_store_cred``."""
        return str(self.sbin / name)


def credd_config(port: int, refresh: int) -> str:
    """The credd's part of :func:`pool_config`: users' OAuth tokens, copied into jobs every ``refresh`` seconds."""
    if not (0 < int(port) < 65536 and int(refresh) > 0):
        raise ValueError(f"credd port {port} and credential refresh {refresh}s must be positive")
    return f"""\
# the credd keeps each user's data token (condor_store_cred add-oauth -P -s <service>); the starter
# copies it into the jobs that ask for it (use_oauth_services) as $_CONDOR_CREDS/<service>.use, 0600,
# and copies it again every SEC_CREDENTIAL_REFRESH seconds while they run
DAEMON_LIST = $(DAEMON_LIST), CREDD
SEC_CREDENTIAL_DIRECTORY_OAUTH = $(LOCAL_DIR)/oauth_credentials
SEC_CREDENTIAL_REFRESH = {int(refresh)}
# a fixed port: the schedd advertises the credd's address (CredDIpAddr) to condor_submit, and
# a credd restarted on another port would leave that address stale until the schedd's next reconfig
CREDD_ARGS = -p {int(port)}
CREDD_HOST = 127.0.0.1:{int(port)}
"""


def pool_config(*, local_dir: str, install: HTCondorInstall, port: int, trust_domain: str, daemon_user: str,
                daemon_ids: tuple[int, int], num_cpus: int = 4, credd_port: int = 0, credential_refresh: int = 0,
                extra_config: str = "") -> str:
    """The pool's whole configuration (``CONDOR_CONFIG``): loopback, IDTOKENS and FS, fast cycles;
    with ``credd_port`` and ``credential_refresh``, a credd (:func:`credd_config`); ``extra_config`` last."""
    check_trust_domain(trust_domain)
    libexec = install.release_dir / "libexec"
    if (libexec / "condor").is_dir():  # Debian and RPM packages: /usr/libexec/condor
        libexec = libexec / "condor"
    return f"""\
# written by casa_spawner.demo.condor: a one-machine pool on 127.0.0.1
RELEASE_DIR = {install.release_dir}
SBIN = {install.sbin}
BIN = {install.bin}
LIBEXEC = {libexec}
LOCAL_DIR = {local_dir}
LOG = $(LOCAL_DIR)/log
SPOOL = $(LOCAL_DIR)/spool
EXECUTE = $(LOCAL_DIR)/execute
LOCK = $(LOCAL_DIR)/lock
RUN = $(LOCAL_DIR)/run

CONDOR_HOST = 127.0.0.1
NETWORK_INTERFACE = 127.0.0.1
COLLECTOR_PORT = {port}
COLLECTOR_HOST = 127.0.0.1:$(COLLECTOR_PORT)
USE_SHARED_PORT = False
DAEMON_LIST = MASTER, COLLECTOR, NEGOTIATOR, SCHEDD, STARTD
# a name with "@" is looked up in the collector as it is (a bare host name is resolved first,
# and HTCondor does not accept a host name that resolves to loopback)
SCHEDD_NAME = casa@127.0.0.1
# the daemons' account; root's tools need it too where no "condor" account exists
CONDOR_IDS = {daemon_ids[0]}.{daemon_ids[1]}

UID_DOMAIN = {trust_domain}
TRUST_DOMAIN = {trust_domain}
SEC_PASSWORD_DIRECTORY = $(LOCAL_DIR)/passwords.d
SEC_TOKEN_SYSTEM_DIRECTORY = $(LOCAL_DIR)/tokens.d
SEC_DEFAULT_AUTHENTICATION = REQUIRED
SEC_DEFAULT_AUTHENTICATION_METHODS = FS, IDTOKENS
SEC_DEFAULT_ENCRYPTION = REQUIRED
SEC_DEFAULT_INTEGRITY = REQUIRED
# reading the collector and the queue needs no identity (as on most sites), so a client whose
# token is refused finds the schedd and hears the refusal in the schedd's own words
SEC_READ_AUTHENTICATION = OPTIONAL
ALLOW_ADMINISTRATOR = root@*, {daemon_user}@*
ALLOW_DAEMON = root@*, {daemon_user}@*
ALLOW_NEGOTIATOR = root@*, {daemon_user}@*
ALLOW_WRITE = *
ALLOW_READ = *

STARTER_ALLOW_RUNAS_OWNER = False
NUM_CPUS = {int(num_cpus)}
START = TRUE
SUSPEND = FALSE
PREEMPT = FALSE
KILL = FALSE

SCHEDD_INTERVAL = 5
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_CYCLE_DELAY = 5
STARTER_UPDATE_INTERVAL = 5
UPDATE_INTERVAL = 5
RUNBENCHMARKS = 0

ENABLE_URL_TRANSFERS = False
JAVA =
SINGULARITY = /bin/false
HIBERNATE_CHECK_INTERVAL = 0
""" + (credd_config(credd_port, credential_refresh) if credd_port else "") + extra_config


class CondorPool:
    """A private HTCondor pool on 127.0.0.1, started and stopped asynchronously.

    ``await start()`` returns once the schedd and the startd are in the collector;
    ``await stop()`` ends the pool and deletes its run directory.
    """

    def __init__(
        self,
        install: HTCondorInstall,
        signing_key_file: str | os.PathLike,
        *,
        trust_domain: str = "casa.test",
        port: int = 0,
        num_cpus: int = 4,
        run_as: str = "nobody",
        log_copy_dir: str | os.PathLike | None = None,
        ready_timeout: float = 60.0,
        credential_refresh: int = 0,
        extra_config: str = "",
    ):
        self.install = install
        self.signing_key_file = str(signing_key_file)
        self.trust_domain = check_trust_domain(trust_domain)
        self.port = port
        self.num_cpus = num_cpus
        self.run_as = run_as  #: the daemons' account when started as root; otherwise they run as the caller
        self.log_copy_dir = Path(log_copy_dir) if log_copy_dir else None
        self.ready_timeout = ready_timeout
        self.credential_refresh = credential_refresh  #: seconds between copies of a stored token into jobs; 0: no credd
        self.credd_port = 0
        self.extra_config = extra_config  #: configuration lines appended last, e.g. ``"ALL_DEBUG = D_SUB_SECOND\n"``
        self.run_dir: Path | None = None
        self.schedd_name = ""
        self.master: ChildProcess | None = None

    # -- what clients need ------------------------------------------------------

    @property
    def collector_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def credd_host(self) -> str:
        """The credd's address (``CREDD_HOST`` of the tools that store tokens), "" without one."""
        return f"127.0.0.1:{self.credd_port}" if self.credd_port else ""

    @property
    def config_file(self) -> Path:
        if self.run_dir is None:
            raise RuntimeError("the HTCondor pool is not started")
        return self.run_dir / "condor_config"

    def admin_environment(self) -> dict[str, str]:
        """Environment for HTCondor's tools run by this process's user (FS authentication): the pool's config."""
        return {"CONDOR_CONFIG": str(self.config_file), "PATH": f"{self.install.bin}{os.pathsep}{os.environ.get('PATH', '')}"}

    async def run_tool(self, tool: str, *args: str, env: dict[str, str] | None = None,
                       timeout: float = TOOL_TIMEOUT) -> tuple[int, str]:
        """Run one of HTCondor's tools against this pool; its exit status and output (stdout + stderr)."""
        proc = await asyncio.create_subprocess_exec(
            self.install.tool(tool), *args, env={**os.environ, **self.admin_environment(), **(env or {})},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return -1, f"{tool} did not answer within {timeout:g}s"
        return proc.returncode, out.decode(errors="replace")

    # -- lifecycle --------------------------------------------------------------

    def _prepare_run_dir(self) -> list[str]:
        """Lay out the local directory, key and config (blocking: run in a thread); the command line."""
        key = read_secret_file(self.signing_key_file, "HTCondor signing key")
        as_root = os.geteuid() == 0
        owner = pwd.getpwnam(self.run_as) if as_root else pwd.getpwuid(os.geteuid())
        run_dir = self.run_dir = Path(tempfile.mkdtemp(prefix="casa-condor-"))
        os.chmod(run_dir, 0o700)
        for sub in LOCAL_SUBDIRS:
            (run_dir / sub).mkdir(mode=0o700)
        fd = os.open(run_dir / "passwords.d" / "POOL", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
        if not self.port:
            self.port = random_port()
        if self.credential_refresh and not self.credd_port:
            self.credd_port = random_port()
        (run_dir / "condor_config").write_text(
            pool_config(local_dir=str(run_dir), install=self.install, port=self.port,
                        trust_domain=self.trust_domain, daemon_user=owner.pw_name,
                        daemon_ids=(owner.pw_uid, owner.pw_gid), num_cpus=self.num_cpus,
                        credd_port=self.credd_port, credential_refresh=self.credential_refresh,
                        extra_config=self.extra_config)
        )
        if as_root:
            for path in [run_dir, *run_dir.rglob("*")]:
                os.lchown(path, owner.pw_uid, owner.pw_gid)
        return [str(self.install.sbin / "condor_master"), "-f"]

    async def start(self) -> None:
        """Start the pool; on failure nothing is left behind (no process, no run directory)."""
        if self.master is not None:
            raise RuntimeError("the HTCondor pool is already started")
        try:
            argv = await asyncio.to_thread(self._prepare_run_dir)
            as_root = os.geteuid() == 0
            self.master = ChildProcess(
                "HTCondor (condor_master)", argv, log_path=self.run_dir / "master.out",
                env={"CONDOR_CONFIG": str(self.config_file), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                     "HOME": str(self.run_dir)},
                cwd=self.run_dir, user=self.run_as if as_root else None, group=self.run_as_group() if as_root else None,
            )
            await self.master.start()
            await self.master.wait_ready(self._daemons_advertised, self.ready_timeout, interval=0.5,
                                         what="ready (schedd and startd in the collector" + (", credd" if self.credd_port else "") + ")")
        except ProcessStartError as e:
            logs = await asyncio.to_thread(self._daemon_log_tails)
            await self.stop()
            raise ProcessStartError(f"{e}\n{logs}") from None
        except BaseException:
            await self.stop()
            raise

    def run_as_group(self) -> int:
        return pwd.getpwnam(self.run_as).pw_gid

    async def _daemons_advertised(self) -> bool:
        code, out = await self.run_tool("condor_status", "-schedd", "-af", "Name", timeout=5)
        names = out.split() if code == 0 else []
        if not names:
            return False
        code, slots = await self.run_tool("condor_status", "-startd", "-af", "Name", timeout=5)
        if code != 0 or not slots.split():
            return False
        if self.credd_port and not await self._schedd_knows_the_credd():
            return False
        self.schedd_name = names[0]
        return True

    async def _schedd_knows_the_credd(self) -> bool:
        """True once the schedd advertises the credd (``CredDIpAddr``: where condor_submit checks a job's
        tokens).  The schedd looks for a local credd only when it starts or is reconfigured, so a schedd
        that came up before the credd is told to look again."""
        code, out = await self.run_tool("condor_status", "-any", "-constraint", 'MyType == "CredD"', "-af", "MyAddress", timeout=5)
        if code != 0 or f"127.0.0.1:{self.credd_port}" not in out:
            return False  # the credd is not up yet
        code, out = await self.run_tool("condor_status", "-schedd", "-af", "CredDIpAddr", timeout=5)
        if code == 0 and f"127.0.0.1:{self.credd_port}" in out:
            return True
        await self.run_tool("condor_reconfig", "-daemon", "schedd", timeout=5)
        return False

    def _daemon_log_tails(self, lines: int = 10) -> str:
        if self.run_dir is None:
            return ""
        parts = []
        for log in sorted((self.run_dir / "log").glob("*Log")):
            try:
                tail = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"--- {log.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the master (it shuts every daemon and job down), wait, delete the run directory.  Idempotent."""
        master, self.master = self.master, None
        if master is not None:
            await master.stop(timeout)
        run_dir, self.run_dir = self.run_dir, None
        if run_dir is not None:
            await asyncio.to_thread(self._keep_logs_and_remove, run_dir)

    def _keep_logs_and_remove(self, run_dir: Path) -> None:
        if self.log_copy_dir is not None:
            self.log_copy_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            for log in [*(run_dir / "log").glob("*Log"), run_dir / "master.out"]:
                if log.is_file():
                    shutil.copyfile(log, self.log_copy_dir / log.name)
        shutil.rmtree(run_dir, ignore_errors=True)
