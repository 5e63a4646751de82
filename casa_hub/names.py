"""Per-user names: one DNS-1123 label per user and the scheduler's host name built from it.

Guarantees of :func:`user_slug` (tested by a property test over arbitrary Unicode):

- the result is a valid DNS-1123 label: ``[a-z0-9-]``, starts with a letter, ends
  alphanumeric, at most 63 characters;
- it is deterministic: the same username always gives the same slug;
- two different usernames never share a slug: a name that is not already a valid,
  ``--``-free label is escaped *and* suffixed with a hash of the original, while a name
  kept as-is never contains ``---``;
- ordinary names stay readable: ``alice`` -> ``alice``;
- it is the slug KubeSpawner gives the same name (``kubespawner.slugs.safe_slug`` with
  ``max_length=40``), so a user's pod and their Casa objects carry the same name part.  The
  scheme is held here rather than imported: importing ``kubespawner.slugs`` runs the
  package's ``__init__`` (the spawner, the Kubernetes client: seconds), which casa_hub must
  not pay; tests/test_names.py pins the two to the same output.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import ConfigurationError

#: Longest slug we hand out; safe_slug's hashed form is at most this long.
SLUG_MAX_LENGTH = 40

#: Hex digits of the SHA-256 of the username in a hashed slug, after ``---``.
HASH_LENGTH = 8

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_KEPT = re.compile(r"[a-z]([a-z0-9-]*[a-z0-9])?")  #: starts with a letter: also an RFC 1035 label
_RUNS_TO_DASH = re.compile(r"[^a-z0-9]+")


def _readable_part(username: str, length: int) -> str:
    """Lowercase alphanumerics of ``username``, other runs as one '-', starting with a letter, at most ``length``."""
    part = _RUNS_TO_DASH.sub("-", username.lower()).lstrip("-")[:length].rstrip("-")
    if part and not ("a" <= part[0] <= "z"):
        part = "x-" + part[: length - 2]
    return part or "x"


def user_slug(username: str) -> str:
    """The user's DNS-1123 label, collision-proof (see module docstring)."""
    if not isinstance(username, str) or not username:
        raise ValueError("username must be a non-empty string")
    if "--" not in username and len(username) <= SLUG_MAX_LENGTH and _KEPT.fullmatch(username):
        return username
    digest = hashlib.sha256(username.encode("utf8")).hexdigest()[:HASH_LENGTH]
    return f"{_readable_part(username, SLUG_MAX_LENGTH - HASH_LENGTH - 3)}---{digest}"


def is_dns_label(value: str) -> bool:
    """True for a DNS-1123 label (lowercase alphanumerics and '-', at most 63)."""
    return bool(_LABEL.match(value))


def validate_domain(domain: str) -> str:
    """Return the normalised facility domain, or raise ConfigurationError saying why."""
    if not isinstance(domain, str) or not domain.strip():
        raise ConfigurationError("the Dask domain is empty; set Facility.domain, e.g. 'af.example.org'")
    normalised = domain.strip().rstrip(".").lower()
    labels = normalised.split(".")
    bad = [label for label in labels if not is_dns_label(label)]
    if bad:
        raise ConfigurationError(
            f"invalid Dask domain {domain!r}: {bad[0]!r} is not a DNS label "
            "(lowercase letters, digits and '-', not starting or ending with '-')"
        )
    # <slug (<= SLUG_MAX_LENGTH)>.dask.<domain> must stay within DNS's 253 characters
    if len(normalised) > 253 - SLUG_MAX_LENGTH - len(".dask."):
        raise ConfigurationError(f"Dask domain {domain!r} is too long for per-user host names")
    return normalised


@dataclass(frozen=True)
class UserNames:
    """Everything named after one user."""

    username: str
    slug: str
    scheduler_host: str
    scheduler_address: str

    def as_dict(self) -> dict:
        return {
            "username": self.username,
            "slug": self.slug,
            "scheduler_host": self.scheduler_host,
            "scheduler_address": self.scheduler_address,
        }


def user_names(username: str, domain: str, port: int = 8786) -> UserNames:
    """Slug, scheduler host ``<slug>.dask.<domain>`` and ``tls://`` address for one user."""
    domain = validate_domain(domain)
    if not 0 < int(port) < 65536:
        raise ConfigurationError(f"invalid Dask port {port!r}")
    slug = user_slug(username)
    host = f"{slug}.dask.{domain}"
    return UserNames(username, slug, host, f"tls://{host}:{int(port)}")
