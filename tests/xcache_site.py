"""The demo's real XCache and origin with the hub's macaroons, and the readers' environment.

    site = await XCacheSite.start(tmp_path, files={EVENTS: events_file})
    token = site.token_file("alice", lifetime=10)          # a 0600 file, as the hub writes it
    site.env(token, protocol="root")                       # XCACHE_HOST, XCACHE_CA_FILE, BEARER_TOKEN_FILE
    probe(site.env(token), "/store/user/alice/x", "root")  # a read in a fresh process: "OK <n>" or the XCacheError
    await site.stop()

Used by tests/test_xcache_protocols.py, tests/test_xcache_distributed.py and bench/xcache.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from casa_hub.files import atomic_write
from casa_spawner.demo.xcache import XCacheServer, ensure_macaroon_secret
from tests.facilities import MasterSecrets, new_facility

SITE = "CASA_XC_READ"


class XCacheSite:
    def __init__(self, workdir: Path, server: XCacheServer, secret: Path):
        self.workdir, self.server, self.secret = Path(workdir), server, secret

    @classmethod
    async def start(cls, workdir: Path, files: dict, public_paths=("/store/data",), **server_options) -> "XCacheSite":
        """Start the origin and the cache; ``server_options``: more ``XCacheServer`` settings (``pfc_blocksize``...)."""
        workdir = Path(workdir)
        secret = ensure_macaroon_secret(workdir / "macaroon-secret")
        server = XCacheServer(sitename=SITE, secret_file=str(secret), users=["alice", "bob"], files=files,
                              public_paths=list(public_paths), ready_timeout=60, **server_options)
        await server.start()
        return cls(workdir, server, secret)

    async def stop(self) -> None:
        await self.server.stop()

    def token(self, user: str, *, lifetime: int = 3600, secret: Path | None = None) -> str:
        """A macaroon for ``user``'s area, as the hub's Facility issues it."""
        facility = new_facility(self.workdir / "facility", MasterSecrets.fresh(), macaroon_secret_file=str(secret or self.secret),
                                xcache_site=SITE, xcache_paths=["/store/user/{username}"], xcache_token_lifetime=lifetime)
        return facility.xcache_token_file(user, dt.datetime.now(dt.timezone.utc)).content.decode().strip()

    def token_file(self, user: str, name: str | None = None, **kwargs) -> str:
        """Write (atomically, 0600, as the hub and credd do) a fresh token for ``user``; its path."""
        path = self.workdir / (name or f"{user}-token")
        atomic_write(path, (self.token(user, **kwargs) + "\n").encode(), mode=0o600)
        return str(path)

    def env(self, token_file: str, protocol: str = "root") -> dict[str, str]:
        """The worker variables of a session whose ``XCACHE_HOST`` is the cache by ``protocol``."""
        host = self.server.root_url if protocol == "root" else self.server.url
        return {"XCACHE_HOST": host, "XCACHE_CA_FILE": str(self.server.ca_file), "BEARER_TOKEN_FILE": token_file}

    def logs(self) -> str:
        """Both servers' logs so far."""
        return "\n".join(p.read_text(errors="replace") for p in self.server.run_dir.glob("*.log"))


PROBE = """
import json, sys
from casa_session.xcache import XCache, XCacheError
path, protocol, settings = json.loads(sys.argv[1])
try:
    print("OK", len(XCache(**settings).read(path, protocol)))
except XCacheError as e:
    print("XCacheError:", e)
"""


def probe(env: dict[str, str], path: str, protocol: str, timeout: float = 120, **settings) -> str:
    """Read ``path`` in a fresh Python with only ``env`` (and PATH/HOME): ``OK <bytes>`` or ``XCacheError: ...``."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps([path, protocol, settings])], env={**base, **env},
                          capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()
