"""``casa demo --htcondor DIR``: the demo with its own HTCondor pool and its XCache, as a user runs it.

One demo for the module (pool with a credd, XCache, Traefik, hub): the banner says where workers run;
alice's session gets the schedd, the collector, her own IDTOKEN, a session id, and the XCache with its CA;
a job she submits with that token is hers (``User`` = her identity) and goes when her server stops; her
HTCondor workers read her file through the XCache while the hub renews her 60-second macaroon and the
credd hands each renewal to the running jobs; the pool key, the macaroon secret and her tokens are in
none of her files (the key), the jobs, the demo's output or logs; Ctrl-C leaves no HTCondor process.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import pytest

from casa_condor.schedd import CondorTools, UserSchedd
from casa_spawner.demo.events import EVENTS_NAME
from tests.casa_cli import run_casa
from tests.condor_pool import find_test_htcondor, session_sleep_job, worker_python
from tests.secret_scan import base64_file_forms, encoded_forms, files_under
from tests.test_demo import descendants, leftovers, login, start_demo, stop_demo

pytestmark = pytest.mark.e2e

EVENTS = f"/store/user/alice/{EVENTS_NAME}"


#: alice's macaroon lives this long in this module's demo; the hub renews it at half its life, polling every 5 s
TOKEN_LIFETIME, POLL_INTERVAL, CREDENTIAL_REFRESH = 60, 5, 5
SHORT_TOKENS = f"""\
import casa_spawner
c = get_config()  # noqa: F821
load_subconfig(casa_spawner.LOCAL_HUB_CONFIG)  # noqa: F821
c.Facility.xcache_token_lifetime = {TOKEN_LIFETIME}
c.Facility.renew_fraction = 0.5
c.Spawner.poll_interval = {POLL_INTERVAL}
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    install = find_test_htcondor()
    work = tmp_path_factory.mktemp("demo-condor")
    (work / "short_tokens_config.py").write_text(SHORT_TOKENS)
    running = start_demo(work, "--htcondor", str(install.release_dir), "--worker-python", worker_python(),
                         "--config", str(work / "short_tokens_config.py"), "--credential-refresh", str(CREDENTIAL_REFRESH))
    try:
        yield running
    finally:
        stop_demo(running)


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def notebook_env(demo, user: str, timeout: float = 150) -> tuple[int, dict[str, str]]:
    """Start ``user``'s session through the hub (as the browser does after a login); its notebook's pid and environment."""
    session = login(demo, user)
    session.get(f"{demo.url}/hub/spawn", timeout=60)
    deadline = time.monotonic() + timeout
    while True:  # her JupyterLab answers: the session is up, as she sees it
        page = session.get(f"{demo.url}/user/{user}/lab", timeout=60)
        if page.status_code == 200 and page.url.endswith(f"/user/{user}/lab"):
            break
        assert time.monotonic() < deadline, f"no JupyterLab for {user}: {page.status_code} {page.url}"
        time.sleep(2)
    while True:
        for pid in descendants(demo.process.pid):
            try:
                env = environ(pid)
            except OSError:
                continue
            if env.get("JUPYTERHUB_USER") == user and "CASA_SESSION_ID" in env:
                demo.remember_processes()
                return pid, env
        assert time.monotonic() < deadline, f"no notebook for {user}"
        time.sleep(1)


def as_session(env: dict[str, str]) -> UserSchedd:
    """The schedd as the session's own token reaches it (what its CasaCluster does)."""
    install = find_test_htcondor()
    pool_env = {k: env[k] for k in ("CONDOR_CONFIG", "_CONDOR_COLLECTOR_HOST", "_CONDOR_SCHEDD_HOST", "_CONDOR_TRUST_DOMAIN")}
    tools = CondorTools(submit=install.tool("condor_submit"), remove=install.tool("condor_rm"), query=install.tool("condor_q"),
                        history=install.tool("condor_history"), environment=pool_env, schedd_name=env["_CONDOR_SCHEDD_HOST"])
    return UserSchedd(tools, "alice@casa.demo", Path(env["_CONDOR_SEC_TOKEN_DIRECTORY"]))


def queue(schedd: UserSchedd, constraint: str, *attrs: str) -> list[list[str]]:
    code, out, err = asyncio.run(schedd.tools.run(
        [schedd.tools.query, "-all", "-constraint", constraint, "-af", *attrs], schedd.environment()))
    assert code == 0, out + err
    return [line.split() for line in out.splitlines() if line.strip()]


def test_the_banner_says_workers_run_on_the_pool(demo):
    out = demo.output()
    assert "Workers:  HTCondor jobs on this machine's pool (schedd casa@127.0.0.1" in out
    assert f"with {worker_python()}" in out and "WARNING" not in out


def test_alices_session_submits_as_herself_and_stopping_it_removes_her_jobs(demo, tmp_path):
    key = (demo.state_dir / "secrets" / "condor-pool-key").read_bytes()
    assert oct((demo.state_dir / "secrets" / "condor-pool-key").stat().st_mode & 0o777) == "0o600"
    pid, env = notebook_env(demo, "alice")
    assert env["_CONDOR_SCHEDD_HOST"] == "casa@127.0.0.1" and env["_CONDOR_COLLECTOR_HOST"].startswith("127.0.0.1:")
    assert env["_CONDOR_TRUST_DOMAIN"] == "casa.demo" and env["CONDOR_CONFIG"] == "ONLY_ENV"
    assert env["DASK_JOBQUEUE__CASA__PYTHON"] == worker_python()
    session = env["CASA_SESSION_ID"]
    assert re.fullmatch(r"alice-[0-9a-f]{12}", session)
    token_dir = Path(env["_CONDOR_SEC_TOKEN_DIRECTORY"])
    (token_file,) = token_dir.iterdir()
    assert token_file.stat().st_mode & 0o777 == 0o600

    schedd = as_session(env)
    (tmp_path / "job.sub").write_text(session_sleep_job(session, 600))
    job_id = asyncio.run(schedd.submit(tmp_path, "job.sub"))
    constraint = f'CasaSession == "{session}"'
    assert queue(schedd, constraint, "User") == [["alice@casa.demo"]]

    # the pool key: in none of her files, her notebook's environment or arguments, the job's ad
    code, ad, err = asyncio.run(schedd.tools.run([schedd.tools.query, job_id, "-l"], schedd.environment()))
    assert code == 0, err
    forms = encoded_forms(key)
    blobs = {"job ad": ad.encode(), "notebook env": Path(f"/proc/{pid}/environ").read_bytes(),
             "notebook argv": Path(f"/proc/{pid}/cmdline").read_bytes(), "demo output": demo.output().encode()}
    session_dir = demo.state_dir / "sessions" / "users" / "alice"
    blobs.update({str(p): p.read_bytes() for p in session_dir.rglob("*") if p.is_file()})
    blobs.update({str(p): p.read_bytes() for p in (demo.state_dir / "logs").rglob("*") if p.is_file()})
    for other in descendants(demo.process.pid):  # every process of the demo: arguments and environment
        try:
            blobs[f"pid {other}"] = Path(f"/proc/{other}/cmdline").read_bytes() + Path(f"/proc/{other}/environ").read_bytes()
        except OSError:
            continue
    for where, blob in blobs.items():
        assert not any(form in blob for form in forms), f"the pool key is in {where}"

    # alice stops her server (the hub's REST API, with her login cookie): the spawner removes her job
    web = login(demo, "alice")
    web.get(f"{demo.url}/hub/home", timeout=30)
    stopped = web.delete(f"{demo.url}/hub/api/users/alice/server", headers={"X-XSRFToken": web.cookies.get("_xsrf", "")},
                         timeout=60)
    assert stopped.status_code in (202, 204), stopped.text[:300]
    deadline = time.monotonic() + 90
    while [s for (s,) in queue(schedd, constraint, "JobStatus") if s != "3"]:
        assert time.monotonic() < deadline, "alice's job is still in the queue after her server stopped"
        time.sleep(1)
    log = (demo.state_dir / "logs" / "jupyterhub.log").read_text(errors="replace")
    assert f"Removed the HTCondor jobs of session {session} as alice@casa.demo" in log


def test_with_the_pool_alices_notebook_has_the_xcache_its_ca_and_the_credd_service(demo):
    """Cell 1 of the example works with the pool started: every session setting survived (the XCache's CA
    was once lost when the pool's settings replaced the notebook's environment)."""
    import subprocess
    import sys

    import casa_session.page

    _, env = notebook_env(demo, "alice")
    assert env["XCACHE_HOST"].startswith("https://localhost:") and env["XCACHE_CA_FILE"] == str(demo.state_dir / "xcache-ca.pem")
    assert env["JUPYTER_CONFIG_PATH"] == casa_session.page.CONFIG_DIR and env["CONDOR_CONFIG"] == "ONLY_ENV"
    assert env["CASA_DATA_TOKEN_SERVICE"] == "xcache" and Path(env["BEARER_TOKEN_FILE"]).is_file()
    read = subprocess.run([sys.executable, "-c", f"from casa_session.xcache import XCache; print(len(XCache().read({EVENTS!r})))"],
                          env=env, cwd=env.get("HOME", "/"), capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr[-2000:]
    assert int(read.stdout) == (demo.state_dir / "data" / EVENTS_NAME).stat().st_size


ALICE_SCRIPT = r"""
import json, os
from casa_session.cluster import CasaCluster
from casa_session.htcondor_workers import HTCondorWorkers
cluster = CasaCluster()                       # what alice types, and nothing more
cluster.scale(2)
cluster.wait_for_workers(2)
client = cluster.get_client(timeout="60s")
answer = client.submit(sum, range(101)).result(timeout=120)
uids = sorted(client.run(os.getuid).values())
print(json.dumps({"htcondor": isinstance(cluster.launcher, HTCondorWorkers), "answer": answer, "uids": uids,
                  "repr": repr(cluster)}), flush=True)
os._exit(0)  # as a notebook whose kernel dies: the jobs stay until the session stops
"""


def test_alice_scales_casa_cluster_to_two_htcondor_workers_computes_and_stopping_leaves_no_job(demo, tmp_path):
    """The whole demo: alice's session runs CasaCluster().scale(2) (a Python with exactly her notebook's
    environment), the workers are her HTCondor jobs and compute through Traefik; stopping her server leaves no job."""
    import json
    import subprocess
    import sys

    _, env = notebook_env(demo, "alice")
    session = env["CASA_SESSION_ID"]
    env = {**env, "DASK_JOBQUEUE__CASA__MEMORY": "256 MiB", "DASK_JOBQUEUE__CASA__DISK": "64 MiB",
           "DASK_JOBQUEUE__CASA__WORKER_START_TIMEOUT": "240"}  # small jobs: a shared 2-core machine
    done = subprocess.run([sys.executable, "-c", ALICE_SCRIPT], env=env, cwd=env.get("HOME", str(tmp_path)),
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["htcondor"] and result["answer"] == 5050
    slot_uid = 65534 if os.geteuid() == 0 else os.geteuid()  # the pool's slot user: nobody under root
    assert result["uids"] == [slot_uid, slot_uid]
    assert "2 HTCondor jobs of alice@casa.demo" in result["repr"], result["repr"]
    schedd = as_session(env)
    constraint = f'CasaSession == "{session}"'
    jobs = queue(schedd, constraint, "User", "JobStatus")
    assert jobs == [["alice@casa.demo", "2"], ["alice@casa.demo", "2"]], jobs

    web = login(demo, "alice")
    web.get(f"{demo.url}/hub/home", timeout=30)
    stopped = web.delete(f"{demo.url}/hub/api/users/alice/server", headers={"X-XSRFToken": web.cookies.get("_xsrf", "")},
                         timeout=60)
    assert stopped.status_code in (202, 204), stopped.text[:300]
    deadline = time.monotonic() + 120
    while queue(schedd, constraint, "ClusterId"):
        assert time.monotonic() < deadline, f"alice's jobs are still in the queue: {queue(schedd, constraint, 'JobStatus')}"
        time.sleep(1)


KERNEL_SCRIPT = r"""
import json, os, sys
from casa_session.cluster import CasaCluster
cluster = CasaCluster()
cluster.scale(int(sys.argv[1]))
cluster.wait_for_workers(int(sys.argv[1]))
names = cluster.launcher.running()
client = cluster.get_client(timeout="60s")
def read(path):
    import hashlib, os
    from casa_session.xcache import XCache, XCacheError
    try:
        return {"sha256": hashlib.sha256(XCache().read(path)).hexdigest()}
    except XCacheError as e:
        return {"error": str(e)}
ours = [a for a, info in client.scheduler_info()["workers"].items() if info["name"] in names]
reads = list(client.run(read, sys.argv[2], workers=ours).values())
with open(sys.argv[3], "w") as fh:
    json.dump({n: cluster.launcher.job_script(n) for n in names}, fh)
print(json.dumps({"jobs": sorted(j for _, j, _ in cluster.launcher.describe()), "reads": reads}), flush=True)
os._exit(0)  # the kernel dies: the jobs stay, and keep reading with the tokens the credd hands them
"""


def run_kernel(env: dict[str, str], workers: int, descriptions: Path) -> dict:
    """A notebook's kernel: CasaCluster().scale(workers), one read on each new worker, then it dies."""
    import json
    import subprocess
    import sys

    env = {**env, "DASK_JOBQUEUE__CASA__MEMORY": "256 MiB", "DASK_JOBQUEUE__CASA__DISK": "64 MiB",
           "DASK_JOBQUEUE__CASA__WORKER_START_TIMEOUT": "240"}
    done = subprocess.run([sys.executable, "-c", KERNEL_SCRIPT, str(workers), EVENTS, str(descriptions)], env=env,
                          cwd=env.get("HOME", "/"), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return {"output": done.stdout + done.stderr, **json.loads(done.stdout.strip().splitlines()[-1])}


def worker_reads():
    """A task: the file through the XCache with the worker's own token file, and which token that was (a hash)."""
    def read(path):
        import hashlib
        import os

        from casa_session.xcache import XCache, XCacheError

        with open(os.environ["BEARER_TOKEN_FILE"], "rb") as fh:
            token = hashlib.sha256(fh.read().strip()).hexdigest()
        try:
            return {"sha256": hashlib.sha256(XCache().read(path)).hexdigest(), "token": token}
        except XCacheError as e:
            return {"error": str(e), "token": token}
    return read


def pool_run_dir(demo) -> Path:
    """The demo pool's private run directory (its condor_master's CONDOR_CONFIG)."""
    for pid in descendants(demo.process.pid):
        if b"condor_master" in _cmd(pid):
            return Path(environ(pid)["CONDOR_CONFIG"]).parent
    raise AssertionError("no condor_master in the demo")


def test_alices_workers_keep_reading_across_three_token_lifetimes_while_the_hub_renews_her_token(demo, tmp_path):
    """The same HTCondor jobs read alice's file through the XCache for more than 3 lifetimes of her macaroon (60 s,
    renewed by the hub's own polls, handed to the running jobs by the credd), with her notebook's kernel gone; her
    first token, once expired, is refused by XRootD; a worker started later reads too; no token text anywhere."""
    import hashlib

    from distributed import Client

    from casa_session.cluster import SchedulerConnection
    from casa_session.xcache import XCache, XCacheError

    _, env = notebook_env(demo, "alice")
    session, token_file = env["CASA_SESSION_ID"], Path(env["BEARER_TOKEN_FILE"])
    first_token = token_file.read_bytes()
    expected = hashlib.sha256((demo.state_dir / "data" / EVENTS_NAME).read_bytes()).hexdigest()
    kernel = run_kernel(env, 2, tmp_path / "descriptions-1.json")
    assert [r.get("sha256") for r in kernel["reads"]] == [expected, expected], kernel["reads"]
    jobs = kernel["jobs"]
    schedd = as_session(env)
    constraint = f'CasaSession == "{session}"'
    assert queue(schedd, constraint, "User", "OAuthServicesNeeded") == [["alice@casa.demo", "xcache"]] * 2

    connection = SchedulerConnection.from_environment(env)
    seen_tokens, reads = set(), 0
    with Client(connection.connect_address, security=connection.security("client"), timeout="60s") as client:
        deadline = time.monotonic() + 3.3 * TOKEN_LIFETIME
        while time.monotonic() < deadline:
            results = list(client.run(worker_reads(), EVENTS).values())
            assert len(results) == 2 and all(r.get("sha256") == expected for r in results), results
            seen_tokens.update(r["token"] for r in results)
            reads += 2
            time.sleep(10)
    assert reads >= 36 and len(seen_tokens) >= 4, (reads, len(seen_tokens))  # the first token and >= 3 renewals
    running = queue(schedd, constraint, "ClusterId", "ProcId", "JobStatus")
    assert sorted(f"{c}.{p}" for c, p, _ in running) == jobs and {st for *_, st in running} == {"2"}  # the same jobs, running

    expired_copy = tmp_path / "first-token"
    expired_copy.write_bytes(first_token)
    expired_copy.chmod(0o600)
    with pytest.raises(XCacheError, match=r"\(HTTP 403\): the token in .* expired at") as refused:
        XCache(host=env["XCACHE_HOST"], token_file=str(expired_copy), ca_file=env["XCACHE_CA_FILE"]).read(EVENTS)
    assert first_token.decode().strip() not in str(refused.value)

    later = run_kernel(env, 1, tmp_path / "descriptions-2.json")
    assert [r.get("sha256") for r in later["reads"]] == [expected], later["reads"]
    assert len(queue(schedd, constraint, "ClusterId")) == 3

    hub_log = (demo.state_dir / "logs" / "jupyterhub.log").read_text(errors="replace")
    assert hub_log.count("Renewed bearer_token for alice") >= 3
    assert hub_log.count("Stored the data token of alice in the HTCondor credd (service xcache)") >= 4

    # no token text (alice's current one, her first, any renewal the workers saw is one of them) anywhere public or logged
    run_dir = pool_run_dir(demo)
    tokens = {"alice's first token": first_token.strip(), "alice's current token": token_file.read_bytes().strip()}
    code, ads, err = asyncio.run(schedd.tools.run([schedd.tools.query, "-all", "-l"], schedd.environment()))
    assert code == 0, err
    blobs = {"job ads": ads.encode(), "kernel output": (kernel["output"] + later["output"]).encode(),
             "submit descriptions": (tmp_path / "descriptions-1.json").read_bytes() + (tmp_path / "descriptions-2.json").read_bytes()}
    blobs.update(files_under(run_dir / "log", run_dir / "spool", demo.state_dir / "logs"))
    blobs.update(files_under(run_dir / "execute", names=("worker.out", "worker.err", "_condor_stdout", "_condor_stderr")))
    assert any("StarterLog" in where for where in blobs) and any(where.endswith("CredLog") for where in blobs)
    secrets_ = {**tokens, "pool signing key": (demo.state_dir / "secrets" / "condor-pool-key").read_bytes()}
    leaks = [f"{label} in {where}" for where, blob in blobs.items() for label, secret in secrets_.items()
             if any(form in blob for form in encoded_forms(secret))]
    leaks += [f"macaroon secret in {where}" for where, blob in blobs.items()
              if any(form in blob for form in base64_file_forms((demo.state_dir / "secrets" / "macaroon-secret").read_bytes()))]
    assert leaks == []


def condor_pids(demo) -> list[int]:
    return [pid for pid in demo.seen_pids if _cmd(pid).startswith(b"condor_") or b"/condor_" in _cmd(pid)]


def _cmd(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_ctrl_c_stops_the_pool_and_leaves_no_condor_process_and_no_key(demo):
    demo.remember_processes()
    assert condor_pids(demo)  # the pool's daemons were the demo's
    demo.process.send_signal(2)  # SIGINT, Ctrl-C
    assert demo.process.wait(120) == 0
    assert leftovers(demo) == []
    assert not (demo.state_dir / "secrets" / "condor-pool-key").exists()
    assert (demo.state_dir / "logs" / "condor" / "SchedLog").is_file()


@pytest.mark.parametrize("args, message", [
    (["--htcondor", "/nonexistent"], "not an HTCondor installation"),
    (["--htcondor", "/x", "--no-htcondor"], "not allowed with argument"),
    (["--worker-python", "python3"], "absolute path"),
])
def test_bad_htcondor_options_are_one_clear_line_and_start_nothing(tmp_path, args, message):
    result = run_casa("demo", "--state-dir", str(tmp_path / "state"), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()


def test_a_worker_python_without_distributed_stops_the_start_cleanly(tmp_path):
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'distributed'\" >&2\nexit 1\n")
    python.chmod(0o755)
    for d in (tmp_path, *tmp_path.parents):  # the slot user (nobody, under root) reaches it
        if d.stat().st_uid == os.geteuid():
            d.chmod(d.stat().st_mode | 0o005)
    running = start_demo(tmp_path, "--no-xcache", "--htcondor", str(find_test_htcondor().release_dir),
                         "--worker-python", str(python), wait=False)
    try:
        assert running.process.wait(120) != 0
        out = running.output()
        assert "--worker-python" in out and "No module named 'distributed'" in out and "Traceback" not in out
        assert not (running.state_dir / "secrets" / "condor-pool-key").exists()
    finally:
        stop_demo(running)


def test_sigterm_while_the_pool_starts_leaves_no_condor_process_and_no_key(tmp_path):
    running = start_demo(tmp_path, "--no-xcache", "--htcondor", str(find_test_htcondor().release_dir),
                         "--worker-python", worker_python(), wait=False)
    try:
        deadline = time.monotonic() + 120
        while not condor_pids(running):  # condor_master is up, the pool not yet ready (the hub not started)
            assert running.process.poll() is None, running.output()
            assert time.monotonic() < deadline, running.output()
            running.remember_processes()
            time.sleep(0.05)
        assert not (running.state_dir / "logs" / "jupyterhub.log").exists()
        running.process.send_signal(15)
        assert running.process.wait(120) in (0, 130)
        assert "casa demo stopped." in running.output()
        assert leftovers(running) == []
        assert not (running.state_dir / "secrets" / "condor-pool-key").exists()
    finally:
        stop_demo(running)
