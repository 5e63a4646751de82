"""Time to a ready dask-gateway cluster and to 4 workers: HTCondorBackend on a real pool vs LocalBackend.

Both run as a real ``dask-gateway-server`` process on this machine, with the same authenticator
(dask-gateway's SimpleAuthenticator), the same scheduler and worker modules, and a
``dask_gateway.Gateway`` client:

- *ready*: ``Gateway.new_cluster()`` returned and a ``Client`` is connected through the gateway's
  proxy (with HTCondor: the scheduler job was negotiated, started and reported to the gateway);
- *4 workers*: from ``cluster.scale(4)`` until the client sees 4 workers.

Two baselines, same run: dask-jobqueue's ``HTCondorCluster`` on the same pool as the same identity
-- from ``scale(1)`` until its first worker is connected (one job matched, started and connected,
which is what a ready gateway cluster is: its scheduler job running and reached) -- and dask-gateway's
``UnsafeLocalBackend`` (its ``LocalBackend`` without ``sudo``: the users here have no OS accounts),
which starts the same processes directly.  The pool is the one-machine pool of the tests
(``tests/condor_pool.py``: a negotiation cycle every 5 s); every HTCondor round starts just after
one (``bench.htcondor_workers.after_a_negotiation_cycle``), so the wait for a match is the same for
the backend and for dask-jobqueue.  Printed: median and range per backend over ``--rounds``, where the
backend's ready time goes (submit, waiting for the match and start, the scheduler's start-up until it
reported to the gateway, the client's wait and connection), and the ratios.

    python3 -m bench.gateway [--rounds 3] [--workers 4] [--time-limit 900]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dask.config

from bench.htcondor_workers import JOB_SIZE, JOBQUEUE_JOBS, after_a_negotiation_cycle, wait_empty
from bench.watchdog import start_watchdog
from tests.condor_pool import PoolThread, worker_python
from tests.gateway_process import GatewayProcess, pool_backend_lines, pool_gateway_env

LOCAL_BACKEND = [
    "c.DaskGateway.backend_class = 'dask_gateway_server.backends.local.UnsafeLocalBackend'",
    f"c.LocalClusterConfig.scheduler_cmd = [{sys.executable!r}, '-m', 'distributed.cli.dask_scheduler']",
    f"c.LocalClusterConfig.worker_cmd = [{sys.executable!r}, '-m', 'distributed.cli.dask_worker']",
    "c.LocalClusterConfig.scheduler_memory = '256 M'",
    "c.LocalClusterConfig.worker_memory = '256 M'",
]


#: the gateway's log lines that mark a cluster's way to ready, in order (dask-gateway's, and the backend's "Job ... submitted")
MILESTONES = (("submitting", "Submitting cluster {name}"), ("submitted", "Cluster {name} submitted"),
              ("reported", "Cluster {name} heartbeat"), ("running", "Cluster {name} is running"))
_LOG_TIME = re.compile(r"\[\w (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ")


def milestones(gw: GatewayProcess, name: str) -> dict[str, float]:
    """Wall-clock times of the cluster's first line of each milestone in the gateway's log."""
    found: dict[str, float] = {}
    for line in gw.log_text().splitlines():
        for key, text in MILESTONES:
            if key not in found and text.format(name=name) in line:
                stamp = _LOG_TIME.search(line)
                if stamp:
                    found[key] = dt.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
    return found


def one_round(gw: GatewayProcess, workers: int, pool: PoolThread | None = None) -> tuple[float, float, dict]:
    """One cluster from a fresh client, as a user's notebook makes it: (ready, scaled) seconds and, with a pool,
    where the ready time went (seconds per phase)."""
    with gw.client("bench") as gateway:
        if pool is not None:
            after_a_negotiation_cycle(pool)
        wall, started = time.time(), time.perf_counter()
        cluster = gateway.new_cluster()
        returned = time.time()
        client = cluster.get_client()
        client.scheduler_info()
        ready = time.perf_counter() - started
        phases = {}
        if pool is not None:
            marks = milestones(gw, cluster.name)
            rows = pool.queue(f'DaskGatewayCluster == "{cluster.name}" && DaskGatewayRole == "scheduler"', "JobCurrentStartDate")
            if len(marks) == len(MILESTONES) and rows and rows[0][0].isdigit():
                running = float(rows[0][0])  # 1-second resolution
                phases = {"api": marks["submitting"] - wall, "submit": marks["submitted"] - marks["submitting"],
                          "match": running - marks["submitted"], "scheduler up": marks["reported"] - running,
                          "reported": marks["running"] - marks["reported"], "client": wall + ready - marks["running"],
                          "new_cluster()": returned - wall}
        scaling = time.perf_counter()
        cluster.scale(workers)
        client.wait_for_workers(workers, timeout=300)
        scaled = time.perf_counter() - scaling
        client.close()
        cluster.shutdown()
    return ready, scaled, phases


def measure(label: str, gw: GatewayProcess, rounds: int, workers: int, pool: PoolThread | None = None) -> dict:
    gw.start()
    try:
        one_round(gw, 1)  # warm-up: imports, the proxy's first route, the pool's first match
        runs = [one_round(gw, workers, pool) for _ in range(rounds)]
    finally:
        gw.stop()
    ready, scaled = [r for r, _, _ in runs], [s for _, s, _ in runs]
    figures = {"ready": statistics.median(ready), "workers": statistics.median(scaled)}
    print(f"{label:>10}: ready {figures['ready']:6.2f} s  [{min(ready):.2f}-{max(ready):.2f}]   "
          f"{workers} workers {figures['workers']:6.2f} s  [{min(scaled):.2f}-{max(scaled):.2f}]", flush=True)
    phases = [p for _, _, p in runs if p]
    if phases:
        print(" " * 12 + "ready = " + " + ".join(f"{k} {statistics.median(p[k] for p in phases):.2f}"
                                                 for k in phases[0] if k != "new_cluster()")
              + f"  (medians; new_cluster() itself {statistics.median(p['new_cluster()'] for p in phases):.2f})", flush=True)
    return figures


def jobqueue_first_worker(pool: PoolThread, rounds: int) -> dict:
    """dask-jobqueue's HTCondorCluster on the same pool, as the gateway's user: ``scale(1)`` until its worker is
    connected (the cluster and its local scheduler made beforehand, as a notebook would)."""
    from dask_jobqueue import HTCondorCluster

    times = []
    for i in range(rounds + 1):  # the first one warms up
        cluster = HTCondorCluster(**JOB_SIZE, python=worker_python(), nanny=False,
                                  scheduler_options={"host": "127.0.0.1", "dashboard_address": ":0"},
                                  submit_command_extra=["-spool"], job_extra_directives={"leave_in_queue": "false"})
        try:
            with cluster.get_client() as client:
                after_a_negotiation_cycle(pool)
                started = time.perf_counter()
                cluster.scale(1)
                client.wait_for_workers(1, timeout=300)
                if i:
                    times.append(time.perf_counter() - started)
        finally:
            cluster.close()
            wait_empty(pool, JOBQUEUE_JOBS)
    figures = {"first": statistics.median(times)}
    print(f"{'jobqueue':>10}: first worker {figures['first']:6.2f} s  [{min(times):.2f}-{max(times):.2f}]   "
          "(HTCondorCluster, scale(1) until connected)", flush=True)
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
        condor = measure("htcondor", condor_gw, args.rounds, args.workers, pool)
        # dask-jobqueue as the gateway's user "bench": its own IDTOKEN and IDTOKENS only, as the backend's tools
        os.environ.update(pool.session_environment(pool.token_dir("bench@casa.test")),
                          PATH=f"{pool.install.bin}{os.pathsep}{os.environ.get('PATH', '')}")
        with dask.config.set({f"jobqueue.htcondor.{k}": v for k, v in JOB_SIZE.items()}):
            jobqueue = jobqueue_first_worker(pool, args.rounds)
        local = measure("local", local_gw, args.rounds, args.workers)
        print(f"{'ratio':>10}: ready {condor['ready'] / jobqueue['first']:6.2f} x  of HTCondorCluster's first worker   "
              f"ready {condor['ready'] / local['ready']:6.1f} x   {args.workers} workers "
              f"{condor['workers'] / local['workers']:6.1f} x   (HTCondor / local)")
    finally:
        watchdog.cancel()
        pool.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
