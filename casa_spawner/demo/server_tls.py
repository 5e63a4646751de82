"""A throwaway CA and one server certificate, for the demo's HTTPS servers (the XCache and its origin).

A site's XCache has a certificate from the grid's CAs; the one-machine facility makes its own
per run: the CA key signs the server certificate and is dropped, so nothing else can be signed
with it.  Clients verify with the CA certificate (public; the demo gives its path to notebooks).
ECDSA P-256, SAN ``localhost`` and ``127.0.0.1`` (the demo serves on loopback).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
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


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jupyterhub-casa demo"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_server_tls(hosts=("localhost", "127.0.0.1"), *, lifetime: int = 30 * 86400) -> ServerTLS:
    """A CA (key discarded) and a server certificate for ``hosts`` (names or IP addresses)."""
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(seconds=lifetime)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    # a name of its own per run: OpenSSL finds a CA in a hashed directory by its name, and a process that
    # verified one run's XCache (an XRootD client keeps what it looked up) must still find the next run's
    ca_name = _name(f"casa demo server CA {secrets.token_hex(4)}")
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
