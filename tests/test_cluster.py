"""CasaCluster against a real TLS Dask scheduler: attach (never start one), scale, adapt, close.

Going through Traefik by name is covered in tests/test_local_e2e.py; here the
scheduler is reached directly (at 127.0.0.1, with its name as SNI, which a scheduler
ignores), which isolates the cluster's own logic.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from casa_session.cluster import CasaCluster, LocalProcessWorkers, SchedulerConnection, WorkerLauncher
from tests.dask_scheduler import tls_scheduler

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def scheduler(tmp_path):
    """A TLS scheduler (as the spawner runs it) and the notebook's connection to it."""
    with tls_scheduler(tmp_path) as connection:
        yield connection


class RecordingLauncher(WorkerLauncher):
    """A launcher that only remembers what it was asked (the batch system as a test double)."""

    def __init__(self):
        self.workers: list[str] = []

    def launch(self, names, connection):
        self.workers += names

    def stop(self, names):
        self.workers = [w for w in self.workers if w not in names]

    def running(self):
        return list(self.workers)


ENV = {
    "CASA_SCHEDULER_ADDRESS": "tls://alice.dask.casa.test:8786",
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": "/c/dask/ca.pem",
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": "/c/dask/client.pem",
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": "/c/dask/client.pem",
    "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT": "/c/dask/worker.pem",
    "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY": "/c/dask/worker.pem",
}


def test_connection_from_the_notebook_environment_by_name():
    conn = SchedulerConnection.from_environment(ENV)
    assert conn.connect_address == "tls://alice.dask.casa.test:8786"
    assert conn.security().server_hostname is None  # the name resolves: distributed sends it as SNI itself
    cmd = conn.worker_command("w0")
    assert cmd[3] == "tls://alice.dask.casa.test:8786" and "--scheduler-sni" not in cmd
    assert "--no-nanny" in cmd and cmd[cmd.index("--tls-cert") + 1] == "/c/dask/worker.pem"


def test_connection_to_an_address_with_the_name_as_sni():
    conn = SchedulerConnection.from_environment({**ENV, "CASA_SCHEDULER_CONNECT_HOST": "127.0.0.1"})
    assert conn.connect_address == "tls://127.0.0.1:8786" and conn.sni == "alice.dask.casa.test"
    security = conn.security("client")
    assert security.server_hostname == "alice.dask.casa.test"
    assert security.tls_client_cert == "/c/dask/client.pem"
    cmd = conn.worker_command("w0")
    assert cmd[cmd.index("--scheduler-sni") + 1] == "alice.dask.casa.test"


def test_outside_a_session_the_error_says_what_is_missing():
    with pytest.raises(RuntimeError, match="CASA_SCHEDULER_ADDRESS"):
        SchedulerConnection.from_environment({})


def test_scale_asks_the_launcher_for_the_difference():
    launcher = RecordingLauncher()
    cluster = CasaCluster(SchedulerConnection.from_environment(ENV), launcher, name_prefix="t")
    cluster.scale(3)
    assert launcher.workers == ["t-0", "t-1", "t-2"]
    cluster.scale(1)
    assert launcher.workers == ["t-0"]
    cluster.scale(2)
    assert launcher.workers == ["t-0", "t-3"]
    with pytest.raises(ValueError):
        cluster.scale(-1)
    cluster.close()
    assert launcher.workers == []


class SlowLauncher(RecordingLauncher):
    """Submitting takes a moment, as with a batch system."""

    def launch(self, names, connection):
        time.sleep(0.3)
        super().launch(names, connection)


def test_concurrent_scales_do_not_launch_twice():
    # adapt's thread and the notebook may call scale() at the same moment
    launcher = SlowLauncher()
    cluster = CasaCluster(SchedulerConnection.from_environment(ENV), launcher, name_prefix="c")
    threads = [threading.Thread(target=cluster.scale, args=(3,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(launcher.workers) == 3
    cluster.close()


@pytest.mark.e2e
def test_local_workers_join_compute_and_leave(scheduler, tmp_path):
    cluster = CasaCluster(scheduler, LocalProcessWorkers(log_dir=tmp_path / "workers"), name_prefix="w")
    try:
        cluster.scale(2)
        with cluster.get_client(timeout="30s") as client:
            client.wait_for_workers(2, timeout=90)
            assert client.submit(sum, range(101)).result(timeout=60) == 5050
            assert client.connection_args["server_hostname"] == "alice.dask.casa.test"
            pids = cluster.launcher.pids()
            cluster.scale(1)
            deadline = time.monotonic() + 30
            while len(client.scheduler_info()["workers"]) != 1:
                assert time.monotonic() < deadline, "the scheduler still sees two workers"
                time.sleep(0.2)
    finally:
        cluster.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "Registered to" in (tmp_path / "workers" / "w-0.log").read_text()


@pytest.mark.e2e
def test_adapt_follows_the_scheduler_within_bounds(scheduler):
    launcher = RecordingLauncher()  # no real workers: submitted tasks stay waiting
    cluster = CasaCluster(scheduler, launcher, name_prefix="a")
    try:
        cluster.adapt(minimum=1, maximum=3, interval=0.2)
        assert len(launcher.workers) == 1
        with cluster.get_client(timeout="30s") as client:
            futures = client.map(lambda x: x + 1, range(100))
            deadline = time.monotonic() + 30
            while len(launcher.workers) != 3:
                assert time.monotonic() < deadline, f"adapt did not scale up: {launcher.workers}"
                time.sleep(0.2)
            del futures
            deadline = time.monotonic() + 30
            while len(launcher.workers) != 1:
                assert time.monotonic() < deadline, f"adapt did not scale down: {launcher.workers}"
                time.sleep(0.2)
    finally:
        cluster.close()
    assert launcher.workers == []


class RefusingOnceLauncher(RecordingLauncher):
    """The batch system refuses the first submission."""

    def __init__(self):
        super().__init__()
        self.refused = 0

    def launch(self, names, connection):
        if not self.refused:
            self.refused += 1
            raise RuntimeError("schedd busy")
        super().launch(names, connection)


@pytest.mark.e2e
def test_adapt_goes_on_after_a_failed_launch(scheduler, caplog):
    launcher = RefusingOnceLauncher()
    cluster = CasaCluster(scheduler, launcher, name_prefix="r")
    try:
        cluster.adapt(minimum=0, maximum=2, interval=0.2)
        with cluster.get_client(timeout="30s") as client:
            futures = client.map(lambda x: x + 1, range(100))
            deadline = time.monotonic() + 30
            while len(launcher.workers) != 2:
                assert time.monotonic() < deadline, f"adapt stopped after the refusal: {launcher.workers}"
                time.sleep(0.2)
            del futures
    finally:
        cluster.close()
    assert launcher.refused == 1 and "could not scale" in caplog.text


class BrokenLauncher(RecordingLauncher):
    """A launcher with a bug: the adapt loop must say so (with the traceback), not swallow it."""

    calls = 0

    def running(self):
        self.calls += 1
        if self.calls > 1:  # adapt()'s own first scale works
            raise KeyError("a bug in the launcher")
        return super().running()


@pytest.mark.e2e
def test_adapt_logs_an_unexpected_error_with_its_traceback_and_goes_on(scheduler, caplog):
    cluster = CasaCluster(scheduler, BrokenLauncher(), name_prefix="b")
    try:
        cluster.adapt(minimum=0, maximum=2, interval=0.2)
        deadline = time.monotonic() + 30
        while caplog.text.count("could not scale") < 2:
            assert time.monotonic() < deadline, f"adapt did not report the error twice: {caplog.text}"
            time.sleep(0.2)
    finally:
        cluster._stop_adapting()
    assert "Traceback" in caplog.text and "KeyError: 'a bug in the launcher'" in caplog.text


def test_adapt_reports_an_unreachable_scheduler_once_and_keeps_trying(caplog):
    from casa_session.adapt import AdaptiveLoop

    class Unreachable(CasaCluster):
        def _control(self):
            self.asked = getattr(self, "asked", 0) + 1
            raise OSError("Timed out trying to connect to tls://alice.dask.casa.test:8786")

    cluster = Unreachable(SchedulerConnection.from_environment(ENV), RecordingLauncher(), name_prefix="u")
    stop = threading.Event()
    thread = threading.Thread(target=AdaptiveLoop(cluster).run, args=(stop, 0.05))
    thread.start()
    deadline = time.monotonic() + 10
    while getattr(cluster, "asked", 0) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    assert caplog.text.count("the scheduler did not answer") == 1 and "Timed out trying to connect" in caplog.text
