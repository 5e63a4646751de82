"""``root://`` reads through the XCache: XRootD's client (PyPI ``xrootd``) with the token by ztn.

How XRootD sends the token, and what it means for renewal (measured on the demo's XRootD 5.5):

* ztn reads the token at **login**, from ``BEARER_TOKEN_FILE`` of the process's environment (its
  own discovery: ``BEARER_TOKEN``, ``BEARER_TOKEN_FILE``, ``XDG_RUNTIME_DIR``, ``/tmp/bt_u<uid>``),
  and the server keeps it for that connection: every later open or stat on the connection is
  authorized with the login's token (``libXrdMacaroons`` checks its ``before:`` again each time).
  The client keeps connections for minutes (``DataServerTTL``, 300 s) and reuses them for every
  URL with the same ``user@host:port``: a renewed file alone changes nothing until the old token
  expires, and then every open on that connection is refused.
* So every open here goes to ``root://<id>@host:port``, ``<id>`` a short hash of the token read
  just now (:func:`~casa_session.xcache_token.connection_id`): a renewed token gets its own
  connection and login, the old connection idles out.
* A file **already open** keeps reading after its token expires (XRootD authorizes the open, not
  each read); a file opened again after a renewal reads with the new token.

What the client needs beyond :data:`~casa_session.xcache.WORKER_VARIABLES` is derived here, in the
process, before its first connection: the cache's CA as a private hashed directory
(``X509_CERT_DIR``: XRootD creates its TLS context once per process; OpenSSL looks a directory up
by CA name when it verifies, so a CA added later is found if no CA of that name was looked up
before -- the demo names its CA afresh each run), ``BEARER_TOKEN_FILE`` (set from the
XCache's when the process has none) and bounded timeouts (XRootD's defaults wait minutes for an
unreachable server: ``ConnectionWindow`` 120 s times 5, ``RequestTimeout`` 1800 s, and checks
timeouts only every ``TimeoutResolution``, 15 s).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from urllib.parse import urlsplit

from casa_hub.ca_dir import add_ca

from .xcache import XCache, XCacheError
from .xcache_token import connection_id

SERVER_ERROR = 400  #: XrdCl's errErrorResponse: the server answered with an error (its errno: kXR_*)
GRID_CA_DIR = "/etc/grid-security/certificates"  #: where XRootD looks for CAs by default
#: this module's CA directories: a child process (a local Dask worker) inherits its parent's ``X509_CERT_DIR``
#: and makes its own instead
CA_DIR_PREFIX = "casa-xrootd-ca-"
_lock = threading.Lock()
_ca_dir: str | None = None
_timeout_set: int | None = None  #: the waits XRootD's client has (process-wide: the last XCache's timeout)


def prepare(xc: XCache) -> None:
    """Make this process's XRootD client read ``xc``'s token and trust its CA, with bounded waits."""
    xc.check_ca()
    with _lock:
        if os.environ.get("BEARER_TOKEN"):
            raise XCacheError("BEARER_TOKEN is set in this process: XRootD would send it instead of the (renewed) token "
                              "in BEARER_TOKEN_FILE; unset it")
        current = os.environ.get("BEARER_TOKEN_FILE", "")
        if not current:
            if not xc.token_file:
                raise XCacheError("no token: BEARER_TOKEN_FILE is not set")
            os.environ["BEARER_TOKEN_FILE"] = xc.token_file
        elif os.path.abspath(current) != os.path.abspath(xc.token_file):
            raise XCacheError(f"root:// sends the token named by this process's BEARER_TOKEN_FILE ({current}), not {xc.token_file}: "
                              "XRootD reads the environment's at login")
        if xc.ca_file:
            ca_dir = _ca_directory()
            existing = os.environ.get("X509_CERT_DIR", "")
            if existing and existing != ca_dir and not os.path.basename(existing).startswith(CA_DIR_PREFIX):  # not a parent's
                raise XCacheError(f"X509_CERT_DIR={existing} is set: XRootD would verify the XCache with it, not with {xc.ca_file} "
                                  "(XCACHE_CA_FILE); unset one of them")
            try:
                with open(xc.ca_file, "rb") as fh:
                    add_ca(ca_dir, fh.read())
            except (OSError, ValueError) as e:
                raise XCacheError(f"the XCache's CA file {xc.ca_file} (XCACHE_CA_FILE) is not a PEM certificate: {e}") from None
            os.environ["X509_CERT_DIR"] = ca_dir
        elif not (os.environ.get("X509_CERT_DIR") or os.environ.get("X509_CERT_FILE") or os.path.isdir(GRID_CA_DIR)):
            raise XCacheError(f"could not verify the XCache at {xc.base('root')}: XCACHE_CA_FILE is not set, and XRootD finds "
                              f"no CAs (no X509_CERT_DIR, no {GRID_CA_DIR}): ztn sends the token only over verified TLS")
        _configure_client(int(xc.timeout))


def _ca_directory() -> str:
    global _ca_dir
    if _ca_dir is None:
        _ca_dir = tempfile.mkdtemp(prefix=CA_DIR_PREFIX)  # 0700: XRootD refuses a directory others may write
        atexit.register(shutil.rmtree, _ca_dir, True)
    return _ca_dir


def _configure_client(timeout: int) -> None:
    """Bound XRootD's waits (unless the user set ``XRD_*`` for them); they are the process's, not one file's."""
    global _timeout_set
    if timeout == _timeout_set:
        return
    from XRootD.client import EnvPutInt

    for name, value in (("ConnectionWindow", max(1, timeout // 2)), ("ConnectionRetry", 1), ("RequestTimeout", timeout),
                        ("StreamErrorWindow", timeout), ("StreamTimeout", timeout), ("TimeoutResolution", 1)):
        if f"XRD_{name.upper()}" not in os.environ:
            EnvPutInt(name, value)
    _timeout_set = timeout


def open_url(xc: XCache, url: str) -> str:
    """``url`` on the connection of the token in the file now: ``root://<id>@host:port//path``."""
    parts = urlsplit(url)
    return f"root://{connection_id(xc.token())}@{parts.hostname}:{parts.port or 1094}/{parts.path}"


def _fail(xc: XCache, path: str, status) -> XCacheError:
    """The error for a failed XRootD call, its cause named (the status never holds the token)."""
    message = (status.message or "").strip()
    low = message.lower()
    base = urlsplit(xc.base("root"))
    where = f"root://{base.hostname}:{base.port}"
    if status.code == SERVER_ERROR:  # the cache answered
        if status.errno == 3010:
            return xc.refusal(path, "permission denied")
        if status.errno == 3011:
            return XCacheError(f"no such file on the XCache: {path}")
        if status.errno in (3005, 3012) or "connection" in low:
            return XCacheError(f"the XCache could not get {path} from its origin (the origin is down and the file is not cached?): "
                               f"{message}")
        return XCacheError(f"the XCache at {where} failed on {path}: {message}")
    if "auth failed" in low:
        return xc.refusal(path, "login refused")
    if "tls" in low:
        ca = f"XCACHE_CA_FILE={xc.ca_file}" if xc.ca_file else "XCACHE_CA_FILE is not set, the grid's CAs"
        return XCacheError(f"could not verify the XCache at {where} ({ca}): {message}")
    if "expired" in low or "timeout" in low:
        return XCacheError(f"the XCache at {where} did not answer about {path} within {xc.timeout:g}s: {message}")
    return XCacheError(f"cannot reach the XCache at {where}: {message}")


def stat(xc: XCache, url: str) -> int:
    """The size of the file, asked of the cache on the token's connection."""
    from XRootD import client

    prepare(xc)
    target = open_url(xc, url)
    parts = urlsplit(target)
    path = "/" + parts.path.lstrip("/")
    status, info = client.FileSystem(f"root://{parts.netloc}").stat(path, timeout=int(xc.timeout))
    if not status.ok:
        raise _fail(xc, path, status)
    return int(info.size)


def read(xc: XCache, url: str) -> bytes:
    """The whole file by ``root://``."""
    from XRootD import client
    from XRootD.client.flags import OpenFlags

    prepare(xc)
    target = open_url(xc, url)
    path = "/" + urlsplit(target).path.lstrip("/")
    f = client.File()
    status, _ = f.open(target, OpenFlags.READ, timeout=int(xc.timeout))
    if not status.ok:
        raise _fail(xc, path, status)
    try:
        chunks, offset = [], 0
        while True:
            status, data = f.read(offset, 8 << 20, timeout=int(xc.timeout))
            if not status.ok:
                raise _fail(xc, path, status)
            if not data:
                return b"".join(chunks)
            chunks.append(data)
            offset += len(data)
    finally:
        f.close(timeout=int(xc.timeout))
