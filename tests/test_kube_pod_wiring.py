"""The pod's wiring for real, without Kubernetes: the Secrets laid out as the kubelet mounts them,
the credsync init container's command, the scheduler container's command, and a notebook process
that has only the pod's environment -- its ``Client()`` reaches the scheduler over mutual TLS."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jupyterhub.utils import random_port

from casa_hub.plan import plan_session
from casa_spawner.kube import objects as ko

pytestmark = pytest.mark.e2e  # a real Dask scheduler and the credential sidecar


def kubelet_mount(directory: Path, data: dict[str, str], items: list[dict] | None = None) -> None:
    """A Secret volume: every key as a file, or only ``items`` at their paths."""
    directory.mkdir(parents=True)
    for item in items or [{"key": k, "path": k} for k in data]:
        target = directory / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(data[item["key"]]))
        os.chmod(target, 0o444)


def local_command(command: list[str]) -> list[str]:
    """The container's command with this interpreter for the image's ``python3``."""
    return [sys.executable if command[0] == "python3" else command[0], *command[1:]]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"scheduler exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):  # the readiness probe
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"scheduler did not listen on {port} within {timeout}s")


@pytest.fixture
def scheduler_processes():
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        proc.stdout.close()


def test_notebook_env_reaches_the_sidecar_scheduler_over_mutual_tls(tmp_path, make_facility, scheduler_processes):
    facility = make_facility(scheduler_port=random_port(), dashboard_port=random_port())
    plan = plan_session(facility, "alice", facility.issue_bundle("alice"))
    opts = ko.KubeSessionOptions(
        credentials_mount=str(tmp_path / "run/casa"),
        secret_mount=str(tmp_path / "run/casa-secret"),
        scheduler_mount=str(tmp_path / "run/casa-scheduler"),
        uid=os.getuid(),
        gid=os.getgid(),
    )
    secret, sched_secret, _, _ = ko.session_objects(plan, opts, [ko.owner_reference("jupyter-alice", "uid-1")])
    volumes = {v["name"]: v for v in ko.session_volumes(plan, opts)}
    kubelet_mount(Path(opts.secret_mount), secret["data"])
    kubelet_mount(Path(opts.scheduler_mount), sched_secret["data"], volumes[ko.SCHEDULER_VOLUME]["secret"]["items"])
    Path(opts.credentials_mount).mkdir(parents=True)

    init = subprocess.run(local_command(ko.credsync_init_container(opts)["command"]), capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    assert not (Path(opts.credentials_dir) / "dask/scheduler.pem").exists()  # the notebook never gets the scheduler key

    scheduler = subprocess.Popen(
        local_command(ko.scheduler_container(plan, opts)["command"]),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    scheduler_processes.append(scheduler)
    wait_for_port(plan.scheduler.port, scheduler)

    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env.update(ko.notebook_environment(plan, opts))
    notebook = subprocess.run(
        [sys.executable, "-c", "from distributed import Client\n"
         "with Client(timeout=30) as c:\n"
         "    print(c.scheduler.address, c.scheduler_info()['address'])"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert notebook.returncode == 0, notebook.stderr[-3000:]
    connected_to, scheduler_address = notebook.stdout.split()
    assert connected_to == f"tls://127.0.0.1:{plan.scheduler.port}"
    assert scheduler_address.startswith("tls://") and scheduler_address.endswith(f":{plan.scheduler.port}")

    # Bob's client certificate (another session's CA) is refused by Alice's scheduler
    bob_client = tmp_path / "bob-client.pem"
    bob_client.write_bytes(facility.issue_bundle("bob").get("dask/client.pem").content)
    bob_env = dict(env, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=str(bob_client), DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=str(bob_client))
    bob = subprocess.run(
        [sys.executable, "-c", "from distributed import Client\nClient(timeout=5)"],
        capture_output=True, text=True, timeout=120, env=bob_env, cwd=tmp_path,
    )
    assert bob.returncode != 0
    # the scheduler ends the TLS session (TLS 1.3 checks the client certificate after the handshake)
    assert re.search(r"SSL|Timed out trying to connect", bob.stderr), bob.stderr[-2000:]
    assert "TypeError" not in bob.stderr  # refused by the scheduler, not by a broken client config
