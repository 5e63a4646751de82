"""Per-user names: one DNS-1123 label per user and the scheduler's host name built from it.

Guarantees of :func:`user_slug` (tested by a property test over arbitrary Unicode):

- the result is a valid DNS-1123 label: ``[a-z0-9-]``, starts with a letter, ends
  alphanumeric, at most 63 characters;
- it is deterministic: the same username always gives the same slug;
- two different usernames never share a slug: a name that is not already a valid,
  ``--``-free label is escaped *and* suffixed with a hash of the original
  (``kubespawner.slugs.safe_slug``), while a name kept as-is never contains ``---``;
- ordinary names stay readable: ``alice`` -> ``alice``.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigurationError


def _load_kubespawner_slugs():
    """kubespawner's pure ``slugs`` module, without running ``kubespawner/__init__``.

    The package's ``__init__`` imports the spawner (kubernetes client, JupyterHub:
    ~2 s); casa_hub must stay free of both, and ``slugs.py`` needs neither.
    """
    package = importlib.util.find_spec("kubespawner")
    if package is None or not package.submodule_search_locations:
        raise ImportError("jupyterhub-kubespawner is required for user slugs")
    path = Path(next(iter(package.submodule_search_locations))) / "slugs.py"
    spec = importlib.util.spec_from_file_location("casa_hub._kubespawner_slugs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


safe_slug = _load_kubespawner_slugs().safe_slug

#: Longest slug we hand out; safe_slug's hashed form is at most this long.
SLUG_MAX_LENGTH = 40

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def user_slug(username: str) -> str:
    """The user's DNS-1123 label, collision-proof (see module docstring)."""
    if not isinstance(username, str) or not username:
        raise ValueError("username must be a non-empty string")
    return safe_slug(username, max_length=SLUG_MAX_LENGTH)


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
