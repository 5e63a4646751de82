"""``casa check-config --online``: does the schedd accept a token the facility mints?

Registered in the ``casa.checks`` entry-point group (see :mod:`casa_hub.check_config`).  An
IDTOKEN for the sample user is minted with the configured signing key, written to a private
temporary directory and offered to the schedd by ``condor_ping WRITE`` (the authorization a
worker submission needs); the token is deleted afterwards and never printed.  HTCondor's
tools are found on ``PATH`` and use ``CONDOR_CONFIG`` as on the host that runs the check.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path

from casa_hub.check_config import CheckReport
from casa_hub.errors import CasaError

from .output import one_line
from .schedd import CondorTools

PING_TIMEOUT = 30.0


def ping_environment(report: CheckReport, token_dir: str) -> dict[str, str]:
    facility = report.facility
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CONDOR_CONFIG": os.environ.get("CONDOR_CONFIG", "ONLY_ENV"),
           "_CONDOR_TRUST_DOMAIN": facility.trust_domain, "_CONDOR_SEC_TOKEN_DIRECTORY": token_dir,
           "_CONDOR_SEC_TOKEN_SYSTEM_DIRECTORY": token_dir, "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS": "IDTOKENS"}
    if facility.collector_host:
        env["_CONDOR_COLLECTOR_HOST"] = facility.collector_host
    if facility.schedd_host:
        env["_CONDOR_SCHEDD_HOST"] = facility.schedd_host
    return env


def parse_ping_table(output: str) -> tuple[str, str] | None:
    """(decision, identity) from ``condor_ping -table``'s row for WRITE, or None if there is none."""
    for line in output.splitlines():
        fields = line.split()
        if fields and fields[0] == "WRITE" and len(fields) >= 5:
            return fields[4], fields[5] if len(fields) > 5 else ""
    return None


async def check_schedd(report: CheckReport) -> None:
    facility = report.facility
    if not report.online or facility is None:
        return
    if not (facility.issues_condor_tokens and facility.schedd_host):
        report.note("schedd not pinged: no Facility.signing_key_file or Facility.schedd_host")
        return
    ping = shutil.which("condor_ping")
    if ping is None:
        report.problem("condor_ping is not on PATH: the schedd cannot be checked from here (install HTCondor's tools)")
        return
    identity = facility.condor_identity_of(report.sample_user)
    with tempfile.TemporaryDirectory(prefix="casa-check-tokens-") as token_dir:
        try:
            token = await asyncio.to_thread(facility.condor_token_file, report.sample_user, dt.datetime.now(dt.timezone.utc))
        except CasaError as e:  # the key file's own problem is already reported
            report.problem(f"no IDTOKEN to ping the schedd with: {e}")
            return
        path = Path(token_dir, "casa")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(token.content)
        tools = CondorTools(submit="", remove="", query=ping, history="", timeout=PING_TIMEOUT)
        argv = [ping, "-type", "SCHEDD", "-name", facility.schedd_host, "-table", "WRITE"]
        code, out, err = await tools.run(argv, ping_environment(report, token_dir))
    where = f"schedd {facility.schedd_host}" + (f" via collector {facility.collector_host}" if facility.collector_host else "")
    row = parse_ping_table(out)
    if row is None or code != 0:
        report.problem(f"{where} did not answer condor_ping WRITE with a token for {identity}: {one_line(err or out) or f'exit {code}'}")
    elif row[0] != "ALLOW":
        report.problem(f"{where} refuses WRITE to a token for {identity} (decision {row[0]}, identity {row[1] or '-'}): "
                       f"check Facility.trust_domain and the pool's signing key")
    else:
        report.note(f"{where} accepts a minted IDTOKEN for WRITE as {row[1]}")
