"""A throwaway CA and one server certificate, for the demo's HTTPS servers (the XCache and its origin).

A site's XCache has a certificate from the grid's CAs; the one-machine facility makes its own
per run: the CA key signs the server certificate and is dropped, so nothing else can be signed
with it.  Clients verify with the CA certificate (public; the demo gives its path to notebooks).
ECDSA P-256, SAN ``localhost`` and ``127.0.0.1`` (the demo serves on loopback).

XRootD 5.5's own client (the cache's, towards its origin) finds CAs only in a hashed directory
(``X509_CERT_DIR``, files named ``<subject hash>.0``): :func:`subject_hash` is OpenSSL's
``X509_NAME_hash`` (what ``openssl x509 -hash`` prints), so the demo needs no ``openssl`` tool.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class ServerTLS:
    ca_pem: bytes  #: the CA certificate clients verify with
    cert_pem: bytes  #: the server certificate
    key_pem: bytes = field(repr=False)  #: its key (PKCS#8, unencrypted: the server reads it at start)


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


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jupyterhub-casa demo"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_server_tls(hosts=("localhost", "127.0.0.1"), *, lifetime: int = 30 * 86400) -> ServerTLS:
    """A CA (key discarded) and a server certificate for ``hosts`` (names or IP addresses)."""
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(seconds=lifetime)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("casa demo server CA")
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sans = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    del ca_key  # signs once
    pem = serialization.Encoding.PEM
    return ServerTLS(
        ca.public_bytes(pem),
        cert.public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
