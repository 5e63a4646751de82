"""Credential files on disk: private directories, and atomic replacement (readers see the old
file or the new one, never half of either)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def atomic_write(
    target: str | os.PathLike,
    content: bytes,
    *,
    mode: int = 0o600,
    uid: int | None = None,
    gid: int | None = None,
    suffix: str = "",
) -> Path:
    """Write ``content`` to a temporary file beside ``target`` (``mode``, owner), then rename it over.

    The temporary file is created with ``mode`` already set, so a secret is never readable
    by others even for a moment; ``suffix`` lets watchers (Traefik's ``.tmp``) skip it.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".casa-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:  # owns fd from here: closed even if chmod or chown fails
            os.fchmod(fd, mode)
            if uid is not None:
                os.fchown(fd, uid, -1 if gid is None else gid)
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def make_private_dir(path: str | os.PathLike) -> None:
    """Create ``path`` (and parents) and make it 0700, whatever mode it had."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def private_temp_dir(prefix: str, files: dict[str, bytes]) -> Path:
    """A fresh 0700 directory (``tempfile.mkdtemp``) holding ``files`` as new 0600 files; removed
    again if any write fails (blocking: run in a thread).  The caller removes it when done."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        for name, content in files.items():
            fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return directory
