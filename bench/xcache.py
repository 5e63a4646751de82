"""Reading one file through the demo's XCache, first read (miss) and second read (hit), vs the origin directly.

A real XRootD origin behind a real XCache (``casa_spawner.demo.xcache.XCacheServer``: libXrdPss +
libXrdPfc, macaroons, HTTPS with the run's CA).  One file of random bytes in alice's area is read
with her macaroon over HTTPS, streamed, in one run: from the origin directly (the baseline), then
through the cache twice -- the first read fetches from the origin and fills the cache, the second
is served from the cache's disk.  Prints MB/s of each and the ratios to the origin.

    python3 -m bench.xcache [--megabytes 256]    (from the repository root)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import os
import tempfile
import time
from pathlib import Path

import requests

from casa_hub.facility import Facility
from casa_spawner.demo.xcache import XCacheServer, ensure_macaroon_secret

SITE = "CASA_BENCH"
PATH = "/store/user/alice/bench.bin"


def read(url: str, token: str, ca: str) -> tuple[float, str, int]:
    """Seconds to stream the whole file, its sha256 and its size."""
    digest, size = hashlib.sha256(), 0
    start = time.perf_counter()
    with requests.get(url, headers={"Authorization": f"Bearer {token}"}, verify=ca, stream=True, timeout=300) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_content(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return time.perf_counter() - start, digest.hexdigest(), size


async def main(megabytes: int) -> None:
    with tempfile.TemporaryDirectory(prefix="casa-bench-xcache-") as tmp:
        tmp = Path(tmp)
        data = tmp / "bench.bin"
        with open(data, "wb") as fh:
            for _ in range(megabytes):
                fh.write(os.urandom(1 << 20))
        want = hashlib.sha256(data.read_bytes()).hexdigest()
        secret = ensure_macaroon_secret(tmp / "macaroon-secret")
        server = XCacheServer(sitename=SITE, secret_file=str(secret), users=["alice"], files={PATH: data}, ready_timeout=60)
        await server.start()
        try:
            facility = Facility(macaroon_secret_file=str(secret), xcache_site=SITE, xcache_paths=["/store/user/{username}"])
            token = facility.xcache_token_file("alice", dt.datetime.now(dt.timezone.utc)).content.decode().strip()
            ca = str(server.ca_file)
            results = {}
            for name, base in (("origin directly", server.origin_url), ("XCache, 1st read (miss)", server.url),
                               ("XCache, 2nd read (hit)", server.url)):
                seconds, digest, size = await asyncio.to_thread(read, base + PATH, token, ca)
                if digest != want or size != megabytes << 20:
                    raise SystemExit(f"{name}: read {size} bytes with another content than the file's")
                results[name] = megabytes / seconds
            cached = server.cache_root / PATH.lstrip("/")
            cached_size = cached.stat().st_size if cached.exists() else 0
        finally:
            await server.stop()
    base = results["origin directly"]
    print(f"{megabytes} MB file, HTTPS with a macaroon, one run each (in this order):")
    for name, rate in results.items():
        print(f"  {name:<26} {rate:8.1f} MB/s   {rate / base:5.2f} x origin")
    print(f"  cache holds {cached_size >> 20} MB of it after the reads")
    print(f"hit / miss: {results['XCache, 2nd read (hit)'] / results['XCache, 1st read (miss)']:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=256)
    asyncio.run(main(parser.parse_args().megabytes))
