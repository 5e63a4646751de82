"""Each gateway user's data token: the macaroon the gateway issues with casa_hub's ``Facility``, as the hub does.

The gateway already holds the pool signing key and issues every user their IDTOKEN; with the
macaroon secret (``c.Facility.macaroon_secret_file``) it issues their data token the same way, for
``Facility.xcache_paths`` of that user (``/store/user/{username}``): the same token a notebook of
that user gets from the hub, without asking the hub for anything.  It is renewed after
``Facility.renew_fraction`` of its life.  With a credd service (``c.Facility.data_token_service``)
it is given to the pool's credd as the user, and the workers' jobs read the starter's copy, refreshed
while they run; without one, it travels once with each worker job (encrypted) and is not renewed there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from casa_condor.schedd import UserSchedd
from casa_hub import metrics
from casa_hub.bundle import CredentialFile
from casa_hub.facility import Facility


class UserDataTokens:
    """Data tokens by gateway username: issued, renewed when due, and given to the credd once each."""

    def __init__(self, facility: Facility, log: logging.Logger):
        self.facility = facility
        self.log = log
        self._issued: dict[str, CredentialFile] = {}
        self._stored: dict[str, CredentialFile] = {}
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        """True when the gateway issues data tokens (it holds the macaroon secret)."""
        return self.facility.issues_xcache_tokens

    @property
    def renewed_in_jobs(self) -> bool:
        """True when running workers get every renewal (the credd); False when the token travels once."""
        return self.enabled and self.facility.stores_data_tokens

    async def current(self, username: str) -> CredentialFile | None:
        """The user's token, issued or re-issued now if none is valid for long enough; None when disabled."""
        if not self.enabled:
            return None
        async with self._lock:
            token = previous = self._issued.get(username)
            now = dt.datetime.now(dt.timezone.utc)
            if previous is None or previous.renewal_due(now, self.facility.renew_fraction):
                token = self._issued[username] = await asyncio.to_thread(self.facility.xcache_token_file, username, now)
                if previous is not None:
                    metrics.renewed(token.kind)
            return token

    async def store(self, username: str, schedd: UserSchedd) -> bool:
        """Give the credd the user's current token, as the user, unless it has it already.  True if it has it
        now; a failure is one warning line (and ``casa_credd_stores_total{outcome="failed"}``), retried later."""
        if not self.renewed_in_jobs:
            return False
        token = await self.current(username)
        if self._stored.get(username) is token:
            return True
        try:
            await schedd.store_token(self.facility.data_token_service, token.content)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            metrics.credd_store(False)
            self.log.warning("Could not give the HTCondor credd the data token of %s (service %s; retried): %s",
                             username, self.facility.data_token_service, e)
            return False
        metrics.credd_store(True)
        self._stored[username] = token
        self.log.info("Stored the data token of %s in the HTCondor credd (service %s)", username, self.facility.data_token_service)
        return True

    def forget(self) -> None:
        """Drop every token (the gateway is stopping)."""
        self._issued.clear()
        self._stored.clear()
