"""A stand-in for one of HTCondor's tools that records how the hub ran it: arguments, environment, standard input,
and the token directory it was given (the files, their modes), then prints what the real tool prints on success."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCRIPT = """#!{python}
import json, os, sys
tokens = os.environ.get("_CONDOR_SEC_TOKEN_DIRECTORY", "")
files = {{n: open(os.path.join(tokens, n)).read() for n in os.listdir(tokens)}} if tokens else {{}}
json.dump({{"argv": sys.argv[1:], "env": dict(os.environ), "stdin": sys.stdin.read(), "tokens": files,
           "modes": {{n: oct(os.stat(os.path.join(tokens, n)).st_mode & 0o777) for n in files}},
           "dir_mode": oct(os.stat(tokens).st_mode & 0o777) if tokens else ""}}, open({record!r}, "w"))
print({prints!r})
"""


def recording_tool(directory: Path, name: str, prints: str) -> tuple[str, Path]:
    """``directory/name``, an executable that records its call into ``directory/name.json``; (its path, the record)."""
    tool, record = directory / name, directory / f"{name}.json"
    tool.write_text(SCRIPT.format(python=sys.executable, record=str(record), prints=prints))
    tool.chmod(0o755)
    return str(tool), record


def what_it_saw(record: Path) -> dict:
    return json.loads(record.read_text())
