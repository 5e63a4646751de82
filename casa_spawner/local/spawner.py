"""CasaLocalSpawner: the facility on one machine, from the same ``casa_hub`` plan as Kubernetes.

Per user, under ``<state_dir>/users/<slug>/`` (0700):

- ``credentials/`` -- the notebook's files (``bundle.for_audience("notebook")``), 0700/0600;
- ``scheduler/`` -- the scheduler's certificate only: the notebook never sees its key;
- ``scheduler.log`` -- the scheduler's output;

plus the Dask scheduler as a child process (TLS, on a free local port) and a Traefik
route file ``<routes_dir>/casa-dask-<slug>.yml``.  On stop -- or when the notebook
or the scheduler dies -- all of it goes.  The notebook runs as the hub's own user
(like JupyterHub's ``SimpleLocalProcessSpawner``): a laptop or demo facility, not a
multi-tenant one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import time
from functools import partial
from pathlib import Path

from jupyterhub.spawner import SimpleLocalProcessSpawner
from jupyterhub.utils import random_port
from traitlets import Float, Unicode, default

from casa_hub import bundle as b
from casa_hub.bundle import CredentialBundle, CredentialFile
from casa_hub.errors import ConfigurationError
from casa_hub.files import make_private_dir
from casa_hub.metrics import spawn_step
from casa_hub.plan import SessionPlan

from ..processes import ChildProcess, signal_group, tcp_accepts
from ..refresh import RENEW, STOP, session_started, upkeep
from ..session import SessionCore
from .routes import remove_route_file, write_route_file

STATE_KEY = "casa"


class CasaLocalSpawner(SessionCore, SimpleLocalProcessSpawner):
    """Notebook, Dask scheduler and Traefik route for each user, as local processes and files."""

    state_dir = Unicode(
        "/tmp/casa-local",
        config=True,
        help="""Directory for per-user sessions (credentials, scheduler files, logs); made 0700.

        Example: ``c.CasaLocalSpawner.state_dir = "/var/lib/casa"``.
        """,
    )
    routes_dir = Unicode(
        config=True,
        help="""Directory watched by Traefik's file provider; one route file per user is written here.

        Example: ``c.CasaLocalSpawner.routes_dir = "/var/lib/casa/traefik/routes"``.
        Defaults to ``<state_dir>/routes``.
        """,
    )

    @default("routes_dir")
    def _default_routes_dir(self):
        return os.path.join(self.state_dir, "routes")

    dask_entry_point = Unicode("dask", config=True, help="Name of Traefik's entry point for Dask (TLS passthrough).")
    scheduler_host = Unicode("127.0.0.1", config=True, help="Address the scheduler listens on (Traefik reaches it there).")
    scheduler_connect_host = Unicode(
        "",
        config=True,
        help="""Where notebooks and local workers connect to reach Traefik's ``dask`` entry point when
        ``<slug>.dask.<domain>`` does not resolve (no wildcard DNS), given to the notebook as
        ``CASA_SCHEDULER_CONNECT_HOST``; the scheduler name is still sent as TLS SNI.

        Example: ``c.CasaLocalSpawner.scheduler_connect_host = "127.0.0.1"``.
        """,
    )
    scheduler_start_timeout = Float(60.0, config=True, help="Seconds to wait for the scheduler to accept connections.")
    scheduler_stop_timeout = Float(10.0, config=True, help="Seconds between SIGTERM and SIGKILL when stopping the scheduler.")
    home_dir_template = Unicode(
        "",
        config=True,
        help="""Home directory of the notebook (``{username}``, ``{slug}``); defaults to ``<state_dir>/home/{slug}``.""",
    )
    home_skeleton = Unicode(
        "",
        config=True,
        help="""A directory whose files are copied into the user's home at each start where the home
        has no file of that name (like ``/etc/skel``; the user's own edits are kept), e.g. example
        notebooks.  Example: ``c.CasaLocalSpawner.home_skeleton = casa_session.EXAMPLES_DIR``.""",
    )

    @default("home_dir")
    def _default_home_dir(self):
        slug = self.facility.names(self.user.name).slug
        template = self.home_dir_template or os.path.join(self.state_dir, "home", "{slug}")
        return template.format(username=self.user.name, slug=slug)

    # -- session state --------------------------------------------------------

    def _reset_session(self):
        self.scheduler_proc: ChildProcess | None = None
        self.scheduler_pid = 0
        self.scheduler_port = 0
        self.dashboard_port = 0
        self.session_dir = ""
        self.route_name = ""
        self.session_id = ""  #: this start's CASA_SESSION_ID: teardown removes its HTCondor jobs
        self.bundle: CredentialBundle | None = None
        self._stored_data_token = None
        self.session_env: dict[str, str] = {}
        self._stopping = False

    def __init__(self, **kwargs):
        self._reset_session()
        # a renewal and a teardown never overlap: a renewal finishing after its session is gone
        # would write the credentials again, relative to the hub's working directory
        self._session_lock = asyncio.Lock()
        super().__init__(**kwargs)

    @property
    def credentials_dir(self) -> str:
        return os.path.join(self.session_dir, "credentials")

    @property
    def scheduler_dir(self) -> str:
        return os.path.join(self.session_dir, "scheduler")

    def get_state(self):
        state = super().get_state()
        if self.session_dir:
            state[STATE_KEY] = {
                "scheduler_pid": self.scheduler_pid,
                "scheduler_port": self.scheduler_port,
                "session_dir": self.session_dir,
                "route_name": self.route_name,
                "session_id": self.session_id,
                "credentials": [f.metadata() for f in (self.bundle.files if self.bundle else ())],
            }
        return state

    def load_state(self, state):
        super().load_state(state)
        saved = state.get(STATE_KEY)
        if saved:
            self.scheduler_pid = int(saved.get("scheduler_pid") or 0)
            self.scheduler_port = int(saved.get("scheduler_port") or 0)
            self.session_dir = saved.get("session_dir", "")
            self.route_name = saved.get("route_name", "")
            self.session_id = saved.get("session_id", "")
            self.bundle = _bundle_from_disk(self.credentials_dir, self.scheduler_dir, saved.get("credentials", []))

    # -- environment ------------------------------------------------------------

    def get_args(self):
        args = super().get_args()
        if os.geteuid() == 0:
            # the notebook runs as the hub's own user by design; Jupyter refuses root unless told
            args.append("--ServerApp.allow_root=True")
        return args

    def get_env(self):
        env = super().get_env()
        env.update(self.session_env)
        return env

    # -- lifecycle --------------------------------------------------------------

    async def start(self):
        self.refuse_named_server()
        names = self.facility.names(self.user.name)
        self.session_dir = os.path.join(self.state_dir, "users", names.slug)
        try:
            plan = await self._materialise()
            self.session_env = plan.environment(
                self.credentials_dir, f"tls://127.0.0.1:{self.scheduler_port}",
                # through the notebook server's jupyter-server-proxy: only who may use the notebook sees it
                dashboard_url="{JUPYTERHUB_SERVICE_PREFIX}proxy/%d/status" % self.dashboard_port,
            )
            if self.scheduler_connect_host:
                self.session_env["CASA_SCHEDULER_CONNECT_HOST"] = self.scheduler_connect_host
            if self.home_skeleton:
                await asyncio.to_thread(_copy_missing, self.home_skeleton, self.home_dir)
            started = await super().start()
            session_started(self, self.bundle)  # metrics and background refresh (casa_spawner.refresh)
            return started
        except BaseException:
            self.log.warning("Start of %s failed; removing its scheduler, route and credentials", self._log_name)
            await self._teardown()
            raise

    async def _materialise(self) -> SessionPlan:
        await asyncio.to_thread(self.facility.load_secrets)
        bundle = await self.issue_credentials()
        plan = self.plan(bundle, self.dask_entry_point)
        port, dashboard_port = random_port(), random_port()
        scheduler = dataclasses.replace(plan.scheduler, port=port, dashboard_port=dashboard_port)
        plan = dataclasses.replace(plan, scheduler=scheduler)
        self.bundle, self.scheduler_port, self.route_name = bundle, port, plan.route.name
        self.dashboard_port = dashboard_port
        self.session_id = plan.session_id

        await asyncio.to_thread(make_private_dir, self.session_dir)
        await asyncio.to_thread(self._write_credentials, bundle)
        await self.store_data_token()  # before the notebook exists: its first workers find the token in the credd
        await self._start_scheduler(plan)
        await asyncio.to_thread(write_route_file, self.routes_dir, plan.route, f"{self.scheduler_host}:{port}")
        self.log.info("Session of %s: scheduler pid %s on port %s, route %s", self._log_name, self.scheduler_pid, port, plan.route.host)
        return plan

    def _write_credentials(self, bundle: CredentialBundle) -> None:
        bundle.for_audience(b.NOTEBOOK).write_to(self.credentials_dir)
        bundle.for_audience(b.SCHEDULER).write_to(self.scheduler_dir)

    @spawn_step("scheduler")
    async def _start_scheduler(self, plan: SessionPlan) -> None:
        # the dashboard has no authentication of its own: loopback only on a shared machine
        cmd = plan.scheduler.command(self.scheduler_dir, host=self.scheduler_host, dashboard_host="127.0.0.1")
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "PYTHONPATH") if k in os.environ}
        env["HOME"] = self.session_dir
        self.scheduler_proc = ChildProcess(
            "Dask scheduler", cmd, log_path=os.path.join(self.session_dir, "scheduler.log"), env=env, cwd=self.session_dir,
        )
        await self.scheduler_proc.start()
        self.scheduler_pid = self.scheduler_proc.pid
        host = "127.0.0.1" if self.scheduler_host in ("", "0.0.0.0") else self.scheduler_host
        await self.scheduler_proc.wait_ready(
            partial(tcp_accepts, host, plan.scheduler.port), self.scheduler_start_timeout, interval=0.2,
            what=f"listening on port {plan.scheduler.port}",
        )

    def _scheduler_alive(self) -> bool:
        if self.scheduler_proc is not None:
            # the exit status arrives through the event loop a moment after the process is gone
            return self.scheduler_proc.returncode is None and _pid_exists(self.scheduler_proc.pid)
        return bool(self.scheduler_pid) and _is_our_process(self.scheduler_pid, self.scheduler_dir)

    async def _signal(self, sig):
        if sig == 0:
            # an exited notebook its old parent has not reaped (after a hub restart) is not running
            return _pid_exists(self.pid)
        return await super()._signal(sig)

    async def poll(self):
        status = await super().poll()
        if not self.session_dir or self._stopping:
            return status
        if status is not None:
            await self._teardown()
            return status
        if not self._scheduler_alive():
            self.log.warning("Dask scheduler of %s died; stopping the notebook", self._log_name)
            await self.stop(now=True)
            return 1
        action = await upkeep(self, self.bundle)  # IdP refresh, group re-check, certificate age (casa_spawner.refresh)
        if action == STOP:
            await self.stop(now=True)
            return 1
        if action == RENEW:
            await self._renew_credentials()
        return None

    async def _renew_credentials(self) -> None:
        async with self._session_lock:  # never while the session is torn down (the bundle is None then)
            await self.renew_in_poll()

    async def materialise_renewal(self, renewed: CredentialBundle, changed: list[CredentialFile]) -> None:
        """Rewrite the session's files (atomically, each) with the re-issued ones beside the rest."""
        await asyncio.to_thread(self._write_credentials, renewed)

    async def stop(self, now=False):
        self._stopping = True  # LocalProcessSpawner.stop polls: no renewal or recursion from there
        try:
            await super().stop(now=now)
        finally:
            await self._teardown()

    async def _teardown(self) -> None:
        """Remove the route, stop the scheduler, delete the session directory.  Safe to repeat."""
        async with self._session_lock:
            if self.route_name:
                await asyncio.to_thread(remove_route_file, self.routes_dir, self.route_name)
            await self._stop_scheduler()
            await self.remove_session_jobs()
            if self.session_dir:
                await asyncio.to_thread(shutil.rmtree, self.session_dir, True)
            self._reset_session()  # the session's state goes exactly when its resources have

    async def _stop_scheduler(self) -> None:
        proc, pid = self.scheduler_proc, self.scheduler_pid
        if proc is not None:
            await proc.stop(self.scheduler_stop_timeout)
        elif pid and _is_our_process(pid, self.scheduler_dir):
            # after a hub restart: not our child any more, so watch the pid go (bounded)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                signal_group(pid, sig)  # start_new_session: the scheduler leads its own group
                deadline = time.monotonic() + self.scheduler_stop_timeout
                while _pid_exists(pid) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                if not _pid_exists(pid):
                    break
            else:
                self.log.warning("Dask scheduler of %s (pid %s) did not die on SIGKILL", self._log_name, pid)
        self.scheduler_proc, self.scheduler_pid = None, 0


# -- helpers ------------------------------------------------------------------


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not reaped by its parent) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _is_our_process(pid: int, scheduler_dir: str) -> bool:
    """True if ``pid`` is alive and is the scheduler reading ``scheduler_dir`` (not a recycled pid)."""
    if not _pid_exists(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    return any(arg.decode(errors="replace").startswith(scheduler_dir + os.sep) for arg in cmdline)


def _copy_missing(skeleton: str, home: str) -> None:
    """Copy the files of ``skeleton`` into ``home`` where ``home`` has none of that name (blocking)."""
    src = Path(skeleton)
    if not src.is_dir():
        raise ConfigurationError(f"CasaLocalSpawner.home_skeleton {skeleton!r} is not a directory")
    for path in sorted(src.rglob("*")):
        target = Path(home, path.relative_to(src))
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def _bundle_from_disk(credentials_dir: str, scheduler_dir: str, metas: list[dict]) -> CredentialBundle | None:
    """The session's bundle after a hub restart: contents from the files, times from the state."""
    files = []
    for meta in metas:
        audiences = frozenset(meta["audiences"])
        root = credentials_dir if b.NOTEBOOK in audiences else scheduler_dir
        try:
            content = Path(root, meta["path"]).read_bytes()
        except OSError:
            return None
        files.append(CredentialFile.from_metadata(meta, content))
    return CredentialBundle(tuple(files)) if files else None
