"""One audit line per issued credential: who, what, until when, which id -- never the token."""

from __future__ import annotations

import datetime as dt
import logging

audit_log = logging.getLogger("casa.audit")


def record_issuance(user: str, kind: str, expires_at: dt.datetime | int | None, ident: str | None) -> None:
    if isinstance(expires_at, int):
        expires_at = dt.datetime.fromtimestamp(expires_at, dt.timezone.utc)
    when = expires_at.strftime("%Y-%m-%dT%H:%M:%SZ") if expires_at else "never"
    audit_log.info("issued kind=%s user=%s expires=%s id=%s", kind, user, when, ident or "-")
