"""The one-machine facility's XCache: an XRootD origin holding ``/store`` behind a real XCache.

Two ``xrootd`` 5.5 processes (Debian ``xrootd-server`` + ``xrootd-server-plugins``):

* the **origin** serves the export ``/store`` (a demo data file under ``/store/data/...``, one
  area per user under ``/store/user/<name>/``);
* the **cache** is XRootD's proxy (``libXrdPss``) with its file cache (``libXrdPfc``) in front of
  the origin: it stores each file it reads under :attr:`XCacheServer.cache_root`, and serves a
  file read once from there afterwards (even with the origin down).

Both serve the two protocols physicists read with, on one port, and check the hub's macaroons
(``libXrdMacaroons``, the same ``macaroons.secretkey`` the hub signs with, ``all.sitename`` = the
macaroons' location):

* **HTTPS** (``libXrdHttp``): the token in ``Authorization: Bearer <token>``
  (``http.header2cgi Authorization authz``), checked at every request;
* **root://** with XRootD's token authentication **ztn** (``sec.protocol ztn -tokenlib
  libXrdMacaroons.so``: ztn hands the token to the macaroon library's validator at login, and
  ``libXrdMacaroons`` 5.5 authorizes each open/stat with the token ztn delivered, ``Entity.creds``).
  ztn needs TLS (the server then requires it at login: a ``root://`` client upgrades, and the token
  never travels in clear).  ``-expiry optional``: 5.5 parses ``-expiry`` backwards and its
  macaroon validator never reports an expiry time, so the default (``required``) compares an
  uninitialised value; with ``optional`` the login check is the macaroon's own ``before:`` caveat
  (an expired token cannot log in) and every open re-checks it.

Requests without a valid macaroon fall through to ``acc.authdb``: only ``public_paths`` are
readable that way.

**How the cache fetches a miss.**  A ztn client's token is bound to its connection; XrdPss only
forwards a request's CGI (where the HTTPS bearer header ends up), so nothing of a ``root://``
user's token could reach the origin.  As real XCache deployments do, the cache therefore
authenticates to the origin with its **own identity**: XRootD's ``sss`` (a shared-secret keytab
made for each run, readable only by the servers' account), which the origin's ``acc.authdb`` lets
read ``/store`` (``g xcache /store lr``).  The cache is where users' tokens are enforced, for both
protocols; the origin still checks every request that does not come from the cache (a user going
around the cache needs a valid token there too).  The cache's client verifies the origin's TLS
certificate with the run's CA as a hashed CA directory (XRootD 5.5's client reads only
``X509_CERT_DIR``).

Each run makes its own CA and server certificate (:mod:`.server_tls`) for ``localhost`` and
``127.0.0.1``; clients verify the cache with the CA certificate (:attr:`XCacheServer.ca_file`,
copied to ``ca_copy``).  XrdHttp 5.5 also answers plain HTTP on the same port (it detects TLS per
connection): the HTTPS address is :attr:`XCacheServer.url`, the ``root://`` one
:attr:`XCacheServer.root_url` (same port).  The cache reaches the origin by ``root://`` (TLS, sss)
on loopback (TLS for the login; the file data on a data stream in clear).  Never turn on ``pfc.trace``/``http.trace``/``sec.trace`` above ``warning``: they
log request URLs or credentials with the token.

``xrootd`` refuses to run as root: as root both are started with ``-R nobody``, so everything they
read -- configuration, a copy of the secret, the TLS key, the export, the cache -- lives in a
private run directory handed to that account (a state directory under ``/root`` is not traversable
by ``nobody``).  The run directory, with the secret copy and the key, is deleted on
:meth:`XCacheServer.stop`.

:func:`xrootd_config` and :func:`cache_config` are the pure builders; :class:`XCacheServer` the
side effects (processes through :class:`~casa_spawner.processes.ChildProcess`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import pwd
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

from jupyterhub.utils import random_port
from traitlets import Dict, Float, Int, List, Unicode, default
from traitlets.config import LoggingConfigurable

from casa_hub.errors import CasaError, ConfigurationError
from casa_hub.ca_dir import add_ca
from casa_hub.files import atomic_write
from casa_hub.macaroon import decode_secret
from casa_hub.secrets import read_secret_file

from ..processes import ChildProcess, ProcessStartError
from .server_tls import make_server_tls

#: Where the demo data file lives inside the export, and what it says.
DEMO_DATA_PATH = "/store/data/casa-demo/hello.txt"
DEMO_DATA = b"Hello from the casa demo XCache: this file lives under /store/data.\n"
HOST = "localhost"  #: the name in the servers' certificate and in their URLs


class XCacheStartError(CasaError):
    """The XCache or its origin did not come up; the message ends with the tail of its log."""


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
    tls: tuple[str, str, str] | None = None,
    sss_keytab: str = "",
    extra_config: tuple[str, ...] = (),
) -> str:
    """The ``xrootd`` configuration: one port for xroot and HTTP(S), macaroons authorize.

    ``tls`` = (certificate, key, CA file) turns on TLS: XrdHttp then answers HTTPS, and
    ``root://`` clients authenticate with their token by ztn (which requires TLS).
    ``sss_keytab`` also accepts XRootD's shared-secret protocol (the cache's own identity).
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
    ]
    if tls is not None:
        cert, key, ca = tls
        lines += [f"xrd.tls {cert} {key}", f"xrd.tlsca certfile {ca}"]
    if tls is not None or sss_keytab:
        lines.append("xrootd.seclib libXrdSec.so")
    if tls is not None:
        lines.append("sec.protocol ztn -expiry optional -tokenlib libXrdMacaroons.so")
    if sss_keytab:
        lines.append(f"sec.protocol sss -s {sss_keytab}")
    lines += [
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


def cache_config(*, origin: str, ram: str = "1g", blocksize: str = "1m", prefetch: int = 10,
                 connect_timeout: int = 5, data_streams: int = 2) -> tuple[str, ...]:
    """Lines that turn an :func:`xrootd_config` server into an XCache of ``origin`` (``host:port``).

    Its ``oss.localroot`` becomes the cache's storage.  ``pfc.ram`` below ``1g`` is refused by 5.5.
    ``pfc.blocksize``/``pfc.prefetch``: what the cache asks the origin for at a time, and how many
    blocks ahead (``bench.xcache`` measures them).  The cache tries an unreachable origin once, for
    ``connect_timeout`` seconds (XRootD's default: 120 s, 5 times): a miss with the origin down then
    fails in about 20 s (measured; 5.5's client checks its timeouts every 15 s) instead of outliving
    the reader's own timeout.  ``data_streams``: the link's data streams beside its main (TLS) one, where
    the cache's client (``XRD_TLSNODATA``) reads the file data in clear -- it stays on loopback -- and
    the cold read spends no CPU on encrypting and decrypting it once more.
    """
    return (
        "ofs.osslib libXrdPss.so", f"pss.origin {origin}", "pss.cachelib libXrdPfc.so",
        f"pss.setopt ConnectTimeout {int(connect_timeout)}", "pss.setopt ConnectionRetry 1", f"pss.setopt ReconnectWait {int(connect_timeout)}",
        f"pss.setopt ParStreamsPerPhyConn {int(data_streams)}",
        f"pfc.ram {ram}", f"pfc.blocksize {blocksize}", f"pfc.prefetch {int(prefetch)}",
    )


CACHE_IDENTITY = "xcache"  #: the name the cache's sss key gives it at the origin


def authdb_rules(public_paths, *, trusted: tuple[str, ...] = ()) -> str:
    """``acc.authdb`` text: read/list for anyone on ``public_paths``, for the ``trusted`` groups (the
    cache's sss identity, at the origin) on ``/store``, nothing else without a macaroon.

    A group rule, not a user rule: XRootD 5.5's macaroon check writes the token's ``name:`` into the
    connection's identity (``request.name``), and authdb then matches that name on every later request
    of the connection -- the cache's connections to the origin carry HTTPS users' tokens too."""
    for p in public_paths:
        if not p.startswith("/") or any(c.isspace() for c in p):
            raise ConfigurationError(f"invalid public XCache path {p!r}: absolute, without spaces")
    rules = "".join(f"u * {p} lr\n" for p in public_paths)
    rules += "".join(f"g {name} /store lr\n" for name in trusted)
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
    """An origin and an XCache in front of it, both checking macaroons; started and stopped asynchronously."""

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
    port = Int(0, config=True, help="The cache's port for xroot and HTTPS; 0 picks a free one.")
    origin_port = Int(0, config=True, help="The origin's port for xroot and HTTPS; 0 picks a free one.")
    maxduration = Int(86400, config=True, help="``macaroons.maxduration``: longest macaroon life accepted, seconds.")
    users = List(Unicode(), config=True, help="""Users who get an area ``/store/user/<name>/``, e.g. ``["alice", "bob"]``.""")
    files = Dict(
        config=True,
        help="""Files the origin serves: export path -> bytes, or a local file to copy, e.g.
        ``{"/store/data/x.txt": b"...", "/store/user/alice/events.root": Path("/tmp/events.root")}``.
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
    pfc_ram = Unicode("1g", config=True, help="The cache's ``pfc.ram`` (memory for blocks in flight); 5.5 refuses less than ``1g``.")
    pfc_blocksize = Unicode("1m", config=True, help="""The cache's ``pfc.blocksize``: the unit it fetches from the origin and stores,
        e.g. ``"4m"`` (XRootD's default ``128k``).""")
    pfc_prefetch = Int(10, config=True, help="The cache's ``pfc.prefetch``: blocks fetched ahead of a reader (0 turns prefetching off).")
    extra_config = List(Unicode(), config=True, help="""Lines appended verbatim to the cache's configuration, e.g. ``["macaroons.trace all"]``.""")
    run_as = Unicode("nobody", config=True, help="Account ``xrootd -R`` switches to when started as root.")
    xrootd = Unicode(config=True, help="The ``xrootd`` executable; found on PATH by default.")

    @default("xrootd")
    def _default_xrootd(self):
        return shutil.which("xrootd") or ""

    log_copy = Unicode(
        "",
        config=True,
        help="""Where to keep a copy of the cache's log when it stops (the run directory is deleted),
        e.g. ``"/var/lib/casa-demo/logs/xcache.log"``; the origin's goes beside it as ``<name>-origin.log``.
        The logs never hold a token or the secret.""",
    )
    ca_copy = Unicode(
        "",
        config=True,
        help="""Where to write the CA certificate clients verify the cache with (public, mode 0644),
        e.g. ``"/var/lib/casa-demo/xcache-ca.pem"``; it stays after stop (the next run writes a new one).""",
    )
    ready_timeout = Float(30.0, config=True, help="Seconds to wait for each server to answer HTTPS before giving up.")

    run_dir: Path | None = None
    cache: ChildProcess | None = None
    origin: ChildProcess | None = None

    # -- where things are ------------------------------------------------------

    @property
    def url(self) -> str:
        """The cache, as notebooks reach it (``XCACHE_HOST``): ``https://localhost:<port>``."""
        return f"https://{HOST}:{self.port}"

    @property
    def root_url(self) -> str:
        """The cache by ``root://`` (token by ztn over TLS), same port: ``root://localhost:<port>``."""
        return f"root://{HOST}:{self.port}"

    @property
    def origin_root_url(self) -> str:
        return f"root://{HOST}:{self.origin_port}"

    @property
    def origin_url(self) -> str:
        """The origin directly (for comparisons; users go through the cache): ``https://localhost:<port>``."""
        return f"https://{HOST}:{self.origin_port}"

    def _in_run_dir(self, name: str) -> Path:
        if self.run_dir is None:
            raise RuntimeError("the XCache server is not started")
        return self.run_dir / name

    @property
    def export_root(self) -> Path:
        """The origin's ``oss.localroot``: ``/store/x`` is ``export_root/store/x``."""
        return self._in_run_dir("origin")

    @property
    def cache_root(self) -> Path:
        """The cache's storage: a file read through the cache lands at ``cache_root/store/...`` (with a ``.cinfo``)."""
        return self._in_run_dir("cache")

    @property
    def ca_file(self) -> Path:
        return self._in_run_dir("tls/ca.pem")

    @property
    def process(self) -> asyncio.subprocess.Process | None:
        """The cache's ``xrootd`` process (None when stopped)."""
        return None if self.cache is None else self.cache.process

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the servers' CA (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(lines)}" for p in (self.origin, self.cache) if p is not None)

    # -- start and stop -----------------------------------------------------------

    def _prepare_run_dir(self) -> tuple[list[str], list[str], dict[str, str]]:
        """Lay out the private run directory; return the origin's and the cache's command lines and
        the cache's environment (blocking)."""
        if not self.xrootd:
            raise ConfigurationError("the xrootd binary is not installed (Debian: xrootd-server xrootd-server-plugins)")
        sss_admin = shutil.which("xrdsssadmin", path=f"{Path(self.xrootd).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        if not sss_admin:
            raise ConfigurationError("xrdsssadmin (Debian: xrootd-server) is not installed beside xrootd")
        decode_secret(read_secret_file(self.secret_file, "macaroon secret"))  # fail early and clearly
        for name in self.users:
            if not name or "/" in name or name in (".", ".."):
                raise ConfigurationError(f"invalid XCache user area name {name!r}")
        for export_path in self.files:
            if not export_path.startswith("/store/") or ".." in Path(export_path).parts:
                raise ConfigurationError(f"XCache file {export_path!r} must lie under /store/")
        authdb_texts = {"origin": authdb_rules(self.public_paths, trusted=(CACHE_IDENTITY,)), "cache": authdb_rules(self.public_paths)}
        as_root = os.geteuid() == 0
        run_dir = self.run_dir = Path(tempfile.mkdtemp(prefix="casa-xcache-"))
        os.chmod(run_dir, 0o711 if as_root else 0o700)
        export_root, cache_root = run_dir / "origin", run_dir / "cache"
        (export_root / "store").mkdir(parents=True)
        (cache_root / "store").mkdir(parents=True)
        for name in self.users:
            (export_root / "store" / "user" / name).mkdir(parents=True, exist_ok=True)
        for export_path, content in self.files.items():
            target = export_root / export_path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, (bytes, bytearray)):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)
        tls_dir = run_dir / "tls"
        tls_dir.mkdir(mode=0o700)
        tls = make_server_tls((HOST, "127.0.0.1"))
        (tls_dir / "ca.pem").write_bytes(tls.ca_pem)
        (tls_dir / "cert.pem").write_bytes(tls.cert_pem)
        atomic_write(tls_dir / "key.pem", tls.key_pem, mode=0o600)  # xrootd refuses a key others can read
        ca_dir = tls_dir / "certificates"  # X509_CERT_DIR of the cache's client (towards the origin)
        ca_dir.mkdir()
        add_ca(ca_dir, tls.ca_pem)
        os.chmod(tls_dir, 0o755)
        keytab = run_dir / "sss.keytab"  # the cache's identity at the origin; made fresh for each run
        made = subprocess.run([sss_admin, "-k", "casa-xcache", "-u", CACHE_IDENTITY, "-g", CACHE_IDENTITY, "add", str(keytab)],
                              input="y\n", capture_output=True, text=True, timeout=30)
        if made.returncode or not keytab.is_file():
            raise XCacheStartError(f"xrdsssadmin could not make the cache's key: {made.stderr.strip() or made.stdout.strip()}")
        os.chmod(keytab, 0o600)
        secret_copy = run_dir / "macaroon-secret"
        fd = os.open(secret_copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(Path(self.secret_file).read_bytes())
        for role, text in authdb_texts.items():
            (run_dir / f"authdb-{role}").write_text(text)
        if not self.origin_port:
            self.origin_port = random_port()
        if not self.port:
            self.port = random_port()
        common = dict(
            sitename=self.sitename, secret_path=str(secret_copy), maxduration=self.maxduration,
            tls=(str(tls_dir / "cert.pem"), str(tls_dir / "key.pem"), str(tls_dir / "ca.pem")),
        )
        commands = []
        cache_lines = cache_config(origin=f"127.0.0.1:{self.origin_port}", ram=self.pfc_ram, blocksize=self.pfc_blocksize,
                                   prefetch=self.pfc_prefetch)
        for role, port, root, sss, extra in (
            ("origin", self.origin_port, export_root, str(keytab), ()),
            ("cache", self.port, cache_root, "", (*cache_lines, *self.extra_config)),
        ):
            admin = run_dir / f"admin-{role}"
            admin.mkdir()
            config = run_dir / f"{role}.cfg"
            config.write_text(xrootd_config(port=port, export_root=str(root), admin_dir=str(admin), authdb_path=str(run_dir / f"authdb-{role}"),
                                            sss_keytab=sss, extra_config=tuple(extra), **common))
            commands.append([self.xrootd, *(["-R", self.run_as] if as_root else []), "-c", str(config)])
        if as_root:
            pw = pwd.getpwnam(self.run_as)
            for path in [run_dir, *run_dir.rglob("*")]:
                os.lchown(path, pw.pw_uid, pw.pw_gid)
        if self.ca_copy:
            Path(self.ca_copy).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(Path(self.ca_copy), tls.ca_pem, mode=0o644)
        # the cache's own XRootD client: only sss (never a user's token lying around), the run's CA; the origin
        # requires TLS at login (ztn), the file data comes over the link's data streams without it (loopback)
        cache_env = {k: v for k, v in os.environ.items() if not k.startswith(("BEARER_TOKEN", "XrdSec", "X509_", "XRD_"))}
        cache_env.update(XrdSecPROTOCOL="sss", XrdSecSSSKT=str(keytab), X509_CERT_DIR=str(ca_dir), XRD_TLSNODATA="1")
        return commands[0], commands[1], cache_env

    async def start(self) -> None:
        """Start the origin, then the cache; return once both answer HTTPS.  On failure nothing is left behind."""
        if self.cache is not None:
            raise RuntimeError("the XCache server is already started")
        try:
            origin_cmd, cache_cmd, cache_env = await asyncio.to_thread(self._prepare_run_dir)
            context = await asyncio.to_thread(self.ssl_context)
            for role, cmd, port, env in (("origin", origin_cmd, self.origin_port, None), ("cache", cache_cmd, self.port, cache_env)):
                proc = ChildProcess(f"the XCache's {role} (xrootd)" if role == "origin" else "the XCache (xrootd)", cmd,
                                    log_path=self.run_dir / f"{role}.log", cwd=self.run_dir, env=env)
                setattr(self, role, proc)
                await proc.start()
                self.log.info("XCache %s (xrootd pid %s) starting on port %s", role, proc.pid, port)
                await proc.wait_ready(lambda port=port: self._answers_https(port, context), self.ready_timeout,
                                      interval=0.2, what="answering HTTPS on port %d" % port)
        except ProcessStartError as e:
            await self.stop()
            raise XCacheStartError(f"{e}\n--- end of xrootd log ---") from None
        except BaseException:  # cancelled (Ctrl-C while starting) or anything else: leave nothing
            await self.stop()
            raise

    async def _answers_https(self, port: int, context: ssl.SSLContext) -> bool:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=HOST), 5)
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            return False
        try:
            writer.write(f"HEAD / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 5)
            return status.startswith(b"HTTP/")  # any status: XrdHttp is serving
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            return False
        finally:
            writer.close()

    async def wait(self) -> int:
        """Return (the exit status) as soon as the cache or its origin exits."""
        waits = [asyncio.ensure_future(p.process.wait()) for p in (self.origin, self.cache) if p is not None and p.process is not None]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            return done.pop().result()
        finally:
            for task in waits:
                task.cancel()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the cache, then the origin (SIGTERM, then SIGKILL) and delete the run directory.  Idempotent."""
        stopped = False
        for role in ("cache", "origin"):
            proc = getattr(self, role)
            setattr(self, role, None)
            if proc is not None:
                await proc.stop(timeout)
                stopped = True
        if stopped:
            self.log.info("XCache stopped")
        run_dir, self.run_dir = self.run_dir, None
        if run_dir is not None:
            await asyncio.to_thread(self._keep_logs_and_remove, run_dir)

    def _keep_logs_and_remove(self, run_dir: Path) -> None:
        if self.log_copy:
            copy = Path(self.log_copy)
            for role, target in (("cache", copy), ("origin", copy.with_name(f"{copy.stem}-origin{copy.suffix}"))):
                if (run_dir / f"{role}.log").exists():
                    try:
                        shutil.copyfile(run_dir / f"{role}.log", target)
                    except OSError as e:
                        self.log.warning("Could not keep the xrootd log in %s: %s", target, e)
        shutil.rmtree(run_dir, ignore_errors=True)
