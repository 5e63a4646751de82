"""CasaCluster's HTCondor workers read the user's data through the real XCache, with the user's own token,
kept fresh inside the running jobs by the pool's credd.

The session is what a spawner leaves (tests/htcondor_session.py: the Facility's plan, its macaroon for
``/store/user/alice`` stored in the credd as alice, a TLS scheduler behind Traefik) next to the demo's
XCache (an origin behind the cache, both checking macaroons).  The workers are alice's jobs; each reads
through ``casa_session.xcache.XCache`` with what its job was given: ``XCACHE_HOST``, ``XCACHE_CA_FILE``
(the sandbox copy) and ``BEARER_TOKEN_FILE`` = ``$_CONDOR_CREDS/xcache.use``, which the starter rewrites
every ``SEC_CREDENTIAL_REFRESH`` seconds (5 in the tests' pool).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from pathlib import Path

import dask.config
import pytest

from casa_hub.macaroon import decode_secret, make_macaroon
from casa_session.cluster import CasaCluster
from casa_spawner.demo.events import EVENTS_NAME, write_events
from tests.condor_pool import CREDENTIAL_REFRESH, worker_python
from tests.gateway_process import wait_until
from tests.htcondor_session import XCACHE_SITE, HTCondorSite, in_session, scaled_cluster
from tests.secret_scan import encoded_forms, files_under, master_secret_forms

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

EVENTS = f"/store/user/alice/{EVENTS_NAME}"
BOBS = "/store/user/bob/notes.txt"
WORKER_SIZE = {"jobqueue.casa.memory": "256 MiB", "jobqueue.casa.disk": "64 MiB", "jobqueue.casa.worker-start-timeout": 240}
#: how long a token stored in the credd may take to reach a running job (a refresh, and some slack on a busy machine)
REACHES_JOBS = 6 * CREDENTIAL_REFRESH


def reader():
    """A task reading a file through the XCache with the worker's own settings (defined here, so pickled by value)."""
    def read(path):
        import hashlib
        import os

        from casa_session.xcache import XCache, XCacheError

        try:
            data = XCache().read(path)
        except XCacheError as e:
            return {"error": str(e), "token_file": os.environ.get("BEARER_TOKEN_FILE")}
        return {"sha256": hashlib.sha256(data).hexdigest(), "token_file": os.environ.get("BEARER_TOKEN_FILE")}
    return read


def token_on_worker():
    """A task: the worker's data-access variables, and what its token file is (mode, owner, content)."""
    def look():
        import os

        path = os.environ["BEARER_TOKEN_FILE"]
        st = os.stat(path)
        with open(path) as fh:
            token = fh.read().strip()
        return {"path": path, "mode": st.st_mode & 0o777, "owner": st.st_uid, "uid": os.getuid(), "token": token,
                "env": {k: os.environ.get(k) for k in ("XCACHE_HOST", "XCACHE_CA_FILE")},
                "ca_readable": os.access(os.environ.get("XCACHE_CA_FILE", "/nonexistent"), os.R_OK)}
    return look


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    return write_events(tmp_path_factory.mktemp("events") / EVENTS_NAME, n_events=2000, seed=16)


@pytest.fixture(scope="module")
def site(condor_pool, events, tmp_path_factory):
    site = HTCondorSite(condor_pool, tmp_path_factory.mktemp("alice-data"), data={EVENTS: events, BOBS: b"bob's notes\n"},
                        data_token_service="xcache").start()
    try:
        yield site
    finally:
        site.stop()
        condor_pool.tool("condor_rm", "-constraint", f'CasaSession == "{site.session_id}"')


@pytest.fixture(scope="module")
def alice(site):
    """Alice's ``CasaCluster()`` with 2 HTCondor workers (shared by the tests in file order)."""
    with scaled_cluster(site, 2, {**WORKER_SIZE, "jobqueue.casa.python": worker_python()}) as (cluster, client):
        yield cluster, client


def macaroon(site: HTCondorSite, user: str, issued: dt.datetime, lifetime: int) -> bytes:
    """A macaroon for ``user``'s area as the facility issues them, issued at ``issued``."""
    key = decode_secret(Path(site.facility.macaroon_secret_file).read_bytes())
    return make_macaroon(key, location=XCACHE_SITE, name=user, activities=["READ_METADATA", "DOWNLOAD", "LIST"],
                         paths=[f"/store/user/{user}"], lifetime=lifetime, now=issued).token.encode() + b"\n"


def job_ids(site) -> list[str]:
    return sorted(f"{c}.0" for (c,) in site.session_jobs("ClusterId"))


def tokens_on_workers(client) -> set[str]:
    return {seen["token"] for seen in client.run(token_on_worker()).values()}


def test_two_htcondor_workers_of_alice_read_her_file_through_the_xcache(site, alice, events, condor_pool):
    cluster, client = alice
    expected = hashlib.sha256(events.read_bytes()).hexdigest()
    reads = client.run(reader(), EVENTS)
    assert len(reads) == 2 and all(r.get("sha256") == expected for r in reads.values()), reads
    jobs = site.session_jobs("User", "JobStatus", "OAuthServicesNeeded")
    assert jobs == [["alice@casa.test", "2", "xcache"]] * 2, jobs  # 2: running; the starter gives them the credd's token
    # the file came from the cache, which fetched it from the origin with alice's token
    assert (site.xcache.cache_root / EVENTS.lstrip("/")).is_file()


def test_the_worker_reads_the_credds_copy_of_her_token_a_0600_file_of_its_own_uid(site, alice):
    cluster, client = alice
    for seen in client.run(token_on_worker()).values():
        assert seen["path"].endswith("/.condor_creds/xcache.use"), seen["path"]
        assert seen["mode"] == 0o600 and seen["owner"] == seen["uid"]  # what XRootD's ztn client insists on
        assert seen["token"] == site.token_file.read_text().strip()
        assert seen["env"]["XCACHE_HOST"] == site.xcache.url and seen["ca_readable"]
        assert seen["env"]["XCACHE_CA_FILE"].endswith("/xcache-ca.pem")


def test_a_token_stored_again_reaches_the_running_workers_and_an_expired_one_is_refused_by_xrootd(site, alice):
    """The same jobs: a new token in the credd reaches them; an expired one makes XRootD refuse the read; a fresh one
    brings reading back.  No job is resubmitted."""
    cluster, client = alice
    before = job_ids(site)
    now = dt.datetime.now(dt.timezone.utc)
    expired = macaroon(site, "alice", now - dt.timedelta(hours=2), lifetime=3600)
    assert site.store_data_token(expired)
    wait_until("the expired token in the running jobs", lambda: tokens_on_workers(client) == {expired.decode().strip()},
               timeout=REACHES_JOBS)
    refused = client.run(reader(), EVENTS)
    assert all("error" in r for r in refused.values()), refused
    for r in refused.values():  # XRootD refuses it; the message says why
        assert f"the XCache refused {EVENTS} (HTTP 403)" in r["error"] and "expired at" in r["error"], r["error"]
        assert expired.decode().strip() not in r["error"]  # never a token in a message

    fresh = macaroon(site, "alice", now, lifetime=3600)
    assert site.store_data_token(fresh)
    wait_until("the fresh token in the running jobs", lambda: tokens_on_workers(client) == {fresh.decode().strip()},
               timeout=REACHES_JOBS)
    assert all("sha256" in r for r in client.run(reader(), EVENTS).values())
    assert job_ids(site) == before


def test_a_worker_started_later_reads_with_the_token_the_credd_has_now(site, alice, events):
    cluster, client = alice
    current = macaroon(site, "alice", dt.datetime.now(dt.timezone.utc), lifetime=3600)
    assert site.store_data_token(current)
    with dask.config.set({**WORKER_SIZE, "jobqueue.casa.python": worker_python()}):
        cluster.scale(3)
        cluster.wait_for_workers(3)
    newest = cluster.launcher.running()[-1]
    address = next(a for a, info in client.scheduler_info()["workers"].items() if info["name"] == newest)
    (read,) = client.run(reader(), EVENTS, workers=[address]).values()
    assert read.get("sha256") == hashlib.sha256(events.read_bytes()).hexdigest(), read
    (seen,) = client.run(token_on_worker(), workers=[address]).values()
    assert seen["token"] == current.decode().strip()
    cluster.scale(2)


def test_no_token_and_no_master_secret_in_ads_descriptions_spool_logs_or_outputs(site, alice, condor_pool):
    cluster, client = alice
    run_dir = condor_pool.pool.run_dir
    tokens = {"alice's data token": site.token_file.read_bytes().strip()}
    tokens.update({f"the workers' token {i}": t.encode() for i, t in enumerate(tokens_on_workers(client))})
    public = {
        "job ads": condor_pool.tool("condor_q", "-all", "-l").stdout.encode(),
        **{f"description of {n}": cluster.launcher.job_script(n).encode() for n in cluster.launcher.running()},
    }
    logs = files_under(run_dir / "log")  # every daemon's, the starters', the credd's
    spool = files_under(run_dir / "spool")
    outputs = files_under(run_dir / "execute", names=("worker.out", "worker.err", "_condor_stdout", "_condor_stderr"))
    xcache_logs = {p: text for p, text in files_under(site.xcache.run_dir).items() if p.endswith(".log")}
    assert any("StarterLog" in p for p in logs) and any(p.endswith("CredLog") for p in logs) and outputs
    everything = {**public, **logs, **spool, **outputs, **xcache_logs}
    leaks = [f"{label} in {where}" for where, text in everything.items() for label, secret in tokens.items()
             if any(form in text for form in encoded_forms(secret))]
    leaks += [f"{label} in {where}" for where, text in everything.items()
              for label, forms in master_secret_forms(site.master).items() if any(form in text for form in forms)]
    assert leaks == []


def test_bob_cannot_read_alices_area_from_his_worker_but_reads_his_own(site, condor_pool, tmp_path_factory, monkeypatch):
    bob = HTCondorSite(condor_pool, tmp_path_factory.mktemp("bob-data"), user="bob", xcache=site.xcache,
                       data_token_service="xcache").start()
    try:
        in_session(monkeypatch, bob)
        with dask.config.set({**WORKER_SIZE, "jobqueue.casa.python": worker_python()}):
            cluster = CasaCluster()
            try:
                cluster.scale(1)
                cluster.wait_for_workers(1)
                assert bob.session_jobs("User") == [["bob@casa.test"]]
                with cluster.get_client(timeout="30s") as client:
                    (alices,) = client.run(reader(), EVENTS).values()
                    (own,) = client.run(reader(), BOBS).values()
            finally:
                cluster.close()
        assert "HTTP 403" in alices.get("error", "") and "covers /store/user/bob/, not " + EVENTS in alices["error"], alices
        assert own.get("sha256") == hashlib.sha256(b"bob's notes\n").hexdigest(), own
    finally:
        bob.stop()
        condor_pool.tool("condor_rm", "-constraint", f'CasaSession == "{bob.session_id}"')


def test_without_a_credd_service_the_token_travels_once_and_the_user_is_told_it_is_not_renewed(site, monkeypatch, caplog, events):
    caplog.set_level(logging.WARNING, "casa.cluster")
    in_session(monkeypatch, site, CASA_DATA_TOKEN_SERVICE="")
    with dask.config.set({**WORKER_SIZE, "jobqueue.casa.python": worker_python()}):
        cluster = CasaCluster()
        try:
            cluster.scale(1)
            description = cluster.launcher.job_script(cluster.launcher.running()[0])
            assert "use_oauth_services" not in description and "bearer_token" in description
            cluster.wait_for_workers(1)
            with cluster.get_client(timeout="30s") as client:
                ours = [a for a, info in client.scheduler_info()["workers"].items()
                        if info["name"] in cluster.launcher.running()]  # alice's module cluster has its workers there too
                (read,) = client.run(reader(), EVENTS, workers=ours).values()
                (seen,) = client.run(token_on_worker(), workers=ours).values()
        finally:
            cluster.close()
    assert read.get("sha256") == hashlib.sha256(events.read_bytes()).hexdigest(), read
    assert seen["path"].endswith("/bearer_token") and seen["mode"] == 0o600 and seen["owner"] == seen["uid"]
    assert "is not renewed in running workers" in caplog.text and "data_token_service" in caplog.text


def test_local_process_workers_read_with_the_notebooks_own_files(site, monkeypatch, events):
    """Local workers inherit the notebook's XCACHE_* and BEARER_TOKEN_FILE: the same file the hub renews in place."""
    in_session(monkeypatch, site)
    with CasaCluster(workers="local") as cluster:
        cluster.scale(1)
        cluster.wait_for_workers(1, timeout=120)
        with cluster.get_client(timeout="30s") as client:
            ours = [a for a, info in client.scheduler_info()["workers"].items() if info["name"] in cluster.launcher.running()]
            (read,) = client.run(reader(), EVENTS, workers=ours).values()
    assert read.get("sha256") == hashlib.sha256(events.read_bytes()).hexdigest(), read
    assert read["token_file"] == str(site.token_file)


def test_a_credd_without_the_users_token_is_a_clear_message_and_submits_nothing(site, monkeypatch):
    from casa_condor.output import CreddUnavailable

    in_session(monkeypatch, site, CASA_DATA_TOKEN_SERVICE="nobody-stored-this")
    cluster = CasaCluster()
    try:
        with pytest.raises(CreddUnavailable, match="the HTCondor credd holds no 'nobody-stored-this' token of this user") as missing:
            cluster.scale(1)
        assert "could not submit a job as alice@casa.test" in str(missing.value)
        assert site.token_file.read_text().strip() not in str(missing.value)
    finally:
        cluster.close()
    assert site.session_jobs("CasaCluster") == [[c] for (c,) in site.session_jobs("CasaCluster") if c != cluster.launcher.cluster_name]
