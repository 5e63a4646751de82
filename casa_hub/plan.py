"""A backend-neutral plan of one user's session: names, route, credentials, env, scheduler.

Spawners materialise it: Kubernetes objects (``casa_spawner.kube``) or local
processes and files (``casa_spawner.local``).  Paths inside the plan are given
relative to a credentials directory whose location the spawner chooses.
"""

from __future__ import annotations

import posixpath
import secrets
import sys
from dataclasses import dataclass, field

from . import bundle as b
from .bundle import CredentialBundle
from .facility import Facility
from .names import UserNames


@dataclass(frozen=True)
class TCPRoute:
    """Traefik TCP route: SNI ``host`` on ``entry_point`` -> the scheduler, TLS passthrough."""

    name: str
    host: str
    entry_point: str
    port: int
    passthrough: bool = True

    @property
    def rule(self) -> str:
        return f"HostSNI(`{self.host}`)"


@dataclass(frozen=True)
class SchedulerSpec:
    """The Dask scheduler sidecar: ports and the command that starts it."""

    port: int
    dashboard_port: int
    files: tuple[str, ...] = (b.DASK_CA_PATH, b.DASK_SCHEDULER_PATH)

    def command(self, credentials_dir: str, host: str = "0.0.0.0", python: str | None = None,
                dashboard_host: str = "") -> list[str]:
        """Command line of the scheduler; it reads its certificate from ``credentials_dir`` (no key in argv).

        ``dashboard_host`` empty: the dashboard listens on every interface (fine in a pod;
        on a shared machine pass ``127.0.0.1``).
        """
        ca = posixpath.join(credentials_dir, b.DASK_CA_PATH)
        cert = posixpath.join(credentials_dir, b.DASK_SCHEDULER_PATH)
        return [
            python or sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--protocol", "tls",
            "--host", host,
            "--port", str(self.port),
            "--dashboard-address", f"{dashboard_host}:{self.dashboard_port}",
            "--tls-ca-file", ca,
            "--tls-cert", cert,
            "--tls-key", cert,
        ]


@dataclass(frozen=True)
class SessionPlan:
    names: UserNames
    route: TCPRoute
    scheduler: SchedulerSpec
    bundle: CredentialBundle = field(repr=False)
    facility_env: dict = field(default_factory=dict)
    #: names this start of the session (``CASA_SESSION_ID``); its HTCondor jobs carry it as ``+CasaSession``
    session_id: str = ""

    def environment(self, credentials_dir: str, scheduler_local_address: str, dashboard_url: str | None = None) -> dict[str, str]:
        """The notebook's environment, with credentials under ``credentials_dir``."""
        def path(rel):
            return posixpath.join(credentials_dir, rel)

        env = {
            "CASA_CREDENTIALS": credentials_dir,
            "CASA_SCHEDULER_ADDRESS": self.names.scheduler_address,
            "CASA_SCHEDULER_HOST": self.names.scheduler_host,
            "DASK_SCHEDULER_ADDRESS": scheduler_local_address,
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
            "DASK_DISTRIBUTED__COMM__DEFAULT_SCHEME": "tls",
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": path(b.DASK_CA_PATH),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": path(b.DASK_CLIENT_PATH),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": path(b.DASK_CLIENT_PATH),
            "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT": path(b.DASK_WORKER_PATH),
            "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY": path(b.DASK_WORKER_PATH),
        }
        if dashboard_url:
            env["DASK_DISTRIBUTED__DASHBOARD__LINK"] = dashboard_url
        if self.session_id:
            env[SESSION_ID_ENV] = self.session_id
        if self.bundle.get(b.CONDOR_TOKEN_PATH) is not None:
            env["_CONDOR_SEC_TOKEN_DIRECTORY"] = path(posixpath.dirname(b.CONDOR_TOKEN_PATH))
        if self.bundle.get(b.BEARER_TOKEN_PATH) is not None:
            env["BEARER_TOKEN_FILE"] = path(b.BEARER_TOKEN_PATH)
        env.update(self.facility_env)
        return env


#: the variable naming the session; the spawner keeps the same id in its state to find the session's jobs
SESSION_ID_ENV = "CASA_SESSION_ID"
#: the credd service under which the hub keeps the session's data token for its HTCondor jobs
DATA_TOKEN_SERVICE_ENV = "CASA_DATA_TOKEN_SERVICE"


def new_session_id(slug: str) -> str:
    """A fresh id for one start of ``slug``'s session, e.g. ``alice-3f9c0a1b2d4e``: a DNS-label-like
    string (safe inside an HTCondor ClassAd string), unique per start so a new session never owns
    the jobs of an old one."""
    return f"{slug}-{secrets.token_hex(6)}"


def facility_environment(facility: Facility) -> dict[str, str]:
    env = {}
    if facility.issues_condor_tokens or facility.collector_host:
        env["_CONDOR_TRUST_DOMAIN"] = facility.trust_domain
    if facility.collector_host:
        env["_CONDOR_COLLECTOR_HOST"] = facility.collector_host
    if facility.schedd_host:
        env["_CONDOR_SCHEDD_HOST"] = facility.schedd_host
    if facility.xcache_host:
        env["XCACHE_HOST"] = facility.xcache_host
    if facility.xcache_https_host:
        env["XCACHE_HTTPS_HOST"] = facility.xcache_https_host
    if facility.stores_data_tokens:
        env[DATA_TOKEN_SERVICE_ENV] = facility.data_token_service
    return env


def plan_session(facility: Facility, username: str, bundle: CredentialBundle, *, entry_point: str = "dask",
                 session_id: str | None = None) -> SessionPlan:
    """The plan for ``username`` with an already-issued ``bundle`` (see ``Facility.issue_bundle``);
    ``session_id`` None: a fresh one (:func:`new_session_id`)."""
    names = facility.names(username)
    route = TCPRoute(name=f"casa-dask-{names.slug}", host=names.scheduler_host, entry_point=entry_point, port=facility.scheduler_port)
    scheduler = SchedulerSpec(port=facility.scheduler_port, dashboard_port=facility.dashboard_port)
    return SessionPlan(names, route, scheduler, bundle, facility_environment(facility),
                       session_id=new_session_id(names.slug) if session_id is None else session_id)
