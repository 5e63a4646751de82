"""One Dask session's TLS material: a fresh CA and a certificate per role.

The CA key signs the scheduler, client and worker certificates and is then
dropped: nobody -- not the hub either -- can mint another certificate for the
session.  Keys are ECDSA P-256 (a fraction of a millisecond, unlike RSA-2048).
Distributed does mutual TLS and does not check host names; the scheduler
certificate still carries SAN = the scheduler host for clients that do.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import CredentialError

ROLES = ("scheduler", "client", "worker")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jupyterhub-casa"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


@dataclass(frozen=True)
class SessionTLS:
    """PEM bytes: the CA certificate, and for each role its certificate followed by its key."""

    ca_pem: bytes
    scheduler_pem: bytes = field(repr=False)
    client_pem: bytes = field(repr=False)
    worker_pem: bytes = field(repr=False)
    expires_at: dt.datetime = field(default=None)

    def role_pem(self, role: str) -> bytes:
        return {"scheduler": self.scheduler_pem, "client": self.client_pem, "worker": self.worker_pem}[role]


def make_session_tls(hostname: str, *, lifetime: int = 7 * 86400, now: dt.datetime | None = None) -> SessionTLS:
    """A CA and scheduler/client/worker certificates for one session (CA key discarded)."""
    if int(lifetime) <= 0:
        raise CredentialError(f"certificate lifetime must be positive, got {lifetime}")
    now = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    not_before = now - dt.timedelta(minutes=5)  # tolerate small clock skew between hosts
    expires = now + dt.timedelta(seconds=int(lifetime))

    ca_key = _key()
    ca_name = _name(f"casa session CA for {hostname}")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(expires)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(role: str, ca_key) -> bytes:
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{role}.{hostname}" if role != "scheduler" else hostname))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(expires)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if role == "scheduler":
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM) + _pem_key(key)

    scheduler, client, worker = (leaf(role, ca_key) for role in ROLES)
    del ca_key  # signs the three leaves, then nobody can sign again
    return SessionTLS(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        scheduler_pem=scheduler,
        client_pem=client,
        worker_pem=worker,
        expires_at=expires,
    )
