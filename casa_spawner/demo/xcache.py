"""An XRootD server playing the facility's XCache on one machine (HTTP + macaroons).

``XCacheServer`` runs Debian's ``xrootd`` 5.5 with ``libXrdHttp`` and
``libXrdMacaroons``: users present the macaroons the hub issues
(``Authorization: Bearer <token>``), and the server checks them against the same
``macaroons.secretkey`` the hub signs with.  The export holds a demo data file under
``/store/data/...`` and one area per user under ``/store/user/<name>/``.

``xrootd`` refuses to run as root: as root it is started with ``-R nobody``, so
everything it reads -- configuration, a copy of the secret, the export -- lives in a
private run directory owned by that account (a state directory under ``/root`` is
not traversable by ``nobody``).  The run directory, with the secret copy, is deleted
on :meth:`XCacheServer.stop`.

:func:`xrootd_config` is the pure builder; :class:`XCacheServer` the side effects.
"""

from __future__ import annotations

import asyncio
import base64
import os
import pwd
import shutil
import tempfile
from pathlib import Path

from jupyterhub.utils import random_port
from traitlets import Dict, Float, Int, List, Unicode, default
from traitlets.config import LoggingConfigurable

from casa_hub.files import atomic_write
from casa_hub.errors import ConfigurationError
from casa_hub.macaroon import decode_secret
from casa_hub.secrets import read_secret_file

from ..processes import ChildProcess, ProcessStartError

#: Where the demo data file lives inside the export, and what it says.
DEMO_DATA_PATH = "/store/data/casa-demo/hello.txt"
DEMO_DATA = b"Hello from the casa demo XCache: this file lives under /store/data.\n"


class XCacheStartError(ProcessStartError):
    """The XRootD server did not come up; the message ends with the tail of its log."""


def xrootd_config(
    *,
    port: int,
    sitename: str,
    secret_path: str,
    export_root: str,
    admin_dir: str,
    authdb_path: str,
    maxduration: int = 86400,
    exports: tuple[str, ...] = ("/store",),
    extra_config: tuple[str, ...] = (),
) -> str:
    """The ``xrootd`` configuration: one port for xroot and HTTP, macaroons authorize.

    Requests without a valid macaroon fall through to ``acc.authdb`` (``authdb_path``):
    an empty file refuses them.  Never add ``http.trace all``: it logs bearer tokens.
    """
    lines = [
        f"all.sitename {sitename}",
        *(f"all.export {e}" for e in exports),
        f"oss.localroot {export_root}",
        f"all.adminpath {admin_dir}",
        f"all.pidpath {admin_dir}",
        f"xrd.port {int(port)}",
        f"xrd.protocol XrdHttp:{int(port)} libXrdHttp.so",
        "http.header2cgi Authorization authz",
        "ofs.authorize 1",
        "ofs.authlib libXrdMacaroons.so",
        f"acc.authdb {authdb_path}",
        f"macaroons.secretkey {secret_path}",
        f"macaroons.maxduration {int(maxduration)}",
        *extra_config,
    ]
    return "\n".join(lines) + "\n"


def authdb_rules(public_paths) -> str:
    """``acc.authdb`` text: read/list for anyone on ``public_paths``, nothing else without a macaroon."""
    for p in public_paths:
        if not p.startswith("/") or any(c.isspace() for c in p):
            raise ConfigurationError(f"invalid public XCache path {p!r}: absolute, without spaces")
    rules = "".join(f"u * {p} lr\n" for p in public_paths)
    return "# without a valid macaroon only these paths are readable\n" + rules


def ensure_macaroon_secret(path: os.PathLike | str, nbytes: int = 48) -> Path:
    """Create a ``macaroons.secretkey`` file (mode 0600) unless one exists; return its path.

    The file is one base64 line *with* a trailing newline: XRootD decodes it with
    OpenSSL's base64 BIO, which reads nothing from a line without one.  An existing
    file is checked (mode, length) rather than replaced, so tokens stay valid across runs.
    """
    path = Path(path)
    if path.exists():
        decode_secret(read_secret_file(str(path), "macaroon secret"))
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, base64.b64encode(os.urandom(nbytes)) + b"\n", mode=0o600)
    return path


class XCacheServer(LoggingConfigurable):
    """A local XRootD server with macaroon authorization, started and stopped asynchronously."""

    sitename = Unicode(
        "CASA_DEMO",
        config=True,
        help="""``all.sitename``: must equal the macaroons' location (``Facility.xcache_site``).""",
    )
    secret_file = Unicode(
        config=True,
        help="""The ``macaroons.secretkey`` file (base64 line, mode 0600), the one the hub signs with.
        Example: ``"/var/lib/casa-demo/macaroon-secret"``.""",
    )
    port = Int(0, config=True, help="Port for xroot and HTTP; 0 picks a free one.")
    maxduration = Int(86400, config=True, help="``macaroons.maxduration``: longest macaroon life accepted, seconds.")
    users = List(Unicode(), config=True, help="""Users who get an area ``/store/user/<name>/``, e.g. ``["alice", "bob"]``.""")
    files = Dict(
        config=True,
        help="""Files to serve: export path -> bytes, e.g. ``{"/store/data/x.txt": b"..."}``.
        Defaults to the demo data file.""",
    )

    @default("files")
    def _default_files(self):
        return {DEMO_DATA_PATH: DEMO_DATA}

    public_paths = List(
        Unicode(),
        config=True,
        help="""Export paths anyone may read and list without a token (``acc.authdb`` rule
        ``u * <path> lr``), e.g. ``["/store/data"]`` for open data.  Empty: every request needs a macaroon.""",
    )
    extra_config = List(Unicode(), config=True, help="""Configuration lines appended verbatim, e.g. ``["macaroons.trace all"]``.""")
    run_as = Unicode("nobody", config=True, help="Account ``xrootd -R`` switches to when started as root.")
    xrootd = Unicode(config=True, help="The ``xrootd`` executable; found on PATH by default.")

    @default("xrootd")
    def _default_xrootd(self):
        return shutil.which("xrootd") or ""

    log_copy = Unicode(
        "",
        config=True,
        help="""Where to keep a copy of the server log when it stops (the run directory is deleted),
        e.g. ``"/var/lib/casa-demo/logs/xrootd.log"``.  The log never holds a token or the secret.""",
    )
    ready_timeout = Float(30.0, config=True, help="Seconds to wait for the server to answer HTTP before giving up.")

    run_dir: Path | None = None
    process: ChildProcess | None = None

    @property
    def url(self) -> str:
        """HTTP(S)-style base URL on loopback: ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def root_url(self) -> str:
        """The address given to notebooks as ``XCACHE_HOST``: ``root://127.0.0.1:<port>``."""
        return f"root://127.0.0.1:{self.port}"

    @property
    def export_root(self) -> Path:
        if self.run_dir is None:
            raise RuntimeError("the XCache server is not started")
        return self.run_dir / "data"

    @property
    def log_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "xrootd.log"

    def log_tail(self, lines: int = 30) -> str:
        return self.process.log_tail(lines) if self.process is not None else ""

    def _prepare_run_dir(self) -> list[str]:
        """Lay out the private run directory; return the command line (blocking: run in a thread)."""
        if not self.xrootd:
            raise ConfigurationError("the xrootd binary is not installed (Debian: xrootd-server xrootd-server-plugins)")
        decode_secret(read_secret_file(self.secret_file, "macaroon secret"))  # fail early and clearly
        as_root = os.geteuid() == 0
        run_dir = self.run_dir = Path(tempfile.mkdtemp(prefix="casa-xcache-"))
        os.chmod(run_dir, 0o700 if not as_root else 0o711)
        export_root = run_dir / "data"
        (export_root / "store").mkdir(parents=True)
        for name in self.users:
            if not name or "/" in name or name in (".", ".."):
                raise ConfigurationError(f"invalid XCache user area name {name!r}")
            (export_root / "store" / "user" / name).mkdir(parents=True, exist_ok=True)
        for export_path, content in self.files.items():
            target = export_root / export_path.lstrip("/")
            if not export_path.startswith("/store/") or ".." in Path(export_path).parts:
                raise ConfigurationError(f"XCache file {export_path!r} must lie under /store/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        admin_dir = run_dir / "admin"
        admin_dir.mkdir()
        secret_copy = run_dir / "macaroon-secret"
        fd = os.open(secret_copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(Path(self.secret_file).read_bytes())
        authdb = run_dir / "authdb"
        authdb.write_text(authdb_rules(self.public_paths))
        if not self.port:
            self.port = random_port()
        config = run_dir / "xrootd.cfg"
        config.write_text(
            xrootd_config(
                port=self.port,
                sitename=self.sitename,
                secret_path=str(secret_copy),
                export_root=str(export_root),
                admin_dir=str(admin_dir),
                authdb_path=str(authdb),
                maxduration=self.maxduration,
                extra_config=tuple(self.extra_config),
            )
        )
        cmd = [self.xrootd, "-c", str(config)]
        if as_root:
            pw = pwd.getpwnam(self.run_as)
            for path in [run_dir, *run_dir.rglob("*")]:
                os.lchown(path, pw.pw_uid, pw.pw_gid)
            cmd[1:1] = ["-R", self.run_as]
        return cmd

    async def start(self) -> None:
        """Start ``xrootd`` and return once it answers HTTP; on failure nothing is left behind."""
        if self.process is not None:
            raise RuntimeError("the XCache server is already started")
        proc = None
        try:
            cmd = await asyncio.to_thread(self._prepare_run_dir)
            proc = ChildProcess("xrootd", cmd, log_path=self.log_path, cwd=self.run_dir)
            await proc.start()
            self.process = proc  # once it has a pid
            self.log.info("XCache stand-in (xrootd pid %s) starting on port %s", self.process.pid, self.port)
            await self.process.wait_ready(self._answers_http, self.ready_timeout, interval=0.2,
                                          what=f"answering HTTP on port {self.port}")
        except ProcessStartError as e:
            await self.stop()
            raise XCacheStartError(str(e)) from None
        except BaseException:  # cancelled (Ctrl-C while starting) or anything else: leave nothing
            self.process = proc
            await self.stop()
            raise

    async def _answers_http(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 2)
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            writer.write(b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 2)
            return status.startswith(b"HTTP/")  # any status: XrdHttp is serving
        except (OSError, asyncio.TimeoutError):
            return False
        finally:
            writer.close()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and delete its run directory.  Idempotent."""
        proc, self.process = self.process, None
        if proc is not None:
            await proc.stop(timeout)
            self.log.info("XCache stand-in stopped")
        run_dir, self.run_dir = self.run_dir, None
        if run_dir is not None:
            await asyncio.to_thread(self._keep_log_and_remove, run_dir)

    def _keep_log_and_remove(self, run_dir: Path) -> None:
        if self.log_copy and (run_dir / "xrootd.log").exists():
            try:
                shutil.copyfile(run_dir / "xrootd.log", self.log_copy)
            except OSError as e:
                self.log.warning("Could not keep the xrootd log in %s: %s", self.log_copy, e)
        shutil.rmtree(run_dir, ignore_errors=True)
