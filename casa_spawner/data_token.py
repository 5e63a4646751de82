"""The user's data token, kept fresh inside their running HTCondor jobs by the pool's own ``condor_credd``.

With ``c.Facility.data_token_service`` set (e.g. ``"xcache"``), the hub gives the credd the session's
data token -- the file behind ``BEARER_TOKEN_FILE`` -- as the user
(``condor_store_cred add-oauth -P -s <service> -i -``, the token on standard input, the user's own
short-lived IDTOKEN: :class:`~.condor_user.CondorAsUser`) when the session's credentials are issued
and again after every renewal that changed it.  The session's worker jobs ask for the service
(``use_oauth_services``); the starter copies the stored token into ``$_CONDOR_CREDS/<service>.use``
of every running job every ``SEC_CREDENTIAL_REFRESH`` seconds.  No process of the session has to
stay alive for that: a notebook whose kernel died still has workers that read.

A credd that does not answer never stops a spawn or a renewal: one warning line, the
``casa_credd_stores_total{outcome="failed"}`` counter, and the next poll tries again.
"""

from __future__ import annotations

import asyncio

from traitlets import Unicode, default

from casa_condor.schedd import CondorTools
from casa_hub import metrics

from .condor_user import CondorAsUser, tool_on_path


class DataTokenStore(CondorAsUser):
    """Stores a user's data token in the pool's credd, as the user (``c.DataTokenStore.*``)."""

    store_command = Unicode(
        config=True,
        help="""``condor_store_cred`` on the hub's host (HTCondor's packages put it in ``/usr/sbin``).
        Default: the one on the hub's PATH, else in ``/usr/sbin`` or ``/sbin``.

        Example: ``c.DataTokenStore.store_command = "/usr/sbin/condor_store_cred"``""",
    )

    @default("store_command")
    def _default_store_command(self):
        return tool_on_path("condor_store_cred")

    @default("timeout")
    def _default_timeout(self):
        return 10.0  # a spawn waits for it: a credd that hangs must not hold a start for long

    @property
    def enabled(self) -> bool:
        return self.facility.stores_data_tokens

    def tools(self) -> CondorTools:
        # only condor_store_cred is ever run
        return CondorTools(submit="condor_submit", remove="condor_rm", query="condor_q", history="condor_history",
                           store_cred=self.store_command, environment=self.tool_environment(),
                           schedd_name=self.facility.schedd_host, timeout=self.timeout)

    async def store(self, username: str, token: bytes) -> bool:
        """Give the credd ``token`` as ``username``'s: True once stored; False if the credd failed (logged
        and counted).  Never raises, except a cancellation."""
        service = self.facility.data_token_service
        try:
            async with self.schedd(username) as schedd:
                await schedd.store_token(service, token)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the session goes on with the token its workers have; the next poll retries
            metrics.credd_store(False)
            self.log.warning("Could not give the HTCondor credd the data token of %s (service %s; retried at the next "
                             "poll): %s", username, service, e)
            return False
        metrics.credd_store(True)
        self.log.info("Stored the data token of %s in the HTCondor credd (service %s)", username, service)
        return True
