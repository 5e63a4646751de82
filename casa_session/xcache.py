"""Reading from the facility's XCache with the session's own token, in a notebook or on a worker.

The session's environment says where and how (:data:`WORKER_VARIABLES`): ``XCACHE_HOST``
(``root://host:port`` or ``https://host:port``), optionally ``XCACHE_HTTPS_HOST`` (where a site's
HTTPS endpoint is another host:port), ``XCACHE_CA_FILE`` (where the cache's certificate is not
from a CA the system trusts, as in the demo), and the token file ``BEARER_TOKEN_FILE`` (the hub,
or HTCondor on a worker, rewrites it in place: it is read at each open, never kept here).

Both protocols physicists read with:

* ``root://`` -- XRootD's client (PyPI ``xrootd``) and ``fsspec-xrootd`` (uproot's path), the token
  by XRootD's ztn over TLS (:mod:`casa_session.xcache_root`);
* ``https://`` -- fsspec/aiohttp with an ``Authorization: Bearer`` header
  (:mod:`casa_session.xcache_http`).

    from casa_session.xcache import XCache
    events = XCache().open_root("/store/user/alice/events.root")["Events"]
    uproot.dask({XCache().url(p): "Events"}, **XCache().uproot_options())   # on Dask workers

:meth:`XCache.uproot_options` are plain data and a module-level class (they pickle into a task
graph): the token and the CA are resolved on the worker, at each open, from the worker's own
environment.  Every fault ends in an :class:`XCacheError` that names its cause, never a token.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .xcache_token import TokenFileError, read_token, token_facts

__all__ = ["WORKER_VARIABLES", "XCache", "XCacheError"]

#: The environment a worker (local process, HTCondor job, dask-gateway worker) needs to read through
#: the XCache, and nothing more: ``XCACHE_HOST`` (the cache as the facility configured it),
#: ``XCACHE_HTTPS_HOST`` (optional: a site's HTTPS endpoint when it is not ``XCACHE_HOST``'s
#: host:port), ``XCACHE_CA_FILE`` (optional: a PEM file of the CA that verifies the cache) and
#: ``BEARER_TOKEN_FILE`` (the user's data token, a 0600 file rewritten in place while the worker
#: runs).  What ``root://`` needs beyond them (a hashed CA directory, XRootD client settings) is
#: derived from these on the worker by this module; launchers ship only these.
WORKER_VARIABLES = ("XCACHE_HOST", "XCACHE_HTTPS_HOST", "XCACHE_CA_FILE", "BEARER_TOKEN_FILE")

#: URL scheme -> the protocol it reads with (``roots://`` is read as ``root://``: ztn sends a token only over TLS anyway)
PROTOCOLS = {"root": "root", "roots": "root", "https": "https"}
ENVIRONMENT = {"host": "XCACHE_HOST", "token_file": "BEARER_TOKEN_FILE", "ca_file": "XCACHE_CA_FILE", "https_host": "XCACHE_HTTPS_HOST"}
DEFAULT_TIMEOUT = 60.0


class XCacheError(RuntimeError):
    """A read through the XCache failed; the message names the cause (never the token)."""


@dataclass(frozen=True)
class XCache:
    """The XCache of this session: its address(es), the token file, the CA to verify it with."""

    host: str = ""  #: ``root://host:port`` or ``https://host:port``; default ``$XCACHE_HOST``
    token_file: str = ""  #: default ``$BEARER_TOKEN_FILE``
    ca_file: str = ""  #: default ``$XCACHE_CA_FILE`` (empty: the system's / the grid's CAs)
    https_host: str = ""  #: default ``$XCACHE_HTTPS_HOST``, else ``host``'s host:port over HTTPS
    timeout: float = DEFAULT_TIMEOUT  #: seconds any one step (connect, login, request) may take
    _given: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init and getattr(self, f.name) != f.default}
        object.__setattr__(self, "_given", given)
        for name, var in ENVIRONMENT.items():
            value = getattr(self, name) or os.environ.get(var, "")
            object.__setattr__(self, name, value.strip().rstrip("/") if name.endswith("host") else value)
        if not self.host:
            raise XCacheError("no XCache address: XCACHE_HOST is not set (not in a casa session?)")
        for name, schemes in (("host", PROTOCOLS), ("https_host", ("https",))):
            value = getattr(self, name)
            parts = urlsplit(value)
            if value and (parts.scheme not in schemes or not parts.hostname or parts.path not in ("", "/")):
                wanted = " or ".join(f"{s}://host:port" for s in ("root", "https") if s in schemes)
                raise XCacheError(f"{ENVIRONMENT[name]}={value!r}: expected {wanted} (plain http:// would carry the token in clear)")
        if not self.timeout or self.timeout <= 0:
            raise XCacheError(f"timeout={self.timeout!r}: a positive number of seconds")

    # -- where --------------------------------------------------------------------

    @property
    def protocol(self) -> str:
        """The protocol of ``XCACHE_HOST``: ``root`` or ``https``, the default of every method."""
        return PROTOCOLS[urlsplit(self.host).scheme]

    def base(self, protocol: str | None = None) -> str:
        """The cache's address for ``protocol``: ``root://host:port`` or ``https://host:port``."""
        protocol = self._protocol(protocol)
        if protocol == "https" and self.https_host:
            return self.https_host
        return f"{protocol}://{urlsplit(self.host).netloc}"  # one port serves both protocols (XRootD 5)

    def url(self, path: str, protocol: str | None = None) -> str:
        """The URL of an export path, e.g. ``/store/user/alice/events.root``, by ``protocol``."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise XCacheError(f"XCache paths are absolute, e.g. /store/user/<you>/file.root; got {path!r}")
        base = self.base(protocol)
        return f"{base}/{path}" if self._protocol(protocol) == "root" else base + path

    def path_of(self, url: str) -> tuple[str, str]:
        """``(protocol, path)`` of a URL on this cache; an :class:`XCacheError` for any other host."""
        parts = urlsplit(url)
        protocol = PROTOCOLS.get(parts.scheme)
        if protocol is None or parts.hostname is None:
            raise XCacheError(f"{url!r} is not a root:// or https:// URL")
        want = urlsplit(self.base(protocol))
        if (parts.hostname, parts.port) != (want.hostname, want.port):
            raise XCacheError(f"{parts.scheme}://{parts.hostname}:{parts.port} is not this session's XCache ({want.geturl()}): "
                              "its token is not sent anywhere else")
        return protocol, "/" + parts.path.lstrip("/")

    def _protocol(self, protocol: str | None) -> str:
        if protocol is None:
            return self.protocol
        if protocol not in PROTOCOLS:
            raise XCacheError(f"protocol={protocol!r}: 'root' or 'https'")
        return PROTOCOLS[protocol]

    # -- credentials ----------------------------------------------------------------

    def token(self) -> str:
        """The session's current token (read now: the hub renews the file in place)."""
        try:
            return read_token(self.token_file)
        except TokenFileError as e:
            raise XCacheError(str(e)) from None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS context that verifies the cache (``ca_file``, else the system's CAs)."""
        self.check_ca()
        return ssl.create_default_context(cafile=self.ca_file or None)

    def check_ca(self) -> None:
        if self.ca_file and not os.path.isfile(self.ca_file):
            raise XCacheError(f"the XCache's CA file {self.ca_file} (XCACHE_CA_FILE) does not exist: cannot verify the cache")

    def settings(self) -> dict:
        """What was set explicitly (plain data): a worker fills in the rest from its own environment."""
        return dict(self._given)

    # -- reading ---------------------------------------------------------------------

    def uproot_options(self, protocol: str | None = None) -> dict:
        """Options for ``uproot.open``, ``uproot.dask`` and coffea's ``uproot_options=`` (they pickle).

        A :class:`~casa_session.xcache_uproot.XCacheSource` opens each file with the token and CA of
        the process that opens it, read at that moment.  Open URLs from :meth:`url` (any protocol).
        """
        self._protocol(protocol)
        from .xcache_uproot import XCacheSource

        return {"handler": XCacheSource, "xcache": self.settings(), "timeout": int(self.timeout)}

    def open_root(self, path: str, protocol: str | None = None, **options):
        """``uproot.open`` of a ROOT file through the cache, with the session's token."""
        import uproot

        return uproot.open(self.url(path, protocol), **{**self.uproot_options(protocol), **options})

    def read(self, path: str, protocol: str | None = None) -> bytes:
        """The whole file (small files; use :meth:`open_root` for ROOT files)."""
        return self._client(protocol).read(self, self.url(path, protocol))

    def stat(self, path: str, protocol: str | None = None) -> int:
        """The file's size, asking the cache now: the open-time check of every read."""
        return self._client(protocol).stat(self, self.url(path, protocol))

    def _client(self, protocol):
        if self._protocol(protocol) == "root":
            from . import xcache_root as client
        else:
            from . import xcache_http as client
        return client

    # -- messages ----------------------------------------------------------------------

    def refusal(self, path: str, what: str) -> XCacheError:
        """The error for a refusal by the cache, with the likely cause read from the token."""
        try:
            facts = token_facts(self.token())
        except XCacheError as e:
            return XCacheError(f"the XCache refused {path} ({what}): {e}")
        if facts.expired():
            cause = (f"the token in {self.token_file} expired at {facts.expires:%Y-%m-%d %H:%M:%S} UTC (it is renewed while "
                     "the session runs; a worker needs its BEARER_TOKEN_FILE kept fresh)")
        elif facts.covers(path) is False:
            cause = f"the token is {facts.name or 'unnamed'}'s and covers {', '.join(facts.paths)}, not {path}"
        else:
            cause = "the cache did not accept the token (issued for another site or signed with another key?)"
        return XCacheError(f"the XCache refused {path} ({what}): {cause}")

    def __repr__(self) -> str:  # never the token
        https = f", https_host={self.https_host!r}" if self.https_host else ""
        return f"XCache(host={self.host!r}{https}, token_file={self.token_file!r}, ca_file={self.ca_file!r})"
