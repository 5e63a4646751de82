"""The one way tests write a key file: private from the moment it exists, as an operator's ``chmod 600``."""

from __future__ import annotations

import os
from pathlib import Path


def write_secret_file(path: os.PathLike | str, data: bytes, mode: int = 0o600) -> str:
    """Write ``data`` to ``path`` (created 0600, never briefly readable by others), then give it
    ``mode`` (a test of a too-open file asks for one); returns the path as ``str``, as traits take it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
        out.write(data)
    os.chmod(path, mode)
    return str(Path(path))
