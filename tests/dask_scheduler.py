"""A real TLS Dask scheduler as the spawner runs one, and the notebook's connection to it.

    with tls_scheduler(tmp_path) as connection:      # a casa_session.cluster.SchedulerConnection
        cluster = CasaCluster(connection, LocalProcessWorkers(), name_prefix="w")

The session's CA, scheduler, client and worker certificates are made fresh; the scheduler is named
``alice.dask.casa.test`` (not resolvable: clients dial 127.0.0.1 and send the name as SNI, as
through Traefik).  The scheduler process is stopped on exit.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

from jupyterhub.utils import random_port

from casa_hub.dask_tls import make_session_tls
from casa_session.cluster import SchedulerConnection
from tests.secret_files import write_secret_file

SCHEDULER_NAME = "alice.dask.casa.test"


@contextlib.contextmanager
def tls_scheduler(workdir: Path, timeout: float = 60):
    tls = make_session_tls(SCHEDULER_NAME)
    files = {"ca": tls.ca_pem, "scheduler": tls.scheduler_pem, "client": tls.client_pem, "worker": tls.worker_pem}
    for name, pem in files.items():
        write_secret_file(workdir / f"{name}.pem", pem)
    port = random_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--protocol", "tls", "--host", "127.0.0.1",
         "--port", str(port), "--dashboard-address", f"127.0.0.1:{random_port()}",
         "--tls-ca-file", str(workdir / "ca.pem"), "--tls-cert", str(workdir / "scheduler.pem"),
         "--tls-key", str(workdir / "scheduler.pem")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "scheduler did not start"
                time.sleep(0.2)
        yield SchedulerConnection(
            address=f"tls://{SCHEDULER_NAME}:{port}", connect_host="127.0.0.1", ca_file=str(workdir / "ca.pem"),
            client_cert=str(workdir / "client.pem"), client_key=str(workdir / "client.pem"),
            worker_cert=str(workdir / "worker.pem"), worker_key=str(workdir / "worker.pem"),
        )
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
