"""A real dask-gateway-server with ``casa_spawner.gateway.HTCondorBackend``, a real JupyterHub in
front of it (the gateway is a hub service; users authenticate with their hub API tokens), and the
real HTCondor pool: clusters are jobs under each user's own identity, and what goes wrong reaches
the user as a message.
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import secrets
from pathlib import Path

import pytest
from aiohttp import ClientResponseError
from dask_gateway import GatewayClusterError
from dask_gateway.client import ClusterStatus

from tests.secret_scan import encoded_forms
from tests.gateway_process import (
    GatewayProcess,
    hold_jobs,
    pool_backend_lines,
    pool_gateway_env,
    remove_cluster_jobs,
    start_gateway_hub,
    wait_until,
)

pytestmark = pytest.mark.e2e

JOB_ATTRS = ("ClusterId", "Owner", "User", "DaskGatewayRole", "JobStatus")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_gateway_hub(tmp_path_factory.mktemp("hub"))
    try:
        yield hub
    finally:
        hub.stop()


def cluster_jobs(pool, name: str) -> list[list[str]]:
    return pool.queue(f'DaskGatewayCluster == "{name}"', *JOB_ATTRS)


def gateway(pool, hub, workdir: Path, *extra: str, **facility) -> GatewayProcess:
    return GatewayProcess(workdir, hub, [*pool_backend_lines(pool, **facility), *extra], env=pool_gateway_env(pool))


# -- alice's cluster, from creation to shutdown ------------------------------------------------


@pytest.fixture(scope="module")
def alice_cluster(condor_pool, hub, tmp_path_factory):
    """A gateway, and alice's cluster on it scaled to 2 workers; everything removed afterwards."""
    workdir = tmp_path_factory.mktemp("gateway")
    gw = gateway(condor_pool, hub, workdir, f"c.HTCondorBackend.token_directory = {str(workdir / 'tokens')!r}").start()
    cluster, alice, bob = None, gw.client("alice"), gw.client("bob")
    try:
        cluster = alice.new_cluster()
        client = cluster.get_client()
        yield gw, cluster, client, alice, bob
    finally:
        if cluster is not None:
            cluster.close()
            remove_cluster_jobs(condor_pool, cluster.name)
        alice.close()
        bob.close()
        gw.stop()


def test_the_scheduler_is_a_job_of_alices_own_identity(condor_pool, alice_cluster):
    gw, cluster, client, alice, bob = alice_cluster
    ((_, owner, user, role, status),) = cluster_jobs(condor_pool, cluster.name)
    assert (owner, user, role, status) == ("alice", "alice@casa.test", "scheduler", "2")  # 2: running
    assert client.scheduler_info()["address"].startswith("tls://127.0.0.1:")


def test_alice_scales_to_two_htcondor_workers_and_computes(condor_pool, alice_cluster):
    gw, cluster, client, alice, bob = alice_cluster
    cluster.scale(2)
    client.wait_for_workers(2, timeout=120)
    assert client.submit(sum, range(10)).result(timeout=60) == 45
    # the workers are HTCondor jobs run by the slot user, not processes of the gateway
    assert set(client.run(os.getuid).values()) == {65534}
    jobs = cluster_jobs(condor_pool, cluster.name)
    assert sorted(role for _, _, _, role, _ in jobs) == ["scheduler", "worker", "worker"]
    assert {(owner, user) for _, owner, user, _, _ in jobs} == {("alice", "alice@casa.test")}


def spooled(pool, job_id: str, name: str) -> bytes:
    """A file spooled with a job (the schedd's copy), read as the pool's admin."""
    cluster = job_id.split(".")[0]
    (path,) = [p for p in (pool.pool.run_dir / "spool").rglob(name) if p.parent.name.startswith(f"cluster{cluster}.proc0")]
    return path.read_bytes()


def test_no_credential_is_in_any_job_ad(condor_pool, hub, alice_cluster):
    """The job ads (``condor_q -l``, readable by every user of the pool) hold none of the cluster's
    credentials -- they travelled as spooled, encrypted files -- nor any key or token of the gateway."""
    gw, cluster, client, alice, bob = alice_cluster
    wait_until("two workers", lambda: len(cluster_jobs(condor_pool, cluster.name)) == 3)
    scheduler_id = next(f"{c}.0" for c, _, _, role, _ in cluster_jobs(condor_pool, cluster.name) if role == "scheduler")
    api_token = spooled(condor_pool, scheduler_id, "api-token")
    assert spooled(condor_pool, scheduler_id, "dask.pem") == cluster.security.tls_key.encode()
    assert len(api_token) == 32  # the cluster's gateway API token did travel, as a file
    idtoken = (gw.workdir / "tokens" / "alice" / "casa").read_bytes().strip()
    tls_key_body = b"".join(cluster.security.tls_key.encode().splitlines()[1:-1])
    secrets_ = {
        "cluster TLS key": tls_key_body, "gateway API token": api_token, "alice's IDTOKEN": idtoken,
        "pool signing key": condor_pool.signing_key, "gateway's hub token": hub.service_token.encode(),
        "alice's hub token": hub.user_tokens["alice"].encode(),
    }
    ads = condor_pool.tool("condor_q", "-l", "-constraint", f'DaskGatewayCluster == "{cluster.name}"').stdout
    bob_view = condor_pool.tool("condor_q", "-all", "-l", token_dir=condor_pool.token_dir("bob@casa.test")).stdout
    assert ads.count("DaskGatewayRole") == 3 and "EncryptInputFiles" in ads and cluster.name in bob_view
    for text in (ads, bob_view):
        found = [label for label, secret in secrets_.items() for form in encoded_forms(secret) if form in text.encode()]
        assert found == []
    assert "Environment = \"\"" in ads or "Environment" not in ads


def test_bob_can_neither_connect_to_nor_remove_alices_cluster(condor_pool, alice_cluster):
    gw, cluster, client, alice, bob = alice_cluster
    assert cluster.name not in [c.name for c in bob.list_clusters()]
    for attempt in (bob.connect, bob.stop_cluster, bob.get_cluster):
        with pytest.raises(ClientResponseError) as refused:
            attempt(cluster.name)
        assert refused.value.status == 403
    before = cluster_jobs(condor_pool, cluster.name)
    condor_pool.tool("condor_rm", "-constraint", f'DaskGatewayCluster == "{cluster.name}"',
                     token_dir=condor_pool.token_dir("bob@casa.test"))
    assert cluster_jobs(condor_pool, cluster.name) == before  # bob's token removed none of alice's jobs
    assert client.submit(sum, [1, 2]).result(timeout=60) == 3


def test_alice_scales_to_zero_and_shuts_down_leaving_nothing_in_the_queue(condor_pool, alice_cluster):
    gw, cluster, client, alice, bob = alice_cluster
    cluster.scale(0)
    wait_until("the worker jobs to leave the queue",
               lambda: [r[3] for r in cluster_jobs(condor_pool, cluster.name)] == ["scheduler"])
    assert alice.get_cluster(cluster.name).status is ClusterStatus.RUNNING
    cluster.shutdown()
    wait_until("every job of the cluster to leave the queue", lambda: cluster_jobs(condor_pool, cluster.name) == [])
    assert alice.get_cluster(cluster.name).status is ClusterStatus.STOPPED


# -- the workers read data through the XCache with the user's own token ---------------------------

EVENTS = "/store/user/alice/events.root"
DATA_TOKEN_LIFETIME = 30  # renewed by the gateway after half of it; the credd hands each renewal to the running worker


@pytest.fixture(scope="module")
def xcache(tmp_path_factory):
    """The demo's XCache (an origin behind the cache, both checking macaroons) with a file in alice's area."""
    from casa_session.htcondor_workers import LoopThread
    from casa_spawner.demo.events import write_events
    from casa_spawner.demo.xcache import XCacheServer, ensure_macaroon_secret

    workdir = tmp_path_factory.mktemp("xcache")
    events = write_events(workdir / "events.root", n_events=1000, seed=4)
    server = XCacheServer(sitename="CASA_GATEWAY_TEST", secret_file=str(ensure_macaroon_secret(workdir / "macaroon-secret")),
                          users=["alice", "bob"], files={EVENTS: events}, ca_copy=str(workdir / "xcache-ca.pem"), ready_timeout=60)
    loop = LoopThread("xcache")
    try:
        loop.run(server.start(), 90)
        yield server, events
    finally:
        loop.run(server.stop(), 30)
        loop.close()


def data_reader():
    def read(path):
        import hashlib
        import os

        from casa_session.xcache import XCache, XCacheError

        with open(os.environ["BEARER_TOKEN_FILE"], "rb") as fh:
            token = hashlib.sha256(fh.read().strip()).hexdigest()
        try:
            return {"sha256": hashlib.sha256(XCache().read(path)).hexdigest(), "token": token,
                    "token_file": os.environ["BEARER_TOKEN_FILE"], "mode": os.stat(os.environ["BEARER_TOKEN_FILE"]).st_mode & 0o777}
        except XCacheError as e:
            return {"error": str(e), "token": token}
    return read


def one_worker_cluster(gateway, clusters: list):
    """A new cluster of the gateway's user (kept in ``clusters`` for the clean-up) with one worker connected."""
    cluster = gateway.new_cluster()
    clusters.append(cluster)
    cluster.scale(1)
    client = cluster.get_client()
    client.wait_for_workers(1, timeout=180)
    return cluster, client


def test_the_workers_read_through_the_xcache_with_the_users_token_renewed_while_they_run(condor_pool, hub, tmp_path, xcache):
    import hashlib
    import time

    server, events = xcache
    gw = gateway(condor_pool, hub, tmp_path, f"c.HTCondorBackend.xcache_ca_file = {server.ca_copy!r}",
                 "c.HTCondorBackend.data_token_check_period = 2",
                 f"c.HTCondorBackend.store_cred_command = {condor_pool.install.sbin_tool('condor_store_cred')!r}",
                 macaroon_secret_file=server.secret_file, xcache_site=server.sitename, xcache_host=server.url,
                 xcache_paths=["/store/user/{username}"], xcache_token_lifetime=DATA_TOKEN_LIFETIME, renew_fraction=0.5,
                 data_token_service="xcache", credd_host=condor_pool.credd_host).start()
    expected = hashlib.sha256(events.read_bytes()).hexdigest()
    clusters = []
    try:
        with gw.client("alice") as alice, gw.client("bob") as bob:
            cluster, client = one_worker_cluster(alice, clusters)
            (first,) = client.run(data_reader(), EVENTS).values()
            assert first.get("sha256") == expected, first
            assert first["token_file"].endswith("/.condor_creds/xcache.use") and first["mode"] == 0o600
            worker_job = [c for c, _, _, role, _ in cluster_jobs(condor_pool, cluster.name) if role == "worker"]

            deadline, tokens = time.monotonic() + 1.5 * DATA_TOKEN_LIFETIME, {first["token"]}
            while time.monotonic() < deadline:  # past the first token's life: the same worker reads on, renewed
                (read,) = client.run(data_reader(), EVENTS).values()
                assert read.get("sha256") == expected, read
                tokens.add(read["token"])
                time.sleep(3)
            assert len(tokens) >= 2
            assert [c for c, _, _, role, _ in cluster_jobs(condor_pool, cluster.name) if role == "worker"] == worker_job

            _, bobs = one_worker_cluster(bob, clusters)
            (refused,) = bobs.run(data_reader(), EVENTS).values()
            assert "covers /store/user/bob/, not " + EVENTS in refused.get("error", ""), refused  # bob's token: not alice's area

            ads = condor_pool.tool("condor_q", "-all", "-l").stdout.encode()
            log = gw.log_text().encode()
            stored = (condor_pool.pool.run_dir / "oauth_credentials" / "alice" / "xcache.use").read_bytes().strip()
            assert not any(form in blob for blob in (ads, log) for form in encoded_forms(stored))
            assert "Stored the data token of alice in the HTCondor credd (service xcache)" in gw.log_text()
    finally:
        for cluster in clusters:
            cluster.close()
            remove_cluster_jobs(condor_pool, cluster.name)
        gw.stop()


# -- a gateway restart ------------------------------------------------------------------------------


def test_a_restarted_gateway_finds_the_running_cluster_and_fails_one_whose_jobs_vanished(condor_pool, hub, tmp_path):
    persistent = [
        f"c.HTCondorBackend.db_url = 'sqlite:///{tmp_path / 'gateway.sqlite'}'",
        f"c.HTCondorBackend.db_encrypt_keys = [{base64.b64encode(secrets.token_bytes(32)).decode()!r}]",
        "c.HTCondorBackend.stop_clusters_on_shutdown = False",
    ]
    gw = gateway(condor_pool, hub, tmp_path / "gw", *persistent).start()
    name, alice = None, gw.client("alice")  # one client throughout: the restarted gateway keeps its address
    try:
        cluster = alice.new_cluster(shutdown_on_close=False)
        name = cluster.name
        cluster.scale(1)
        cluster.get_client().wait_for_workers(1, timeout=120)
        cluster.close()
        gw.stop()
        assert len(cluster_jobs(condor_pool, name)) == 2  # the gateway went; alice's jobs stayed

        gw.start()
        again = alice.connect(name)  # found in the gateway's database
        client = again.get_client()
        assert client.submit(sum, [20, 22]).result(timeout=60) == 42
        assert len(client.scheduler_info()["workers"]) == 1
        again.close()

        gw.stop()
        remove_cluster_jobs(condor_pool, name)  # the jobs vanish while the gateway is away
        wait_until("the jobs to leave the queue", lambda: cluster_jobs(condor_pool, name) == [])
        gw.start()
        wait_until("the cluster to be reported failed",
                   lambda: alice.get_cluster(name).status is ClusterStatus.FAILED, timeout=60)
        with pytest.raises(GatewayClusterError, match="left the HTCondor queue: it was removed"):
            alice.connect(name)
    finally:
        alice.close()
        gw.stop()
        if name:
            remove_cluster_jobs(condor_pool, name)


# -- what goes wrong reaches alice as a message ----------------------------------------------------


def new_cluster_error(gw: GatewayProcess, meanwhile=None, timeout: float = 90.0) -> str:
    """What ``Gateway.new_cluster()`` raises for alice (it must raise, within ``timeout``)."""
    with gw.client("alice") as alice, concurrent.futures.ThreadPoolExecutor(1) as pool:
        creating = pool.submit(alice.new_cluster)
        if meanwhile is not None:
            meanwhile()
        with pytest.raises(GatewayClusterError) as raised:
            creating.result(timeout)
    return str(raised.value)


@pytest.mark.parametrize("case", ["no such schedd", "collector down"])
def test_an_unreachable_schedd_is_a_message(condor_pool, hub, tmp_path, case):
    from jupyterhub.utils import random_port

    wrong = {"schedd_host": "nobody-here@127.0.0.1"} if case == "no such schedd" else {
        "collector_host": f"127.0.0.1:{random_port()}"}
    gw = gateway(condor_pool, hub, tmp_path, **wrong).start()
    try:
        message = new_cluster_error(gw)
    finally:
        gw.stop()
    assert "scheduler job could not be submitted" in message and "schedd is unreachable" in message
    assert "alice@casa.test" in message
    if case == "collector down":
        assert f"via collector {wrong['collector_host']}" in message


def test_a_refused_token_is_a_message(condor_pool, hub, tmp_path):
    wrong_key = tmp_path / "NOT-THE-POOL-KEY"
    wrong_key.write_bytes(os.urandom(32))
    os.chmod(wrong_key, 0o600)
    gw = gateway(condor_pool, hub, tmp_path, key_file=wrong_key).start()
    try:
        message = new_cluster_error(gw)
    finally:
        gw.stop()
    assert "HTCondor refused to submit a job as alice@casa.test" in message and "IDTOKENS" in message


UNMATCHABLE = "c.HTCondorClusterConfig.job_extra_directives = {'request_gpus': '1'}"  # this pool has no GPU


def test_a_held_scheduler_job_is_a_message_and_is_removed(condor_pool, hub, tmp_path):
    gw = gateway(condor_pool, hub, tmp_path, UNMATCHABLE, "c.HTCondorBackend.cluster_start_timeout = 120").start()
    held = []

    def hold_the_scheduler_job():
        rows = wait_until("the scheduler job", lambda: condor_pool.queue(
            'DaskGatewayRole == "scheduler" && Owner == "alice" && RequestGpus == 1 && JobStatus == 1',
            "ClusterId", "DaskGatewayCluster"))  # idle: its input files have arrived
        (cluster_id, name), = rows
        held.append(name)
        hold_jobs(condor_pool, f"ClusterId == {cluster_id}", "over the site's quota")

    try:
        message = new_cluster_error(gw, meanwhile=hold_the_scheduler_job)
        assert "the scheduler job" in message and "was held" in message
        wait_until("the held job to be removed", lambda: cluster_jobs(condor_pool, held[0]) == [])
    finally:
        gw.stop()
        for name in held:
            remove_cluster_jobs(condor_pool, name)


def test_a_scheduler_that_never_finds_a_slot_is_a_message(condor_pool, hub, tmp_path):
    gw = gateway(condor_pool, hub, tmp_path, UNMATCHABLE, "c.HTCondorBackend.cluster_start_timeout = 6").start()
    try:
        message = new_cluster_error(gw)
        assert "was still waiting for a slot in the pool after 6s" in message
        assert condor_pool.queue('Owner == "alice" && RequestGpus == 1') == []
    finally:
        gw.stop()


def test_a_scheduler_that_exits_is_a_message(condor_pool, hub, tmp_path):
    gw = gateway(condor_pool, hub, tmp_path, "c.HTCondorClusterConfig.scheduler_cmd = ['/nonexistent/dask', 'scheduler']").start()
    try:
        message = new_cluster_error(gw)
    finally:
        gw.stop()
    assert "left the HTCondor queue: it exited with code 127" in message


def test_a_gateway_without_the_pool_signing_key_does_not_start(condor_pool, hub, tmp_path):
    gw = gateway(condor_pool, hub, tmp_path, signing_key_file="")
    with pytest.raises(RuntimeError, match="c.Facility.signing_key_file"):
        gw.start()


def test_a_held_worker_job_is_removed_and_replaced(condor_pool, hub, tmp_path):
    gw = gateway(condor_pool, hub, tmp_path).start()
    alice, cluster = gw.client("alice"), None
    try:
        cluster = alice.new_cluster()
        client = cluster.get_client()
        cluster.scale(1)
        client.wait_for_workers(1, timeout=120)
        ((first,),) = condor_pool.queue(f'DaskGatewayCluster == "{cluster.name}" && DaskGatewayRole == "worker"', "ClusterId")
        hold_jobs(condor_pool, f"ClusterId == {first}", "the pool's admin needs the slot")
        wait_until("the held worker job to be removed", lambda: condor_pool.queue(f"ClusterId == {first}") == [])
        replaced = wait_until("a new worker job", lambda: condor_pool.queue(
            f'DaskGatewayCluster == "{cluster.name}" && DaskGatewayRole == "worker" && JobStatus == 2', "ClusterId"))
        assert replaced[0][0] != first
        client.wait_for_workers(1, timeout=120)
        assert client.submit(sum, [1, 1]).result(timeout=60) == 2
    finally:
        if cluster is not None:
            cluster.shutdown()
            remove_cluster_jobs(condor_pool, cluster.name)
        alice.close()
        gw.stop()
