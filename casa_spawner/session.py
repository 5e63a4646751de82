"""The session core both hub spawners share: facility, plan, credentials, renewal, saved state.

``CasaKubeSpawner`` and ``CasaLocalSpawner`` differ only in how a plan is materialised
(Kubernetes objects vs. local processes and files).  What a session *is* -- one per user,
credentials issued from the facility with the user's IdP token, re-issued past their
renewal time and the new expiry times saved in the hub's database -- lives here once, as a
mixin placed before the JupyterHub spawner class::

    class CasaLocalSpawner(SessionCore, SimpleLocalProcessSpawner): ...

A spawner using it provides :meth:`SessionCore.materialise_renewal` (send the re-issued files
where the session reads them) and keeps ``bundle`` up to date; the rest it inherits.
"""

from __future__ import annotations

import asyncio
import traceback

from traitlets import Bool, Instance, default
from traitlets.config import LoggingConfigurable

from casa_hub.auth_state import AccessToken, access_token_from
from casa_hub.bundle import BEARER_TOKEN_PATH, CredentialBundle, CredentialFile
from casa_hub.errors import CasaError, ConfigurationError
from casa_hub.facility import Facility
from casa_hub.plan import SessionPlan, plan_session

from .data_token import DataTokenStore
from .heap import freeze_soon
from .session_jobs import SessionJobs


class NamedServerError(ConfigurationError):
    """A named server was asked for: a user has one scheduler address, so one session."""


def _token_arguments(token: AccessToken | None) -> dict:
    """The facility's keyword arguments for the IdP token (the WLCG bearer token without an XCache secret)."""
    return {"access_token": token.token if token else None, "access_token_expires_at": token.expires_at if token else None}


class SessionCore(LoggingConfigurable):
    """Mixin for a JupyterHub ``Spawner``: what every Casa session has, whatever runs it.

    Renewal failures that are expected (the Kubernetes API or a key file refusing, a full
    disk) are logged in one line and retried at the next poll; anything else is logged
    with its traceback, and retried too: the session keeps its current, still valid files.
    """

    facility = Instance(
        Facility,
        help="""The facility (``c.Facility.*``): domain, ports, key files, lifetimes. Defaults to the
        hub's shared ``Facility.instance()``, so key files are read once per hub, not once per user.

        Example: ``c.CasaLocalSpawner.facility = Facility(domain="af.example.org")`` (rarely needed).""",
    )

    @default("facility")
    def _default_facility(self):
        return Facility.instance(config=self.config)

    freeze_startup_heap = Bool(
        False,
        config=True,
        help="""Once per hub process, just after the first spawner is made, collect garbage and
        ``gc.freeze()`` everything alive: full garbage collections then skip the hub's start-up
        heap, so they no longer pause every user's requests for tens to hundreds of ms (see
        ``casa_spawner.heap``; ``python3 -m bench.spawn`` shows both).  Off by default: it is a
        process-wide choice, and start-up garbage that a collection would have freed stays.

        Example: ``c.CasaKubeSpawner.freeze_startup_heap = True``""",
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.freeze_startup_heap:
            freeze_soon(self.log)

    #: the session's credentials (files and expiry times), None when there is no session
    bundle: CredentialBundle | None = None
    #: this start's ``CASA_SESSION_ID`` (``SessionPlan.session_id``), kept in the state: stop removes its jobs
    session_id: str = ""
    #: the IdP token the hub handed over at spawn time (``run_auth_state_hook``)
    _hook_access_token: AccessToken | None = None
    #: the data token the credd was last given (the bundle's file), None before the first
    _stored_data_token: CredentialFile | None = None

    #: failures of a renewal that need no traceback: the message says it all
    expected_renewal_errors: tuple[type[BaseException], ...] = (CasaError, OSError, asyncio.TimeoutError)

    # -- one session per user -----------------------------------------------------

    def refuse_named_server(self) -> None:
        """Raise :class:`NamedServerError` for a named server (call first in ``start``)."""
        if self.name:
            address = self.facility.names(self.user.name).scheduler_address
            raise NamedServerError(
                f"{type(self).__name__} runs one session per user (one Dask scheduler at {address}); "
                f"named server {self.name!r} cannot have its own: turn off c.JupyterHub.allow_named_servers"
            )

    # -- the IdP token and the credentials ------------------------------------------

    async def run_auth_state_hook(self, auth_state):
        """Keep the IdP access token: it becomes the WLCG bearer token when no XCache secret is set."""
        self._hook_access_token = access_token_from(auth_state)
        await super().run_auth_state_hook(auth_state)

    async def access_token(self, *, fresh: bool = False) -> AccessToken | None:
        """The user's IdP token: the one the hub handed over at spawn time, or, when ``fresh``
        (a renewal) or none was handed over, the one in auth_state now (the authenticator's
        ``refresh_user`` keeps it current there)."""
        if self._hook_access_token is not None and not fresh:
            return self._hook_access_token
        current = access_token_from(await self.user.get_auth_state() if self.user else None)
        return current or self._hook_access_token

    async def issue_credentials(self) -> CredentialBundle:
        """A fresh bundle, issued off the event loop (key files, signatures, key generation)."""
        token = await self.access_token()
        return await asyncio.to_thread(self.facility.issue_bundle, self.user.name, **_token_arguments(token))

    def plan(self, bundle: CredentialBundle, entry_point: str) -> SessionPlan:
        """The backend-neutral plan of this user's session (``casa_hub.plan``)."""
        return plan_session(self.facility, self.user.name, bundle, entry_point=entry_point)

    # -- renewal -----------------------------------------------------------------

    async def materialise_renewal(self, renewed: CredentialBundle, changed: list[CredentialFile]) -> None:
        """Put the re-issued files (``changed``, all of ``renewed`` for context) where the session reads them."""
        raise NotImplementedError

    async def renew_credentials(self, now=None) -> list[str]:
        """Re-issue what passed the renewal fraction of its life, materialise it, save the new expiry
        times; returns the renewed paths.  On failure the current bundle stays and the error is raised."""
        bundle = self.bundle
        if bundle is None:
            return []
        token = await self.access_token(fresh=True)
        renewed = await asyncio.to_thread(self.facility.renew_bundle, self.user.name, bundle, now=now, **_token_arguments(token))
        if renewed is None or self.bundle is not bundle:  # nothing due, or the session ended meanwhile
            return []
        changed = [f for f in renewed.files if bundle.get(f.path) is not f]
        await self.materialise_renewal(renewed, changed)
        self.bundle = renewed
        if token is not None:
            self._hook_access_token = token
        self.save_state()
        paths = [f.path for f in changed]
        self.log.info("Renewed %s for %s", ", ".join(paths), self.user.name)
        return paths

    async def renew_in_poll(self) -> None:
        """``renew_credentials`` as ``poll`` calls it: a failure is logged, the next poll tries again;
        then the credd gets the data token if it has not got the current one (``store_data_token``)."""
        try:
            await self.renew_credentials()
        except asyncio.CancelledError:
            raise
        except self.expected_renewal_errors as e:
            self.log.error("Could not renew credentials of %s: %s", self.user.name, e)
        except Exception as e:
            self.log.error("Could not renew credentials of %s: %s\n%s", self.user.name, e, traceback.format_exc())
        await self.store_data_token()

    # -- the data token inside running HTCondor jobs ----------------------------------

    async def store_data_token(self) -> None:
        """Give the pool's credd the session's current data token, as the user, unless it has it already
        (``casa_spawner.data_token``; ``c.Facility.data_token_service``).  Call once the credentials are
        issued, before the notebook can submit; never raises: a credd that fails is retried at the next poll."""
        cred = self.bundle.get(BEARER_TOKEN_PATH) if self.bundle is not None else None
        if cred is None or not cred.content.strip() or cred is self._stored_data_token:
            return  # none, a placeholder after a hub restart (renewal brings the real one), or stored already
        store = DataTokenStore(parent=self, facility=self.facility)
        if store.enabled and await store.store(self.user.name, cred.content):
            self._stored_data_token = cred

    # -- the session's batch jobs --------------------------------------------------

    async def remove_session_jobs(self) -> None:
        """Remove the HTCondor jobs this session submitted, as its user (``casa_spawner.session_jobs``);
        never raises: a schedd that does not answer never stops a session from stopping."""
        await SessionJobs(parent=self, facility=self.facility).remove(self.user.name, self.session_id)

    # -- saved state ---------------------------------------------------------------

    def save_state(self) -> None:
        """Write ``get_state()`` to the hub's database now (new expiry times survive a hub restart)."""
        if self.orm_spawner is not None:
            self.orm_spawner.state = self.get_state()
            self.db.commit()
