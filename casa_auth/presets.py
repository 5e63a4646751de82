"""What we know about the identity providers facilities use, and OIDC discovery for the rest.

A preset fills defaults only: every value it gives can still be set by traitlets or by
oauthenticator's environment variables (``OAUTH2_AUTHORIZE_URL`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlparse

ENDPOINT_TRAITS = ("authorize_url", "token_url", "userdata_url")
_DISCOVERY_KEYS = {
    "authorize_url": "authorization_endpoint",
    "token_url": "token_endpoint",
    "userdata_url": "userinfo_endpoint",
}


class DiscoveryError(ValueError):
    """The issuer's discovery document is missing, unreadable or not for this issuer."""


@dataclass(frozen=True)
class IdpPreset:
    name: str
    login_service: str
    issuer: str = ""
    #: endpoint paths relative to the issuer; empty: no default (discovery or explicit config)
    paths: Mapping[str, str] = field(default_factory=dict)
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    storage_scopes: tuple[str, ...] = ()
    group_claims: tuple[str, ...] = ("groups",)
    username_claim: str = "preferred_username"


PRESETS: dict[str, IdpPreset] = {
    # INDIGO IAM (CMS, WLCG): MITREid routes under the issuer; groups as "/cms", "/cms/uscms"
    "cms-iam": IdpPreset(
        name="cms-iam",
        login_service="CMS IAM",
        issuer="https://cms-auth.cern.ch/",
        paths={"authorize_url": "authorize", "token_url": "token", "userdata_url": "userinfo"},
        scopes=("openid", "profile", "email", "offline_access", "wlcg.groups"),
        storage_scopes=("storage.read:/",),
        group_claims=("wlcg.groups", "groups"),
        username_claim="preferred_username",
    ),
    # CILogon: COmanage groups in isMemberOf, e.g. "CO:COU:OpenData Facility:members:active"
    "cilogon": IdpPreset(
        name="cilogon",
        login_service="CILogon",
        issuer="https://cilogon.org",
        paths={"authorize_url": "authorize", "token_url": "oauth2/token", "userdata_url": "oauth2/userinfo"},
        scopes=("openid", "email", "profile", "org.cilogon.userinfo"),
        group_claims=("isMemberOf",),
        username_claim="email",
    ),
    "generic": IdpPreset(name="generic", login_service="OpenID Connect"),
}


def preset_endpoints(preset: IdpPreset, issuer: str) -> dict[str, str]:
    """Endpoint URLs a preset derives from the issuer (empty for ``generic``)."""
    if not issuer or not preset.paths:
        return {}
    base = issuer.rstrip("/") + "/"
    return {trait: base + path for trait, path in preset.paths.items()}


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parsed = urlparse(value)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def parse_discovery(document: Any, issuer: str) -> dict[str, str]:
    """Endpoint URLs from an OIDC discovery document, checked against the configured issuer."""
    if not isinstance(document, Mapping):
        raise DiscoveryError(f"the discovery document of {issuer} is not a JSON object")
    announced = document.get("issuer")
    if not isinstance(announced, str) or announced.rstrip("/") != issuer.rstrip("/"):
        # OIDC Discovery 1.0, section 4.3: the issuer must match exactly
        raise DiscoveryError(f"the discovery document at {discovery_url(issuer)} is for issuer {announced!r}, not {issuer!r}")
    endpoints = {}
    for trait, key in _DISCOVERY_KEYS.items():
        value = document.get(key)
        if value is None and key == "userinfo_endpoint":
            continue
        if not _is_http_url(value):
            raise DiscoveryError(f"the discovery document of {issuer} has no valid {key!r} (found {value!r})")
        endpoints[trait] = value
    return endpoints
