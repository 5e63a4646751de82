"""A CA directory as OpenSSL looks CAs up in it (``X509_CERT_DIR``): ``<subject hash>.<n>`` files.

XRootD's client verifies TLS servers with such a directory (5.5's only with one; 6.x also takes
``X509_CERT_FILE``, but reads it once per process).  OpenSSL looks the directory up by CA name
when it verifies, and keeps what it found: a CA added later is found if its name is new (the
demo's CA is named afresh each run), not if it replaces one of the same name.
:func:`subject_hash` is OpenSSL's ``X509_NAME_hash`` (what ``openssl x509 -hash`` prints), so
neither the demo nor a worker needs the ``openssl`` tool.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from cryptography import x509

_ASCII_SPACE = re.compile(rb"[ \t\n\v\f\r]+")  #: what OpenSSL's canonical form collapses


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    size = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + size + body


def _der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def subject_hash(cert_pem: bytes) -> str:
    """OpenSSL's subject-name hash of a certificate (``openssl x509 -hash``), 8 hex digits.

    SHA-1 of the name's canonical encoding (each value as a UTF8String, trimmed, inner white space
    collapsed, ASCII lowercased; the RDN sets without the outer SEQUENCE), first 4 bytes little-endian.
    """
    name = x509.load_pem_x509_certificate(cert_pem).subject
    canon = b""
    for rdn in name.rdns:
        entries = []
        for attr in rdn:
            value = b" ".join(w for w in _ASCII_SPACE.split(str(attr.value).encode()) if w)
            value = bytes(c + 32 if 65 <= c <= 90 else c for c in value)
            entries.append(_der(0x30, _der_oid(attr.oid.dotted_string) + _der(0x0C, value)))
        canon += _der(0x31, b"".join(sorted(entries)))
    return "%08x" % int.from_bytes(hashlib.sha1(canon).digest()[:4], "little")


def add_ca(directory: os.PathLike | str, cert_pem: bytes) -> Path:
    """Put one CA certificate into ``directory`` as ``<hash>.<n>`` (kept if already there); its path."""
    directory = Path(directory)
    digest = subject_hash(cert_pem)
    for n in range(100):
        path = directory / f"{digest}.{n}"
        if not path.exists():
            tmp = directory / f".{digest}.{n}.{os.getpid()}"
            tmp.write_bytes(cert_pem)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            return path
        if path.read_bytes() == cert_pem:
            return path
    raise ValueError(f"more than 100 CAs named like {digest} in {directory}")
