"""Credential sync sidecar: copy a mounted Secret into private files the notebook's tools accept.

HTCondor and the XRootD client refuse token files that are group-readable or
owned by another uid, and a Secret volume can be neither chowned nor made 0600 for
a non-root user.  This process copies each key of the Secret volume (flat keys such
as ``condor__tokens.d__casa``, see ``casa_hub.bundle.CredentialFile.key``) to its
path (``condor/tokens.d/casa``) under the target directory: directories 0700, files
0600, owned by the notebook's uid/gid, each file replaced atomically.

The kubelet updates a Secret volume by writing a new timestamped directory and
swapping the ``..data`` symlink; each pass reads one consistent snapshot through
``..data`` and rewrites the files whose content (or mode, or owner) differ.  Files
whose key left the Secret are removed.  Standard library only, plus
``casa_hub.files`` (itself standard library): the sidecar image needs the
``jupyterhub-casa`` package but none of its dependencies.

    python -m casa_session.credsync --from /secret --to /creds --uid 1000 --gid 100 [--once]
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import stat
import sys
import threading
from pathlib import Path

from casa_hub.files import atomic_write

log = logging.getLogger("casa.credsync")

__all__ = ["CredentialSync", "SyncError", "key_to_path", "read_secret_dir", "build_parser", "main"]

KUBELET_DATA = "..data"
DEFAULT_INTERVAL = 5.0
MAX_INTERVAL = 300.0
SNAPSHOT_ATTEMPTS = 3  # reads of ``..data`` when the kubelet swaps it mid-read (the init container has one pass)


class SyncError(Exception):
    """A pass could not be completed; the message says why in one line."""


def key_to_path(key: str) -> str:
    """``condor__tokens.d__casa`` -> ``condor/tokens.d/casa``; refuse anything that would escape."""
    parts = key.split("__")
    if not key or any(p in ("", ".", "..") or "/" in p or "\0" in p for p in parts):
        raise SyncError(f"refusing Secret key {key!r}: not a relative credential path")
    return "/".join(parts)


def read_secret_dir(source: Path) -> dict[str, bytes]:
    """One consistent snapshot of the Secret volume: {relative path: content}.

    With the kubelet's layout, reads the directory ``..data`` points at (it is never
    modified after the swap); a plain directory of files is read as is.
    """
    data_dir = source / KUBELET_DATA
    if data_dir.is_symlink():
        root = source / os.readlink(data_dir)
        if not root.is_dir():  # swapped and removed since the readlink
            raise FileNotFoundError(errno.ENOENT, "snapshot removed", str(root))
    elif data_dir.is_dir():
        root = data_dir
    else:
        root = source
    if not root.is_dir():
        raise SyncError(f"credential source {source} is not a directory")
    files = {}
    for entry in sorted(os.listdir(root)):
        if entry.startswith(".."):  # the kubelet's own entries
            continue
        full = root / entry
        if not full.is_file():
            continue
        files[key_to_path(entry)] = full.read_bytes()
    return files


def _private_dir(path: Path, uid: int | None, gid: int | None) -> None:
    path.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise SyncError(f"{path} exists and is not a directory")
    if uid is not None and (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid)
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _is_current(path: Path, content: bytes, uid: int | None, gid: int | None) -> bool:
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o600:
            return False
        if uid is not None and (st.st_uid, st.st_gid) != (uid, gid):
            return False
        return path.read_bytes() == content
    except FileNotFoundError:
        return False


class CredentialSync:
    """Mirror ``source`` (a Secret volume) into ``target`` with private modes and the given owner."""

    def __init__(self, source, target, uid: int | None = None, gid: int | None = None):
        self.source = Path(source)
        self.target = Path(target)
        self.uid, self.gid = _owner(uid, gid)
        self._written: set[str] | None = None  # files we manage; on start, whatever is there

    def sync_once(self) -> list[str]:
        """One pass; returns the relative paths written or removed."""
        for attempt in range(SNAPSHOT_ATTEMPTS):
            try:
                files = read_secret_dir(self.source)
                break
            except FileNotFoundError as e:  # the kubelet swapped ..data and removed the old snapshot mid-read
                if attempt == SNAPSHOT_ATTEMPTS - 1:
                    raise SyncError(f"credential source changed while reading ({e.filename}); will retry") from None
        _private_dir(self.target, self.uid, self.gid)
        if self._written is None:
            self._written = _existing_files(self.target)
        changed = []
        for rel, content in files.items():
            target = self.target / rel
            parent = self.target
            for part in Path(rel).parts[:-1]:
                parent = parent / part
                _private_dir(parent, self.uid, self.gid)
            if not _is_current(target, content, self.uid, self.gid):
                atomic_write(target, content, mode=0o600, uid=self.uid, gid=self.gid)
                changed.append(rel)
        for rel in sorted(self._written - set(files)):
            try:
                os.unlink(self.target / rel)
                changed.append(rel)
            except FileNotFoundError:
                pass
        self._written = set(files)
        return changed

    def follow(self, interval: float, stop: threading.Event) -> None:
        """Sync every ``interval`` seconds until ``stop`` is set; a failed pass is logged and retried."""
        while not stop.is_set():
            try:
                changed = self.sync_once()
                if changed:
                    log.info("updated %s", ", ".join(changed))
            except (SyncError, OSError) as e:
                log.warning("sync failed: %s", e)
            stop.wait(interval)


def _existing_files(root: Path) -> set[str]:
    found = set()
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return found


def _owner(uid: int | None, gid: int | None) -> tuple[int | None, int | None]:
    """The owner to give files: None when we already are that uid (no chown needed)."""
    if uid is None:
        return None, None
    gid = uid if gid is None else gid
    if os.geteuid() == 0:
        return uid, gid
    if os.geteuid() != uid:
        raise SyncError(f"running as uid {os.geteuid()}: run the sync container as uid {uid} or as root")
    return None, None


def _interval(text: str) -> float:
    value = float(text)
    if not 0 < value <= MAX_INTERVAL:
        raise argparse.ArgumentTypeError(f"interval must be within (0, {MAX_INTERVAL:g}] seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m casa_session.credsync", description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="source", required=True, metavar="DIR", help="the mounted Secret volume")
    p.add_argument("--to", dest="target", required=True, metavar="DIR", help="private credentials directory (made 0700)")
    p.add_argument("--uid", type=int, help="owner of the copies (the notebook's uid)")
    p.add_argument("--gid", type=int, help="group of the copies (default: --uid)")
    p.add_argument("--once", action="store_true", help="copy once and exit (init container)")
    p.add_argument("--interval", type=_interval, default=DEFAULT_INTERVAL, metavar="SECONDS", help="poll period when following")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s casa-credsync: %(message)s")
    try:
        sync = CredentialSync(args.source, args.target, args.uid, args.gid)
        changed = sync.sync_once()
    except (SyncError, OSError) as e:
        print(f"casa-credsync: error: {e}", file=sys.stderr)
        return 2
    log.info("synced %d file(s) into %s", len(changed), args.target)
    if args.once:
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait(args.interval)
    sync.follow(args.interval, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
