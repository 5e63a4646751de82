"""Master secrets read from files: checked once, kept in memory, never shown."""

from __future__ import annotations

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
    """Read a master-secret file; refuse one that is missing, empty or readable by others.

    The check mirrors what HTCondor and XRootD demand of their own key files.  Symbolic
    links are followed (a Kubernetes Secret volume's files are links into ``..data``)
    and the file they reach is what is checked.
    """
    if not path:
        raise ConfigurationError(f"no {label} file is configured")
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ConfigurationError(f"{label} file {path} does not exist") from None
    except OSError as e:
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
