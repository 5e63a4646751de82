"""uproot's reader for the XCache (``handler=``), by ``root://`` or HTTPS, resolved where it opens.

:meth:`casa_session.xcache.XCache.uproot_options` names this class: a class pickles by reference,
so ``uproot.dask`` and coffea's executors carry it to Dask workers, where each open builds its
:class:`~casa_session.xcache.XCache` from the worker's own environment (plus what the user set
explicitly), asks the cache for the file once -- so a refusal, a missing file or an unreachable
cache ends here in an :class:`~casa_session.xcache.XCacheError` that names the cause -- and reads
with uproot's fsspec source: fsspec-xrootd on the token's own connection for ``root://``, fsspec's
HTTP filesystem with :func:`~casa_session.xcache_http.client_session` for HTTPS.
"""

from __future__ import annotations

from uproot.source.fsspec import FSSpecSource

from .xcache import XCache


class XCacheSource(FSSpecSource):
    """An ``FSSpecSource`` whose token and CA are this process's, read at open."""

    def __init__(self, file_path: str, **options):
        xc = XCache(**(options.pop("xcache", None) or {}))
        protocol, path = xc.path_of(file_path)
        xc.stat(path, protocol)
        if protocol == "root":
            from .xcache_root import open_url

            url, fs_options = open_url(xc, file_path), {}
        else:
            from .xcache_http import fsspec_options

            url, fs_options = file_path, fsspec_options(xc)
            options.pop("timeout", None)  # the session's own aiohttp timeouts apply
        super().__init__(url, **options, **fs_options)
