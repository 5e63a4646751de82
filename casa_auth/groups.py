"""Group membership from an IdP's claims: where to find it, how to spell it, what it decides.

Pure functions, no I/O: the authenticators feed them the userinfo answer and the ID-token
claims and act on the result.  Every way an answer can be malformed raises
:class:`MalformedClaims` with one sentence a user can pass on to the facility's admins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping


class MalformedClaims(ValueError):
    """The IdP's answer lacks a claim we need or has one of the wrong type."""


_MISSING = object()


def claim_value(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted claim path, or ``_MISSING``.

    Claim names may themselves contain dots (WLCG's ``wlcg.groups``): at each level the
    longest key that matches a prefix of the remaining path wins, so ``wlcg.groups`` finds
    the flat key ``"wlcg.groups"`` as well as ``{"wlcg": {"groups": ...}}``.
    """
    parts = [p for p in path.split(".") if p]
    node: Any = claims
    while parts:
        if not isinstance(node, Mapping):
            return _MISSING
        for i in range(len(parts), 0, -1):
            key = ".".join(parts[:i])
            if key in node:
                node = node[key]
                parts = parts[i:]
                break
        else:
            return _MISSING
    return node


def has_claim(claims: Mapping[str, Any], path: str) -> bool:
    return claim_value(claims, path) is not _MISSING


def normalise_group(name: str) -> str:
    """One spelling per group: surrounding blanks and IAM's leading ``/`` removed (``/cms`` -> ``cms``)."""
    return name.strip().lstrip("/").strip()


def normalise_groups(names: Iterable[str]) -> frozenset[str]:
    return frozenset(g for g in (normalise_group(n) for n in names) if g)


def groups_at(claims: Mapping[str, Any], path: str, source: str = "userinfo") -> list[str]:
    """Normalised groups at one claim path: a string is one group, a list is many; absent is none."""
    value = claim_value(claims, path)
    if value is _MISSING or value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise MalformedClaims(
            f"the identity provider's {source} claim {path!r} should be a group name or a list of "
            f"group names, but it is a {type(value).__name__}"
        )
    bad = [v for v in value if not isinstance(v, str)]
    if bad:
        raise MalformedClaims(
            f"the identity provider's {source} claim {path!r} contains a {type(bad[0]).__name__} "
            f"({bad[0]!r:.40}) where a group name was expected"
        )
    return [g for g in (normalise_group(v) for v in value) if g]


def extract_groups(sources: Mapping[str, Mapping[str, Any] | None], paths: Iterable[str]) -> tuple[str, ...]:
    """Union of the groups at every path in every source (``{"userinfo": {...}, "id_token": {...}}``), sorted."""
    found: set[str] = set()
    for source, claims in sources.items():
        if claims is None:
            continue
        if not isinstance(claims, Mapping):
            raise MalformedClaims(
                f"the identity provider's {source} answer should be a JSON object, but it is a {type(claims).__name__}"
            )
        for path in paths:
            found.update(groups_at(claims, path, source))
    return tuple(sorted(found))


def string_claim(claims: Any, path: str, source: str = "userinfo") -> str:
    """A non-empty string claim (e.g. the username), or MalformedClaims saying what is wrong."""
    if not isinstance(claims, Mapping):
        raise MalformedClaims(
            f"the identity provider's {source} answer should be a JSON object, but it is a {type(claims).__name__}"
        )
    value = claim_value(claims, path)
    if value is _MISSING or value is None:
        raise MalformedClaims(
            f"the identity provider's {source} answer has no {path!r} claim, which this hub uses as your "
            "username (the IdP may not release it, or the hub may need to request another scope)"
        )
    if not isinstance(value, str) or not value.strip():
        raise MalformedClaims(
            f"the identity provider's {source} claim {path!r} should be a non-empty string, "
            f"but it is {'an empty string' if isinstance(value, str) else 'a ' + type(value).__name__}"
        )
    return value.strip()


@dataclass(frozen=True)
class Decision:
    """Whether a user may in, whether they are admin, and which groups would have let them in."""

    allowed: bool
    admin: bool
    groups: tuple[str, ...]
    required: tuple[str, ...]


def decide(groups: Iterable[str], allowed_groups: Iterable[str], admin_groups: Iterable[str]) -> Decision:
    """Group rules alone: members of ``admin_groups`` are admin and allowed; members of ``allowed_groups`` are allowed.

    Other ways in (``allowed_users``, ``allow_all`` ...) are the authenticator's business.
    """
    mine = normalise_groups(groups)
    allowed_set = normalise_groups(allowed_groups)
    admin_set = normalise_groups(admin_groups)
    admin = bool(mine & admin_set)
    return Decision(
        allowed=admin or bool(mine & allowed_set),
        admin=admin,
        groups=tuple(sorted(mine)),
        required=tuple(sorted(allowed_set or admin_set)),
    )
