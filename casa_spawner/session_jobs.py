"""When a session stops, the HTCondor jobs it left behind go too -- removed as the user, never as a super user.

Every job a session's ``CasaCluster`` submits carries ``+CasaSession = "<id>"``, the id the spawner
gave that start of the session (``CASA_SESSION_ID``, :func:`casa_hub.plan.new_session_id`) and keeps
in its state, so a hub that restarted still knows it.  On stop the spawner mints the user's own
IDTOKEN (``Facility.condor_token_file``, short-lived), writes it into a private temporary directory,
runs one bounded ``condor_rm -constraint 'CasaSession == "<id>"'`` with it
(:class:`casa_condor.schedd.UserSchedd`) and deletes the directory.  The schedd lets an identity
remove only its own jobs, so another user's session is out of reach even with a guessed id.

A schedd that does not answer never stops a session from stopping: one warning line, and the
jobs' own ``death-timeout`` ends their workers once the scheduler is gone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import shutil
from pathlib import Path

from traitlets import Float, Instance, Int, Unicode, default
from traitlets.config import LoggingConfigurable

from casa_condor.schedd import CondorTools, UserSchedd
from casa_hub.facility import Facility
from casa_hub.files import private_temp_dir

#: the job attribute naming the session (set by the session's worker launcher)
JOB_ATTRIBUTE = "CasaSession"
TOKEN_FILE = "casa"
# what new_session_id makes (a slug, a dash, hex): nothing that could end a ClassAd string
_SESSION_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,100}[a-z0-9])?")


def session_constraint(session_id: str) -> str:
    """The ClassAd constraint matching the jobs of one session; ValueError for an id that is not one."""
    if not _SESSION_ID.fullmatch(session_id or ""):
        raise ValueError(f"not a session id: {session_id!r}")
    return f'{JOB_ATTRIBUTE} == "{session_id}"'


def _write_token_dir(content: bytes) -> Path:
    """A fresh 0700 directory holding one 0600 token file (blocking: run in a thread)."""
    return private_temp_dir("casa-session-jobs-", {TOKEN_FILE: content})


class SessionJobs(LoggingConfigurable):
    """Removes a stopped session's HTCondor jobs as the session's user (``c.SessionJobs.*``).

    Active only when the facility gives sessions a schedd (``c.Facility.schedd_host``) and issues
    IDTOKENs (``c.Facility.signing_key_file``); otherwise no session can have submitted a job.
    """

    facility = Instance(Facility, help="The facility whose users' tokens are minted; the spawner passes its own.")

    @default("facility")
    def _default_facility(self):
        return Facility.instance(config=self.config)

    remove_command = Unicode(
        config=True,
        help="""``condor_rm`` on the hub's host.  Default: the one on the hub's PATH.

        Example: ``c.SessionJobs.remove_command = "/usr/bin/condor_rm"``""",
    )

    @default("remove_command")
    def _default_remove_command(self):
        return shutil.which("condor_rm") or "condor_rm"

    condor_config = Unicode(
        config=True,
        help="""``CONDOR_CONFIG`` for ``condor_rm``.  Default: the hub's own ``CONDOR_CONFIG``, else
        ``ONLY_ENV`` (no file: the pool comes from ``c.Facility.collector_host`` / ``schedd_host``).

        Example: ``c.SessionJobs.condor_config = "/etc/condor/condor_config"``""",
    )

    @default("condor_config")
    def _default_condor_config(self):
        return os.environ.get("CONDOR_CONFIG") or "ONLY_ENV"

    timeout = Float(
        30.0,
        config=True,
        help="""Seconds the ``condor_rm`` call may take before it is killed and the session stops
        without it (with a warning).  Example: ``c.SessionJobs.timeout = 10``""",
    )
    token_lifetime = Int(
        300,
        min=30,
        config=True,
        help="""Seconds the IDTOKEN minted for the removal lives (it is deleted right after the call).""",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.facility.schedd_host) and self.facility.issues_condor_tokens

    def tools(self) -> CondorTools:
        env = {"CONDOR_CONFIG": self.condor_config, "_CONDOR_TRUST_DOMAIN": self.facility.trust_domain,
               "_CONDOR_SCHEDD_HOST": self.facility.schedd_host}
        if self.facility.collector_host:
            env["_CONDOR_COLLECTOR_HOST"] = self.facility.collector_host
        # only condor_rm is ever run; the other tools are named for completeness of CondorTools
        return CondorTools(submit="condor_submit", remove=self.remove_command, query="condor_q", history="condor_history",
                           environment=env, schedd_name=self.facility.schedd_host, timeout=self.timeout)

    async def remove(self, username: str, session_id: str) -> bool | None:
        """Remove every job of ``session_id`` as ``username``: True if some were removed, False if none
        was left, None if nothing was tried or the schedd failed (logged).  Never raises, except a
        cancellation."""
        if not session_id or not self.enabled:
            return None
        try:
            removed = await self._remove(username, session_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the session stops all the same
            self.log.warning("Could not remove the HTCondor jobs of session %s of %s: %s", session_id, username, e)
            return None
        if removed:
            self.log.info("Removed the HTCondor jobs of session %s as %s", session_id, self.facility.condor_identity_of(username))
        return removed

    async def _remove(self, username: str, session_id: str) -> bool:
        constraint = session_constraint(session_id)
        now = dt.datetime.now(dt.timezone.utc)
        token = await asyncio.to_thread(self.facility.condor_token_file, username, now, self.token_lifetime)
        directory = await asyncio.to_thread(_write_token_dir, token.content)
        try:
            schedd = UserSchedd(self.tools(), self.facility.condor_identity_of(username), directory)
            return await schedd.remove(constraint)
        finally:
            await asyncio.to_thread(shutil.rmtree, directory, True)
