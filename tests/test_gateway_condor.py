"""The parsers of ``casa_spawner.gateway`` fed with what the real pool's tools print, captured in
this run, and ``UserSchedd`` (submit, query, history, remove as one identity) against that pool."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time

import pytest
from jupyterhub.utils import random_port

from casa_condor.output import (
    COMPLETED,
    HELD,
    IDLE,
    JOB_ATTRIBUTES,
    REMOVED,
    RUNNING,
    CondorOutputError,
    IdentityRefused,
    ScheddUnreachable,
    classify_failure,
    nothing_to_remove,
    parse_job_ads,
    parse_submit_output,
)
from casa_condor.schedd import CondorTools, UserSchedd

from tests.gateway_process import hold_jobs, wait_until

pytestmark = pytest.mark.e2e

JOB = """\
executable = /bin/sh
arguments = "-c '{script}'"
transfer_executable = false
should_transfer_files = YES
transfer_input_files = secret.txt
encrypt_input_files = secret.txt
leave_in_queue = false
+CasaParserTest = "{tag}"
{extra}
queue
"""


def write_job(tmp_path, tag, script="sleep 300", extra=""):
    (tmp_path / "secret.txt").write_text("not in the ad\n")
    (tmp_path / f"{tag}.sub").write_text(JOB.format(script=script, tag=tag, extra=extra))
    return f"{tag}.sub"


def submit(pool, tmp_path, token_dir, tag, **kw):
    return pool.tool("condor_submit", "-spool", "-terse", write_job(tmp_path, tag, **kw), token_dir=token_dir, cwd=tmp_path)


def json_q(pool, job_id, token_dir=None):
    return pool.tool("condor_q", job_id, "-json", "-attributes", ",".join(JOB_ATTRIBUTES), token_dir=token_dir).stdout


def json_history(pool, job_id):
    return pool.tool("condor_history", job_id, "-limit", "1", "-json", "-attributes", ",".join(JOB_ATTRIBUTES)).stdout


@pytest.fixture
def alice(condor_pool):
    return condor_pool.token_dir("alice@casa.test")


def test_submit_query_hold_remove_and_history_outputs_parse(condor_pool, tmp_path, alice):
    done = submit(condor_pool, tmp_path, alice, "lifecycle", extra="request_gpus = 1")  # no GPU here: stays idle
    assert done.returncode == 0, done.stderr
    job_id = parse_submit_output(done.stdout)
    try:
        ((cluster, proc),) = condor_pool.queue('CasaParserTest == "lifecycle"', "ClusterId", "ProcId")
        assert job_id == f"{cluster}.{proc}"

        wait_until("idle", lambda: parse_job_ads(json_q(condor_pool, job_id))[job_id].status == IDLE)
        idle = parse_job_ads(json_q(condor_pool, job_id))[job_id]
        assert idle.alive and idle.describe() == "is idle"

        hold_jobs(condor_pool, f"ClusterId == {cluster}", "the parsers' test")
        held = parse_job_ads(json_q(condor_pool, job_id, token_dir=alice))[job_id]
        assert held.status == HELD and not held.alive and "held" in held.describe()
    finally:
        assert condor_pool.tool("condor_rm", job_id, token_dir=alice).returncode == 0
    wait_until("the job to leave the queue", lambda: json_q(condor_pool, job_id).strip() == "")
    assert parse_job_ads(json_q(condor_pool, job_id)) == {}  # a job that left the queue: no answer at all
    ended = parse_job_ads(json_history(condor_pool, job_id))[job_id]
    assert ended.status == REMOVED and "by user alice" in ended.remove_reason
    assert ended.describe().startswith("was removed (via condor_rm (by user alice))")


def test_a_job_that_ran_and_exited_is_completed_with_its_exit_code(condor_pool, tmp_path, alice):
    done = submit(condor_pool, tmp_path, alice, "exits", script="exit 3")
    job_id = parse_submit_output(done.stdout)
    wait_until("the job to run and leave the queue", lambda: json_q(condor_pool, job_id).strip() == "", timeout=120)
    ended = parse_job_ads(json_history(condor_pool, job_id))[job_id]
    assert (ended.status, ended.exit_code, ended.describe()) == (COMPLETED, 3, "exited with code 3")
    assert ended.last_hold_reason == ""  # the spooling hold every spooled job starts with is not a reason


def test_a_refused_token_and_an_unreachable_schedd_are_told_apart(condor_pool, tmp_path):
    forged = condor_pool.token_dir("alice@casa.test", key=os.urandom(32))
    refused = submit(condor_pool, tmp_path, forged, "refused")
    assert refused.returncode != 0
    assert isinstance(classify_failure("submit", refused.returncode, refused.stdout + refused.stderr), IdentityRefused)

    env = {**condor_pool.session_environment(condor_pool.token_dir("alice@casa.test")),
           "_CONDOR_COLLECTOR_HOST": f"127.0.0.1:{random_port()}", "PATH": os.environ["PATH"]}
    down = subprocess.run([condor_pool.install.tool("condor_submit"), "-spool", "-terse", write_job(tmp_path, "down")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert down.returncode != 0
    error = classify_failure("submit", down.returncode, down.stdout + down.stderr)
    assert isinstance(error, ScheddUnreachable) and "unreachable" in str(error)


def test_nothing_to_remove_is_told_apart_from_a_refusal(condor_pool, alice):
    gone = condor_pool.tool("condor_rm", "-constraint", 'CasaParserTest == "no such job"', token_dir=alice)
    assert gone.returncode != 0 and nothing_to_remove(gone.stdout + gone.stderr)
    forged = condor_pool.token_dir("alice@casa.test", key=os.urandom(32))
    refused = condor_pool.tool("condor_rm", "-constraint", "true", token_dir=forged)
    assert refused.returncode != 0 and not nothing_to_remove(refused.stdout + refused.stderr)


@pytest.mark.parametrize("text", ["", "Submitting job(s).\n1 job(s) submitted to cluster 7.\n", "7.0 - 7.2\n", "7.0 - 7.0\n8.0 - 8.0\n"])
def test_submit_output_that_is_not_one_job_is_an_error(text):
    with pytest.raises(CondorOutputError):
        parse_submit_output(text)


@pytest.mark.parametrize("text", ["not json", '{"ClusterId": 1}', '[{"ProcId": 0}]', "[1, 2]"])
def test_queue_output_that_is_not_job_ads_is_an_error(text):
    with pytest.raises(CondorOutputError):
        parse_job_ads(text)


# -- UserSchedd: the same through the class the backend uses ----------------------------------------


def user_schedd(pool, identity, token_dir, timeout=30.0) -> UserSchedd:
    tools = CondorTools(submit=pool.install.tool("condor_submit"), remove=pool.install.tool("condor_rm"),
                        query=pool.install.tool("condor_q"), history=pool.install.tool("condor_history"),
                        environment={"CONDOR_CONFIG": "ONLY_ENV", "_CONDOR_COLLECTOR_HOST": pool.pool.collector_host,
                                     "_CONDOR_SCHEDD_HOST": pool.pool.schedd_name, "_CONDOR_TRUST_DOMAIN": "casa.test"},
                        schedd_name=pool.pool.schedd_name, timeout=timeout)
    return UserSchedd(tools, identity, token_dir)


def test_user_schedd_submits_as_its_identity_and_only_it_can_remove(condor_pool, tmp_path, alice):
    async def scenario():
        mine = user_schedd(condor_pool, "alice@casa.test", alice)
        bobs = user_schedd(condor_pool, "bob@casa.test", condor_pool.token_dir("bob@casa.test"))
        job_id = await mine.submit(tmp_path, write_job(tmp_path, "schedd-class"))
        (state,) = (await mine.query([job_id, "999999.0"])).values()  # the unknown job is simply absent
        # just submitted: idle, running, or still held until its spooled files are in place -- all alive
        assert state.job_id == job_id and state.alive
        assert state.status in (IDLE, RUNNING) or (state.spooling and "spooled" in state.describe())
        constraint = 'CasaParserTest == "schedd-class"'
        await bobs.remove(constraint)
        assert job_id in await mine.query([job_id])  # bob's token removed nothing
        assert await mine.remove(constraint) is True
        assert await mine.remove(constraint) is False  # already gone: not an error
        return job_id

    job_id = asyncio.run(scenario())
    user = condor_pool.tool("condor_history", job_id, "-limit", "1", "-af", "User").stdout.strip()
    assert user == "alice@casa.test"


def test_once_its_input_is_spooled_the_schedd_is_asked_to_advertise_the_job(condor_pool, tmp_path, alice):
    """condor_reschedule as the user, after the spooling hold (the schedd accepts it from alice's IDTOKEN)."""
    async def scenario():
        plain = user_schedd(condor_pool, "alice@casa.test", alice)
        mine = UserSchedd(CondorTools(**{**plain.tools.__dict__, "reschedule": str(condor_pool.tools_dir / "condor_reschedule")}),
                          plain.identity, alice)
        job_id = await mine.submit(tmp_path, write_job(tmp_path, "reschedule"))
        try:
            asked = await mine.reschedule_when_spooled([job_id])
            (state,) = (await mine.query([job_id])).values()
            without_tool = await plain.reschedule_when_spooled([job_id])
        finally:
            await mine.remove('CasaParserTest == "reschedule"')
        return asked, state, without_tool

    asked, state, without_tool = asyncio.run(scenario())
    assert asked is True and not state.spooling and without_tool is False


def test_user_schedd_history_tells_how_a_job_ended(condor_pool, tmp_path, alice):
    async def scenario():
        mine = user_schedd(condor_pool, "alice@casa.test", alice)
        job_id = await mine.submit(tmp_path, write_job(tmp_path, "history", script="exit 0"))
        deadline = time.monotonic() + 120
        while await mine.query([job_id]):
            assert time.monotonic() < deadline, "the job did not finish"
            await asyncio.sleep(1)
        return await mine.history(job_id), await mine.history("999999.0")

    ended, unknown = asyncio.run(scenario())
    assert ended.status == COMPLETED and ended.exit_code == 0 and unknown is None


def test_a_schedd_that_does_not_answer_in_time_is_unreachable(condor_pool, tmp_path, alice):
    """A listener that accepts and never answers stands for a hung schedd: the call ends at the bound."""
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(16)
    try:
        schedd = user_schedd(condor_pool, "alice@casa.test", alice, timeout=3)
        tools = CondorTools(**{**schedd.tools.__dict__, "environment": {
            **schedd.tools.environment, "_CONDOR_COLLECTOR_HOST": f"127.0.0.1:{sink.getsockname()[1]}"}})
        started = time.monotonic()
        with pytest.raises(ScheddUnreachable, match="did not answer within 3s"):
            asyncio.run(UserSchedd(tools, schedd.identity, alice).submit(tmp_path, write_job(tmp_path, "hung")))
        assert time.monotonic() - started < 15
    finally:
        sink.close()
