"""What the casa page shows about a session, read from its environment and credential files.

Pure apart from reading files: every page view reads the files again, so a renewed token shows
its new expiry.  Expiry times come from the credentials themselves -- a certificate's
``notAfter``, a macaroon's ``before:`` caveat, a JWT's ``exp`` -- not from what the hub said when
it issued them.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..xcache_token import token_facts

# the notebook's files (casa_hub.bundle's layout), what the page calls them
CREDENTIALS = (
    ("dask/ca.pem", "Dask session CA certificate", "certificate"),
    ("dask/client.pem", "Dask client certificate (this notebook, your laptop)", "certificate"),
    ("dask/worker.pem", "Dask worker certificate (batch workers)", "certificate"),
    ("bearer_token", "XCache / storage token", "token"),
    ("condor/tokens.d/casa", "HTCondor IDTOKEN", "token"),
)


@dataclass(frozen=True)
class Credential:
    path: str  #: relative to ``$CASA_CREDENTIALS``
    label: str
    expires_at: dt.datetime | None  #: None: no expiry found (or unreadable: see ``problem``)
    problem: str = ""

    def remaining(self, now: dt.datetime | None = None) -> str:
        if self.expires_at is None:
            return self.problem or "no expiry"
        left = (self.expires_at - (now or dt.datetime.now(dt.timezone.utc))).total_seconds()
        if left <= 0:
            return "expired"
        hours, rest = divmod(int(left), 3600)
        return f"{hours // 24} d {hours % 24} h" if hours >= 24 else f"{hours} h {rest // 60} min"


@dataclass(frozen=True)
class SessionInfo:
    scheduler_address: str  #: public name, ``tls://<slug>.dask.<domain>:<port>``
    connect_host: str  #: where to connect when the name does not resolve (empty: it does)
    dashboard_link: str
    xcache_host: str
    credentials_dir: str
    credentials: tuple[Credential, ...] = field(default=())

    @property
    def sni(self) -> str:
        return urlsplit(self.scheduler_address).hostname or ""

    @property
    def port(self) -> int | None:
        return urlsplit(self.scheduler_address).port

    @property
    def connect_address(self) -> str:
        """The address a laptop dials: the facility's host with the scheduler's name as SNI, or the name itself."""
        return f"tls://{self.connect_host}:{self.port}" if self.connect_host else self.scheduler_address

    @property
    def bundle_expires_at(self) -> dt.datetime | None:
        """When the bundle stops working: the first of the Dask certificates to expire."""
        return min((c.expires_at for c in self.credentials if c.expires_at and c.path.startswith("dask/")), default=None)

    def connection(self) -> dict:
        """The bundle's ``casa-connection.json`` (no secret in it)."""
        expires = self.bundle_expires_at
        return {"scheduler_address": self.scheduler_address, "connect_address": self.connect_address,
                "sni": self.sni, "dashboard": self.dashboard_link, "expires": expires.isoformat() if expires else None}


def session_info(env=None) -> SessionInfo:
    """The session's info from ``env`` (default: this process's environment)."""
    env = os.environ if env is None else env
    missing = [k for k in ("CASA_SCHEDULER_ADDRESS", "CASA_CREDENTIALS") if not env.get(k)]
    if missing:
        raise LookupError(f"not in a casa session: {', '.join(missing)} not set")
    root = Path(env["CASA_CREDENTIALS"])
    creds = tuple(read_credential(root, rel, label, kind) for rel, label, kind in CREDENTIALS if (root / rel).exists())
    return SessionInfo(
        scheduler_address=env["CASA_SCHEDULER_ADDRESS"],
        connect_host=env.get("CASA_SCHEDULER_CONNECT_HOST", ""),
        dashboard_link=dashboard_link(env),
        xcache_host=env.get("XCACHE_HOST", ""),
        credentials_dir=str(root),
        credentials=creds,
    )


def dashboard_link(env) -> str:
    """The session's dashboard URL as a browser uses it (empty: none published).

    distributed's ``distributed.dashboard.link`` (``DASK_DISTRIBUTED__DASHBOARD__LINK``) is a
    template filled from the environment, as ``Client.dashboard_link`` fills it, e.g.
    ``{JUPYTERHUB_SERVICE_PREFIX}proxy/8787/status``; ``{host}`` or ``{port}`` only a client knows.
    """
    template = env.get("DASK_DISTRIBUTED__DASHBOARD__LINK", "")
    try:
        return template.format(**env)
    except (KeyError, IndexError, ValueError):
        return ""


def read_credential(root: Path, rel: str, label: str, kind: str) -> Credential:
    try:
        data = (root / rel).read_bytes()
        expires = certificate_expiry(data) if kind == "certificate" else token_expiry(data.decode().strip())
        return Credential(rel, label, expires)
    except (OSError, ValueError) as e:
        return Credential(rel, label, None, f"unreadable ({type(e).__name__})")


def certificate_expiry(pem: bytes) -> dt.datetime:
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


def token_expiry(token: str) -> dt.datetime | None:
    """A JWT's ``exp`` or a macaroon's ``before:`` caveat; None if the token has neither."""
    facts = token_facts(token.splitlines()[0] if token else "")
    if facts.kind == "unknown":
        raise ValueError("not a JWT or a macaroon")
    return facts.expires
