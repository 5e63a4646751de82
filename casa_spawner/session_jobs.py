"""When a session stops, the HTCondor jobs it left behind go too -- removed as the user, never as a super user.

Every job a session's ``CasaCluster`` submits carries ``+CasaSession = "<id>"``, the id the spawner
gave that start of the session (``CASA_SESSION_ID``, :func:`casa_hub.plan.new_session_id`) and keeps
in its state, so a hub that restarted still knows it.  On stop the spawner runs one bounded
``condor_rm -constraint 'CasaSession == "<id>"'`` as the user (:class:`~.condor_user.CondorAsUser`:
the user's own short-lived IDTOKEN, nothing else).  The schedd lets an identity remove only its
own jobs, so another user's session is out of reach even with a guessed id.

A schedd that does not answer never stops a session from stopping: one warning line, and the
jobs' own ``death-timeout`` ends their workers once the scheduler is gone.
"""

from __future__ import annotations

import asyncio
import re
import shutil

from traitlets import Unicode, default

from casa_condor.schedd import CondorTools

from .condor_user import CondorAsUser

#: the job attribute naming the session (set by the session's worker launcher)
JOB_ATTRIBUTE = "CasaSession"
# what new_session_id makes (a slug, a dash, hex): nothing that could end a ClassAd string
_SESSION_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,100}[a-z0-9])?")


def session_constraint(session_id: str) -> str:
    """The ClassAd constraint matching the jobs of one session; ValueError for an id that is not one."""
    if not _SESSION_ID.fullmatch(session_id or ""):
        raise ValueError(f"not a session id: {session_id!r}")
    return f'{JOB_ATTRIBUTE} == "{session_id}"'


class SessionJobs(CondorAsUser):
    """Removes a stopped session's HTCondor jobs as the session's user (``c.SessionJobs.*``).

    Active only when the facility gives sessions a schedd (``c.Facility.schedd_host``) and issues
    IDTOKENs (``c.Facility.signing_key_file``); otherwise no session can have submitted a job.
    """

    remove_command = Unicode(
        config=True,
        help="""``condor_rm`` on the hub's host.  Default: the one on the hub's PATH.

        Example: ``c.SessionJobs.remove_command = "/usr/bin/condor_rm"``""",
    )

    @default("remove_command")
    def _default_remove_command(self):
        return shutil.which("condor_rm") or "condor_rm"

    @property
    def enabled(self) -> bool:
        return bool(self.facility.schedd_host) and self.facility.issues_condor_tokens

    def tools(self) -> CondorTools:
        # only condor_rm is ever run; the other tools are named for completeness of CondorTools
        return CondorTools(submit="condor_submit", remove=self.remove_command, query="condor_q", history="condor_history",
                           environment=self.tool_environment(), schedd_name=self.facility.schedd_host, timeout=self.timeout)

    async def remove(self, username: str, session_id: str) -> bool | None:
        """Remove every job of ``session_id`` as ``username``: True if some were removed, False if none
        was left, None if nothing was tried or the schedd failed (logged).  Never raises, except a
        cancellation."""
        if not session_id or not self.enabled:
            return None
        try:
            constraint = session_constraint(session_id)
            async with self.schedd(username) as schedd:
                removed = await schedd.remove(constraint)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the session stops all the same
            self.log.warning("Could not remove the HTCondor jobs of session %s of %s: %s", session_id, username, e)
            return None
        if removed:
            self.log.info("Removed the HTCondor jobs of session %s as %s", session_id, self.facility.condor_identity_of(username))
        return removed
