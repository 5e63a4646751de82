"""HTCondor's tools run by the hub as one of its users -- never as a super user, never with the pool key.

What the hub does in the pool on a user's behalf (remove a stopped session's jobs, store the user's
data token in the credd) goes through :class:`CondorAsUser`: it mints the user's own IDTOKEN
(``Facility.condor_token_file``, short-lived), writes it into a private temporary directory, runs
one bounded tool call with only that token and the pool's addresses in its environment
(:class:`casa_condor.schedd.UserSchedd`), and deletes the directory.  The pool then lets the hub do
exactly what the user may do.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from traitlets import Float, Instance, Int, Unicode, default
from traitlets.config import LoggingConfigurable

from casa_condor.schedd import CondorTools, UserSchedd
from casa_hub.facility import Facility
from casa_hub.files import private_temp_dir

TOKEN_FILE = "casa"


def _write_token_dir(content: bytes) -> Path:
    """A fresh 0700 directory holding one 0600 token file (blocking: run in a thread)."""
    return private_temp_dir("casa-as-user-", {TOKEN_FILE: content})


class CondorAsUser(LoggingConfigurable):
    """The pool as one user reaches it from the hub; ``c.CondorAsUser.*`` sets both of its uses at once
    (``c.SessionJobs.*``, ``c.DataTokenStore.*`` each one)."""

    facility = Instance(Facility, help="The facility whose users' tokens are minted; the spawner passes its own.")

    @default("facility")
    def _default_facility(self):
        return Facility.instance(config=self.config)

    condor_config = Unicode(
        config=True,
        help="""``CONDOR_CONFIG`` for the tool.  Default: the hub's own ``CONDOR_CONFIG``, else
        ``ONLY_ENV`` (no file: the pool comes from ``c.Facility.collector_host`` / ``schedd_host`` /
        ``credd_host``).

        Example: ``c.SessionJobs.condor_config = "/etc/condor/condor_config"``""",
    )

    @default("condor_config")
    def _default_condor_config(self):
        return os.environ.get("CONDOR_CONFIG") or "ONLY_ENV"

    timeout = Float(
        30.0,
        config=True,
        help="""Seconds the tool call may take before it is killed (the session goes on without it,
        with a warning).  Example: ``c.SessionJobs.timeout = 10``""",
    )
    token_lifetime = Int(
        300,
        min=30,
        config=True,
        help="""Seconds the IDTOKEN minted for the call lives (it is deleted right after the call).""",
    )

    def tool_environment(self) -> dict[str, str]:
        """The pool's addresses, as the tool reads them (nothing of the hub's own identity)."""
        env = {"CONDOR_CONFIG": self.condor_config, "_CONDOR_TRUST_DOMAIN": self.facility.trust_domain}
        for name, value in (("_CONDOR_SCHEDD_HOST", self.facility.schedd_host),
                            ("_CONDOR_COLLECTOR_HOST", self.facility.collector_host),
                            ("_CONDOR_CREDD_HOST", self.facility.credd_host)):
            if value:
                env[name] = value
        return env

    def tools(self) -> CondorTools:
        """The tools of this use; a subclass names the one it runs."""
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def schedd(self, username: str) -> AsyncIterator[UserSchedd]:
        """The pool as ``username``, with a fresh short-lived IDTOKEN that is deleted on exit."""
        now = dt.datetime.now(dt.timezone.utc)
        token = await asyncio.to_thread(self.facility.condor_token_file, username, now, self.token_lifetime)
        directory = await asyncio.to_thread(_write_token_dir, token.content)
        try:
            yield UserSchedd(self.tools(), self.facility.condor_identity_of(username), directory)
        finally:
            await asyncio.to_thread(shutil.rmtree, directory, True)


def tool_on_path(name: str) -> str:
    """``name`` on the hub's PATH, else in ``/usr/sbin`` or ``/sbin`` (where packages put ``condor_store_cred``)."""
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin") or name
