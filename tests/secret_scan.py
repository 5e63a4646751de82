"""The one notion of what a leaked secret looks like, for every scan of the tests.

A secret can leak raw, as hex, or base64-encoded (standard or URL-safe) inside a longer text; a base64
secret file (the macaroon secret's) can leak as its text or as the bytes it decodes to.
"""

from __future__ import annotations

import base64


def encoded_forms(secret: bytes) -> set[bytes]:
    """The secret raw, hex, and base64 (standard and URL-safe) at each of the 3 alignments it
    can have inside a longer base64 text (the last 4 characters depend on what follows)."""
    forms = {secret, secret.hex().encode(), secret.hex().upper().encode()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for shift in range(3):
            forms.add(encode(secret[shift:])[:-4])
    return forms


def base64_file_forms(text: bytes) -> set[bytes]:
    """A secret file holding base64 (the macaroon secret): its text and the key it decodes to, in every form."""
    text = text.strip()
    return encoded_forms(text) | encoded_forms(base64.b64decode(text))


def master_secret_forms(master) -> dict[str, set[bytes]]:
    """``{"signing key": forms, "macaroon secret": forms}`` of a ``tests.facilities.MasterSecrets``."""
    out = {}
    for label, secret in (("signing key", master.signing_key), ("macaroon secret", master.macaroon_secret)):
        out[label] = encoded_forms(secret) | encoded_forms(base64.b64encode(secret))  # the macaroon secret's file is itself base64
    return out


def files_under(*roots, names: tuple[str, ...] = ()) -> dict[str, bytes]:
    """``{path: content}`` of the files under ``roots`` (only those called one of ``names``, if given), for a
    scan; a file that vanishes meanwhile (a job's sandbox going away) is skipped."""
    from pathlib import Path

    found = {}
    for root in roots:
        for path in Path(root).rglob("*"):
            if names and path.name not in names:
                continue
            try:
                if path.is_file():
                    found[str(path)] = path.read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                continue
    return found
