"""Scanning what was sent to the fake API for the master secrets (in the forms of tests.secret_scan), base64 in base64 too."""

from __future__ import annotations

import base64
import binascii
import json

from tests.secret_scan import master_secret_forms


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
    for label, forms in master_secret_forms(master).items():
        for request in requests:
            for where, data in documents(request):
                found += [(label, where) for form in forms if form in data]
    return sorted(set(found))
