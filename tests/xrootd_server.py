r"""A real XRootD server (HTTP + macaroons) on loopback, for tests and demos.

Usage::

    from tests.xrootd_server import start_xrootd

    with start_xrootd(tmp_path, sitename="CASA_TEST", secret_b64_file=secret_path,
                      data_dir=data, maxduration=3600) as srv:
        urllib.request.urlopen(f"{srv.url}/store/user/alice/f.txt")   # srv.port, srv.log_text()

``start_xrootd`` returns an :class:`XRootDServer` that is already answering HTTP; leaving
the ``with`` block (or calling ``stop()``, which is idempotent and also runs at interpreter
exit) kills the process group and deletes everything the server used.  If the server does
not come up within ``timeout`` seconds it is killed and :class:`XRootDStartError` is raised
carrying the tail of the server log.

What it runs (``xrootd`` 5.5, Debian ``xrootd-server`` + ``xrootd-server-plugins``):

* one port (chosen free on 127.0.0.1) serving both the xroot protocol and HTTP
  (``libXrdHttp``; no TLS), the export(s) -- ``/store`` by default -- rooted at a *copy* of
  ``data_dir`` (so ``data_dir/store/x`` is served as ``/store/x``; add files later under
  ``srv.export_root``);
* authorization by ``libXrdMacaroons`` with ``all.sitename`` = ``sitename``, the key from
  ``secret_b64_file`` and ``macaroons.maxduration``; the token is taken from
  ``Authorization: Bearer <tok>`` (``http.header2cgi Authorization authz``).  Requests
  without a valid macaroon fall through to ``acc.authdb``: empty by default, so they are
  refused (403); ``authdb_rules="u * /store lr\n"`` lets anyone read (an open origin).

The secret file is copied as is: XRootD decodes it with OpenSSL's base64 BIO, which needs a
trailing newline -- a one-line file without one decodes to nothing and the server refuses
to start ("Secret key is too short").

Running as root, ``xrootd`` must drop privileges (``-R nobody``; it refuses to run as root),
so everything it reads is copied into a private directory under the system temp dir (pytest's
``tmp_path`` is not traversable by ``nobody``) and handed to ``nobody``; the secret copy is
``nobody``-owned, mode 0600 (XRootD opens it after dropping privileges and checks no mode).
As a non-root user the server simply runs as that user.  ``workdir`` receives a copy of
the server log (``xrootd.log``) when the server stops, for post-mortems.

``extra_config`` lines are appended verbatim, e.g. ``"macaroons.trace all"`` (logs the
caveats, never the token).  Never add ``http.trace all``: it logs the whole bearer token.

XCache stand-in (tested in tests/test_macaroon_real.py): an origin that lets the cache in
without a token, and a cache that checks the users' macaroons and keeps what it fetched
under its ``export_root``::

    origin = start_xrootd(d1, sitename="ORIGIN", secret_b64_file=s, data_dir=data,
                          authdb_rules="u * /store lr\n")
    cache = start_xrootd(d2, sitename="XCACHE", secret_b64_file=s, extra_config=[
        "ofs.osslib libXrdPss.so", f"pss.origin 127.0.0.1:{origin.port}",
        "pss.cachelib libXrdPfc.so", "pfc.ram 1g"])       # pfc.ram below 1g is refused

The server listens on the port on all interfaces (no bind address is configured); the
port is random and ``srv.url`` points at 127.0.0.1.
"""

from __future__ import annotations

import atexit
import http.client
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from jupyterhub.utils import random_port

from casa_spawner.demo.xcache import xrootd_config

__all__ = ["XRootDServer", "XRootDStartError", "start_xrootd", "xrootd_config"]

RUN_AS = "nobody"
LOG_TAIL_LINES = 40


class XRootDStartError(RuntimeError):
    """The server did not come up; the message ends with the tail of its log."""


@dataclass
class XRootDServer:
    url: str  #: ``http://127.0.0.1:<port>``
    port: int
    export_root: Path  #: ``oss.localroot``: the file served as ``/store/x`` is ``export_root/store/x``
    config_path: Path
    log_path: Path
    process: subprocess.Popen
    run_dir: Path
    workdir: Path | None = None
    _stopped: bool = field(default=False, repr=False)

    def log_text(self) -> str:
        """The server log so far (after ``stop()``: the copy kept in ``workdir``, if any)."""
        path = self.log_path
        if not path.exists() and self.workdir is not None:
            path = self.workdir / "xrootd.log"
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Kill the server (SIGTERM, then SIGKILL after 5 s) and delete its files.  Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _kill(self.process)
        if self.workdir is not None and self.log_path.exists():
            try:
                shutil.copyfile(self.log_path, self.workdir / "xrootd.log")
            except OSError:
                pass
        shutil.rmtree(self.run_dir, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> XRootDServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_xrootd(
    workdir: os.PathLike | str | None,
    *,
    sitename: str,
    secret_b64_file: os.PathLike | str,
    data_dir: os.PathLike | str | None = None,
    maxduration: int = 86400,
    exports: Iterable[str] = ("/store",),
    extra_config: Iterable[str] = (),
    authdb_rules: str = "",
    timeout: float = 15.0,
) -> XRootDServer:
    """Start ``xrootd`` and return once it answers HTTP on 127.0.0.1 (see the module docstring)."""
    xrootd = shutil.which("xrootd")
    if xrootd is None:
        raise XRootDStartError("the xrootd binary is not installed (Debian: xrootd-server xrootd-server-plugins)")
    exports = tuple(exports)
    extra_config = tuple(extra_config)
    deadline = time.monotonic() + timeout
    last_error: XRootDStartError | None = None
    for _attempt in range(3):  # the free port may be taken between probing and binding
        try:
            return _start_once(
                xrootd, workdir, sitename=sitename, secret_b64_file=Path(secret_b64_file),
                data_dir=None if data_dir is None else Path(data_dir), maxduration=maxduration,
                exports=exports, extra_config=extra_config, authdb_rules=authdb_rules, deadline=deadline,
            )
        except XRootDStartError as exc:
            last_error = exc
            if "address already in use" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
    assert last_error is not None
    raise last_error


def _start_once(xrootd, workdir, *, sitename, secret_b64_file, data_dir, maxduration, exports,
                extra_config, authdb_rules, deadline) -> XRootDServer:
    as_root = os.geteuid() == 0
    run_dir = Path(tempfile.mkdtemp(prefix="xrootd-test-"))
    try:
        os.chmod(run_dir, 0o755)
        export_root = run_dir / "data"
        if data_dir is not None:
            shutil.copytree(data_dir, export_root, symlinks=False)
        else:
            export_root.mkdir()
        for e in exports:
            (export_root / e.lstrip("/")).mkdir(parents=True, exist_ok=True)
        admin_dir = run_dir / "admin"
        admin_dir.mkdir()
        secret_path = run_dir / "macaroon-secret"
        shutil.copyfile(secret_b64_file, secret_path)
        os.chmod(secret_path, 0o600)
        authdb_path = run_dir / "authdb"
        authdb_path.write_text(authdb_rules or "# no rules: without a valid macaroon everything is refused\n")
        port = random_port()
        config_path = run_dir / "xrootd.cfg"
        config_path.write_text(xrootd_config(
            port=port, sitename=sitename, secret_path=str(secret_path), export_root=str(export_root),
            admin_dir=str(admin_dir), authdb_path=str(authdb_path), maxduration=maxduration,
            exports=tuple(exports), extra_config=tuple(extra_config),
        ))
        if as_root:
            pw = pwd.getpwnam(RUN_AS)
            for path in [run_dir, *run_dir.rglob("*")]:
                os.lchown(path, pw.pw_uid, pw.pw_gid)
        log_path = run_dir / "xrootd.log"  # xrootd logs to stderr without -l
        cmd = [xrootd, "-c", str(config_path)]
        if as_root:
            cmd[1:1] = ["-R", RUN_AS]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=run_dir, start_new_session=True)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise

    server = XRootDServer(
        url=f"http://127.0.0.1:{port}", port=port, export_root=export_root, config_path=config_path,
        log_path=log_path, process=proc, run_dir=run_dir,
        workdir=None if workdir is None else Path(workdir),
    )
    atexit.register(server.stop)
    try:
        _wait_until_answering(server, deadline)
    except BaseException as exc:
        tail = "\n".join(server.log_text().splitlines()[-LOG_TAIL_LINES:])
        server.stop()
        if isinstance(exc, XRootDStartError):
            raise XRootDStartError(f"{exc}\n--- xrootd log tail ---\n{tail}") from None
        raise
    return server


def _wait_until_answering(server: XRootDServer, deadline: float) -> None:
    while True:
        rc = server.process.poll()
        if rc is not None:
            raise XRootDStartError(f"xrootd exited with status {rc} during startup")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1.0)
            try:
                conn.request("HEAD", "/", headers={"Connection": "close"})
                conn.getresponse().read()
                return  # any HTTP status means XrdHttp is serving
            finally:
                conn.close()
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() >= deadline:
            raise XRootDStartError(f"xrootd did not answer HTTP on port {server.port} in time")
        time.sleep(0.1)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # start_new_session: the group is the server's own
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
