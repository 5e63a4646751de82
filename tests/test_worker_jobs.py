"""The HTCondor job of one CasaCluster worker (pure): built by dask-jobqueue's HTCondorJob from ``jobqueue.casa``,
credentials only as spooled encrypted files, every description accepted by HTCondor's own parser (htcondor2.Submit)."""

from __future__ import annotations

import os

import dask.config
import htcondor2
import pytest

from casa_condor.submit import attribute_equals, check_extra_directives, job_ids_constraint, spooled_files, string_literal
from casa_hub.condor_token import make_idtoken
from casa_hub.errors import ConfigurationError
from casa_session.cluster import LocalProcessWorkers, pick_launcher
from casa_session.htcondor_workers import HTCondorWorkers, token_identity
from casa_session.worker_jobs import WorkerTarget, worker_data_access, worker_job
from tests.secret_files import write_secret_file

CA, CERT, KEY, BEARER = b"-----CA secret-ish-----\n", b"CERT+KEY of the worker\n", b"a separate worker key\n", b"bearer-xyz"
XCACHE_CA = b"-----BEGIN CERTIFICATE----- the XCache's CA\n"


@pytest.fixture
def target(tmp_path):
    for name, data in (("ca.pem", CA), ("worker.pem", CERT), ("key.pem", KEY), ("bearer", BEARER), ("xcache-ca", XCACHE_CA)):
        write_secret_file(tmp_path / name, data)

    def make(sni: str | None = "alice.dask.casa.test", key: str | None = None, bearer: bool = True, **data_env) -> WorkerTarget:
        env = {"BEARER_TOKEN_FILE": str(tmp_path / "bearer")} if bearer else {}
        return WorkerTarget(
            address="tls://alice.dask.casa.test:8786",
            connect_address="tls://127.0.0.1:8786" if sni else "tls://alice.dask.casa.test:8786",
            sni=sni, ca_file=str(tmp_path / "ca.pem"), worker_cert=str(tmp_path / "worker.pem"),
            worker_key=str(tmp_path / (key or "worker.pem")), data=worker_data_access({**env, **data_env}),
        )

    return make


def build(target, **config):
    with dask.config.set({f"jobqueue.casa.{k}": v for k, v in config.items()}):
        return worker_job("casa-ab12-0", session="s-1", cluster="casa-ab12", target=target)


def parsed(job) -> dict[str, str]:
    """The description as HTCondor's own submit parser reads it (it raises on what condor_submit refuses)."""
    return {k.lower(): v for k, v in dict(htcondor2.Submit(job.description)).items()}


def test_the_job_is_sized_by_jobqueue_casa(target):
    job = build(target(), cores=2, memory="3 GiB", disk="5 GiB")
    sub = parsed(job)
    assert sub["my.daskworkercores"] == "2" and sub["requestcpus"] == "MY.DaskWorkerCores"
    assert sub["my.daskworkermemory"] == str(3 * 2**30) and sub["my.daskworkerdisk"] == str(5 * 2**30)
    assert "--nthreads 2 --memory-limit 3.00GiB" in sub["arguments"] and "--death-timeout 60" in sub["arguments"]


def test_defaults_come_from_casa_yaml(target):
    sub = parsed(build(target(bearer=False)))
    assert sub["my.daskworkercores"] == "1" and sub["my.daskworkermemory"] == str(2 * 2**30)
    assert sub["arguments"].startswith('"-c \'python3 -m distributed.cli.dask_worker ')
    assert sub["universe"] == "vanilla" and sub["executable"] == "/bin/sh"


def test_credentials_travel_as_encrypted_files_and_nowhere_else(target):
    job = build(target(key="key.pem"))
    assert job.files == {"ca.pem": CA, "worker.pem": CERT, "worker-key.pem": KEY, "bearer_token": BEARER}
    sub = parsed(job)
    names = "bearer_token, ca.pem, worker-key.pem, worker.pem"
    assert sub["transfer_input_files"] == names and sub["encrypt_input_files"] == names
    assert sub["should_transfer_files"] == "YES" and sub["getenv"] == "false" and sub["leave_in_queue"] == "false"
    assert "environment" not in sub and "env" not in sub
    for data in job.files.values():
        assert data.strip().decode() not in job.description
    args = sub["arguments"]
    assert "--tls-ca-file ca.pem --tls-cert worker.pem" in args and "--tls-key worker-key.pem" in args
    assert 'export BEARER_TOKEN_FILE=""$PWD/bearer_token""' in args


def test_without_a_bearer_token_or_separate_key_only_ca_and_certificate_travel(target):
    job = build(target(bearer=False))
    assert set(job.files) == {"ca.pem", "worker.pem"}
    assert "--tls-key worker.pem" in job.description and "BEARER_TOKEN_FILE" not in job.description


def test_the_xcache_address_and_ca_reach_the_worker_and_the_token_is_the_credds_copy(target, tmp_path):
    job = build(target(XCACHE_HOST="root://xcache.casa.test:1094", XCACHE_HTTPS_HOST="https://xcache.casa.test:1094",
                       XCACHE_CA_FILE=str(tmp_path / "xcache-ca"), CASA_DATA_TOKEN_SERVICE="xcache"))
    assert job.files["xcache-ca.pem"] == XCACHE_CA and "bearer_token" not in job.files  # the credd hands the token out
    sub = parsed(job)
    assert sub["use_oauth_services"] == "xcache"
    assert "xcache-ca.pem" in sub["encrypt_input_files"]
    args = sub["arguments"]
    assert "export XCACHE_HOST=root://xcache.casa.test:1094" in args and "export XCACHE_HTTPS_HOST=https://xcache.casa.test:1094" in args
    assert 'export XCACHE_CA_FILE=""$PWD/xcache-ca.pem""' in args
    assert 'export BEARER_TOKEN_FILE=""$_CONDOR_CREDS/xcache.use""' in args
    assert BEARER.decode() not in job.description


def test_without_a_credd_service_the_token_travels_once_with_the_job(target):
    job = build(target(CASA_DATA_TOKEN_SERVICE=""))
    assert job.files["bearer_token"] == BEARER and "use_oauth_services" not in parsed(job)


@pytest.mark.parametrize("env, message", [
    ({"XCACHE_HOST": "root://x:1094; rm -rf ~"}, "is not an XCache address"),
    ({"XCACHE_HOST": "http://x:1094"}, "is not an XCache address"),
    ({"CASA_DATA_TOKEN_SERVICE": "x cache"}, "not an HTCondor OAuth service name"),
    ({"XCACHE_CA_FILE": "/nonexistent/ca.pem"}, r"cannot read the XCache's CA \(XCACHE_CA_FILE\)"),
])
def test_data_access_that_cannot_reach_a_worker_is_a_clear_error(target, env, message):
    with pytest.raises(ConfigurationError, match=message):
        target(**env)


def test_the_job_names_its_session_cluster_worker_and_scheduler(target):
    sub = parsed(build(target()))
    assert sub["my.casasession"] == '"s-1"' and sub["my.casacluster"] == '"casa-ab12"'
    assert sub["my.casaworker"] == '"casa-ab12-0"' and sub["my.daskworkername"] == '"casa-ab12-0"'
    assert sub["my.daskscheduleraddress"] == '"tls://alice.dask.casa.test:8786"' and sub["batch_name"] == "casa-ab12-0"


def test_the_worker_dials_the_address_and_sends_the_name_as_sni(target):
    args = parsed(build(target()))["arguments"]
    assert "dask_worker tls://127.0.0.1:8786 --name casa-ab12-0" in args and "--scheduler-sni alice.dask.casa.test" in args
    assert "--no-nanny" in args
    by_name = parsed(build(target(sni=None)))["arguments"]
    assert "dask_worker tls://alice.dask.casa.test:8786" in by_name and "--scheduler-sni" not in by_name


def test_more_processes_per_job_need_a_resolvable_name(target):
    with pytest.raises(ConfigurationError, match="processes > 1 needs a nanny"):
        build(target(), processes=2, cores=2)
    args = parsed(build(target(sni=None), processes=2, cores=2))["arguments"]
    assert "--nworkers 2 --nanny" in args and "--nthreads 1" in args


@pytest.mark.parametrize("key", ["executable", "Arguments", "transfer_input_files", "encrypt_input_files", "environment",
                                 "getenv", "+CasaSession", "MY.CasaSession", "+DaskSchedulerAddress", "output", "universe",
                                 "container_image", "queue", "use_oauth_services"])
def test_extra_directives_cannot_replace_what_casa_sets(target, key):
    with pytest.raises(ConfigurationError, match="set by casa itself"):
        build(target(), **{"job-extra-directives": {key: "x"}})


def test_extra_directives_and_the_deprecated_job_extra_reach_the_job(target):
    sub = parsed(build(target(), **{"job-extra-directives": {"+AccountingGroup": '"cms.alice"', "requirements": "HasDocker"}}))
    assert sub["my.accountinggroup"] == '"cms.alice"' and sub["requirements"] == "HasDocker"
    with pytest.warns(FutureWarning, match="job_extra has been renamed"):
        sub = parsed(build(target(), **{"job-extra": {"+Site": '"T2_US_Nebraska"'}}))
    assert sub["my.site"] == '"T2_US_Nebraska"'


@pytest.mark.parametrize("value, message", [
    ({"bad key": "1"}, "is not a submit command"),
    ({"requirements": "a\nqueue 100"}, "spans lines"),
])
def test_bad_extra_directives_are_refused(target, value, message):
    with pytest.raises(ConfigurationError, match=message):
        build(target(), **{"job-extra-directives": value})


def test_a_worker_image_makes_a_container_job_and_the_docker_universe_is_configuration(target):
    sub = parsed(build(target(), **{"worker-image": "coffeateam/coffea-casa-analysis:latest"}))
    assert sub["universe"] == "container" and sub["container_image"] == "coffeateam/coffea-casa-analysis:latest"
    sub = parsed(build(target(), universe="docker", **{"worker-image": "coffeateam/coffea-casa-analysis:latest",
                                                       "job-extra-directives": {"container_service_names": "dask",
                                                                                "dask_container_port": "8786"}}))
    assert sub["universe"] == "docker" and sub["docker_image"] == "coffeateam/coffea-casa-analysis:latest"
    assert sub["container_service_names"] == "dask"


@pytest.mark.parametrize("config, message", [
    ({"universe": "grid"}, "universe must be one of"),
    ({"universe": "vanilla", "worker-image": "img"}, "needs universe container or docker"),
    ({"universe": "docker"}, "must name a container image"),
    ({"worker-image": 'img" + 1'}, "must name a container image"),
    ({"log-directory": "/home/alice/logs"}, "log-directory cannot be used"),
])
def test_settings_a_job_cannot_have_are_clear_errors(target, config, message):
    with pytest.raises(ConfigurationError, match=message):
        build(target(), **config)


def test_names_that_cannot_be_attributes_are_refused(target):
    with pytest.raises(ValueError, match="cannot be a job attribute"):
        worker_job("w0", session='x" || true || "', cluster="c", target=target())
    with pytest.raises(ValueError, match="cannot be a job attribute"):
        worker_job("w0", session="$(Owner)", cluster="c", target=target())


def test_an_unreadable_credential_is_a_clear_error(target, tmp_path):
    os.unlink(tmp_path / "ca.pem")
    with pytest.raises(ConfigurationError, match="cannot read the session's Dask CA"):
        build(target())


def test_submit_helpers():
    assert job_ids_constraint(["12.0", "3.1"]) == "(ClusterId == 12 && ProcId == 0) || (ClusterId == 3 && ProcId == 1)"
    assert attribute_equals("CasaSession", "s-1") == 'CasaSession == "s-1"'
    for bad in (["12"], ["a.b"], []):
        with pytest.raises(ValueError):
            job_ids_constraint(bad)
    with pytest.raises(ValueError):
        string_literal("two words", "session")
    with pytest.raises(ValueError, match="plain file name"):
        spooled_files(["../etc/passwd"])
    assert check_extra_directives({"MY.X": 1}, {"my.y"}, "x") == {"MY.X": "1"}


# -- which launcher a session gets ---------------------------------------------------------------


@pytest.fixture
def condor_env(tmp_path):
    """A session given a schedd: a token directory and HTCondor's tools on PATH (stand-ins: only found, never run)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("condor_submit", "condor_rm", "condor_q", "condor_history"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    tokens = tmp_path / "tokens.d"
    tokens.mkdir(mode=0o700)
    token = make_idtoken(os.urandom(32), trust_domain="casa.test", identity="alice@casa.test", lifetime=600).token
    write_secret_file(tokens / "casa", (token + "\n").encode())
    return {"_CONDOR_SCHEDD_HOST": "casa@127.0.0.1", "_CONDOR_SEC_TOKEN_DIRECTORY": str(tokens), "PATH": str(bin_dir),
            "CASA_SESSION_ID": "s-1"}


def test_a_session_with_a_schedd_gets_htcondor_workers_else_local_ones(condor_env):
    assert isinstance(pick_launcher(None, {}), LocalProcessWorkers)
    launcher = pick_launcher(None, condor_env, cluster_name="casa-x")
    try:
        assert isinstance(launcher, HTCondorWorkers)
        assert (launcher.identity, launcher.session_id, launcher.cluster_name) == ("alice@casa.test", "s-1", "casa-x")
    finally:
        launcher.close()  # nothing submitted: the schedd is not asked
    assert isinstance(pick_launcher("local", condor_env), LocalProcessWorkers)
    with pytest.raises(ValueError, match="workers must be one of 'htcondor', 'local'"):
        pick_launcher("slurm", condor_env)


def test_a_session_id_that_cannot_tag_jobs_is_a_configuration_error(condor_env):
    with pytest.raises(ConfigurationError, match="CASA_SESSION_ID 'a b' cannot be a job attribute"):
        pick_launcher("htcondor", {**condor_env, "CASA_SESSION_ID": "a b"})


@pytest.mark.parametrize("drop, message", [
    ("_CONDOR_SCHEDD_HOST", "given no HTCondor schedd"),
    ("_CONDOR_SEC_TOKEN_DIRECTORY", "has no HTCondor token"),
    ("PATH", "HTCondor's tools are not on PATH"),
])
def test_htcondor_workers_without_what_they_need_say_what_is_missing(condor_env, drop, message):
    env = {**condor_env, drop: "/nonexistent" if drop == "PATH" else ""}
    with pytest.raises(ConfigurationError, match=message):
        pick_launcher("htcondor", env)


def test_the_identity_shown_is_the_tokens_subject(condor_env, tmp_path):
    from pathlib import Path

    assert token_identity(Path(condor_env["_CONDOR_SEC_TOKEN_DIRECTORY"])) == "alice@casa.test"
    assert token_identity(tmp_path) == "the session's HTCondor identity"


def test_workers_get_exactly_the_variables_casa_session_xcache_reads():
    from casa_condor import data_access
    from casa_session import xcache

    assert data_access.WORKER_VARIABLES == xcache.WORKER_VARIABLES
