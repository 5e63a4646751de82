"""Each gateway user's own HTCondor identity: an IDTOKEN issued by casa_hub's ``Facility``.

The gateway holds the pool signing key (``c.Facility.signing_key_file``) and issues every user a
token for ``Facility.condor_identity`` -- the same identity the user's notebook session gets.
Tokens live in a private directory on the gateway host (0700, one 0600 file per user, written
atomically), are renewed after ``Facility.renew_fraction`` of their life, and are deleted when
the gateway stops.  They never travel with the jobs: only the gateway talks to the schedd.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path

from casa_hub.bundle import CredentialFile
from casa_hub.facility import Facility

TOKEN_FILE = "casa"


class UserTokens:
    """Token directories (``_CONDOR_SEC_TOKEN_DIRECTORY``) by gateway username."""

    def __init__(self, facility: Facility, root: str | os.PathLike | None = None):
        self.facility = facility
        self._root_arg = root
        self.root: Path | None = None
        self._issued: dict[str, CredentialFile] = {}
        self._lock = asyncio.Lock()

    def identity(self, username: str) -> str:
        return self.facility.condor_identity_of(username)

    def _make_root(self) -> Path:
        if self._root_arg is None:
            return Path(tempfile.mkdtemp(prefix="casa-gateway-tokens-"))
        root = Path(self._root_arg)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        return root

    def _write(self, username: str, token: CredentialFile) -> Path:
        """Write one user's token file atomically (blocking: run in a thread)."""
        directory = self.root / self.facility.names(username).slug
        directory.mkdir(mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".token-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(token.content)
            os.chmod(tmp, 0o600)
            os.replace(tmp, directory / TOKEN_FILE)
        except BaseException:
            os.unlink(tmp)
            raise
        return directory

    async def directory(self, username: str) -> Path:
        """The user's token directory, with a token that is not yet due for renewal."""
        async with self._lock:
            if self.root is None:
                self.root = await asyncio.to_thread(self._make_root)
            now = dt.datetime.now(dt.timezone.utc)
            token = self._issued.get(username)
            directory = self.root / self.facility.names(username).slug
            if token is None or token.renewal_due(now, self.facility.renew_fraction):
                token = self.facility.condor_token_file(username, now)
                directory = await asyncio.to_thread(self._write, username, token)
                self._issued[username] = token
            return directory

    async def close(self) -> None:
        """Delete every token (the gateway is stopping)."""
        async with self._lock:
            root, self.root = self.root, None
            self._issued.clear()
            if root is not None:
                await asyncio.to_thread(shutil.rmtree, root, True)
