"""HTCondor IDTOKENs, byte for byte as ``condor_token_create`` makes them (HTCondor 23-25).

The recipe (HTCondor's ``Condor_Auth_Passwd::generate_token``):

- the signing-key file is read as bytes and unscrambled (XOR with ``DE AD BE EF``
  repeating, HTCondor's ``simple_scramble``); for kid ``POOL`` the result is
  concatenated with itself;
- HKDF-SHA256 (salt ``b"htcondor"``, info ``b"master jwt"``, 32 bytes) gives the HMAC key;
- header and payload are JSON with sorted keys, no spaces and ``/`` escaped as ``\\/``;
  the token is ``b64url(header).b64url(payload).b64url(HS256)`` without padding.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import CredentialError

_SCRAMBLE = bytes.fromhex("deadbeef")

#: Authorization levels HTCondor knows (``condor:/<LEVEL>`` scopes).
CONDOR_AUTHZ_LEVELS = frozenset(
    {
        "READ",
        "WRITE",
        "ADMINISTRATOR",
        "CONFIG",
        "DAEMON",
        "NEGOTIATOR",
        "ADVERTISE_MASTER",
        "ADVERTISE_STARTD",
        "ADVERTISE_SCHEDD",
        "ALLOW",
    }
)

_KID = re.compile(r"^[A-Za-z0-9_.\-]+$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def check_trust_domain(trust_domain: str) -> str:
    """``trust_domain`` if it can be an IDTOKEN's ``iss`` (no blanks, no commas), else CredentialError."""
    if not trust_domain or any(c.isspace() or c == "," for c in trust_domain):
        raise CredentialError(f"invalid HTCondor trust domain {trust_domain!r}")
    return trust_domain


def check_key_id(kid: str) -> str:
    """``kid`` if it can name a signing key (``POOL`` or a key file's name), else CredentialError."""
    if not _KID.match(kid or ""):
        raise CredentialError(f"invalid signing key id {kid!r}")
    return kid


def parse_authz(authz) -> tuple[str, ...]:
    """Normalise ``["read", " WRITE"]`` to known HTCondor authorization levels, or raise CredentialError."""
    levels = tuple(a.strip().upper() for a in authz)
    unknown = [a for a in levels if a not in CONDOR_AUTHZ_LEVELS]
    if unknown:
        raise CredentialError(
            f"unknown HTCondor authorization {unknown[0]!r}; known: {', '.join(sorted(CONDOR_AUTHZ_LEVELS))}"
        )
    if not levels:
        raise CredentialError("an IDTOKEN needs at least one authorization (e.g. READ)")
    return levels


def unscramble(data: bytes) -> bytes:
    """HTCondor's ``simple_scramble``: XOR with DE AD BE EF repeating (its own inverse)."""
    return bytes(b ^ _SCRAMBLE[i % 4] for i, b in enumerate(data))


def derive_signing_key(key_file_bytes: bytes, kid: str) -> bytes:
    """HMAC key for tokens from the raw bytes of a signing-key file (NUL bytes kept)."""
    if not key_file_bytes:
        raise CredentialError("the HTCondor signing key is empty")
    password = unscramble(key_file_bytes)
    if kid == "POOL":
        password = password + password
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"htcondor", info=b"master jwt"
    ).derive(password)


def _condor_json(obj: dict) -> bytes:
    """JSON as HTCondor (picojson) writes it: sorted keys, no spaces, '/' escaped.

    picojson also escapes DEL (0x7f) as ``\\u007f``, which ``json.dumps`` leaves raw.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("/", "\\/").replace("\x7f", "\\u007f").encode("utf-8")


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@dataclass(frozen=True)
class IssuedIdToken:
    """A token and the facts the audit log and renewal need (never the key)."""

    token: str
    subject: str
    issuer: str
    token_id: str
    issued_at: int
    expires_at: int

    def __repr__(self) -> str:  # the token is a credential: keep it out of logs
        return (
            f"IssuedIdToken(subject={self.subject!r}, issuer={self.issuer!r}, "
            f"token_id={self.token_id!r}, expires_at={self.expires_at})"
        )


def make_idtoken(
    signing_key: bytes,
    *,
    trust_domain: str,
    identity: str,
    kid: str = "POOL",
    authz: list[str] | tuple[str, ...] = ("READ", "WRITE"),
    lifetime: int = 86400,
    issued_at: int | None = None,
    token_id: str | None = None,
) -> IssuedIdToken:
    """Sign an IDTOKEN for ``identity`` with the raw bytes of the signing-key file.

    ``exp`` is always set (``issued_at + lifetime``); ``scope`` lists ``condor:/<authz>``
    in the order given.  Raises :class:`CredentialError` for bad input.
    """
    check_trust_domain(trust_domain)
    if not identity or any(c.isspace() for c in identity):
        raise CredentialError(f"invalid HTCondor identity {identity!r}")
    check_key_id(kid)
    levels = parse_authz(authz)
    if int(lifetime) <= 0:
        raise CredentialError(f"token lifetime must be positive, got {lifetime}")
    iat = int(time.time()) if issued_at is None else int(issued_at)
    jti = secrets.token_hex(16) if token_id is None else token_id.lower()
    if not _HEX32.match(jti):
        raise CredentialError(f"token id must be 32 hex characters, got {token_id!r}")
    exp = iat + int(lifetime)

    header = _condor_json({"alg": "HS256", "kid": kid})
    payload = _condor_json(
        {
            "exp": exp,
            "iat": iat,
            "iss": trust_domain,
            "jti": jti,
            "scope": " ".join(f"condor:/{a}" for a in levels),
            "sub": identity,
        }
    )
    signing_input = _b64url(header) + b"." + _b64url(payload)
    mac = hmac.new(derive_signing_key(signing_key, kid), signing_input, hashlib.sha256).digest()
    token = (signing_input + b"." + _b64url(mac)).decode("ascii")
    return IssuedIdToken(token, identity, trust_domain, jti, iat, exp)
