"""The session's data token as the XCache readers see it: read fresh from its file, described, never shown.

The hub (or HTCondor's credd on a worker) rewrites ``BEARER_TOKEN_FILE`` in place, so the file is
read at every open and nothing here keeps a token.  :func:`token_facts` reads what a refusal can
be explained with -- a macaroon's ``name:``, ``path:`` and ``before:`` caveats, a JWT's ``sub``,
``scope`` and ``exp`` -- without verifying anything (the server does that).  :func:`connection_id`
names a token without revealing it (a short hash), for the ``root://`` connection it logs in on.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field

BEFORE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  #: libXrdMacaroons' ``before:`` caveat


class TokenFileError(ValueError):
    """The token file is missing, unreadable, empty or readable by others; the message says which."""


def read_token(path: str) -> str:
    """The token in ``path`` now (first line, stripped).  XRootD's ztn refuses a file others can read."""
    if not path:
        raise TokenFileError("no token: BEARER_TOKEN_FILE is not set")
    try:
        with open(path, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            data = fh.read(65536)
    except FileNotFoundError:
        raise TokenFileError(f"no token: the token file {path} (BEARER_TOKEN_FILE) does not exist") from None
    except OSError as e:
        raise TokenFileError(f"cannot read the token file {path}: {e.strerror}") from None
    token = data.decode(errors="replace").strip().split("\n", 1)[0].strip()
    if not token:
        raise TokenFileError(f"no token: the token file {path} is empty")
    if stat.S_IMODE(mode) & 0o077:
        raise TokenFileError(f"the token file {path} is readable by others (mode {stat.S_IMODE(mode):04o}): "
                             "XRootD refuses it; it must be 0600")
    return token


@dataclass(frozen=True)
class TokenFacts:
    """What a token says about itself (unverified); ``kind`` is ``macaroon``, ``jwt`` or ``unknown``."""

    kind: str
    name: str = ""  #: macaroon ``name:`` / JWT ``sub``
    paths: tuple[str, ...] = ()  #: macaroon ``path:`` prefixes / JWT ``storage.read:`` scopes
    expires: dt.datetime | None = None
    activities: tuple[str, ...] = field(default=())

    def expired(self, now: dt.datetime | None = None) -> bool:
        return self.expires is not None and self.expires <= (now or dt.datetime.now(dt.timezone.utc))

    def covers(self, path: str) -> bool | None:
        """Whether ``path`` lies under one of the token's prefixes (None: the token names none)."""
        if not self.paths:
            return None
        norm = "/" + "/".join(p for p in path.split("/") if p)
        return all(norm == p.rstrip("/") or norm.startswith(p.rstrip("/") + "/") for p in self.paths) if self.kind == "macaroon" \
            else any(norm == p.rstrip("/") or norm.startswith(p.rstrip("/") + "/") for p in self.paths)


def token_facts(token: str) -> TokenFacts:
    """Read a macaroon's or a JWT's claims for messages; ``kind="unknown"`` for anything else."""
    if token.count(".") == 2:
        try:
            payload = token.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (ValueError, TypeError):
            return TokenFacts("unknown")
        scopes = str(claims.get("scope", "")).split()
        exp = claims.get("exp")
        return TokenFacts(
            "jwt", name=str(claims.get("sub", "")),
            paths=tuple(s.split(":", 1)[1] or "/" for s in scopes if s.startswith("storage.read:")),
            expires=dt.datetime.fromtimestamp(int(exp), dt.timezone.utc) if isinstance(exp, (int, float)) else None,
        )
    from pymacaroons import Macaroon

    try:
        caveats = [c.caveat_id for c in Macaroon.deserialize(token).first_party_caveats()]
    except Exception:  # pymacaroons raises several kinds for what is not a macaroon
        return TokenFacts("unknown")
    caveats = [c.decode(errors="replace") if isinstance(c, bytes) else c for c in caveats]
    expires = None
    for c in caveats:
        if c.startswith("before:"):
            try:
                expires = dt.datetime.strptime(c[len("before:"):], BEFORE_FORMAT).replace(tzinfo=dt.timezone.utc)
            except ValueError:
                pass
    return TokenFacts(
        "macaroon",
        name=next((c[len("name:"):] for c in caveats if c.startswith("name:")), ""),
        paths=tuple(c[len("path:"):] for c in caveats if c.startswith("path:")),
        expires=expires,
        activities=tuple(a for c in caveats if c.startswith("activity:") for a in c[len("activity:"):].split(",")),
    )


def connection_id(token: str) -> str:
    """A name for this token that does not reveal it: ``t`` + 11 hex digits of its SHA-256."""
    return "t" + hashlib.sha256(token.encode()).hexdigest()[:11]
