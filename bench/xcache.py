"""Reading one file through the demo's XCache, cold (miss) and warm (hit), vs the origin directly; root:// vs HTTPS.

A real XRootD origin behind a real XCache (``casa_spawner.demo.xcache.XCacheServer``: libXrdPss +
libXrdPfc, macaroons; HTTPS, and ``root://`` with ztn over TLS).  Two files of random bytes in
alice's area (one per protocol, so each protocol has a cold read of its own), read whole with her
macaroon, in one run: from the origin directly (the baseline), then through the cache twice -- the
first read fetches from the origin and fills the cache, the second is served from the cache's disk.
HTTPS is streamed with ``requests`` (1 MiB chunks); ``root://`` with XRootD's client (``--chunk``
MiB reads, as uproot's vector reads ask for large ranges), on the token's own connection
(``casa_session.xcache_root``).  Prints MB/s of each and the ratios.

    python3 -m bench.xcache [--megabytes 256] [--blocksize 1m] [--prefetch 10] [--chunk 8]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import time
from pathlib import Path

import requests

from casa_session import xcache_root
from casa_session.xcache import XCache
from tests.xcache_site import XCacheSite

PATHS = {"https": "/store/user/alice/bench-https.bin", "root": "/store/user/alice/bench-root.bin"}


def read_https(xc: XCache, url: str) -> tuple[float, str, int]:
    """Seconds to stream the whole file, its sha256 and its size."""
    digest, size = hashlib.sha256(), 0
    start = time.perf_counter()
    with requests.get(url, headers=xc.headers(), verify=xc.ca_file, stream=True, timeout=300) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_content(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return time.perf_counter() - start, digest.hexdigest(), size


def read_root(xc: XCache, url: str, chunk: int) -> tuple[float, str, int]:
    from XRootD import client
    from XRootD.client.flags import OpenFlags

    xcache_root.prepare(xc)
    target = xcache_root.open_url(xc, url)
    digest, size = hashlib.sha256(), 0
    start = time.perf_counter()
    f = client.File()
    status, _ = f.open(target, OpenFlags.READ, timeout=300)
    if not status.ok:
        raise SystemExit(f"root:// open of {url} ({target}) failed: {status.message}")
    try:
        while True:
            status, data = f.read(size, chunk, timeout=300)
            if not status.ok:
                raise SystemExit(f"root:// read of {url} failed: {status.message}")
            if not data:
                break
            digest.update(data)
            size += len(data)
    finally:
        f.close()
    return time.perf_counter() - start, digest.hexdigest(), size


async def main(megabytes: int, blocksize: str, prefetch: int, chunk: int) -> None:
    with tempfile.TemporaryDirectory(prefix="casa-bench-xcache-") as tmp:
        tmp = Path(tmp)
        data = tmp / "bench.bin"
        with open(data, "wb") as fh:
            for _ in range(megabytes):
                fh.write(os.urandom(1 << 20))
        want = hashlib.sha256(data.read_bytes()).hexdigest()
        site = await XCacheSite.start(tmp, files={p: data for p in PATHS.values()}, pfc_blocksize=blocksize, pfc_prefetch=prefetch)
        try:
            token = site.token_file("alice")
            os.environ.update(site.env(token, "root"))
            xc = XCache(timeout=300)
            readers = {"https": read_https, "root": lambda x, u: read_root(x, u, chunk << 20)}
            results = {}
            for protocol in ("https", "root"):
                for name, base in (("origin directly", site.server.origin_url if protocol == "https" else site.server.origin_root_url),
                                   ("XCache, 1st read (miss)", None), ("XCache, 2nd read (hit)", None)):
                    url = (base + PATHS[protocol]) if protocol == "https" and base else \
                        (f"{base}/{PATHS[protocol]}" if base else xc.url(PATHS[protocol], protocol))
                    seconds, digest, size = await asyncio.to_thread(readers[protocol], xc, url)
                    if digest != want or size != megabytes << 20:
                        raise SystemExit(f"{protocol} {name}: read {size} bytes with another content than the file's")
                    results[protocol, name] = megabytes / seconds
            cached = sum((site.server.cache_root / p.lstrip("/")).stat().st_size for p in PATHS.values())
        except SystemExit:
            print(site.server.log_tail(12))
            raise
        finally:
            await site.stop()
    print(f"{megabytes} MB file, a macaroon, one run each (in this order); pfc.blocksize {blocksize}, pfc.prefetch {prefetch}, "
          f"root:// reads of {chunk} MiB:")
    for protocol in ("https", "root"):
        base = results[protocol, "origin directly"]
        for (p, name), rate in results.items():
            if p == protocol:
                print(f"  {protocol:<5} {name:<26} {rate:8.1f} MB/s   {rate / base:5.2f} x origin")
    print(f"  the cache holds {cached >> 20} MB of the two files after the reads")
    warm = {p: results[p, "XCache, 2nd read (hit)"] for p in PATHS}
    print(f"root:// / HTTPS through the cache, warm, same token: {warm['root'] / warm['https']:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--blocksize", default="1m", help="the cache's pfc.blocksize")
    parser.add_argument("--prefetch", type=int, default=10, help="the cache's pfc.prefetch (blocks)")
    parser.add_argument("--chunk", type=int, default=8, help="MiB per root:// read")
    args = parser.parse_args()
    asyncio.run(main(args.megabytes, args.blocksize, args.prefetch, args.chunk))
