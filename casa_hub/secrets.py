"""Master secrets read from files: checked once, kept in memory, never shown."""

from __future__ import annotations

import errno
import os
import stat

from .errors import ConfigurationError


class SecretBytes:
    """Bytes that refuse to be printed; ``reveal()`` is the one way to the value."""

    __slots__ = ("_value", "_label")

    def __init__(self, value: bytes, label: str):
        self._value = bytes(value)
        self._label = label

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return f"<secret {self._label}: redacted>"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("master secrets cannot be pickled")


def read_secret_file(path: str, label: str) -> bytes:
    """Read a master-secret file; refuse one that is missing, empty, a symlink or readable by others.

    The check mirrors what HTCondor and XRootD demand of their own key files.
    """
    if not path:
        raise ConfigurationError(f"no {label} file is configured")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise ConfigurationError(f"{label} file {path} does not exist") from None
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW: the strerror ("Too many levels of symbolic links") misleads
            raise ConfigurationError(f"{label} file {path} is a symbolic link; configure the file itself") from None
        raise ConfigurationError(f"cannot open {label} file {path}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ConfigurationError(f"{label} file {path} is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        if st.st_mode & 0o077:
            raise ConfigurationError(
                f"{label} file {path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"run: chmod 600 {path}"
            )
        data = fh.read()
    if not data:
        raise ConfigurationError(f"{label} file {path} is empty")
    return data
