"""CasaKubeSpawner's renewals on the fake Kubernetes API: each one a PATCH of the same Secret, never a new one;
its cleanup failures and its sessions in casa's metrics; a session stopped before its certificates expire."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from casa_spawner.kube import CasaKubeSpawner, SessionCleanupError
from casa_spawner.refresh import SessionRefresh
from tests.fake_kube.spawners import make_spawner


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_every_renewal_in_poll_patches_the_same_secret(kube, make_facility):
    facility = make_facility(condor_token_lifetime=30, xcache_token_lifetime=30, renew_fraction=0.05)
    spawner = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility)
    await asyncio.wait_for(spawner.start(), 60)
    name = f"casa-creds-{facility.names('alice').slug}"
    first = kube.get("secrets", "default", name)
    renewed_before = sample("casa_credentials_renewed_total", kind="xcache-token")
    kube.clear_requests()
    versions, contents = [first["metadata"]["resourceVersion"]], [first["data"]["bearer_token"]]
    for _ in range(3):
        await asyncio.sleep(1.6)  # 5% of 30 s
        assert await spawner.poll() is None
        secret = kube.get("secrets", "default", name)
        assert secret["metadata"]["uid"] == first["metadata"]["uid"]
        versions.append(secret["metadata"]["resourceVersion"])
        contents.append(secret["data"]["bearer_token"])
    assert len(set(contents)) == 4 and [int(v) for v in versions] == sorted(int(v) for v in versions)
    secret_calls = [(r.method, r.path) for r in kube.requests if "/secrets" in r.path]
    assert secret_calls and {m for m, _ in secret_calls} == {"PATCH"}, secret_calls  # no POST, PUT or DELETE
    assert all(path.endswith(f"/secrets/{name}") for _, path in secret_calls)
    assert sample("casa_credentials_renewed_total", kind="xcache-token") - renewed_before == 3
    await asyncio.wait_for(spawner.stop(), 30)


async def test_a_failed_secret_patch_is_counted_and_the_session_keeps_running(kube, make_facility):
    facility = make_facility(xcache_token_lifetime=30, renew_fraction=0.05)
    spawner = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility)
    await asyncio.wait_for(spawner.start(), 60)
    before = sample("casa_credential_renewal_failures_total", kind="secret", reason="kubernetes")
    kube.inject(method="PATCH", path=r"/secrets/", status=500)
    await asyncio.sleep(1.6)
    assert await asyncio.wait_for(spawner.poll(), 60) is None
    assert sample("casa_credential_renewal_failures_total", kind="secret", reason="kubernetes") == before + 1
    kube.clear_faults()
    await asyncio.wait_for(spawner.stop(), 30)


async def test_failed_deletes_are_counted_by_kind(kube, facility):
    spawner = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility, k8s_api_request_retry_timeout=2)
    await asyncio.wait_for(spawner.start(), 60)
    before = {kind: sample("casa_cleanup_failures_total", kind=kind) for kind in ("Secret", "Service", "IngressRouteTCP")}
    kube.inject(method="DELETE", path=r"/(secrets|ingressroutetcps)/", status=500)
    try:
        await asyncio.wait_for(spawner.stop(), 60)
    except SessionCleanupError:
        pass
    after = {kind: sample("casa_cleanup_failures_total", kind=kind) for kind in before}
    assert {k: after[k] - before[k] for k in before} == {"Secret": 2, "Service": 0, "IngressRouteTCP": 1}


async def test_after_a_hub_restart_the_session_still_stops_before_its_certificates_expire(kube, make_facility):
    SessionRefresh.clear_instance()
    SessionRefresh.instance(certificate_margin=3)
    try:
        facility = make_facility(tls_lifetime=6)
        first = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility)
        await asyncio.wait_for(first.start(), 60)
        state = first.get_state()
        restarted = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility)  # a new hub process
        restarted.load_state(state)
        assert await restarted.poll() is None
        await asyncio.sleep(3.5)
        assert await asyncio.wait_for(restarted.poll(), 60) == 1
        assert kube.names("pods") == [] and kube.names("secrets") == []
    finally:
        SessionRefresh.clear_instance()


async def test_a_session_is_stopped_before_its_certificates_expire(kube, make_facility, caplog):
    SessionRefresh.clear_instance()
    SessionRefresh.instance(certificate_margin=3)
    try:
        facility = make_facility(tls_lifetime=6)
        spawner = make_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility)
        await asyncio.wait_for(spawner.start(), 60)
        assert await spawner.poll() is None
        await asyncio.sleep(3.5)
        assert await asyncio.wait_for(spawner.poll(), 60) == 1
        assert kube.names("pods") == [] and kube.names("secrets") == []
        assert "Dask certificates expire at" in spawner.user.casa_ended
        assert any("session-ended user=alice reason=certificates-expire" in r.getMessage() for r in caplog.records)
    finally:
        SessionRefresh.clear_instance()
