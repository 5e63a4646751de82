"""Dask data transfer through Traefik's TLS passthrough vs. a direct TLS connection.

One real scheduler and one worker with a session's TLS bundle (``casa_hub``), one Traefik
(``casa_spawner.demo.traefik.TraefikProcess``) with the user's SNI route.  Two clients with the
same client certificate: one connects to the scheduler directly, one to Traefik's ``dask``
entry point sending ``<slug>.dask.<domain>`` as SNI.  Each scatters a payload to the
worker through the scheduler (``direct=False``, the only way a client outside the
facility's network can) and gathers it back; the runs alternate so both see the same
machine load.  Prints throughput (MB/s) for both paths and the ratio.

    python3 -m bench.route [--megabytes 100] [--repeat 3]    (from the repository root)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distributed import Client
from jupyterhub.utils import random_port

from casa_hub import bundle as b
from casa_hub.facility import Facility
from casa_hub.plan import plan_session
from casa_session.cluster import SchedulerConnection
from casa_spawner.demo.traefik import TraefikProcess
from casa_spawner.local.routes import write_route_file

USER = "alice"


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on port {port} within {timeout:.0f}s")


def transfer(client: Client, payload: bytes) -> tuple[float, float]:
    """Seconds to scatter ``payload`` through the scheduler and to gather it back."""
    start = time.perf_counter()
    future = client.scatter(payload, direct=False)
    scattered = time.perf_counter()
    back = client.gather(future, direct=False)
    gathered = time.perf_counter()
    assert len(back) == len(payload) and back[:64] == payload[:64]
    client.cancel(future)
    del back
    return scattered - start, gathered - scattered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="casa-bench-route-") as tmp:
        tmp = Path(tmp)
        facility = Facility(domain="bench.casa")
        bundle = facility.issue_bundle(USER)
        creds = tmp / "credentials"
        bundle.write_to(creds)
        plan = plan_session(facility, USER, bundle)
        port = random_port()
        scheduler_cmd = plan.scheduler.command(str(creds), host="127.0.0.1")
        scheduler_cmd[scheduler_cmd.index("--port") + 1] = str(port)
        scheduler_cmd[scheduler_cmd.index("--dashboard-address") + 1] = "127.0.0.1:0"
        procs: list[subprocess.Popen] = []
        clients: dict[str, Client] = {}
        traefik = TraefikProcess(tmp / "traefik", dask_port=random_port())
        loop = asyncio.new_event_loop()
        log = open(tmp / "processes.log", "wb")
        try:
            procs.append(subprocess.Popen(scheduler_cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            wait_for_port(port, procs[0], "the scheduler")
            direct = f"tls://127.0.0.1:{port}"
            ca, client_pem, worker_pem = (str(creds / p) for p in (b.DASK_CA_PATH, b.DASK_CLIENT_PATH, b.DASK_WORKER_PATH))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", direct, "--nthreads", "1", "--no-nanny",
                 "--no-dashboard", "--memory-limit", "0", "--tls-ca-file", ca, "--tls-cert", worker_pem, "--tls-key", worker_pem],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            ))
            loop.run_until_complete(traefik.start())
            route = plan.route
            write_route_file(traefik.routes_dir, route, f"127.0.0.1:{port}")

            via = SchedulerConnection(
                address=f"tls://{route.host}:{traefik.dask_port}", ca_file=ca, client_cert=client_pem, client_key=client_pem,
                worker_cert=worker_pem, worker_key=worker_pem, connect_host="127.0.0.1",
            )
            direct_conn = dataclasses.replace(via, address=f"tls://{route.host}:{port}")  # same certificates, no Traefik
            deadline = time.monotonic() + 60
            while True:  # Traefik loads the route file a moment after it lands
                try:
                    clients["traefik"] = Client(via.connect_address, security=via.security("client"), timeout=5)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            clients["direct"] = Client(direct_conn.connect_address, security=direct_conn.security("client"), timeout=30)
            for client in clients.values():
                client.wait_for_workers(1, timeout=60)

            payload = os.urandom(args.megabytes * 1_000_000)
            transfer(clients["direct"], payload[: 1_000_000])  # warm up both paths
            transfer(clients["traefik"], payload[: 1_000_000])
            samples = {name: {"scatter": [], "gather": []} for name in clients}
            for _ in range(args.repeat):
                for name in ("direct", "traefik"):
                    s, g = transfer(clients[name], payload)
                    samples[name]["scatter"].append(s)
                    samples[name]["gather"].append(g)
        finally:
            for client in clients.values():
                client.close()
            loop.run_until_complete(traefik.stop())
            loop.close()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()

    mb = args.megabytes
    print(f"Dask scatter + gather of {mb} MB through the scheduler, {args.repeat} runs each (median; MB/s)")
    print(f"{'path':<28}{'scatter MB/s':>14}{'gather MB/s':>14}{'round trip MB/s':>18}")
    rates = {}
    for name, label in (("direct", "direct TLS to the scheduler"), ("traefik", "Traefik TLS passthrough")):
        s = statistics.median(samples[name]["scatter"])
        g = statistics.median(samples[name]["gather"])
        rates[name] = 2 * mb / (s + g)
        print(f"{label:<28}{mb / s:>14.1f}{mb / g:>14.1f}{rates[name]:>18.1f}")
    print(f"ratio Traefik / direct (round trip): {rates['traefik'] / rates['direct']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
