"""``casa_spawner.demo.condor``: a real one-machine pool that checks the IDTOKENs casa issues."""

import asyncio
import os
import subprocess
import time

import pytest

from casa_hub.errors import ConfigurationError
from casa_spawner.demo.condor import CondorPool, HTCondorInstall, pool_config

from tests.condor_pool import PoolThread, find_test_htcondor, session_sleep_job

pytestmark = pytest.mark.e2e


def submit(pool, tmp_path, token_dir, session="test"):
    sub = tmp_path / "sleep.sub"
    sub.write_text(session_sleep_job(session, 300))
    return pool.tool("condor_submit", "-spool", "-terse", str(sub), token_dir=token_dir, cwd=tmp_path)


def cluster_of(done) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split(".")[0].strip()


def test_a_token_identity_submits_and_owns_its_job(condor_pool, tmp_path):
    alice = condor_pool.token_dir("alice@casa.test")
    cluster = cluster_of(submit(condor_pool, tmp_path, alice, session="alice-1"))
    try:
        ((owner, user, session),) = condor_pool.queue(f"ClusterId == {cluster}", "Owner", "User", "CasaSession")
        assert (owner, user, session) == ("alice", "alice@casa.test", "alice-1")
    finally:
        condor_pool.tool("condor_rm", cluster, token_dir=alice)


def test_another_identity_can_neither_remove_nor_edit_the_job(condor_pool, tmp_path):
    alice, bob = condor_pool.token_dir("alice@casa.test"), condor_pool.token_dir("bob@casa.test")
    cluster = cluster_of(submit(condor_pool, tmp_path, alice))
    try:
        condor_pool.tool("condor_rm", cluster, token_dir=bob)  # the schedd says "no jobs" to bob, exit 0
        assert condor_pool.tool("condor_qedit", cluster, "CasaSession", '"bob"', token_dir=bob).returncode != 0
        ((status, session),) = condor_pool.queue(f"ClusterId == {cluster}", "JobStatus", "CasaSession")
        assert status != "3" and session == "test"  # 3: removed
    finally:
        assert condor_pool.tool("condor_rm", cluster, token_dir=alice).returncode == 0


@pytest.mark.parametrize("case", ["expired", "other key"])
def test_the_schedd_refuses_a_bad_token(condor_pool, tmp_path, case):
    if case == "expired":
        bad = condor_pool.token_dir("alice@casa.test", lifetime=1)
        time.sleep(2)
    else:
        bad = condor_pool.token_dir("alice@casa.test", key=os.urandom(32))
    done = submit(condor_pool, tmp_path, bad)
    assert done.returncode != 0
    assert "authenticat" in (done.stdout + done.stderr).lower()


def test_the_pool_config_names_no_key_and_listens_on_loopback(tmp_path):
    install = HTCondorInstall(tmp_path / "sbin", tmp_path / "bin")
    text = pool_config(local_dir="/x", install=install, port=12345, trust_domain="casa.test",
                       daemon_user="nobody", daemon_ids=(65534, 65534))
    assert "NETWORK_INTERFACE = 127.0.0.1" in text and "COLLECTOR_HOST = 127.0.0.1:$(COLLECTOR_PORT)" in text
    assert "TRUST_DOMAIN = casa.test" in text and "CONDOR_IDS = 65534.65534" in text
    with pytest.raises(Exception, match="trust domain"):
        pool_config(local_dir="/x", install=install, port=1, trust_domain="bad domain", daemon_user="nobody",
                    daemon_ids=(1, 1))


def test_a_directory_without_htcondor_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigurationError, match="not an HTCondor installation"):
        HTCondorInstall.find(tmp_path)


def test_a_stopped_pool_leaves_no_process_and_no_run_directory(tmp_path):
    pool = PoolThread(tmp_path).start()
    run_dir, master = pool.pool.run_dir, pool.pool.master.pid
    key_copy = run_dir / "passwords.d" / "POOL"
    assert key_copy.read_bytes() == pool.signing_key and oct(key_copy.stat().st_mode & 0o777) == "0o600"
    pool.stop()
    assert not run_dir.exists()
    left = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True).stdout.split()
    assert left == [] and not os.path.exists(f"/proc/{master}")
    assert (tmp_path / "logs" / "SchedLog").is_file()  # the logs are kept where asked


def test_a_pool_that_cannot_start_says_why_and_leaves_nothing(tmp_path):
    key = tmp_path / "POOL"
    key.write_bytes(os.urandom(32))
    os.chmod(key, 0o644)  # too open: refused before anything starts
    pool = CondorPool(find_test_htcondor(), key)
    with pytest.raises(ConfigurationError, match="0600|mode|permission"):
        asyncio.run(pool.start())
    assert pool.run_dir is None and pool.master is None
