"""Everything CasaKubeSpawner sends to the Kubernetes API, scanned for what must never be there.

The fake API records every request (path, query, body).  Alice and Bob start,
their credentials are renewed (a Secret patch), and they stop; then:

- the master secrets (the HTCondor pool signing key, the XRootD macaroon secret)
  appear nowhere: not raw, not base64 at any alignment, not base64 inside a
  Secret's base64 data, not in the spawner's logs or saved state;
- every PEM private key sent belongs to a leaf certificate (scheduler, client,
  worker) of that user's own session: no CA key (it is discarded after signing);
- the scheduler's key is sent only in the scheduler Secret's key meant for the
  scheduler container; no private key is sent outside a Secret's data.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from casa_spawner.kube import CasaKubeSpawner
from tests.fake_kube.scan import documents, leaks
from tests.secret_scan import master_secret_forms
from tests.fake_kube.spawners import make_spawner

USERS = ("alice", "Bob.Smith@cern.ch")
PEM_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----", re.S)
PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def public_der(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


async def run_sessions(kube, facility):
    spawners = {u: make_spawner(CasaKubeSpawner, kube.url, u, facility=facility) for u in USERS}
    for user, spawner in spawners.items():
        await spawner.run_auth_state_hook({"access_token": f"idp-access-token-of-{user}"})
    await asyncio.wait_for(asyncio.gather(*(s.start() for s in spawners.values())), 60)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=20)
    for spawner in spawners.values():
        assert await spawner.poll() is None
        assert await spawner.renew_credentials(now=later)  # patches the Secret with fresh tokens
    states = [json.dumps(s.get_state()) for s in spawners.values()]
    await asyncio.wait_for(asyncio.gather(*(s.stop() for s in spawners.values())), 60)
    return spawners, states


async def test_no_master_secret_reaches_the_api_logs_or_state(kube, facility, master_secrets, caplog):
    caplog.set_level(logging.DEBUG)
    _, states = await run_sessions(kube, facility)
    requests = kube.requests
    assert any(r.method == "PATCH" and "/secrets/" in r.path for r in requests), "no renewal was sent"

    found = leaks(master_secrets, requests)
    for label, forms in master_secret_forms(master_secrets).items():
        for form in forms:
            if form.decode("latin-1") in caplog.text:
                found.append((label, "log"))
            if any(form.decode("latin-1") in state for state in states):
                found.append((label, "spawner state"))
    assert not found, f"master secrets sent: {sorted(set(found))[:10]}"


async def test_only_each_users_own_leaf_keys_are_sent_and_the_scheduler_key_only_to_the_scheduler(kube, facility):
    await run_sessions(kube, facility)
    certs = {}  # public key DER -> certificate
    keys = []  # (where, private key)
    for request in kube.requests:
        for where, data in documents(request):
            for pem in PEM_CERT.findall(data):
                cert = x509.load_pem_x509_certificate(pem)
                certs[cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)] = cert
            for pem in PEM_KEY.findall(data):
                keys.append((where, serialization.load_pem_private_key(pem, password=None)))
    assert keys, "no private key was sent at all: the test would prove nothing"

    hosts = {facility.names(u).scheduler_host: facility.names(u).slug for u in USERS}
    seen_roles = set()
    for where, key in keys:
        cert = certs.get(public_der(key))
        assert cert is not None, f"a private key without its certificate was sent: {where}"
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca, f"a CA private key was sent: {where}"
        assert "(base64-decoded)" in where and "/secrets" in where, f"a private key outside a Secret's data: {where}"
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        role, _, host = cn.partition(".") if cn not in hosts else ("scheduler", "", cn)
        slug = hosts[host]
        seen_roles.add((slug, role))
        secret = "casa-scheduler" if role == "scheduler" else "casa-creds"
        assert role in ("scheduler", "client", "worker"), cn
        assert re.search(rf"/secrets\S* \[{secret}-{re.escape(slug)}\] data\.dask__{role}\.pem ", where), where
    assert seen_roles == {(s, r) for s in hosts.values() for r in ("scheduler", "client", "worker")}


def test_the_scan_finds_a_planted_secret():
    """The scanner itself: a key hidden base64-in-base64 at an odd offset inside a Secret is found."""
    from tests.facilities import MasterSecrets
    from tests.fake_kube.server import Request

    master = MasterSecrets(b"k" * 7 + bytes(range(40)), bytes(range(100, 132)))
    inner = b"xx" + base64.b64encode(b"y" + master.macaroon_secret) + b"\n"
    body = json.dumps({"metadata": {"name": "s"}, "data": {"f": base64.b64encode(b"z" + inner).decode()}}).encode()
    request = Request("POST", "/api/v1/namespaces/default/secrets", "", "application/json", body, 0.0)
    hits = [where for label, forms in master_secret_forms(master).items() for where, data in documents(request) for form in forms if form in data]
    assert any("base64-decoded" in w for w in hits)
    clean = Request("POST", "/api/v1/namespaces/default/secrets", "", "application/json", b'{"data": {}}', 0.0)
    assert not [1 for forms in master_secret_forms(master).values() for _, data in documents(clean) for form in forms if form in data]
