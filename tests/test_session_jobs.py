"""A stopped session's HTCondor jobs are removed as its user: both spawners, the real pool, a schedd that is down.

The session's id (``CASA_SESSION_ID``) is in the notebook's environment and in the spawner's
state; every job its workers run carries it as ``+CasaSession``.  Stopping removes exactly those
jobs with a token of the user's own identity: another session of the same user, and another
user's job carrying the same id, stay.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import sys
import time
from pathlib import Path

import pytest
from jupyterhub.objects import Hub
from jupyterhub.utils import random_port
from traitlets.config import Config

from casa_condor.schedd import CondorTools, UserSchedd
from casa_hub.plan import SESSION_ID_ENV, new_session_id, plan_session
from casa_spawner.kube import CasaKubeSpawner
from casa_spawner.local import CasaLocalSpawner
from casa_spawner.session_jobs import SessionJobs, session_constraint
from tests.condor_pool import TRUST_DOMAIN, session_sleep_job
from tests.fake_hub import FakeUser
from tests.fake_kube.spawners import make_spawner as make_kube_spawner

# -- pure: the id, the constraint, the plan ---------------------------------------------------


def test_every_start_gets_a_fresh_id_in_the_notebooks_environment(facility):
    bundle = facility.issue_bundle("alice")
    first, second = (plan_session(facility, "alice", bundle) for _ in range(2))
    assert first.session_id != second.session_id
    assert first.session_id.startswith("alice-") and len(first.session_id) == len("alice-") + 12
    assert first.environment("/creds", "tls://127.0.0.1:1")[SESSION_ID_ENV] == first.session_id
    assert session_constraint(first.session_id) == f'CasaSession == "{first.session_id}"'


@pytest.mark.parametrize("bad", ["", 'x" || true || "', "alice bob", "Alice-1", "-alice"])
def test_a_session_id_that_could_change_the_constraint_is_refused(bad):
    with pytest.raises(ValueError, match="not a session id"):
        session_constraint(bad)


async def test_nothing_is_tried_without_a_schedd(make_facility, caplog):
    jobs = SessionJobs(facility=make_facility(), remove_command="/nonexistent/condor_rm")
    assert not jobs.enabled
    assert await jobs.remove("alice", new_session_id("alice")) is None
    assert "HTCondor" not in caplog.text


# -- the kube spawner's env and state ---------------------------------------------------------


async def test_kube_spawner_puts_the_id_in_the_env_and_the_state_and_forgets_it_after_stop(make_facility):
    facility = make_facility(schedd_host="schedd.example.org")
    sp = make_kube_spawner(CasaKubeSpawner, "http://127.0.0.1:9", "alice", facility=facility)
    sp._plan = await sp.plan_new_session()
    sp.bundle, sp.session_id = sp._plan.bundle, sp._plan.session_id
    assert sp.get_env()[SESSION_ID_ENV] == sp.session_id
    state = sp.get_state()
    assert state["casa_session_id"] == sp.session_id

    restarted = make_kube_spawner(CasaKubeSpawner, "http://127.0.0.1:9", "alice", facility=facility)
    restarted.load_state(state)
    assert restarted.session_id == sp.session_id  # a hub restart still knows whose jobs to remove
    restarted.clear_state()
    assert "casa_session_id" not in restarted.get_state()


# -- a schedd that does not answer ------------------------------------------------------------


def condor_rm_path() -> str:
    from tests.condor_pool import find_test_htcondor

    return find_test_htcondor().tool("condor_rm")


async def test_a_schedd_that_is_down_is_one_warning_line(make_facility, caplog):
    caplog.set_level(logging.WARNING)
    dead = f"127.0.0.1:{random_port()}"  # nothing listens there
    facility = make_facility(schedd_host="casa@127.0.0.1", collector_host=dead)
    jobs = SessionJobs(facility=facility, remove_command=condor_rm_path(), timeout=20)
    session = new_session_id("alice")
    assert await asyncio.wait_for(jobs.remove("alice", session), 60) is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    line = warnings[0].getMessage()
    assert f"Could not remove the HTCondor jobs of session {session} of alice" in line and "\n" not in line
    assert not list(Path(jobs_tmp()).glob("casa-as-user-*"))  # the token went with the call


def jobs_tmp() -> str:
    import tempfile

    return tempfile.gettempdir()


async def test_a_hanging_condor_rm_is_bounded(make_facility, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    hang = tmp_path / "condor_rm"
    hang.write_text(f"#!{sys.executable}\nimport time; time.sleep(60)\n")
    hang.chmod(0o755)
    jobs = SessionJobs(facility=make_facility(schedd_host="casa@127.0.0.1"), remove_command=str(hang), timeout=1)
    started = time.monotonic()
    assert await jobs.remove("alice", new_session_id("alice")) is None
    assert time.monotonic() - started < 10
    assert "did not answer within 1s" in caplog.text


@pytest.mark.e2e  # a real Dask scheduler
async def test_local_spawner_stops_when_the_schedd_is_down(make_facility, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    facility = make_facility(schedd_host="casa@127.0.0.1", collector_host=f"127.0.0.1:{random_port()}")
    spawner = local_spawner(facility, tmp_path, condor_rm_path())
    await spawner.start()
    notebook, session_dir = spawner.pid, Path(spawner.session_dir)
    session = spawner.get_state()["casa"]["session_id"]
    await asyncio.wait_for(spawner.stop(now=True), 90)
    assert not session_dir.exists() and "casa" not in spawner.get_state()
    assert not Path(f"/proc/{notebook}").exists() or Path(f"/proc/{notebook}/stat").read_text().split(")")[-1].split()[0] == "Z"
    assert f"Could not remove the HTCondor jobs of session {session} of alice" in caplog.text


# -- the real pool ----------------------------------------------------------------------------


def local_spawner(facility, tmp_path, condor_rm: str, name: str = "alice") -> CasaLocalSpawner:
    config = Config()
    config.SessionJobs.remove_command = condor_rm
    spawner = CasaLocalSpawner(
        user=FakeUser(name), hub=Hub(), cmd=[sys.executable, "-c", "import time; time.sleep(600)"],
        facility=facility, state_dir=str(tmp_path / "state"), routes_dir=str(tmp_path / "routes"), config=config,
    )
    spawner.api_token = secrets.token_hex(16)
    return spawner


def pool_facility(make_facility, pool):
    return make_facility(trust_domain=TRUST_DOMAIN, signing_key_file=str(pool.workdir / "POOL"),
                         schedd_host=pool.pool.schedd_name, collector_host=pool.pool.collector_host)


class Submitter:
    """Jobs carrying ``+CasaSession``, submitted as a user with casa_condor's UserSchedd (as a session's launcher does)."""

    def __init__(self, pool, tmp_path):
        self.pool, self.tmp_path = pool, tmp_path
        env = {"CONDOR_CONFIG": "ONLY_ENV", "_CONDOR_COLLECTOR_HOST": pool.pool.collector_host,
               "_CONDOR_SCHEDD_HOST": pool.pool.schedd_name, "_CONDOR_TRUST_DOMAIN": TRUST_DOMAIN}
        tool = pool.install.tool
        self.tools = CondorTools(submit=tool("condor_submit"), remove=tool("condor_rm"), query=tool("condor_q"),
                                 history=tool("condor_history"), environment=env, schedd_name=pool.pool.schedd_name)
        self.submitted: list[tuple[UserSchedd, str]] = []

    def schedd(self, user: str) -> UserSchedd:
        identity = f"{user}@{TRUST_DOMAIN}"
        return UserSchedd(self.tools, identity, self.pool.token_dir(identity))

    async def submit(self, user: str, session: str) -> str:
        directory = Path(self.tmp_path, f"job-{len(self.submitted)}")
        directory.mkdir()
        (directory / "job.sub").write_text(session_sleep_job(session, 600))
        schedd = self.schedd(user)
        job_id = await schedd.submit(directory, "job.sub")
        self.submitted.append((schedd, job_id))
        return job_id

    def in_queue(self, job_id: str) -> bool:
        """The job is in the queue and not removed (as the pool's admin sees it)."""
        return any(status != "3" for _, status in self.pool.queue(f"ClusterId == {job_id.split('.')[0]}", "ClusterId", "JobStatus"))

    async def wait_gone(self, job_id: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.in_queue(job_id):
            assert time.monotonic() < deadline, f"job {job_id} is still in the queue"
            await asyncio.sleep(0.5)

    async def clean_up(self) -> None:
        for schedd, job_id in self.submitted:
            await schedd.remove(f"ClusterId == {job_id.split('.')[0]}")
            shutil.rmtree(schedd.token_dir, ignore_errors=True)


@pytest.mark.e2e
async def test_local_spawner_stop_removes_the_sessions_jobs_as_its_user(condor_pool, make_facility, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    facility = pool_facility(make_facility, condor_pool)
    spawner = local_spawner(facility, tmp_path, condor_pool.install.tool("condor_rm"))
    jobs = Submitter(condor_pool, tmp_path)
    try:
        await spawner.start()
        session = spawner.get_state()["casa"]["session_id"]
        env = Path(f"/proc/{spawner.pid}/environ").read_bytes().split(b"\0")
        assert f"{SESSION_ID_ENV}={session}".encode() in env
        own = [await jobs.submit("alice", session) for _ in range(2)]
        other_session = await jobs.submit("alice", new_session_id("alice"))
        bobs_with_the_same_id = await jobs.submit("bob", session)

        # a hub restart in between: the id comes back from the state
        restarted = local_spawner(facility, tmp_path, condor_pool.install.tool("condor_rm"))
        restarted.load_state(spawner.get_state())
        await asyncio.wait_for(restarted.stop(now=True), 90)

        for job_id in own:
            await jobs.wait_gone(job_id)
        assert jobs.in_queue(other_session) and jobs.in_queue(bobs_with_the_same_id)
        ((user,),) = condor_pool.queue(f"ClusterId == {other_session.split('.')[0]}", "User")
        assert user == f"alice@{TRUST_DOMAIN}"
        assert f"Removed the HTCondor jobs of session {session} as alice@{TRUST_DOMAIN}" in caplog.text
        assert not list(Path(jobs_tmp()).glob("casa-as-user-*"))
    finally:
        await spawner.stop(now=True)
        await jobs.clean_up()


@pytest.mark.e2e
async def test_kube_spawner_stop_removes_the_sessions_jobs_as_its_user(condor_pool, make_facility, kube, tmp_path):
    facility = pool_facility(make_facility, condor_pool)
    config = Config()
    config.SessionJobs.remove_command = condor_pool.install.tool("condor_rm")
    spawner = make_kube_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility, config=config)
    jobs = Submitter(condor_pool, tmp_path)
    try:
        await asyncio.wait_for(spawner.start(), 60)
        pod = kube.get("pods", "default", spawner.pod_name)
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        session = env[SESSION_ID_ENV]
        assert spawner.get_state()["casa_session_id"] == session
        assert env["_CONDOR_SCHEDD_HOST"] == condor_pool.pool.schedd_name
        own = await jobs.submit("alice", session)
        other_session = await jobs.submit("alice", new_session_id("alice"))
        await asyncio.wait_for(spawner.stop(), 60)
        await jobs.wait_gone(own)
        assert jobs.in_queue(other_session)
    finally:
        await jobs.clean_up()


async def test_condor_rm_gets_one_short_lived_token_of_the_user_and_nothing_of_the_hub(
        make_facility, master_secrets, tmp_path, monkeypatch):
    import json

    import jwt

    from tests.recording_tool import recording_tool, what_it_saw
    from tests.secret_scan import encoded_forms

    rm, record = recording_tool(tmp_path, "condor_rm", "All jobs matching constraint have been marked for removal")
    monkeypatch.setenv("CASA_HUB_ONLY", "not for condor_rm")
    monkeypatch.delenv("CONDOR_CONFIG", raising=False)  # the hub has none (importing htcondor2 sets /dev/null)
    facility = make_facility(schedd_host="casa@127.0.0.1", collector_host="127.0.0.1:9618")
    session = new_session_id("alice")
    assert await SessionJobs(facility=facility, remove_command=rm).remove("alice", session) is True
    seen = what_it_saw(record)
    assert seen["argv"] == ["-constraint", f'CasaSession == "{session}"']
    env = seen["env"]
    assert "CASA_HUB_ONLY" not in env  # nothing of the hub's environment but PATH
    assert env["_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS"] == "IDTOKENS"
    assert env["_CONDOR_SCHEDD_HOST"] == "casa@127.0.0.1" and env["_CONDOR_COLLECTOR_HOST"] == "127.0.0.1:9618"
    assert env["CONDOR_CONFIG"] == "ONLY_ENV"
    (token,) = seen["tokens"].values()
    assert list(seen["modes"].values()) == ["0o600"] and seen["dir_mode"] == "0o700"
    claims = jwt.decode(token.strip(), options={"verify_signature": False})
    assert claims["sub"] == "alice@cms-af.example.org" and claims["iss"] == "cms-af.example.org"
    assert claims["exp"] - claims["iat"] == 300
    blob = json.dumps(seen).encode()
    assert not any(form in blob for form in encoded_forms(master_secrets.signing_key))
    assert not Path(env["_CONDOR_SEC_TOKEN_DIRECTORY"]).exists()  # deleted after the call


async def test_kube_spawner_stops_when_the_schedd_is_down(make_facility, kube, caplog):
    caplog.set_level(logging.WARNING)
    facility = make_facility(schedd_host="casa@127.0.0.1", collector_host=f"127.0.0.1:{random_port()}")
    config = Config()
    config.SessionJobs.remove_command = condor_rm_path()
    config.SessionJobs.timeout = 20
    spawner = make_kube_spawner(CasaKubeSpawner, kube.url, "alice", facility=facility, config=config)
    await asyncio.wait_for(spawner.start(), 60)
    session = spawner.get_state()["casa_session_id"]
    await asyncio.wait_for(spawner.stop(), 60)
    assert kube.names("pods") == [] and kube.names("secrets") == []
    assert f"Could not remove the HTCondor jobs of session {session} of alice" in caplog.text
