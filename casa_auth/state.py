"""The ``casa`` part of a user's auth_state: one shape for every casa authenticator.

Spawners read it (``auth_state["casa"]``) next to oauthenticator's own keys
(``access_token``, ``refresh_token``, ``id_token``, ``scope``, ``token_response``,
``oauth_user``), which the dummy authenticator fills with ``None`` so both look alike.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

from casa_hub.auth_state import CASA_KEY, access_token_expiry  # noqa: F401 -- spawners read this shape there
from casa_hub.names import user_slug

#: bump when the shape changes incompatibly
STATE_VERSION = 1


def casa_state(
    *,
    username: str,
    groups: Iterable[str],
    idp: str,
    access_token_expires_at: int | None = None,
    claims: Mapping[str, Any] | None = None,
) -> dict:
    """The ``casa`` dict: who (username, facility slug), groups, token expiry, ID-token claims kept for later."""
    return {
        "version": STATE_VERSION,
        "username": username,
        "slug": user_slug(username),
        "idp": idp,
        "groups": sorted(set(groups)),
        "access_token_expires_at": access_token_expires_at,
        "claims": dict(claims or {}),
    }


def token_expires_at(token_response: Mapping[str, Any] | None, now: float | None = None) -> int | None:
    """Absolute expiry (epoch seconds) of the access token, from ``expires_at`` or ``expires_in``."""
    if not isinstance(token_response, Mapping):
        return None
    expires_at = token_response.get("expires_at")
    if isinstance(expires_at, (int, float)) and not isinstance(expires_at, bool):
        return int(expires_at)
    expires_in = token_response.get("expires_in")
    if isinstance(expires_in, str) and expires_in.strip().isdigit():
        expires_in = int(expires_in)
    if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool):
        return int((time.time() if now is None else now) + expires_in)
    return None
