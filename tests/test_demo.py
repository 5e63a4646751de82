"""``casa demo`` as a new user runs it: the installed ``casa`` command, in a fresh state directory.

One demo runs for the module (free ports, a temporary state directory).  The tests log in
through the hub's login form as a browser would, spawn alice's session, reach her Dask
scheduler through the demo's Traefik by TLS SNI, read from the XCache stand-in, check that
a second demo on the same port is refused, scan everything the demo printed or logged for
the macaroon secret, and finally stop it with SIGINT (Ctrl-C) and check that nothing is
left: no process, no listening port, no route, no credentials.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from casa_session.cluster import SchedulerConnection
from casa_spawner.ports import free_port
from tests.casa_cli import casa_command, run_casa
from tests.secret_files import write_secret_file
from tests.secret_scan import base64_file_forms

pytestmark = pytest.mark.e2e

START_TIMEOUT = 180  # a loaded 2-core machine: hub, two Traefiks, xrootd
READY_LINE = "Press Ctrl-C to stop."


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def descendants(root: int) -> dict[int, str]:
    """pid -> start time of every process below ``root`` (the start time tells a recycled pid)."""
    parents, starts = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
            starts[int(entry)] = fields[19]
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = starts[pid]
                frontier.append(pid)
    return found


def alive(pid: int, start: str) -> bool:
    try:
        fields = Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == start and fields[0] != "Z"


@dataclass
class RunningDemo:
    process: subprocess.Popen
    state_dir: Path
    port: int
    dask_port: int
    output_path: Path
    seen_pids: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def remember_processes(self) -> None:
        self.seen_pids.update(descendants(self.process.pid))


def start_demo(work: Path, *extra: str, wait: bool = True, port: int | None = None) -> RunningDemo:
    """``casa demo`` in a fresh state directory under ``work`` on free ports; waits until it is ready."""
    state_dir, output_path = work / "state", work / "demo.out"
    port, dask_port = port or free_port(), free_port()
    if not any(arg.startswith("--htcondor") or arg == "--no-htcondor" for arg in extra):
        extra = ("--no-htcondor", *extra)  # the same demo whether HTCondor is on PATH or not (tests/test_demo_htcondor.py has the pool)
    with open(output_path, "wb") as out:
        proc = subprocess.Popen(
            [casa_command(), "demo", "--state-dir", str(state_dir), "--port", str(port), "--dask-port", str(dask_port), *extra],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    running = RunningDemo(proc, state_dir, port, dask_port, output_path)
    if wait:
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while READY_LINE not in running.output():
                assert proc.poll() is None, f"casa demo exited with {proc.returncode}:\n{running.output()}"
                assert time.monotonic() < deadline, f"casa demo not ready in {START_TIMEOUT}s:\n{running.output()}"
                time.sleep(0.5)
            running.remember_processes()
        except BaseException:
            stop_demo(running)
            raise
    return running


def stop_demo(running: RunningDemo) -> None:
    """Ctrl-C, then make sure: SIGKILL whatever of the demo is still alive (teardown, even on failure)."""
    proc = running.process
    if proc.poll() is None:
        running.remember_processes()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            pass
    for pid, start in list(running.seen_pids.items()):
        if alive(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def leftovers(running: RunningDemo) -> list[int]:
    deadline = time.monotonic() + 15
    while True:
        left = [pid for pid, start in running.seen_pids.items() if alive(pid, start)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    running = start_demo(tmp_path_factory.mktemp("demo"))
    try:
        yield running
    finally:
        stop_demo(running)


def login(demo: RunningDemo, user: str) -> requests.Session:
    """Log in through the form on the login page, as a browser does; return the session."""
    session = requests.Session()
    page = session.get(f"{demo.url}/hub/login", timeout=30)
    assert page.status_code == 200
    xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text)
    form = {"username": user, "password": "anything"}
    if xsrf:
        form["_xsrf"] = xsrf.group(1)
    resp = session.post(f"{demo.url}/hub/login", data=form, timeout=60, allow_redirects=False)
    assert resp.status_code == 302, resp.text[:500]
    return session


def alice_credentials(demo: RunningDemo) -> Path:
    return demo.state_dir / "sessions" / "users" / "alice" / "credentials"


def test_prints_where_to_log_in_and_how_to_connect(demo):
    out = demo.output()
    assert f"http://127.0.0.1:{demo.port}/" in out
    assert "alice (admin)" in out and "bob" in out
    assert f"tls://alice.dask.localhost:{demo.dask_port}" in out
    assert "XCache:" in out  # xrootd is installed on this machine
    assert f"http://127.0.0.1:{demo.port}/user/<user>/casa/" in out and "casa connect <bundle>" in out
    assert "Workers:  local processes beside each notebook (no HTCondor pool)" in out  # --no-htcondor


def test_login_page_has_the_form(demo):
    page = requests.get(f"{demo.url}/hub/login", timeout=30)
    assert page.status_code == 200
    assert re.search(r"<form[^>]*method=\"post\"", page.text, re.I)
    assert 'name="username"' in page.text and 'name="password"' in page.text


def test_unknown_user_cannot_log_in(demo):
    session = requests.Session()
    page = session.get(f"{demo.url}/hub/login", timeout=30)
    xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text)
    form = {"username": "mallory", "password": "x", **({"_xsrf": xsrf.group(1)} if xsrf else {})}
    resp = session.post(f"{demo.url}/hub/login", data=form, timeout=30, allow_redirects=False)
    assert resp.status_code != 302
    assert not any(c.name == "jupyterhub-hub-login" for c in session.cookies)


def test_alice_is_admin_and_bob_is_not(demo):
    assert login(demo, "alice").get(f"{demo.url}/hub/admin", timeout=30).status_code == 200
    assert login(demo, "bob").get(f"{demo.url}/hub/admin", timeout=30).status_code == 403


def test_alice_logs_in_and_gets_jupyterlab(demo):
    session = login(demo, "alice")
    # after the login the hub sends her browser to /hub/spawn, which starts her session
    pending = session.get(f"{demo.url}/hub/spawn", timeout=60)
    assert pending.status_code == 200 and "/hub/spawn-pending/alice" in pending.url, pending.url
    deadline = time.monotonic() + 150
    while True:
        page = session.get(f"{demo.url}/user/alice/lab", timeout=60)
        if page.status_code == 200 and page.url.endswith("/user/alice/lab") and "JupyterLab" in page.text:
            break
        assert time.monotonic() < deadline, f"no JupyterLab for alice: {page.status_code} {page.url}"
        time.sleep(2)
    demo.remember_processes()
    creds = alice_credentials(demo)
    assert (creds / "dask" / "client.pem").is_file()
    assert (creds / "bearer_token").is_file()
    assert (demo.state_dir / "traefik" / "routes" / "casa-dask-alice.yml").is_file()


# JupyterHub's log format (its default log_format, without colour in a file)
HUB_LINE = r"\[(?P<level>[DIWEC]) \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (?P<logger>\S+) (?P<where>\w+:\d+)\] (?P<message>.*)"


def test_the_hub_log_has_an_audit_line_per_credential_in_the_hub_s_format(demo):
    """The hub (casa_spawner/local/jupyterhub_config.py, casa-local) writes casa.audit's lines into its own log."""
    session = login(demo, "alice")
    session.get(f"{demo.url}/hub/spawn", timeout=60)  # starts alice's session if it is not running yet
    deadline = time.monotonic() + 150
    while not (alice_credentials(demo) / "dask" / "client.pem").is_file():
        assert time.monotonic() < deadline, "alice's session did not get its credentials"
        time.sleep(1)
    demo.remember_processes()
    log = (demo.state_dir / "logs" / "jupyterhub.log").read_text(errors="replace").splitlines()
    lines = [m.groupdict() for m in map(re.compile(HUB_LINE).fullmatch, log) if m]
    assert any(line["logger"] == "JupyterHub" and line["message"].startswith("Running JupyterHub version") for line in lines)
    audit = [line for line in lines if line["logger"] == "casa.audit"]
    kinds = {re.search(r"kind=(\S+) user=alice ", line["message"]).group(1) for line in audit if "user=alice " in line["message"]}
    # the session's TLS certificates and its data token (a macaroon, or the IdP's token without a macaroon secret)
    assert "dask-tls" in kinds and kinds & {"xcache-macaroon", "wlcg-bearer"}, "\n".join(log[-40:])
    for line in audit:
        assert line["level"] == "I" and line["where"].startswith("audit:")
        assert re.fullmatch(r"issued kind=\S+ user=\S+ expires=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ id=\S+", line["message"]), line
    token = (alice_credentials(demo) / "bearer_token").read_text().strip()
    assert token not in "\n".join(log)  # the line names the credential, never carries it


CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_bob_logs_in_with_a_browser_and_gets_jupyterlab(demo):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(150_000)
            page.goto(f"{demo.url}/hub/login")
            page.fill("#username_input", "bob")
            page.fill("#password_input", "bob's demo password")
            page.click("#login_submit")
            page.wait_for_url(re.compile(r".*/user/bob/lab.*"))
            page.wait_for_selector("#jp-main-dock-panel")  # JupyterLab itself has rendered
        finally:
            browser.close()
    demo.remember_processes()


def test_alice_reaches_her_scheduler_through_traefik(demo):
    creds = alice_credentials(demo)
    connection = SchedulerConnection(
        address=f"tls://alice.dask.localhost:{demo.dask_port}",
        ca_file=str(creds / "dask" / "ca.pem"),
        client_cert=str(creds / "dask" / "client.pem"),
        client_key=str(creds / "dask" / "client.pem"),
        worker_cert=str(creds / "dask" / "worker.pem"),
        worker_key=str(creds / "dask" / "worker.pem"),
        connect_host="127.0.0.1",
    )
    from distributed import Client

    with Client(connection.connect_address, security=connection.security("client"), timeout=60) as client:
        scheduler_pid = client.run_on_scheduler(os.getpid)
    cmdline = Path(f"/proc/{scheduler_pid}/cmdline").read_bytes().split(b"\0")
    assert b"distributed.cli.dask_scheduler" in cmdline
    assert any(str(demo.state_dir / "sessions" / "users" / "alice").encode() in arg for arg in cmdline)


XCACHE_LINE = r"XCache:   (https://localhost:\d+) \(origin (https://localhost:\d+), CA (\S+)\);"


def xcache_url(demo: RunningDemo, which: int = 1) -> str:
    """The cache's address (1), its origin's (2), or the CA file clients verify them with (3), from the banner."""
    match = re.search(XCACHE_LINE, demo.output())
    assert match, demo.output()
    return match.group(which)


def test_xcache_serves_the_demo_file_and_alices_area_only_to_her_token(demo):
    url, ca = xcache_url(demo), xcache_url(demo, 3)
    data = requests.get(f"{url}/store/data/casa-demo/hello.txt", timeout=30, verify=ca)
    assert data.status_code == 200 and b"casa demo" in data.content
    token = (alice_credentials(demo) / "bearer_token").read_text().strip()
    own = requests.get(f"{url}/store/user/alice/welcome.txt", headers={"Authorization": f"Bearer {token}"}, timeout=30, verify=ca)
    assert own.status_code == 200 and own.content.startswith(b"Hello alice")
    assert requests.get(f"{url}/store/user/alice/welcome.txt", timeout=30, verify=ca).status_code == 403
    bob_area = requests.get(f"{url}/store/user/bob/welcome.txt", headers={"Authorization": f"Bearer {token}"}, timeout=30, verify=ca)
    assert bob_area.status_code == 403


def test_second_demo_on_a_taken_port_says_so_and_exits_nonzero(demo, tmp_path):
    other_state = tmp_path / "other-state"
    result = subprocess.run(
        [casa_command(), "demo", "--state-dir", str(other_state), "--port", str(demo.port), "--dask-port", str(free_port())],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert f"port {demo.port}" in result.stderr and "already in use" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (other_state / "logs").exists()  # nothing was started
    # the running demo is untouched
    assert requests.get(f"{demo.url}/hub/login", timeout=30).status_code == 200


def test_second_demo_in_the_same_state_dir_is_refused(demo):
    result = subprocess.run(
        [casa_command(), "demo", "--state-dir", str(demo.state_dir), "--port", str(free_port()), "--dask-port", str(free_port())],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "in use by another casa demo" in result.stderr
    assert requests.get(f"{demo.url}/hub/login", timeout=30).status_code == 200


def secret_forms(demo: RunningDemo) -> set[bytes]:
    return base64_file_forms((demo.state_dir / "secrets" / "macaroon-secret").read_bytes())


def test_macaroon_secret_is_private_and_never_printed_or_logged(demo):
    secret_file = demo.state_dir / "secrets" / "macaroon-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    forms = secret_forms(demo)
    scanned = [demo.output_path, *[p for p in demo.state_dir.rglob("*") if p.is_file() and p != secret_file and p.suffix != ".sqlite"]]
    for path in scanned:
        content = path.read_bytes()
        for form in forms:
            assert form not in content, f"macaroon secret found in {path}"
    for pid in descendants(demo.process.pid):
        try:
            argv_env = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        for form in forms:
            assert form not in argv_env, f"macaroon secret in the arguments or environment of pid {pid}"


def test_ctrl_c_stops_everything(demo):
    """Last in this module: SIGINT ends the demo and everything it started."""
    demo.remember_processes()
    assert len(demo.seen_pids) >= 6  # xrootd (cache, origin), Traefik, hub, hub's Traefik, scheduler, notebook
    ports = [demo.port, demo.dask_port, int(xcache_url(demo).rsplit(":", 1)[1]), int(xcache_url(demo, 2).rsplit(":", 1)[1])]
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(90) == 0
    assert "casa demo stopped." in demo.output()
    assert leftovers(demo) == []
    assert all(port_is_free(p) for p in ports)
    assert list((demo.state_dir / "traefik" / "routes").iterdir()) == []
    assert not (demo.state_dir / "sessions" / "users" / "alice").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "8123", "--dask-port", "8123"], "different ports"),
        (["--domain", "Not_A_Domain!"], "invalid Dask domain"),
        (["--oidc-issuer", "http://127.0.0.1:1"], "--oidc-client-id"),
        (["--oidc-issuer", "http://127.0.0.1:1", "--oidc-client-id", "x", "--oidc-client-secret-file", "/nonexistent"], "does not exist"),
    ],
)
def test_bad_options_give_one_clear_line_and_start_nothing(tmp_path, args, message):
    result = run_casa("demo", "--state-dir", str(tmp_path / "state"), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()


def test_sigterm_while_starting_stops_what_was_started(tmp_path):
    running = start_demo(tmp_path, wait=False)
    try:
        hub_log = running.state_dir / "logs" / "jupyterhub.log"
        deadline = time.monotonic() + START_TIMEOUT
        while not hub_log.exists():  # XCache and Traefik are up, the hub is starting
            assert running.process.poll() is None, running.output()
            assert time.monotonic() < deadline, running.output()
            time.sleep(0.05)
        running.remember_processes()
        assert running.seen_pids
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(90) in (0, 130)
        assert "casa demo stopped." in running.output()
        assert leftovers(running) == []
        assert port_is_free(running.port) and port_is_free(running.dask_port)
    finally:
        stop_demo(running)


def test_demo_with_an_oidc_provider_and_no_xcache(tmp_path):
    from tests.auth_servers import ACCOUNTS, CLIENT_ID, CLIENT_SECRET, oidc_provider, provider_sign_in

    port = free_port()
    secret_file = write_secret_file(tmp_path / "client-secret", (CLIENT_SECRET + "\n").encode())
    with oidc_provider(tmp_path, [f"http://127.0.0.1:{port}/hub/oauth_callback"]) as issuer:
        running = start_demo(
            tmp_path, "--no-xcache", "--oidc-issuer", issuer, "--oidc-client-id", CLIENT_ID,
            "--oidc-client-secret-file", str(secret_file), port=port,
        )
        try:
            assert issuer in running.output() and "XCache:" not in running.output()
            assert not [pid for pid in running.seen_pids if b"xrootd" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            session = requests.Session()
            callback = provider_sign_in(
                session, f"{running.url}/hub/oauth_login", "alice", ACCOUNTS["alice"]["password"],
                stop_prefix=f"{running.url}/hub/oauth_callback",
            )
            landed = session.get(callback, timeout=60, allow_redirects=False)
            assert landed.status_code == 302, landed.text[:300]
            assert any(c.name == "jupyterhub-hub-login" for c in session.cookies)
            assert CLIENT_SECRET not in running.output()
        finally:
            stop_demo(running)


def test_a_part_dying_stops_the_rest_and_exits_nonzero(tmp_path):
    running = start_demo(tmp_path, "--no-xcache")
    try:
        traefik = [pid for pid in running.seen_pids
                   if str(running.state_dir / "traefik" / "traefik.yml").encode() in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(traefik) == 1
        os.kill(traefik[0], signal.SIGKILL)
        assert running.process.wait(90) == 1
        assert "Traefik exited unexpectedly" in running.output()
        assert leftovers(running) == []
        assert port_is_free(running.port)
    finally:
        stop_demo(running)


ORPHANS_SCRIPT = r"""
import os, subprocess, time
from casa_spawner.demo import command as demo
demo._become_subreaper()
# a child that leaves a grandchild behind when SIGTERM ends it: the grandchild becomes our orphan
subprocess.Popen(["sh", "-c", "sleep 600 & trap 'exit 0' TERM; while :; do sleep 0.1; done"],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
deadline = time.monotonic() + 30
while len(demo._children()) < 1 and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.5)  # the background sleep has started
demo._end_orphans(timeout=5)
left = demo._children()
print("left:", left)
for pid in left:  # whatever the check found, gone before this script ends
    os.kill(pid, 9)
"""


def test_orphans_of_orphans_are_ended_too():
    result = subprocess.run([sys.executable, "-c", ORPHANS_SCRIPT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "left: []"
