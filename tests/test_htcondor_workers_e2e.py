"""CasaCluster's workers as HTCondor jobs of the session's own identity, on the real pool, through a real Traefik.

The session is what a spawner leaves (tests/htcondor_session.py: a Facility plan's credentials
and environment, a TLS scheduler, Traefik routing the scheduler's name by SNI); the notebook
code is what a physicist writes: ``CasaCluster().scale(2)``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import dask.config
import htcondor2
import pytest

from casa_condor.output import CondorError, IdentityRefused, ScheddUnreachable
from casa_session.cluster import CasaCluster, WorkersDidNotStart
from casa_session.htcondor_workers import HTCondorWorkers
from jupyterhub.utils import random_port
from tests.condor_pool import worker_python
from tests.gateway_process import wait_until
from tests.htcondor_session import HTCondorSite, in_session, scaled_cluster
from tests.secret_files import write_secret_file
from tests.secret_scan import encoded_forms

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

WORKER_SIZE = {"jobqueue.casa.memory": "256 MiB", "jobqueue.casa.disk": "64 MiB",
               "jobqueue.casa.worker-start-timeout": 240, "jobqueue.casa.condor-timeout": 20}
UNMATCHABLE = {"jobqueue.casa.job-extra-directives": {"request_gpus": "1"}}  # this pool has no GPU


@pytest.fixture(scope="module")
def site(condor_pool, tmp_path_factory):
    site = HTCondorSite(condor_pool, tmp_path_factory.mktemp("htcondor-session")).start()
    try:
        yield site
    finally:
        site.stop()
        condor_pool.tool("condor_rm", "-constraint", f'CasaSession == "{site.session_id}"')


def hold_jobs(pool, constraint: str, reason: str) -> None:
    """A pool administrator's ``condor_hold -reason`` (this build has no condor_hold: htcondor2's act; a plain
    string reason is dropped by htcondor2 25.x, the ``(reason, code)`` form reaches HoldReason)."""
    script = ("import sys, htcondor2; r = htcondor2.Schedd().act(htcondor2.JobAction.Hold, sys.argv[1], (sys.argv[2], 0));"
              "sys.exit(0 if r['TotalSuccess'] else 1)")
    done = subprocess.run([sys.executable, "-c", script, constraint, reason], capture_output=True, text=True,
                          env={**os.environ, **pool.pool.admin_environment()}, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def session(site, monkeypatch):
    in_session(monkeypatch, site)
    with dask.config.set({**WORKER_SIZE, "jobqueue.casa.python": worker_python()}):
        yield site


@pytest.fixture(scope="module")
def alice(site):
    """Alice's ``CasaCluster()`` with 2 HTCondor workers (shared by the tests in file order)."""
    with scaled_cluster(site, 2, {**WORKER_SIZE, "jobqueue.casa.python": worker_python()}) as (cluster, client):
        yield cluster, client


def test_casa_cluster_scales_to_two_htcondor_workers_of_alice_that_compute_through_traefik(site, alice):
    cluster, client = alice
    assert isinstance(cluster.launcher, HTCondorWorkers)
    assert client.submit(sum, range(101)).result(timeout=60) == 5050
    assert sorted(client.run(lambda: 1).values()) == [1, 1]
    jobs = site.session_jobs("Owner", "User", "CasaCluster", "DaskSchedulerAddress", "JobStatus", "Arguments")
    assert len(jobs) == 2
    for job in jobs:
        assert job[1:5] == [site.identity, cluster.launcher.cluster_name, f'{site.plan.names.scheduler_address}', "2"]
    # the workers dialled Traefik's port (the scheduler listens elsewhere) and sent the scheduler's name as SNI
    args = " ".join(" ".join(job[5:]) for job in jobs).replace("'", "")  # condor_q -af shows each argument quoted
    assert f"tls://127.0.0.1:{site.traefik_port}" in args and f"--scheduler-sni {site.plan.names.scheduler_host}" in args
    assert site.traefik_port != site.scheduler_port
    assert site.identity == "alice@casa.test"
    text = repr(cluster)
    assert "2 HTCondor jobs of alice@casa.test: 2 running" in text, text
    html = cluster._repr_html_()
    assert all(f"{job[0]}.0" in html for job in site.session_jobs("ClusterId")) and "running" in html


def test_bob_can_neither_remove_nor_edit_alices_workers(site, alice, condor_pool):
    cluster, client = alice
    before = site.session_jobs("ClusterId", "DaskWorkerCores")
    bob = condor_pool.token_dir("bob@casa.test")
    condor_pool.tool("condor_rm", "-constraint", f'CasaSession == "{site.session_id}"', token_dir=bob)
    condor_pool.tool("condor_rm", f"{before[0][0]}.0", token_dir=bob)
    edit = condor_pool.tool("condor_qedit", f"{before[0][0]}.0", "DaskWorkerCores", "7", token_dir=bob)
    assert edit.returncode != 0, edit.stdout + edit.stderr
    assert site.session_jobs("ClusterId", "DaskWorkerCores") == before
    assert client.submit(sum, [1, 2]).result(timeout=60) == 3


def _files_under(*roots: Path) -> dict[str, bytes]:
    out = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                out[str(path)] = path.read_bytes()
    return out


def _worker_environments(cluster_name: str) -> dict[str, bytes]:
    envs = {}
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else []
            if cluster_name.encode() in b" ".join(argv) and b"python" in argv[0]:  # the worker, not its /bin/sh
                envs[f"{proc}/environ"] = (proc / "environ").read_bytes()
        except OSError:
            continue
    return envs


def test_no_master_secret_in_any_ad_description_sandbox_environment_or_log(site, alice, condor_pool):
    cluster, _ = alice
    run_dir = condor_pool.pool.run_dir
    idtoken = (site.creds / "condor" / "tokens.d" / "casa").read_bytes().strip()
    bearer = (site.creds / "bearer_token").read_bytes().strip()
    worker_key = b"".join((site.creds / "dask" / "worker.pem").read_bytes().split(b"-----BEGIN PRIVATE KEY-----")[1].splitlines()[1:-1])
    master = {"pool signing key": site.master.signing_key, "macaroon secret": site.master.macaroon_secret}
    user = {"alice's IDTOKEN": idtoken, "bearer token": bearer, "worker key": worker_key}
    ads = condor_pool.tool("condor_q", "-all", "-l", token_dir=condor_pool.token_dir("bob@casa.test")).stdout
    assert ads.count("CasaSession") >= 2 and "EncryptInputFiles" in ads
    descriptions = {name: cluster.launcher.job_script(name) for name in cluster.launcher.running()}
    for description in descriptions.values():
        htcondor2.Submit(description)  # what was submitted, HTCondor's own parser accepts too
    environments = _worker_environments(cluster.launcher.cluster_name)
    assert len(environments) == 2
    assert all(b"BEARER_TOKEN_FILE=" in env for env in environments.values())
    everything = {"job ads": ads.encode(), **{f"description of {n}": d.encode() for n, d in descriptions.items()},
                  **environments, **_files_under(run_dir / "execute", run_dir / "spool", run_dir / "log", site.creds)}
    sandboxes = [p for p in everything if "/execute/" in p and p.endswith("/bearer_token")]
    assert len(sandboxes) == 2 and all(everything[p].strip() == bearer for p in sandboxes)  # it travelled, as a file
    leaks = [f"{label} in {where}" for where, text in everything.items() for label, secret in master.items()
             if any(form in text for form in encoded_forms(secret))]
    assert leaks == []
    public = {"job ads": ads.encode(), **{k: v for k, v in everything.items() if k.startswith("description")}}
    leaks = [f"{label} in {where}" for where, text in public.items() for label, secret in user.items()
             if any(form in text for form in encoded_forms(secret))]
    assert leaks == []


def test_scaling_down_retires_the_worker_holding_data_without_losing_it(site, alice):
    cluster, client = alice
    names = {info["name"]: addr for addr, info in client.scheduler_info()["workers"].items()}
    newest = cluster.launcher.running()[-1]
    data = list(range(50000))
    [future] = client.scatter([data], workers=[names[newest]])
    assert set(client.who_has(future)[future.key]) == {names[newest]}
    cluster.scale(1)
    wait_until("one job left", lambda: len(site.session_jobs()) == 1, timeout=120)
    assert cluster.launcher.running() == [n for n in names if n != newest]
    assert client.gather(future) == data
    assert len(client.scheduler_info()["workers"]) == 1


def test_close_leaves_no_job_in_the_queue(site, alice):
    cluster, _ = alice
    cluster.close()
    wait_until("the session's jobs to leave the queue", lambda: site.session_jobs() == [], timeout=120)


def test_no_worker_within_the_bound_and_a_held_job_are_messages(session, condor_pool):
    with dask.config.set(UNMATCHABLE):
        cluster = CasaCluster()
    try:
        with dask.config.set(UNMATCHABLE):
            cluster.scale(1)
        with pytest.raises(WorkersDidNotStart, match=r"0 of 1 workers connected after 3s \(casa-\w+-0 idle\)"):
            cluster.wait_for_workers(1, timeout=3)
        name = cluster.launcher.cluster_name
        hold_jobs(condor_pool, f'CasaCluster == "{name}" && JobStatus == 1', "over the GPU quota of the site")
        with pytest.raises(WorkersDidNotStart, match="was held by HTCondor: over the GPU quota of the site"):
            cluster.wait_for_workers(1, timeout=60)
        assert "1 held" in repr(cluster) and "held: over the GPU quota of the site" in cluster._repr_html_()
    finally:
        cluster.close()
    wait_until("the held job to be removed", lambda: session.session_jobs() == [], timeout=60)


@pytest.mark.parametrize("case", ["signed by another key", "expired"])
def test_a_refused_token_is_the_schedds_message(site, condor_pool, monkeypatch, tmp_path, case):
    if case == "expired":  # issued two hours ago for one hour
        tokens = tmp_path / "tokens"
        tokens.mkdir(mode=0o700)
        token = condor_pool.token(site.identity, lifetime=3600, issued_at=int(time.time()) - 7200)
        write_secret_file(tokens / "casa", (token + "\n").encode())
    else:
        tokens = condor_pool.token_dir(site.identity, key=os.urandom(32))
    in_session(monkeypatch, site, _CONDOR_SEC_TOKEN_DIRECTORY=str(tokens))
    cluster = CasaCluster()
    try:
        with pytest.raises(IdentityRefused, match="HTCondor refused to submit a job as alice@casa.test") as refused:
            cluster.scale(1)
        assert "IDTOKENS" in str(refused.value) or "authenticat" in str(refused.value).lower()
    finally:
        cluster.close()
    assert site.session_jobs() == []


def test_a_submission_the_schedd_refuses_is_its_message(session):
    with dask.config.set({"jobqueue.casa.job-extra-directives": {"requirements": "((("}}):
        cluster = CasaCluster()
        refusal = r"could not submit a job as alice@casa.test \(exit status 1\): ERROR: Parse error in expression: / Requirements = \(\(\("
        with pytest.raises(CondorError, match=refusal) as refused:
            cluster.scale(1)
    cluster.close()
    assert not isinstance(refused.value, (IdentityRefused, ScheddUnreachable))
    assert session.session_jobs() == []


@pytest.mark.parametrize("case", ["no such schedd", "collector down"])
def test_an_unreachable_schedd_is_a_message_not_a_hang(site, monkeypatch, case):
    wrong = {"_CONDOR_SCHEDD_HOST": "nobody-here@127.0.0.1"} if case == "no such schedd" else {
        "_CONDOR_COLLECTOR_HOST": f"127.0.0.1:{random_port()}"}
    in_session(monkeypatch, site, **wrong)
    with dask.config.set({"jobqueue.casa.condor-timeout": 20}):
        cluster = CasaCluster()
        with pytest.raises(ScheddUnreachable, match="schedd is unreachable") as unreachable:
            cluster.scale(1)
        cluster.close()  # nothing was submitted: nothing to remove, nothing to ask the schedd
    assert "alice@casa.test" in str(unreachable.value)


def test_adapt_replaces_a_worker_whose_job_left_the_queue(session, condor_pool, caplog):
    caplog.set_level(logging.WARNING, "casa.cluster")
    cluster = CasaCluster()
    try:
        cluster.adapt(minimum=1, maximum=1, interval=1)
        (first,), = wait_until("the first job", lambda: session.session_jobs("ClusterId"), timeout=60)
        condor_pool.tool("condor_rm", f"{first}.0", token_dir=condor_pool.token_dir(session.identity))
        wait_until("a new job", lambda: [j for j in session.session_jobs("ClusterId", "JobStatus")
                                         if j[0] != first and j[1] in ("1", "2")], timeout=120)
        cluster.wait_for_workers(1)
        assert f"job {first}.0 left the HTCondor queue" in caplog.text
    finally:
        cluster.close()
    wait_until("no job left", lambda: session.session_jobs() == [], timeout=120)


def test_the_notebooks_running_event_loop_does_not_get_in_the_way(session):
    """A Jupyter kernel calls the cluster's synchronous API from a thread whose event loop is running."""
    import asyncio

    async def notebook_cell():
        with dask.config.set(UNMATCHABLE):
            cluster = CasaCluster()
            try:
                cluster.scale(1)
                assert "1 HTCondor jobs of alice@casa.test" in repr(cluster)
                with pytest.raises(WorkersDidNotStart, match="0 of 1 workers connected after 2s"):
                    cluster.wait_for_workers(1, timeout=2)
            finally:
                cluster.close()

    asyncio.run(notebook_cell())
    wait_until("the job to be removed", lambda: session.session_jobs() == [], timeout=60)
