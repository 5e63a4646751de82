"""casa's Prometheus metrics, on the hub's own ``/hub/metrics`` (prometheus_client's default registry,
the one JupyterHub serves).  Every name starts with ``casa_``; the README lists them with their labels.

What the code that issues, renews and removes things calls: :func:`issued`, :func:`renewed`,
:func:`renewal_failed`, :func:`credd_store`, :func:`cleanup_failed`, :func:`spawn_step` and :func:`track_session`.
Sessions are tracked weakly (a spawner that is gone, or no longer active, no longer counts), so
the gauges -- soonest expiry, active routes -- are computed when scraped and survive nothing
stale: after a hub restart the first poll of each running session tracks it again.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
import weakref

from prometheus_client import Counter, Gauge, Histogram

from .errors import ConfigurationError, CredentialError

#: label values of ``reason``: a bounded set, whatever the exception
REASONS = ("key-file", "credential", "idp-refused", "idp-unreachable", "group-removed", "kubernetes", "other")

CREDENTIALS_ISSUED = Counter(
    "casa_credentials_issued", "Credentials issued for a new session, by kind (dask-tls: one per session).", ["kind"])
CREDENTIALS_RENEWED = Counter(
    "casa_credentials_renewed", "Credentials re-issued or refreshed while a session runs, by kind (idp-access-token: "
    "a refresh at the IdP).", ["kind"])
RENEWAL_FAILURES = Counter(
    "casa_credential_renewal_failures", "Renewals that failed, by kind and reason (" + ", ".join(REASONS) + ").", ["kind", "reason"])
CLEANUP_FAILURES = Counter(
    "casa_cleanup_failures", "Session objects a stop could not remove, by kind (Secret, Service, IngressRouteTCP, route-file).", ["kind"])
SPAWN_STEP_SECONDS = Histogram(
    "casa_spawn_step_duration_seconds", "Duration of casa's own steps of a spawn (issue-credentials, plan, session-objects, "
    "scheduler, route).", ["step"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
SOONEST_EXPIRY = Gauge(
    "casa_credential_soonest_expiry_seconds", "Seconds until the soonest expiry of any credential of any running session "
    "(+Inf when none runs); falling towards 0 means renewal is not keeping up.")
ACTIVE_ROUTES = Gauge("casa_active_routes", "Scheduler routes (tls://<slug>.dask.<domain>) of running sessions.")
CREDD_STORES = Counter(
    "casa_credd_stores", "Data tokens given to the HTCondor credd for running jobs (Facility.data_token_service), by outcome "
    "(stored, failed: retried at the next poll).", ["outcome"])

#: spawner (or any session object) -> its credentials' expiry times
_sessions: "weakref.WeakKeyDictionary[object, tuple[dt.datetime, ...]]" = weakref.WeakKeyDictionary()


def _kind(kind: str) -> str:
    return "dask-tls" if kind.startswith("dask-") else kind


def issued(bundle) -> None:
    """Count a new session's credentials (its four Dask TLS files are one ``dask-tls``)."""
    for kind in sorted({_kind(f.kind) for f in bundle.files}):
        CREDENTIALS_ISSUED.labels(kind).inc()


def renewed(kind: str) -> None:
    CREDENTIALS_RENEWED.labels(_kind(kind)).inc()


def renewal_failed(kind: str, reason: str) -> None:
    RENEWAL_FAILURES.labels(_kind(kind), reason if reason in REASONS else "other").inc()


def renewal_failed_at_patch(error: BaseException) -> None:
    """A renewal that failed after issuing, when the Secret was patched (issuing failures are counted where they happen)."""
    if not isinstance(error, (ConfigurationError, CredentialError)):
        RENEWAL_FAILURES.labels("secret", "kubernetes").inc()


def credd_store(stored: bool) -> None:
    CREDD_STORES.labels("stored" if stored else "failed").inc()


def cleanup_failed(kind: str) -> None:
    CLEANUP_FAILURES.labels(kind).inc()


class spawn_step:
    """Time a step of a spawn: ``with spawn_step("plan"):``, or ``@spawn_step("scheduler")`` on a coroutine function."""

    def __init__(self, step: str):
        self.step = step

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        SPAWN_STEP_SECONDS.labels(self.step).observe(time.perf_counter() - self._start)
        return False

    def __call__(self, func):
        @functools.wraps(func)
        async def timed(*args, **kwargs):
            start = time.perf_counter()  # one timer per call: concurrent spawns share this decorator
            try:
                return await func(*args, **kwargs)
            finally:
                SPAWN_STEP_SECONDS.labels(self.step).observe(time.perf_counter() - start)

        return timed


def track_session(session, bundle) -> None:
    """Remember a running session's credential expiry times (call at start and after each renewal)."""
    if bundle is None:
        _sessions.pop(session, None)
        return
    _sessions[session] = tuple(f.expires_at for f in bundle.files if f.expires_at is not None)


def untrack_session(session) -> None:
    _sessions.pop(session, None)


def _running() -> list[tuple[dt.datetime, ...]]:
    # a spawner whose server stopped no longer counts, even before it is collected
    return [times for session, times in list(_sessions.items()) if getattr(session, "active", True)]


def soonest_expiry_seconds(now: dt.datetime | None = None) -> float:
    now = now or dt.datetime.now(dt.timezone.utc)
    times = [t for session in _running() for t in session]
    return min((t - now).total_seconds() for t in times) if times else float("inf")


SOONEST_EXPIRY.set_function(soonest_expiry_seconds)
ACTIVE_ROUTES.set_function(lambda: len(_running()))
