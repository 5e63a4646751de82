"""The one way tests run the ``casa`` command: its console script, in a process of its own, as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def casa_command() -> str:
    """The ``casa`` script installed with this Python (a venv's ``bin/``), else the one on PATH."""
    beside = Path(sys.executable).with_name("casa")
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("casa")
    assert found, "the casa console script is not installed (pip install -e .)"
    return found


def run_casa(*args, env: dict | None = None, cwd: os.PathLike | str | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
    """``casa *args`` to completion: exit status, stdout and stderr as text; no stdin."""
    return subprocess.run([casa_command(), *map(str, args)], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd)
