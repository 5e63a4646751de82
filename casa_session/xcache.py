"""Reading from the facility's XCache with the session's own token, in a notebook or on a worker.

The session's environment says where and how: ``XCACHE_HOST`` (``https://host:port``), the token
file ``BEARER_TOKEN_FILE`` (the hub renews it in place, so it is read at each open, never cached
here), and -- where the cache's certificate is not from a CA the system trusts, as in the demo --
``XCACHE_CA_FILE``.  The token goes in an ``Authorization: Bearer`` header over HTTPS.

    from casa_session.xcache import XCache
    events = XCache().open_root("/store/user/alice/events.root")["Events"]

Workers (local processes, batch jobs) get the same variables and token file, so a task that
opens a file through :class:`XCache` reads it with the token of the session that submitted it.
Plain ``http://`` and ``root://`` addresses are refused: a token would travel in clear, and the
XRootD protocol needs a client library this helper does not use.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["XCache", "XCacheError"]


class XCacheError(RuntimeError):
    """The session has no usable XCache settings; the message says which."""


@dataclass(frozen=True)
class XCache:
    """The XCache of this session: its address, the token file, the CA to verify it with."""

    host: str = ""  #: ``https://host:port``; default ``$XCACHE_HOST``
    token_file: str = ""  #: default ``$BEARER_TOKEN_FILE``
    ca_file: str = ""  #: default ``$XCACHE_CA_FILE`` (empty: the system's CAs)

    def __post_init__(self):
        env = os.environ
        object.__setattr__(self, "host", (self.host or env.get("XCACHE_HOST", "")).rstrip("/"))
        object.__setattr__(self, "token_file", self.token_file or env.get("BEARER_TOKEN_FILE", ""))
        object.__setattr__(self, "ca_file", self.ca_file or env.get("XCACHE_CA_FILE", ""))
        if not self.host:
            raise XCacheError("no XCache address: XCACHE_HOST is not set (not in a casa session?)")
        scheme = urlsplit(self.host).scheme
        if scheme != "https":
            raise XCacheError(f"XCACHE_HOST={self.host!r}: only https:// carries the token safely here")

    def url(self, path: str) -> str:
        """The URL of an export path, e.g. ``/store/user/alice/events.root``."""
        if not path.startswith("/"):
            raise XCacheError(f"XCache paths are absolute, e.g. /store/user/<you>/file.root; got {path!r}")
        return self.host + path

    def token(self) -> str:
        """The session's current token (read now: the hub renews the file in place)."""
        if not self.token_file:
            raise XCacheError("no token: BEARER_TOKEN_FILE is not set")
        try:
            with open(self.token_file) as fh:
                return fh.read().strip()
        except OSError as e:
            raise XCacheError(f"cannot read the token file {self.token_file}: {e.strerror}") from None

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file or None)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def storage_options(self) -> dict:
        """Options for fsspec's HTTP filesystem (and ``uproot.open``): the header and the TLS context."""
        return {"headers": self.headers(), "ssl": self.ssl_context()}

    def read(self, path: str) -> bytes:
        """The whole file (small files; use :meth:`open_root` for ROOT files)."""
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url(path), headers=self.headers())
        try:
            with urllib.request.urlopen(req, timeout=60, context=self.ssl_context()) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            raise XCacheError(f"the XCache refused {path}: HTTP {e.code} (does your token cover it?)") from None

    def open_root(self, path: str, **options):
        """``uproot.open`` of a ROOT file through the cache, with the session's token."""
        import uproot

        return uproot.open(self.url(path), **self.storage_options(), **options)

    def __repr__(self) -> str:  # never the token
        return f"XCache(host={self.host!r}, token_file={self.token_file!r}, ca_file={self.ca_file!r})"
