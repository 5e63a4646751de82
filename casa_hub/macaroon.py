"""XCache / XRootD macaroons as ``libXrdMacaroons`` accepts them.

A token is a pymacaroons macaroon whose location is the server's ``all.sitename``,
whose identifier is a uuid4, signed with the base64-decoded ``macaroons.secretkey``,
with the caveats ``name:``, ``activity:``, a single ``path:`` and ``before:``
(UTC, ``%Y-%m-%dT%H:%M:%SZ``).  XRootD refuses a token whose ``before`` lies more
than ``macaroons.maxduration`` (86400 s by default) ahead, so issuing one is an error.

Checked against a real XRootD 5.5 (tests/test_macaroon_real.py):

* XRootD requires *every* ``path:`` caveat to match the requested path (libmacaroons
  checks each caveat on its own), so a token with two disjoint prefixes authorises
  nothing: one prefix per token.
* XRootD compares the prefix as a plain string (``strncmp``): ``path:/store/user/al``
  also grants ``/store/user/alice/...``.  The caveat is therefore written with a
  trailing ``/`` (``path:/store/user/al/``), which makes the match directory-wise.
  The directory itself stays readable as ``/store/user/al/`` (listing) and for
  metadata (HEAD, PROPFIND); only a listing requested without the slash is refused.
* ``name:`` restricts nothing; XRootD records it as the request's user name.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from dataclasses import dataclass

from pymacaroons import Macaroon

from .errors import CredentialError

#: Activities libXrdMacaroons understands.
XROOTD_ACTIVITIES = frozenset(
    {"READ_METADATA", "UPLOAD", "DOWNLOAD", "DELETE", "MANAGE", "UPDATE_METADATA", "LIST"}
)

#: XRootD's default ``macaroons.maxduration``.
DEFAULT_MAX_LIFETIME = 86400

MIN_SECRET_BYTES = 32

BEFORE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def decode_secret(file_bytes: bytes) -> bytes:
    """The macaroon key from the text of a ``macaroons.secretkey`` file (base64)."""
    try:
        secret = base64.b64decode(b"".join(file_bytes.split()), validate=True)
    except (binascii.Error, ValueError):
        raise CredentialError("the macaroon secret key file is not base64") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise CredentialError(
            f"the macaroon secret key decodes to {len(secret)} bytes; XRootD needs at least {MIN_SECRET_BYTES}"
        )
    return secret


def parse_activities(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Normalise ``"A,B"`` or ``["A", "B"]`` to known activities, or raise."""
    items = value.split(",") if isinstance(value, str) else list(value)
    activities = tuple(a.strip().upper() for a in items if a.strip())
    if not activities:
        raise CredentialError("a macaroon needs at least one activity (e.g. DOWNLOAD)")
    unknown = [a for a in activities if a not in XROOTD_ACTIVITIES]
    if unknown:
        raise CredentialError(
            f"unknown XRootD activity {unknown[0]!r}; known: {', '.join(sorted(XROOTD_ACTIVITIES))}"
        )
    return activities


def _check_path(path: str) -> str:
    if not path.startswith("/") or any(c.isspace() for c in path) or "," in path:
        raise CredentialError(f"macaroon path must be an absolute path without spaces, got {path!r}")
    return path


@dataclass(frozen=True)
class IssuedMacaroon:
    token: str
    identifier: str
    name: str
    expires_at: dt.datetime

    def __repr__(self) -> str:
        return f"IssuedMacaroon(name={self.name!r}, identifier={self.identifier!r}, expires_at={self.expires_at:{BEFORE_FORMAT}})"


def make_macaroon(
    secret: bytes,
    *,
    location: str,
    name: str,
    activities,
    paths: list[str] | tuple[str, ...] | str,
    lifetime: int | None = None,
    expires: dt.datetime | None = None,
    identifier: str | None = None,
    max_lifetime: int = DEFAULT_MAX_LIFETIME,
    now: dt.datetime | None = None,
) -> IssuedMacaroon:
    """Mint a macaroon from the decoded secret; exactly one of ``lifetime``/``expires``."""
    if len(secret) < MIN_SECRET_BYTES:
        raise CredentialError(f"macaroon secret must be at least {MIN_SECRET_BYTES} bytes")
    if not location or any(c.isspace() for c in location):
        raise CredentialError(f"invalid macaroon location (XRootD site name) {location!r}")
    if not name or any(c.isspace() for c in name):
        raise CredentialError(f"invalid macaroon user name {name!r}")
    acts = parse_activities(activities)
    # XRootD matches path: as a string prefix; the trailing slash makes it directory-wise.
    path_list = list(dict.fromkeys(
        p if p.endswith("/") else p + "/"
        for p in (_check_path(p) for p in ([paths] if isinstance(paths, str) else list(paths)))
    ))
    if not path_list:
        raise CredentialError("a macaroon needs a path prefix (e.g. /store)")
    if len(path_list) > 1:
        raise CredentialError(
            "XRootD requires every path: caveat of a macaroon to match (they are ANDed), so a "
            f"token for several prefixes {path_list} would authorise nothing; give exactly one"
        )
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).replace(microsecond=0)
    if (lifetime is None) == (expires is None):
        raise CredentialError("give exactly one of a lifetime or an expiry time")
    if expires is None:
        if int(lifetime) <= 0:
            raise CredentialError(f"macaroon lifetime must be positive, got {lifetime}")
        expires = now + dt.timedelta(seconds=int(lifetime))
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=dt.timezone.utc)
    expires = expires.astimezone(dt.timezone.utc).replace(microsecond=0)
    seconds = (expires - now).total_seconds()
    if seconds > max_lifetime:
        raise CredentialError(
            f"macaroon would live {int(seconds)} s; the XRootD server refuses more than "
            f"maxduration={max_lifetime} s"
        )
    ident = identifier or str(uuid.uuid4())
    mac = Macaroon(location=location, identifier=ident, key=secret)
    mac.add_first_party_caveat(f"name:{name}")
    mac.add_first_party_caveat(f"activity:{','.join(acts)}")
    for path in path_list:
        mac.add_first_party_caveat(f"path:{path}")
    mac.add_first_party_caveat(f"before:{expires:{BEFORE_FORMAT}}")
    return IssuedMacaroon(mac.serialize(), ident, name, expires)
