"""The pure parts of ``casa_spawner.gateway``: job files and submit descriptions, cluster options and
their limits, the users' token directories, and the failure report a waiting user gets."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess

import jwt
import pytest
from aiohttp import web
from dask_gateway_server import models
from dask_gateway_server.backends.db_base import Cluster, JobStatus, Worker
from dask_gateway_server.tls import new_keypair
from dask_gateway_server.utils import FrozenAttrDict
from traitlets.config import Config

from casa_hub.errors import ConfigurationError
from casa_hub.facility import Facility
from casa_spawner.gateway import FailedClusterReport, HTCondorBackend, HTCondorClusterConfig
from casa_spawner.gateway import jobs
from casa_condor.output import HELD, SPOOLING_INPUT, JobState, one_line
from casa_spawner.gateway.identity import UserTokens

NAME = "0123456789abcdef0123456789abcdef"


def backend(tmp_path, **traits) -> HTCondorBackend:
    key = tmp_path / "POOL"
    key.write_bytes(os.urandom(32))
    os.chmod(key, 0o600)
    config = Config()
    config.Facility.signing_key_file = str(key)
    config.Facility.trust_domain = "casa.test"
    Facility.clear_instance()
    return HTCondorBackend(config=config, api_url="http://gateway.test/api", **traits)


def a_cluster(**config) -> Cluster:
    """A cluster record as the gateway's database holds it (call inside an event loop: it makes futures)."""
    cert, key = new_keypair(NAME)
    settings = HTCondorClusterConfig(**config).to_dict()
    return Cluster(id=1, name=NAME, username="alice", token="f" * 32, options={}, config=FrozenAttrDict(settings),
                   status=JobStatus.CREATED, target=JobStatus.RUNNING, state={}, tls_cert=cert, tls_key=key,
                   scheduler_address="tls://10.0.0.5:8786")


@pytest.fixture(autouse=True)
def _fresh_facility():
    yield
    Facility.clear_instance()


async def test_the_scheduler_job_carries_its_credentials_as_encrypted_files_and_the_ad_none(tmp_path):
    cluster = a_cluster(environment={"OPERATOR_SET": "1"}, scheduler_setup="source /cvmfs/site/setup.sh")
    job = backend(tmp_path).scheduler_job(cluster)
    assert job.files[jobs.TLS_KEY] == cluster.tls_key and job.files[jobs.API_TOKEN] == cluster.token.encode()
    description = job.submit_description()
    script = job.files[jobs.JOB_SCRIPT].decode()
    for secret in (cluster.tls_key.decode().splitlines()[1], cluster.token):
        assert secret not in description and secret not in script
    assert "environment" not in description.lower()  # no Environment in the job ad: it is in the script
    lines = dict(line.split(" = ", 1) for line in description.splitlines() if " = " in line)
    files = "api-token, dask-gateway-job.sh, dask.crt, dask.pem"
    assert lines["transfer_input_files"] == files and lines["encrypt_input_files"] == files
    assert (lines["leave_in_queue"], lines["getenv"], lines["executable"]) == ("false", "false", "/bin/sh")
    assert (lines["request_cpus"], lines["request_memory"]) == ("1", "2048")
    assert lines["+DaskGatewayCluster"] == f'"{NAME}"' and lines["+DaskGatewayRole"] == '"scheduler"'
    assert "export DASK_GATEWAY_API_TOKEN=./api-token" in script and "export OPERATOR_SET=1" in script
    assert "source /cvmfs/site/setup.sh" in script and "--preload dask_gateway.scheduler_preload" in script


async def test_a_worker_job_gets_no_api_token_and_joins_the_scheduler(tmp_path):
    cluster = a_cluster(worker_cores=2, worker_memory="3 G")
    worker = Worker(id=2, name="fedcba9876543210fedcba9876543210", cluster=cluster, status=JobStatus.CREATED,
                    target=JobStatus.RUNNING, state={})
    job = backend(tmp_path, default_host="127.0.0.1").worker_job(worker)
    script = job.files[jobs.JOB_SCRIPT].decode()
    assert jobs.API_TOKEN not in job.files and "DASK_GATEWAY_API_TOKEN" not in script
    assert "tls://10.0.0.5:8786" in script and "--nthreads 2" in script and "--host 127.0.0.1" in script
    description = job.submit_description()
    assert "request_cpus = 2" in description and "request_memory = 3072" in description
    assert f'+DaskGatewayWorker = "{worker.name}"' in description
    assert job.constraint == f'DaskGatewayWorker == "{worker.name}"'


def test_the_job_script_passes_any_value_through_the_real_shell(tmp_path):
    tricky = {"SPACES": "a b  c", "QUOTES": "it's \"quoted\"", "DOLLAR": "$HOME `id` $(id)", "NEWLINE": "one\ntwo"}
    script = jobs.job_script(["/usr/bin/env"], tricky, setup="cd /")
    (tmp_path / "job.sh").write_text(script)
    done = subprocess.run(["/bin/sh", "job.sh"], cwd=tmp_path, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    for name, value in tricky.items():
        assert f"{name}={value}\n" in done.stdout
    assert f"PWD={tmp_path}" in done.stdout  # back in the job's directory after the operator's setup


@pytest.mark.parametrize("env", [{"1BAD": "x"}, {"A-B": "x"}, {"NUL": "a\0b"}])
def test_environment_a_shell_cannot_carry_is_refused(env):
    with pytest.raises(ValueError):
        jobs.job_script(["true"], env)


@pytest.mark.parametrize("key", ["environment", "Environment", "getenv", "transfer_input_files", "leave_in_queue",
                                 "+DaskGatewayCluster", "queue", "arguments"])
def test_extra_directives_cannot_replace_what_the_backend_sets(key):
    with pytest.raises(ConfigurationError, match="set by the HTCondor backend"):
        jobs.check_extra_directives({key: "x"})
    with pytest.raises(Exception, match="set by the HTCondor backend"):
        HTCondorClusterConfig(job_extra_directives={key: "x"})


async def test_extra_directives_and_an_image_reach_the_submit_description(tmp_path):
    cluster = a_cluster(job_extra_directives={"+AccountingGroup": '"cms.alice"', "requirements": "OpSysMajorVer == 9"},
                        image="/cvmfs/unpacked.cern.ch/coffea:latest")
    description = backend(tmp_path).scheduler_job(cluster).submit_description()
    assert '+AccountingGroup = "cms.alice"' in description and "requirements = OpSysMajorVer == 9" in description
    assert "universe = container" in description and "container_image = /cvmfs/unpacked.cern.ch/coffea:latest" in description
    with pytest.raises(ConfigurationError, match="spans lines"):
        jobs.check_extra_directives({"requirements": "true\nqueue 100"})


def test_names_that_cannot_be_a_classad_string_are_refused():
    for bad in ('x" || true || "', "a b", ""):
        with pytest.raises(ValueError):
            jobs.cluster_constraint(bad)


# -- cluster options ------------------------------------------------------------------------------


def options_of(tmp_path, request, **traits):
    b = backend(tmp_path, **traits)
    opts = b.cluster_options
    return opts.get_configuration(opts.parse_options(request), models.User("alice"))


def test_cluster_options_within_the_limits_become_the_cluster_config(tmp_path):
    images = {"coffea": "/cvmfs/images/coffea:2024", "plain": "/cvmfs/images/plain:1"}
    config = options_of(tmp_path, {"worker_cores": 3, "worker_memory": 6, "image": "plain", "environment": {"OMP_NUM_THREADS": "3"}},
                        worker_images=images, allowed_environment=["OMP_*"])
    assert config == {"worker_cores": 3, "worker_memory": 6 * 2**30, "image": "/cvmfs/images/plain:1",
                      "user_environment": {"OMP_NUM_THREADS": "3"}}
    assert HTCondorClusterConfig(**config).worker_threads == 3


@pytest.mark.parametrize("request_, message", [
    ({"worker_cores": 9}, "worker_cores must be <= 4"),
    ({"worker_memory": 64}, "worker_memory must be <= 16"),
    ({"image": "root-shell"}, "not a valid option for image"),
    ({"environment": {"DASK_GATEWAY_API_URL": "http://evil"}}, "set by the gateway"),
    ({"environment": {"_CONDOR_SEC_TOKEN_DIRECTORY": "/tmp"}}, "set by the gateway"),
    ({"environment": {"LD_PRELOAD": "x.so"}}, "not among the variables"),
    ({"gpus": 1}, "Unknown fields"),
])
def test_cluster_options_outside_the_limits_are_refused_with_a_message(tmp_path, request_, message):
    with pytest.raises((ValueError, TypeError), match=message):
        options_of(tmp_path, request_, worker_images={"coffea": "/cvmfs/images/coffea"}, allowed_environment=["OMP_*"])


def test_without_images_or_environment_the_options_do_not_offer_them(tmp_path):
    spec = backend(tmp_path, allowed_environment=[]).cluster_options.get_specification()
    assert [f["field"] for f in spec] == ["worker_cores", "worker_memory"]


# -- tokens, failures --------------------------------------------------------------------------------


def test_each_user_gets_a_private_token_of_their_own_identity_renewed_when_due(tmp_path):
    b = backend(tmp_path)
    tokens = UserTokens(b.facility, tmp_path / "tokens")

    async def scenario():
        first = await tokens.directory("alice")
        token = (first / "casa").read_text().strip()
        again = await tokens.directory("alice")
        bob = await tokens.directory("Bob.Smith@cern.ch")
        return first, token, again, bob

    first, token, again, bob = asyncio.run(scenario())
    assert first == again and (again / "casa").read_text().strip() == token  # not re-issued while fresh
    assert oct(first.stat().st_mode & 0o777) == "0o700" and oct((first / "casa").stat().st_mode & 0o777) == "0o600"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "alice@casa.test" and claims["iss"] == "casa.test"
    assert bob != first and jwt.decode((bob / "casa").read_text().strip(), options={"verify_signature": False})["sub"] != "alice@casa.test"

    issued = tokens._issued["alice"]
    tokens._issued["alice"] = type(issued)(issued.path, issued.content, issued.kind, issued.audiences,
                                           issued_at=issued.issued_at - dt.timedelta(days=10), expires_at=issued.expires_at)
    asyncio.run(tokens.directory("alice"))
    assert (first / "casa").read_text().strip() != token  # past its renewal point: a new token
    asyncio.run(tokens.close())
    assert not (tmp_path / "tokens").exists()


def test_a_gateway_without_a_signing_key_says_what_to_set(tmp_path):
    Facility.clear_instance()
    b = HTCondorBackend(config=Config())
    with pytest.raises(ConfigurationError, match="c.Facility.signing_key_file"):
        asyncio.run(b.do_setup())


def test_a_failed_clusters_report_answers_its_owner_with_the_reason():
    model = models.Cluster(name=NAME, username="alice", token="t", options={}, config={},
                           status=models.ClusterStatus.FAILED)
    report = FailedClusterReport(model, "the scheduler job 12.0 was held by HTCondor: over quota")
    with pytest.raises(web.HTTPConflict) as raised:
        report.to_dict()
    assert raised.value.reason == f"Cluster {NAME} failed: the scheduler job 12.0 was held by HTCondor: over quota"
    assert report.username == "alice"  # the route checks the permission on it before serialising


def test_a_reason_is_one_printable_line():
    assert one_line("a\nb\tc  é") == "a b c ?"
    assert len(one_line("x" * 5000)) == 600


def test_a_job_held_while_its_files_spool_is_alive_and_other_holds_are_not():
    assert JobState("1.0", HELD, hold_reason="Spooling input data files", hold_reason_code=SPOOLING_INPUT).alive
    held = JobState("1.0", HELD, hold_reason="Error from slot1: out of memory", hold_reason_code=34)
    assert not held.alive and held.describe() == "was held by HTCondor: Error from slot1: out of memory"


async def test_a_worker_reads_through_the_xcache_with_the_credds_copy_of_the_users_token(tmp_path):
    from casa_condor.data_access import WorkerDataAccess

    cluster = a_cluster()
    worker = Worker(id=3, name="aaaabbbbccccddddaaaabbbbccccdddd", cluster=cluster, status=JobStatus.CREATED,
                    target=JobStatus.RUNNING, state={})
    data = WorkerDataAccess(addresses={"XCACHE_HOST": "root://xcache.casa.test:1094"}, ca=b"the XCache's CA\n",
                            token=b"alice's macaroon\n", service="xcache")
    job = backend(tmp_path).worker_job(worker, data)
    script, description = job.files[jobs.JOB_SCRIPT].decode(), job.submit_description()
    assert job.files["xcache-ca.pem"] == b"the XCache's CA\n" and "bearer_token" not in job.files
    assert "use_oauth_services = xcache" in description and "xcache-ca.pem" in description
    assert "alice's macaroon" not in script + description
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.sh").write_text(script.replace("exec ", "exec /usr/bin/env # "))
    done = subprocess.run(["/bin/sh", "job.sh"], cwd=tmp_path / "job", capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "_CONDOR_CREDS": "/sandbox/.condor_creds"})
    assert done.returncode == 0, done.stderr
    assert "BEARER_TOKEN_FILE=/sandbox/.condor_creds/xcache.use\n" in done.stdout
    assert f"XCACHE_CA_FILE={tmp_path / 'job'}/xcache-ca.pem\n" in done.stdout
    assert "XCACHE_HOST=root://xcache.casa.test:1094\n" in done.stdout

    once = backend(tmp_path).worker_job(worker, WorkerDataAccess(token=b"alice's macaroon\n"))
    assert once.files["bearer_token"] == b"alice's macaroon\n" and "use_oauth_services" not in once.submit_description()
    assert 'export BEARER_TOKEN_FILE="$job_dir/bearer_token"' in once.files[jobs.JOB_SCRIPT].decode()
    with pytest.raises(ConfigurationError, match="set by the HTCondor backend"):
        jobs.check_extra_directives({"use_oauth_services": "other"})
