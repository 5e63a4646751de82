"""What the facility reads from a user's JupyterHub auth_state: the IdP access token and its expiry.

casa_auth writes auth_state (oauthenticator's ``access_token`` beside a ``casa`` dict
holding ``access_token_expires_at``); spawners read it through here, so its shape is
known in one place.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Mapping

CASA_KEY = "casa"


@dataclass(frozen=True)
class AccessToken:
    """The IdP access token (kept out of reprs) and when it expires, if the IdP said."""

    token: str = field(repr=False)
    expires_at: dt.datetime | None = None


def access_token_expiry(auth_state: Mapping[str, Any] | None) -> dt.datetime | None:
    """When the user's access token expires (UTC), if known."""
    casa = (auth_state or {}).get(CASA_KEY) or {}
    ts = casa.get("access_token_expires_at") if isinstance(casa, Mapping) else None
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    return None


def access_token_from(auth_state: Mapping[str, Any] | None) -> AccessToken | None:
    """The access token in ``auth_state`` with its expiry, or None when there is none."""
    token = (auth_state or {}).get("access_token")
    if not isinstance(token, str) or not token.strip():
        return None
    return AccessToken(token, access_token_expiry(auth_state))
