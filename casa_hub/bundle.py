"""A user's credential bundle: files with their modes, audiences and expiry, written atomically.

The bundle is plain data; spawners decide where it lands (a Kubernetes Secret, a
private directory).  File contents never appear in a ``repr``.
"""

from __future__ import annotations

import datetime as dt
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from .files import atomic_write, make_private_dir

# who reads a file: the notebook container, the scheduler sidecar, batch workers
NOTEBOOK, SCHEDULER, WORKER = "notebook", "scheduler", "worker"

# relative paths inside the credentials directory (DESIGN.md "Files a user gets")
CONDOR_TOKEN_PATH = "condor/tokens.d/casa"
BEARER_TOKEN_PATH = "bearer_token"
DASK_CA_PATH = "dask/ca.pem"
DASK_CLIENT_PATH = "dask/client.pem"
DASK_WORKER_PATH = "dask/worker.pem"
DASK_SCHEDULER_PATH = "dask/scheduler.pem"


@dataclass(frozen=True)
class CredentialFile:
    """One file of a bundle; ``path`` is relative and POSIX-style."""

    path: str
    content: bytes = field(repr=False)
    kind: str
    audiences: frozenset = frozenset({NOTEBOOK})
    mode: int = 0o600
    issued_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None

    def __post_init__(self):
        norm = posixpath.normpath(self.path)
        if norm != self.path or norm.startswith(("/", "..")) or norm == ".":
            raise ValueError(f"credential path must be relative and normalised: {self.path!r}")

    def renewal_due(self, now: dt.datetime, fraction: float = 2 / 3) -> bool:
        """True once ``fraction`` of the file's life has passed (never for files without expiry)."""
        if self.expires_at is None or self.issued_at is None:
            return False
        life = (self.expires_at - self.issued_at).total_seconds()
        return (now - self.issued_at).total_seconds() >= fraction * life

    def metadata(self) -> dict:
        """Everything but the content, JSON-ready: what a spawner's state keeps across a hub restart."""
        return {
            "path": self.path,
            "kind": self.kind,
            "audiences": sorted(self.audiences),
            "mode": self.mode,
            "issued_at": self.issued_at.isoformat() if self.issued_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }

    @classmethod
    def from_metadata(cls, meta: dict, content: bytes) -> "CredentialFile":
        """The file described by :meth:`metadata`, with ``content`` (read back, or a placeholder)."""
        return cls(
            meta["path"],
            content,
            meta["kind"],
            frozenset(meta["audiences"]),
            meta.get("mode", 0o600),
            issued_at=dt.datetime.fromisoformat(meta["issued_at"]) if meta.get("issued_at") else None,
            expires_at=dt.datetime.fromisoformat(meta["expires_at"]) if meta.get("expires_at") else None,
        )

    @property
    def key(self) -> str:
        """A flat name usable as a Kubernetes Secret key (``condor/tokens.d/casa`` -> ``condor__tokens.d__casa``)."""
        return self.path.replace("/", "__")


@dataclass(frozen=True)
class CredentialBundle:
    files: tuple[CredentialFile, ...] = ()

    def __post_init__(self):
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("credential bundle has two files with the same path")

    def for_audience(self, audience: str) -> "CredentialBundle":
        return CredentialBundle(tuple(f for f in self.files if audience in f.audiences))

    def get(self, path: str) -> CredentialFile | None:
        return next((f for f in self.files if f.path == path), None)

    def replacing(self, *new_files: CredentialFile) -> "CredentialBundle":
        """The bundle with files of the same path swapped for ``new_files`` (others kept)."""
        by_path = {f.path: f for f in self.files}
        by_path.update({f.path: f for f in new_files})
        return CredentialBundle(tuple(by_path.values()))

    @property
    def expires_at(self) -> dt.datetime | None:
        expiries = [f.expires_at for f in self.files if f.expires_at is not None]
        return min(expiries) if expiries else None

    def due_for_renewal(self, now: dt.datetime, fraction: float = 2 / 3) -> list[CredentialFile]:
        return [f for f in self.files if f.renewal_due(now, fraction)]

    def as_secret_data(self) -> dict[str, bytes]:
        """Flat key -> content mapping, e.g. for a Kubernetes Secret."""
        return {f.key: f.content for f in self.files}

    def write_to(self, directory: str | os.PathLike) -> list[Path]:
        """Write every file under ``directory`` (made 0700) atomically, each with its mode.

        Each file is written to a temporary name in its final directory and renamed over
        the old one, so a reader sees either the old or the new credential, never half.
        """
        root = Path(directory)
        make_private_dir(root)
        written = []
        for cred in self.files:
            parent = root
            for part in Path(cred.path).parts[:-1]:
                parent = parent / part
                make_private_dir(parent)
            target = atomic_write(root / cred.path, cred.content, mode=cred.mode)
            written.append(target)
        return written
