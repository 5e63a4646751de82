"""Scanning what was sent to the fake API for secrets: raw, hex, base64 at any alignment, base64 in base64."""

from __future__ import annotations

import base64
import binascii
import json


def encoded_forms(secret: bytes) -> set[bytes]:
    """The secret raw, hex, and base64 (standard and URL-safe) at each of the 3 alignments it
    can have inside a longer base64 text (the last 4 characters depend on what follows)."""
    forms = {secret, secret.hex().encode(), secret.hex().upper().encode()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for shift in range(3):
            forms.add(encode(secret[shift:])[:-4])
    return forms


def forbidden(master) -> dict[str, set[bytes]]:
    out = {}
    for label, secret in (("signing key", master.signing_key), ("macaroon secret", master.macaroon_secret)):
        forms = encoded_forms(secret)
        forms |= encoded_forms(base64.b64encode(secret))  # the macaroon secret's file is itself base64
        out[label] = forms
    return out


def documents(request):
    """(where, bytes) pairs: the request line and body, and every base64 string in the body decoded."""
    where = f"{request.method} {request.path}"
    yield where + " (path/query)", (request.path + "?" + request.query).encode()
    yield where + " (body)", request.body
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        return
    if isinstance(body, dict) and (body.get("metadata") or {}).get("name"):
        where += f" [{body['metadata']['name']}]"

    def walk(node, trail):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, trail + [str(k)])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, trail + [str(i)])
        elif isinstance(node, str) and len(node) >= 16:
            try:
                decoded = base64.b64decode(node, validate=True)
            except (binascii.Error, ValueError):
                return
            yield f"{where} {'.'.join(trail)} (base64-decoded)", decoded

    yield from walk(body, [])


def leaks(master, requests) -> list[tuple[str, str]]:
    """(which secret, where) for every request that carries a master secret in any form."""
    found = []
    for label, forms in forbidden(master).items():
        for request in requests:
            for where, data in documents(request):
                found += [(label, where) for form in forms if form in data]
    return sorted(set(found))
