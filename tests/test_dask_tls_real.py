"""The session TLS bundle used by a real Dask scheduler, worker and client over tls://."""

import asyncio
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID
from distributed import Client, Scheduler, Worker
from distributed.security import Security
from jupyterhub.utils import random_port

from casa_hub.dask_tls import make_session_tls
from casa_hub.facility import Facility
from casa_hub.plan import plan_session
from tests.secret_files import write_secret_file


def write_tls(tmp_path, name, hostname):
    tls = make_session_tls(hostname)
    d = tmp_path / name
    d.mkdir()
    paths = {"ca": d / "ca.pem"}
    paths["ca"].write_bytes(tls.ca_pem)
    for role in ("scheduler", "client", "worker"):
        paths[role] = d / f"{role}.pem"
        write_secret_file(paths[role], tls.role_pem(role))
    return tls, paths


def security(paths, role, ca=None):
    cert = str(paths[role])
    return Security(
        tls_ca_file=str(ca or paths["ca"]),
        require_encryption=True,
        **{f"tls_{role}_cert": cert, f"tls_{role}_key": cert},
    )


def test_certificates_have_the_promised_shape():
    tls = make_session_tls("alice.dask.coffea.casa")
    ca = x509.load_pem_x509_certificate(tls.ca_pem)
    assert ca.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca
    assert b"PRIVATE KEY" not in tls.ca_pem
    for role in ("scheduler", "client", "worker"):
        pem = tls.role_pem(role)
        assert pem.index(b"BEGIN CERTIFICATE") < pem.index(b"BEGIN PRIVATE KEY"), "certificate first, then key"
        cert = x509.load_pem_x509_certificate(pem)
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert cert.public_key().curve.name == "secp256r1"
        assert cert.issuer == ca.subject
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    sched = x509.load_pem_x509_certificate(tls.scheduler_pem)
    san = sched.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert san.get_values_for_type(x509.DNSName) == ["alice.dask.coffea.casa"]


def test_each_session_has_its_own_ca_and_keys():
    a, b = make_session_tls("a.dask.x"), make_session_tls("a.dask.x")
    assert a.ca_pem != b.ca_pem
    assert len({a.scheduler_pem, a.client_pem, a.worker_pem}) == 3


@pytest.mark.e2e
async def test_scheduler_worker_client_compute_over_tls(tmp_path):
    _, alice = write_tls(tmp_path, "alice", "alice.dask.localhost")
    async with Scheduler(protocol="tls", host="127.0.0.1", port=0, dashboard_address=":0", security=security(alice, "scheduler")) as s:
        assert s.address.startswith("tls://")
        async with Worker(s.address, security=security(alice, "worker"), nthreads=1):
            async with Client(s.address, security=security(alice, "client"), asynchronous=True) as client:
                future = client.submit(sum, range(101))
                assert await future == 5050
                assert len(await client.nthreads()) == 1


@pytest.mark.e2e
async def test_another_sessions_client_certificate_is_refused(tmp_path):
    _, alice = write_tls(tmp_path, "alice", "alice.dask.localhost")
    _, bob = write_tls(tmp_path, "bob", "bob.dask.localhost")
    async with Scheduler(protocol="tls", host="127.0.0.1", port=0, dashboard_address=":0", security=security(alice, "scheduler")) as s:
        # Bob trusts Alice's CA but presents his own client certificate: Alice's scheduler refuses it.
        with pytest.raises((OSError, asyncio.TimeoutError)):
            await Client(s.address, security=security(bob, "client", ca=alice["ca"]), asynchronous=True, timeout="3s")
        # Bob with his own CA does not even trust Alice's scheduler.
        with pytest.raises((OSError, asyncio.TimeoutError)):
            await Client(s.address, security=security(bob, "client"), asynchronous=True, timeout="3s")
        # A plain-TCP client gets nothing.
        with pytest.raises((OSError, asyncio.TimeoutError, TypeError, ValueError)):
            await Client(s.address.replace("tls://", "tcp://"), asynchronous=True, timeout="3s")


@pytest.mark.e2e
async def test_planned_scheduler_command_serves_the_bundle(tmp_path):
    """The sidecar command from the plan starts a real scheduler that the notebook env can reach."""
    facility = Facility(domain="dask-test.localhost", scheduler_port=random_port(), dashboard_port=random_port())
    plan = plan_session(facility, "alice", facility.issue_bundle("alice"))
    creds = tmp_path / "creds"
    plan.bundle.write_to(creds)
    cmd = plan.scheduler.command(str(creds), host="127.0.0.1")
    assert not any("PRIVATE KEY" in arg for arg in cmd)
    log_path = tmp_path / "scheduler.log"  # a file, not a pipe nobody drains while the scheduler logs
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    try:
        env = plan.environment(str(creds), f"tls://127.0.0.1:{facility.scheduler_port}")
        sec = Security(
            tls_ca_file=env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"],
            tls_client_cert=env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"],
            tls_client_key=env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"],
            require_encryption=True,
        )
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            try:
                async with Client(env["DASK_SCHEDULER_ADDRESS"], security=sec, asynchronous=True, timeout="5s") as client:
                    info = client.scheduler_info()
                    assert info["address"].startswith("tls://")
                    break
            except (OSError, asyncio.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
