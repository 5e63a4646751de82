"""HTTPS reads through the XCache: ``Authorization: Bearer`` with the token read at each request.

:func:`client_session` is an fsspec ``get_client`` factory (fsspec's HTTP filesystem calls it in
the process that reads, with ``client_kwargs``): a module-level function, so options that name it
pickle into a Dask task graph, where an ``ssl.SSLContext`` or a header with a token would not (or
would never be renewed).  Its aiohttp session verifies the cache with ``XCACHE_CA_FILE`` and adds
the current token to every request (an aiohttp client middleware).
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from .xcache import XCache, XCacheError


class BearerToken:
    """aiohttp client middleware: the token in the file *now*, on every request (redirects too)."""

    def __init__(self, xc: XCache):
        self.xc = xc

    async def __call__(self, request, handler):
        request.headers["Authorization"] = f"Bearer {self.xc.token()}"
        return await handler(request)

    def __repr__(self) -> str:
        return f"BearerToken({self.xc!r})"


async def client_session(xcache: dict | None = None, **kwargs):
    """An ``aiohttp.ClientSession`` for fsspec's HTTP filesystem (``get_client=``), for this process's XCache.

    ``xcache``: :meth:`XCache.settings` (what was set explicitly); the rest from the environment.
    """
    import aiohttp

    xc = XCache(**(xcache or {}))
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=xc.timeout, sock_read=xc.timeout)
    connector = aiohttp.TCPConnector(ssl=xc.ssl_context())
    return aiohttp.ClientSession(connector=connector, timeout=timeout, middlewares=(BearerToken(xc),), **kwargs)


def fsspec_options(xc: XCache) -> dict:
    """``fsspec.open``/``HTTPFileSystem`` options that read through ``xc`` (they pickle)."""
    return {"get_client": client_session, "client_kwargs": {"xcache": xc.settings()}}


def _request(xc: XCache, url: str, method: str):
    req = urllib.request.Request(url, method=method, headers=xc.headers())
    try:
        return urllib.request.urlopen(req, timeout=xc.timeout, context=xc.ssl_context())
    except (urllib.error.URLError, TimeoutError) as e:
        raise _failure(xc, urlsplit(url).path, e) from None


def _failure(xc: XCache, path: str, e: Exception) -> XCacheError:
    """The error for a failed request, its cause named (never the request's headers)."""
    where = xc.base("https")
    if isinstance(e, urllib.error.HTTPError):
        e.close()
        if e.code in (401, 403):
            return xc.refusal(path, f"HTTP {e.code}")
        if e.code == 404:
            return XCacheError(f"no such file on the XCache: {path}")
        if e.code >= 500:
            return XCacheError(f"the XCache could not get {path} from its origin (the origin is down and the file is not cached?): "
                               f"HTTP {e.code}")
        return XCacheError(f"the XCache refused {path}: HTTP {e.code}")
    reason = getattr(e, "reason", e)
    if isinstance(reason, ssl.SSLCertVerificationError):
        ca = f"XCACHE_CA_FILE={xc.ca_file}" if xc.ca_file else "XCACHE_CA_FILE is not set, the system's CAs"
        return XCacheError(f"could not verify the XCache at {where} ({ca}): {reason.verify_message}")
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return XCacheError(f"the XCache at {where} did not answer about {path} within {xc.timeout:g}s")
    return XCacheError(f"cannot reach the XCache at {where}: {getattr(reason, 'strerror', None) or reason}")


def stat(xc: XCache, url: str) -> int:
    """The size of the file (a HEAD request)."""
    with _request(xc, url, "HEAD") as resp:
        return int(resp.headers.get("Content-Length") or 0)


def read(xc: XCache, url: str) -> bytes:
    """The whole file (a GET)."""
    with _request(xc, url, "GET") as resp:
        try:
            return resp.read()
        except (OSError, TimeoutError) as e:
            raise XCacheError(f"the XCache broke off sending {urlsplit(url).path}: {e}") from None
