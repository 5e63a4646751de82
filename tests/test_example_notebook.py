"""The example analysis as alice meets it in ``casa demo``: coffea on her Dask workers, the Dask panes in JupyterLab.

The shipped ``columnar-example.ipynb`` (copied into her home) runs, as shipped, in exactly her notebook
server's environment (nbclient): coffea's NanoEvents read her events through the XCache with her
token, a coffea processor fills a ``hist`` histogram on two ``CasaCluster`` workers, and the
histogram equals the one from reading the file directly; its plot is an inline PNG in the executed
notebook.  In Chromium, her JupyterLab's Dask sidebar already points at her own dashboard (through
her notebook server's jupyter-server-proxy) and its Task Stream and Progress panes draw the
processor's tasks while it runs in her notebook; bob gets 403 on her dashboard; her next session's
sidebar finds the new session's dashboard by itself.  Screenshots and the plot go to ``artifacts/``.

``WORKERS`` says where the notebook's workers run: local processes today.  HTCondor workers (the
demo's pool, the workers' Python from ``scripts/install-test-deps``) need the batch half of issue 16
-- worker jobs given ``XCACHE_HOST``, ``XCACHE_CA_FILE`` and the token, and the session's
``XCACHE_CA_FILE`` kept when the pool runs -- and then ``"htcondor"`` joins the list.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import awkward as ak
import hist
import pytest
import requests

import casa_session
from tests.condor_pool import find_test_htcondor, worker_python
from tests.test_demo import descendants, start_demo, stop_demo, xcache_url
from tests.test_laptop_e2e import ARTIFACTS, browser, browser_login, notebook_environment  # noqa: F401 -- browser: a fixture

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

WORKERS = ["local"]  # + "htcondor" once worker jobs get the XCache's address, CA and token (issue 16)
NOTEBOOK = "columnar-example.ipynb"
PROCESSOR = "DimuonMass"  # the notebook's processor class: its tasks are named after it


@pytest.fixture(scope="module", params=WORKERS)
def demo(request, tmp_path_factory):
    if request.param == "htcondor":
        where = ("--htcondor", str(find_test_htcondor().release_dir), "--worker-python", worker_python())
    else:
        where = ("--no-htcondor",)
    running = start_demo(tmp_path_factory.mktemp(f"demo-{request.param}"), *where)
    try:
        yield running
    finally:
        stop_demo(running)


@pytest.fixture(scope="module")
def alice(browser, demo):  # noqa: F811 -- the imported fixture
    context, page = browser_login(browser, demo, "alice")
    page.set_viewport_size({"width": 1600, "height": 1000})
    yield context, page
    context.close()


@pytest.fixture(scope="module")
def bob(browser, demo):  # noqa: F811
    context, page = browser_login(browser, demo, "bob")
    yield context, page
    context.close()


def dashboard_port(env: dict[str, str]) -> int:
    """The port of the session's dashboard, from the link the session publishes (through the notebook's proxy)."""
    match = re.fullmatch(r"\{JUPYTERHUB_SERVICE_PREFIX\}proxy/(\d+)/status", env["DASK_DISTRIBUTED__DASHBOARD__LINK"])
    assert match, env["DASK_DISTRIBUTED__DASHBOARD__LINK"]
    return int(match.group(1))


def direct_histogram(events_file: Path) -> list[int]:
    """The dimuon-mass histogram from the file read directly: no cache, no workers, no chunks."""
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cross-references to collections the demo's file has not
        events = NanoEventsFactory.from_root({str(events_file): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
    dimuon = events[ak.num(events.Muon) == 2]
    dimuon = dimuon[ak.sum(dimuon.Muon.charge, axis=1) == 0]
    mass = (dimuon.Muon[:, 0] + dimuon.Muon[:, 1]).mass
    return hist.Hist.new.Reg(60, 60, 120).Int64().fill(mass).values().astype(int).tolist()


def xcache_cache_root(demo) -> Path:
    """The demo's cache storage, from its XCache's command line (``-c <run dir>/cache.cfg``)."""
    for pid in descendants(demo.process.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        configs = [a.decode() for a in argv if a.endswith(b"/cache.cfg")]
        if argv and argv[0].endswith(b"xrootd") and configs and "casa-xcache-" in configs[0]:
            return Path(configs[0]).parent / "cache"
    raise AssertionError("the demo runs no XCache")


def worker_job_owners(env: dict[str, str]) -> list[str]:
    """The ``User`` of every worker job of alice's session, from the schedd's history, asked with her own token."""
    from tests.test_demo_htcondor import as_session

    schedd = as_session(env)
    code, out, err = asyncio.run(schedd.tools.run(
        [schedd.tools.history, "-constraint", f'CasaSession == "{env["CASA_SESSION_ID"]}" && CasaWorker =!= undefined',
         "-af", "User"], schedd.environment()))
    assert code == 0, out + err
    return out.split()


EXECUTE = r"""
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=600, kernel_name="python3").execute()
nbformat.write(nb, sys.argv[2])
"""


def test_the_example_notebook_runs_as_shipped_in_alices_session(demo, alice, bob, tmp_path):
    env = notebook_environment(demo, "alice")
    home = Path(env["HOME"])
    shipped = Path(casa_session.EXAMPLES_DIR, NOTEBOOK).read_bytes()
    assert (home / NOTEBOOK).read_bytes() == shipped  # in her home, as shipped
    assert b"Agg" not in shipped and b"%matplotlib inline" in shipped
    executed = tmp_path / "executed.ipynb"
    run = subprocess.run([sys.executable, "-c", EXECUTE, str(home / NOTEBOOK), str(executed)], cwd=home, env=env,
                         capture_output=True, text=True, timeout=800)
    assert run.returncode == 0, run.stderr[-4000:]
    outputs = [o for cell in json.loads(executed.read_text())["cells"] for o in cell.get("outputs", [])]
    text = "\n".join("".join(o.get("text", "")) for o in outputs)
    assert "Traceback" not in text and not [o for o in outputs if o["output_type"] == "error"], text

    # the processor ran on both of her workers and its histogram is the file's, bin by bin
    filled_on = json.loads(re.search(r"20000 events, filled on (\[.*\])", text).group(1).replace("'", '"'))
    assert len(filled_on) == 2 and all(re.fullmatch(r"casa-\w+-\d+", name) for name in filled_on), text
    if "--htcondor" in demo.process.args:  # the workers were her own HTCondor jobs (gone now: the notebook closed them)
        assert worker_job_owners(env) == ["alice@casa.demo"] * 2
    counts = json.loads(re.search(r"counts (\[[\d, ]+\])", text).group(1))
    assert counts == direct_histogram(demo.state_dir / "data" / "events.root")
    assert counts.index(max(counts)) in (30, 31)  # the Z peak, 90-92 GeV

    # the plot is inline: a PNG among the executed notebook's outputs
    pngs = [base64.b64decode(o["data"]["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1 and pngs[0].startswith(b"\x89PNG\r\n\x1a\n") and len(pngs[0]) > 10_000
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dimuon-mass.png").write_bytes(pngs[0])

    # the workers read through the cache: the file is in it now, whole; a second read is served from there
    url, ca = xcache_url(demo), xcache_url(demo, 3)
    origin_copy = (demo.state_dir / "data" / "events.root").read_bytes()
    cached = xcache_cache_root(demo) / "store/user/alice/events.root"
    assert cached.read_bytes() == origin_copy and cached.with_name("events.root.cinfo").is_file()
    token = Path(env["BEARER_TOKEN_FILE"]).read_text().strip()
    again = requests.get(f"{url}/store/user/alice/events.root", headers={"Authorization": f"Bearer {token}"}, verify=ca, timeout=60)
    assert again.status_code == 200 and again.content == origin_copy
    # refused without a token, and with bob's
    bob_token = Path(notebook_environment(demo, "bob")["BEARER_TOKEN_FILE"]).read_text().strip()
    assert requests.get(f"{url}/store/user/alice/events.root", verify=ca, timeout=60).status_code == 403
    bob_try = requests.get(f"{url}/store/user/alice/events.root", headers={"Authorization": f"Bearer {bob_token}"}, verify=ca, timeout=60)
    assert bob_try.status_code == 403
    # no token in the notebook's outputs, nor in the demo's XCache logs
    assert token[:60] not in executed.read_text()
    assert not any(token[:60] in p.read_text(errors="replace") for p in cached.parents[3].glob("*.log"))


def open_dask_sidebar(page):
    """The Dask tab of JupyterLab's left sidebar, opened (a click on its icon toggles it)."""
    launcher = page.locator(".dask-DaskDashboardLauncher")
    page.wait_for_selector(".jp-SideBar [data-id='dask-dashboard-launcher']")
    if not launcher.is_visible():
        page.click(".jp-SideBar [data-id='dask-dashboard-launcher']")
    launcher.wait_for()
    return page.locator(".dask-URLInput input")


def menu(page, name: str, item: str) -> None:
    """A command from JupyterLab's menu bar, as a user picks it."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{name}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{item}$")).click()


def dashboard_pane(page, pane: str) -> str:
    """Where an open dashboard pane (``individual-task-stream``, ...) ended up, once its plot is drawn."""
    from playwright.sync_api import Error as PlaywrightError

    iframe = f"iframe[src$='/{pane}']"  # the pane asks for <sidebar URL>/<pane>; a redirect may take it elsewhere
    try:
        page.frame_locator(iframe).first.locator("canvas").first.wait_for(state="attached", timeout=90_000)
        return page.locator(iframe).first.element_handle().content_frame().url
    except PlaywrightError as e:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"no-{pane}.png"))
        raise AssertionError(f"no {pane} pane drawn: {[f.url for f in page.frames]}") from e


def test_the_dask_sidebar_points_at_alices_dashboard_and_its_panes_show_the_processor_running(demo, alice):
    _, page = alice
    port = dashboard_port(notebook_environment(demo, "alice"))
    page.goto(f"{demo.url}/user/alice/lab/tree/{NOTEBOOK}")
    page.wait_for_selector(".jp-Notebook")
    url_input = open_dask_sidebar(page)
    # filled in by the session, not by hand (the setting, or as the sidebar saved it at her first look), and
    # live: the dashboard's plots are listed
    assert re.fullmatch(rf"({re.escape(demo.url)}/user/alice/)?casa/dashboard/", url_input.input_value()), url_input.input_value()
    page.locator(".dask-DashboardListing-item button", has_text=re.compile("^Task Stream$", re.I)).wait_for()
    assert page.locator(".dask-ClusterManager").is_hidden()  # the session's cluster is CasaCluster, not the sidebar's

    # the dashboard layout (Task Stream, Progress, Workers Memory) beside the notebook, then Run All
    news = page.locator(".jp-Notification-Toast-Close")  # JupyterLab asks about its news feed: not now
    if news.count():
        news.first.click()
    menu(page, "File", "Launch Dask Dashboard Layout")
    for pane in ("individual-task-stream", "individual-progress"):  # through her notebook server's proxy, her dashboard
        assert dashboard_pane(page, pane) == f"{demo.url}/user/alice/proxy/{port}/{pane}"
    page.locator(".lm-TabBar-tab", has_text=NOTEBOOK).click()
    page.locator(".jp-Notebook").click()
    menu(page, "Run", "Run All Cells")
    done = page.locator("text=/20000 events, filled on/")
    done.wait_for(timeout=600_000)
    # the notebook read the scheduler's task stream -- what the pane plots -- and found the processor on both workers
    assert re.search(r"filled on \['casa-\w+-\d+', 'casa-\w+-\d+'\]", done.inner_text()), done.inner_text()

    page.locator(".lm-TabBar-tab", has_text="Task Stream").click()
    dashboard_pane(page, "individual-task-stream")
    time.sleep(2)  # the pane redraws every 100 ms
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dask-task-stream.png"))


def test_bob_cannot_open_alices_dashboard(demo, alice, bob):
    port = dashboard_port(notebook_environment(demo, "alice"))
    bob_context, _ = bob
    alice_context, _ = alice
    for path in (f"/user/alice/proxy/{port}/status", f"/user/alice/proxy/{port}/individual-plots.json", "/user/alice/casa/dashboard/"):
        refused = bob_context.request.get(f"{demo.url}{path}")  # through the hub's OAuth for alice's server
        assert refused.status == 403, (path, refused.status, refused.url)
        assert b"individual-task-stream" not in refused.body()
    own = alice_context.request.get(f"{demo.url}/user/alice/casa/dashboard/individual-plots.json")
    assert own.status == 200 and own.url.endswith(f"/user/alice/proxy/{port}/individual-plots.json")


def test_her_next_session_s_sidebar_finds_the_new_dashboard_by_itself(demo, alice):
    context, page = alice
    old_port = dashboard_port(notebook_environment(demo, "alice"))
    page.goto(f"{demo.url}/hub/home")
    stopped = context.request.delete(f"{demo.url}/hub/api/users/alice/server",
                                     headers={"X-XSRFToken": next(c["value"] for c in context.cookies() if c["name"] == "_xsrf" and c["path"] == "/hub/")})
    assert stopped.status in (202, 204), stopped.text()
    deadline = time.monotonic() + 120
    while True:  # stopped: the hub says so
        model = context.request.get(f"{demo.url}/hub/api/user").json()
        if not model["servers"]:
            break
        assert time.monotonic() < deadline, model
        time.sleep(1)
    page.goto(f"{demo.url}/hub/spawn")
    page.wait_for_url(re.compile(r".*/user/alice/lab.*"), timeout=180_000)
    demo.remember_processes()
    new_port = dashboard_port(notebook_environment(demo, "alice"))
    assert new_port != old_port  # a new scheduler, a new dashboard port
    open_dask_sidebar(page)
    page.locator(".dask-DashboardListing-item button", has_text=re.compile("^Task Stream$", re.I)).wait_for()
    page.locator(".dask-DashboardListing-item button", has_text=re.compile("^Progress$", re.I)).click()
    assert dashboard_pane(page, "individual-progress") == f"{demo.url}/user/alice/proxy/{new_port}/individual-progress"
