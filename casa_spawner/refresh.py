"""Credentials that follow the person: the upkeep of a running session, from the spawner's ``poll()``.

JupyterHub polls every running server (``Spawner.poll_interval``) whether or not its user visits,
so each poll of a casa spawner calls :func:`upkeep` before it renews the session's tokens:

1. **Certificate age.**  The Dask certificates cannot be renewed (their CA key is gone), so a
   session within ``certificate_margin`` of their expiry is stopped, with a message.
2. **The IdP login.**  When the access token expires within the authenticator's
   ``access_token_refresh_margin``, or ``group_check_interval`` has passed since the last check,
   the authenticator's ``refresh_user`` runs (at most ``max_concurrent_refreshes`` at once across
   users): it re-reads the user's groups from the IdP and, when due, spends the refresh token.
   The new auth_state is saved, so the spawner's renewal writes the new access token into the
   session's bearer-token file.
3. **Access lost.**  A refused refresh token or a group the user no longer has ends access: an
   audit line says why, nothing more is issued, and the session is stopped (``on_access_lost =
   "stop"``) or merely left to run out (``"stop-renewing"``).  An IdP that cannot be reached ends
   nothing: the current credentials stay until the next poll tries again.

Whatever fails for one user is logged and counted (``casa_credential_renewal_failures``) and never
reaches another user's poll.  The message shown on the hub's home page is ``user.casa_ended``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import weakref

from traitlets import CaselessStrEnum, Float, Int
from traitlets.config import SingletonConfigurable

from casa_hub import metrics
from casa_hub.auth_state import access_token_expiry

audit_log = logging.getLogger("casa.audit")

RENEW, HOLD, STOP = "renew", "hold", "stop"
#: failure categories of CasaOAuthenticator.refresh_failure that end a user's access
ACCESS_ENDING = {"idp-refused", "group-removed"}


class SessionRefresh(SingletonConfigurable):
    """How running sessions keep (or lose) their user's access; ``c.SessionRefresh.*``."""

    on_access_lost = CaselessStrEnum(
        ["stop", "stop-renewing"],
        default_value="stop",
        config=True,
        help="""What happens to a running session when its user's access ends (refresh token refused,
        no longer in an allowed group): ``"stop"`` it, or ``"stop-renewing"`` its credentials and let
        them expire.  Either way no new credential is issued and an audit line says why.

        Example: ``c.SessionRefresh.on_access_lost = "stop-renewing"``""",
    )
    group_check_interval = Float(
        300.0,
        config=True,
        help="""Seconds between two checks of a running session's user at the IdP (groups re-read
        through ``refresh_user``), even while the access token is still fresh.

        Example: ``c.SessionRefresh.group_check_interval = 600``""",
    )
    max_concurrent_refreshes = Int(
        8,
        config=True,
        help="""Refreshes at the IdP running at once, across all users (the rest wait their turn).

        Example: ``c.SessionRefresh.max_concurrent_refreshes = 4``""",
    )
    certificate_margin = Float(
        600.0,
        config=True,
        help="""Seconds before its Dask certificates expire (``Facility.tls_lifetime`` after the start)
        at which a session is stopped, cleanly and with a message, rather than breaking.

        Example: ``c.SessionRefresh.certificate_margin = 3600``""",
    )

    _semaphores: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def semaphore(self) -> asyncio.Semaphore:
        """One semaphore per event loop (tests run several loops in one process)."""
        loop = asyncio.get_running_loop()
        sem = self._semaphores.get(loop)
        if sem is None:
            sem = self._semaphores[loop] = asyncio.Semaphore(max(1, self.max_concurrent_refreshes))
        return sem


def session_started(spawner, bundle) -> None:
    """At the end of a start: track the session's expiry times, forget the last session's ending."""
    _say(spawner, "")
    spawner.__dict__.pop("_casa_renewal_held", None)
    spawner.__dict__.pop("_casa_checked_at", None)
    metrics.track_session(spawner, bundle)


def _say(spawner, message: str) -> None:
    """The message for the hub's home page: on the hub's User object, which outlives the stopped
    server's Spawner (JupyterHub drops that one), until the next start clears it."""
    spawner.user.casa_ended = message


def ended_message(user) -> str:
    """Why ``user``'s last session ended early ("" if it did not)."""
    return getattr(user, "casa_ended", "") or ""


def _certificates_expire(bundle) -> dt.datetime | None:
    times = [f.expires_at for f in bundle.files if f.kind.startswith("dask-") and f.expires_at is not None]
    return min(times) if times else None


def _end(spawner, settings: SessionRefresh, why: str, reason: str) -> str:
    """Access ended: audit it, then stop the session or hold its renewals."""
    action = STOP if settings.on_access_lost == "stop" else HOLD
    audit_log.warning("access-ended user=%s reason=%s action=%s", spawner.user.name, why, "stop" if action == STOP else "stop-renewing")
    done = "Your session was stopped" if action == STOP else "Your session's credentials are no longer renewed"
    _say(spawner, f"{done}: {reason}. Sign in again to continue (the facility's membership is required).")
    if action == HOLD:
        spawner._casa_renewal_held = why
    return action


async def _refresh_login(spawner, settings: SessionRefresh) -> tuple[str, str] | None:
    """Refresh the user's login at the IdP when due; ``(category, reason)`` if it failed, else None."""
    authenticator = getattr(spawner, "authenticator", None)
    if authenticator is None or not getattr(authenticator, "enable_auth_state", False) or not hasattr(authenticator, "refresh_failure"):
        return None
    user = spawner.user
    auth_state = await user.get_auth_state()
    if not auth_state or not auth_state.get("access_token"):
        return None
    expires = access_token_expiry(auth_state)
    margin = getattr(authenticator, "access_token_refresh_margin", 300)
    token_due = expires is not None and expires.timestamp() - time.time() <= margin
    checked_at = spawner.__dict__.get("_casa_checked_at", 0.0)
    if not token_due and time.monotonic() - checked_at < settings.group_check_interval:
        return None
    async with settings.semaphore():
        model = await authenticator.refresh_user(user, None)
    spawner._casa_checked_at = time.monotonic()
    if model is False:
        return authenticator.refresh_failure(user.name) or ("other", "the login could not be refreshed")
    if isinstance(model, dict) and model.get("auth_state") is not None:
        new_state = model["auth_state"]
        await user.save_auth_state(new_state)
        if new_state.get("access_token") != auth_state.get("access_token"):
            metrics.renewed("idp-access-token")
            spawner.log.info("Refreshed the IdP access token of %s in the background", user.name)
    return None


async def upkeep(spawner, bundle) -> str:
    """What a poll does with a running session: ``RENEW`` its tokens as usual, ``HOLD`` (renew
    nothing), or ``STOP`` it (``spawner.user.casa_ended`` says why).  Never raises but CancelledError."""
    settings = SessionRefresh.instance(config=spawner.config)
    metrics.track_session(spawner, bundle)
    if getattr(spawner, "pending", None):  # the hub's polls while a start or stop is under way: not ours to end
        return RENEW
    if spawner.__dict__.get("_casa_renewal_held"):
        return HOLD
    expires = _certificates_expire(bundle) if bundle is not None else None
    if expires is not None and dt.datetime.now(dt.timezone.utc) >= expires - dt.timedelta(seconds=settings.certificate_margin):
        audit_log.info("session-ended user=%s reason=certificates-expire expires=%s", spawner.user.name, expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
        _say(spawner, f"Your session was stopped because its Dask certificates expire at {expires:%Y-%m-%d %H:%M} UTC "
                      "(they cannot be renewed). Start a new server to continue.")
        return STOP
    try:
        failure = await _refresh_login(spawner, settings)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # a bug or a broken auth_state: this user's problem only, retried next poll
        spawner.log.exception("Background refresh of %s failed", spawner.user.name)
        failure = ("other", str(e))
    if failure is None:
        return RENEW
    category, reason = failure
    metrics.renewal_failed("idp-access-token", category)
    if category not in ACCESS_ENDING:
        spawner.log.warning("Background refresh of %s failed (%s); the session keeps its credentials and is retried", spawner.user.name, reason)
        return RENEW
    return _end(spawner, settings, category, reason)
