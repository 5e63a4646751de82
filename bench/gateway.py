"""Time to a ready dask-gateway cluster and to 4 workers: HTCondorBackend on a real pool vs LocalBackend.

Both run as a real ``dask-gateway-server`` process on this machine, with the same authenticator
(dask-gateway's SimpleAuthenticator), the same scheduler and worker modules, and a
``dask_gateway.Gateway`` client:

- *ready*: ``Gateway.new_cluster()`` returned and a ``Client`` is connected through the gateway's
  proxy (with HTCondor: the scheduler job was negotiated, started and reported to the gateway);
- *4 workers*: from ``cluster.scale(4)`` until the client sees 4 workers.

The baseline is dask-gateway's ``UnsafeLocalBackend`` (its ``LocalBackend`` without ``sudo``: the
users here have no OS accounts), which starts the same processes directly.  The pool is the
one-machine pool of the tests (``tests/condor_pool.py``): negotiation every 2 s, so most of the
HTCondor figure is the batch system's matchmaking, not the backend.  Printed: median and range
per backend over ``--rounds``, and the ratio HTCondor / local.

    python3 bench/gateway.py [--rounds 3] [--workers 4] [--time-limit 900]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.watchdog import start_watchdog
from tests.condor_pool import PoolThread
from tests.gateway_process import GatewayProcess, pool_backend_lines, pool_gateway_env

LOCAL_BACKEND = [
    "c.DaskGateway.backend_class = 'dask_gateway_server.backends.local.UnsafeLocalBackend'",
    f"c.LocalClusterConfig.scheduler_cmd = [{sys.executable!r}, '-m', 'distributed.cli.dask_scheduler']",
    f"c.LocalClusterConfig.worker_cmd = [{sys.executable!r}, '-m', 'distributed.cli.dask_worker']",
    "c.LocalClusterConfig.scheduler_memory = '256 M'",
    "c.LocalClusterConfig.worker_memory = '256 M'",
]


def one_round(gw: GatewayProcess, workers: int) -> tuple[float, float]:
    """One cluster from a fresh client, as a user's notebook makes it: (ready, scaled) seconds."""
    with gw.client("bench") as gateway:
        started = time.perf_counter()
        cluster = gateway.new_cluster()
        client = cluster.get_client()
        client.scheduler_info()
        ready = time.perf_counter() - started
        scaling = time.perf_counter()
        cluster.scale(workers)
        client.wait_for_workers(workers, timeout=300)
        scaled = time.perf_counter() - scaling
        client.close()
        cluster.shutdown()
    return ready, scaled


def measure(label: str, gw: GatewayProcess, rounds: int, workers: int) -> dict:
    gw.start()
    try:
        one_round(gw, 1)  # warm-up: imports, the proxy's first route, the pool's first match
        runs = [one_round(gw, workers) for _ in range(rounds)]
    finally:
        gw.stop()
    ready, scaled = [r for r, _ in runs], [s for _, s in runs]
    figures = {"ready": statistics.median(ready), "workers": statistics.median(scaled)}
    print(f"{label:>10}: ready {figures['ready']:6.2f} s  [{min(ready):.2f}-{max(ready):.2f}]   "
          f"{workers} workers {figures['workers']:6.2f} s  [{min(scaled):.2f}-{max(scaled):.2f}]", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--time-limit", type=float, default=900, help="seconds before the run ends itself, whatever it is doing")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    pool = PoolThread(workdir, num_cpus=args.workers + 2).start()
    condor_gw = GatewayProcess(workdir / "htcondor", None, pool_backend_lines(pool), env=pool_gateway_env(pool))
    local_gw = GatewayProcess(workdir / "local", None, LOCAL_BACKEND)

    def clean_up():
        for gw in (condor_gw, local_gw):
            gw.stop(timeout=30)
        pool.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    watchdog = start_watchdog("bench/gateway.py", args.time_limit, clean_up)
    try:
        print(f"dask-gateway: {args.rounds} rounds, scheduler + {args.workers} workers, one-machine HTCondor pool", flush=True)
        condor = measure("htcondor", condor_gw, args.rounds, args.workers)
        local = measure("local", local_gw, args.rounds, args.workers)
        print(f"{'ratio':>10}: ready {condor['ready'] / local['ready']:6.1f} x   "
              f"{args.workers} workers {condor['workers'] / local['workers']:6.1f} x   (HTCondor / local)")
    finally:
        watchdog.cancel()
        pool.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
