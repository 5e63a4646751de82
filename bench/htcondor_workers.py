"""CasaCluster's HTCondor workers: time from ``scale(n)`` to n connected workers vs dask-jobqueue's HTCondorCluster,
and a worker's round trip to its scheduler through Traefik vs direct.

Both clusters submit to the same one-machine pool (``tests/condor_pool.py``: negotiation every
2 s) as the same IDTOKEN identity, with the same job size (1 core, 256 MiB, the same worker
Python, no nanny):

- *casa*: ``CasaCluster()`` in a session as the spawner leaves it (``tests/htcondor_session.py``),
  with the data path: each worker a spooled job carrying its certificate and the XCache's CA,
  asking the pool's credd for the session's data token (``use_oauth_services``), joining the
  session's TLS scheduler through Traefik by SNI;
- *jobqueue*: ``dask_jobqueue.HTCondorCluster`` with its own local scheduler, plain TCP, reached
  directly (``condor_submit -spool``: no shared filesystem for it either).

Every round starts just after a negotiation cycle, and the two clusters take turns going first.
Where the seconds go, per n (medians): *submit* -- ``scale(n)`` until every job is in the queue
(casa: its own synchronous ``condor_submit -spool`` calls, files encrypted; jobqueue: its
submissions run in the cluster's event loop), *start* -- until the last job runs (the job ads'
``JobCurrentStartDate``: the negotiator's match, the shadow's transfer, the credd's token), and
*connect* -- until the last worker is connected (the worker's Python start and its TLS handshake
through Traefik, plus the waiting loop's polling).

Round trip: from inside one HTCondor worker, ``identity`` calls to the scheduler over one open
connection, and new TLS connections (TCP + handshake), to Traefik's address (what the worker uses)
and to the scheduler's own port.  Printed: seconds per n and the ratio casa / jobqueue, then
round trips in ms and the ratio Traefik / direct.

    python3 -m bench.htcondor_workers [--sizes 1,4,8] [--rounds 1] [--time-limit 900]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle
import dask.config

from bench.watchdog import start_watchdog
from casa_session.cluster import CasaCluster
from casa_spawner.demo.events import EVENTS_NAME, write_events
from tests.condor_pool import CREDENTIAL_REFRESH, PoolThread, worker_python
from tests.htcondor_session import HTCondorSite

JOB_SIZE = {"cores": 1, "memory": "256 MiB", "disk": "64 MiB"}


def started_at(site: HTCondorSite, constraint: str, n: int, origin_wall: float) -> tuple[float, float]:
    """Seconds after ``origin_wall`` (a wall-clock time) at which the last of the ``n`` matching jobs entered
    the queue and started running (the ads' 1-second ``QDate`` and ``JobCurrentStartDate``)."""
    rows = site.pool.queue(constraint, "QDate", "JobCurrentStartDate")
    if len(rows) < n or any(not r[1].isdigit() for r in rows):
        return float("nan"), float("nan")
    return max(int(r[0]) for r in rows) - origin_wall, max(int(r[1]) for r in rows) - origin_wall


def after_a_negotiation_cycle(pool: PoolThread, timeout: float = 30) -> None:
    """Return just after the pool's negotiator finished a cycle (its log says so): every round starts at the same
    point of the matchmaking cycle (one every NEGOTIATOR_CYCLE_DELAY = 5 s here), so the time a job waits for its
    match is the same for both clusters rather than a 0-5 s lottery that three rounds cannot average out."""
    log = pool.pool.run_dir / "log" / "NegotiatorLog"

    def cycles() -> int:
        return log.read_text(errors="replace").count("Finished Negotiation Cycle")

    seen, deadline = cycles(), time.monotonic() + timeout
    while cycles() == seen:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no negotiation cycle within {timeout:g}s")
        time.sleep(0.05)


class Round:
    """One round's times: total, and its submit / start / connect phases (see the module's docstring)."""

    def __init__(self, total: float, submitted: float, running: float):
        self.total, self.submit, self.start = total, submitted, running - submitted
        self.connect = total - running


def wait_empty(pool: PoolThread, constraint: str, timeout: float = 120) -> None:
    """Until the pool's queue holds no job matching ``constraint`` (slots free for the next round)."""
    deadline = time.monotonic() + timeout
    while pool.queue(constraint):
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs matching {constraint} still in the queue after {timeout:g}s")
        time.sleep(0.5)


def casa_round(site: HTCondorSite, n: int) -> Round:
    cluster = CasaCluster()
    constraint = f'CasaCluster == "{cluster.launcher.cluster_name}"'
    try:
        after_a_negotiation_cycle(site.pool)
        wall, started = time.time(), time.perf_counter()
        cluster.scale(n)
        cluster.wait_for_workers(n, timeout=300)
        total = time.perf_counter() - started
        return Round(total, *started_at(site, constraint, n, wall))
    finally:
        cluster.close()
        wait_empty(site.pool, constraint)


JOBQUEUE_JOBS = "DaskWorkerName =!= undefined && CasaSession =?= undefined"  # dask-jobqueue's jobs


def jobqueue_round(site: HTCondorSite, n: int) -> Round:
    from dask_jobqueue import HTCondorCluster

    cluster = HTCondorCluster(
        **JOB_SIZE, python=worker_python(), nanny=False, scheduler_options={"host": "127.0.0.1", "dashboard_address": ":0"},
        submit_command_extra=["-spool"], job_extra_directives={"leave_in_queue": "false"},
    )
    try:
        with cluster.get_client() as client:
            after_a_negotiation_cycle(site.pool)
            wall, started = time.time(), time.perf_counter()
            cluster.scale(n)
            client.wait_for_workers(n, timeout=300)
            total = time.perf_counter() - started
            return Round(total, *started_at(site, JOBQUEUE_JOBS, n, wall))
    finally:
        cluster.close()
        wait_empty(site.pool, JOBQUEUE_JOBS)


def phases(rounds: list[Round]) -> str:
    med = {k: statistics.median(getattr(r, k) for r in rounds) for k in ("submit", "start", "connect")}
    return f"submit {med['submit']:4.1f} + start {med['start']:4.1f} + connect {med['connect']:4.1f}"


async def round_trips(dask_worker, addresses: dict, calls: int, blocks: int = 10) -> dict:
    """Inside a worker: median (seconds per call on one open connection, seconds per new connection) for each
    address, over ``blocks`` blocks that alternate between the addresses (a busy machine hits both alike)."""
    import statistics as st
    import time as t

    from distributed.comm import connect
    from distributed.core import rpc

    per_call = {label: [] for label in addresses}
    per_connection = {label: [] for label in addresses}
    rpcs = {label: rpc(address, connection_args=dask_worker.connection_args) for label, address in addresses.items()}
    try:
        for r in rpcs.values():
            await r.identity()
        for _ in range(blocks):
            for label, address in addresses.items():
                started = t.perf_counter()
                for _ in range(calls // blocks):
                    await rpcs[label].identity()
                per_call[label].append((t.perf_counter() - started) / (calls // blocks))
                started = t.perf_counter()
                for _ in range(max(1, calls // blocks // 10)):
                    comm = await connect(address, **dask_worker.connection_args)
                    await comm.close()
                per_connection[label].append((t.perf_counter() - started) / max(1, calls // blocks // 10))
    finally:
        for r in rpcs.values():
            await r.close_rpc()
    return {label: (st.median(per_call[label]), st.median(per_connection[label])) for label in addresses}


def measure_round_trip(site: HTCondorSite, calls: int) -> dict:
    cluster = CasaCluster()
    try:
        cluster.scale(1)
        cluster.wait_for_workers(1, timeout=300)
        with cluster.get_client() as client:
            (worker,) = client.scheduler_info()["workers"]
            addresses = {"traefik": cluster.connection.connect_address, "direct": f"tls://127.0.0.1:{site.scheduler_port}"}
            return client.run(round_trips, addresses=addresses, calls=calls, workers=[worker])[worker]
    finally:
        cluster.close()
        wait_empty(site.pool, f'CasaCluster == "{cluster.launcher.cluster_name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4,8", help="numbers of workers, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1000, help="round trips per address (and a tenth as many new connections)")
    parser.add_argument("--time-limit", type=float, default=900, help="seconds before the run ends itself, whatever it is doing")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers' Python has no bench package

    workdir = Path(tempfile.mkdtemp(prefix="bench-htcondor-workers-"))
    pool = PoolThread(workdir, num_cpus=max(sizes) + 1, credential_refresh=CREDENTIAL_REFRESH).start()
    events = write_events(workdir / EVENTS_NAME, n_events=1000, seed=1)
    site = HTCondorSite(pool, workdir / "session", data={f"/store/user/alice/{EVENTS_NAME}": events},
                        data_token_service="xcache").start()

    def clean_up():
        site.stop()
        pool.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    watchdog = start_watchdog("bench/htcondor_workers.py", args.time_limit, clean_up)
    # this process is alice's notebook; dask-jobqueue's condor_submit gets her token and IDTOKENS only, as casa's tools do
    os.environ.update(site.env, _CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS="IDTOKENS")
    config = {f"jobqueue.{q}.{k}": v for q in ("casa", "htcondor") for k, v in JOB_SIZE.items()}
    try:
        with dask.config.set({**config, "jobqueue.casa.python": worker_python()}):
            print(f"scale(n) to n connected workers, {args.rounds} round(s) each, one-machine HTCondor pool "
                  f"({max(sizes) + 1} slots, a credd), as {site.identity}; CasaCluster with the data path "
                  f"(XCache CA spooled, the token from the credd)", flush=True)
            casa_round(site, 1), jobqueue_round(site, 1)  # warm-up: imports, the pool's first match
            for n in sizes:
                runs = [(casa_round(site, n), jobqueue_round(site, n)) if i % 2 == 0 else  # interleaved, each first in turn
                        tuple(reversed((jobqueue_round(site, n), casa_round(site, n)))) for i in range(args.rounds)]
                casa, baseline = [c.total for c, _ in runs], [b.total for _, b in runs]
                ratio = statistics.median(casa) / statistics.median(baseline)
                print(f"  n={n}: CasaCluster {statistics.median(casa):6.2f} s [{min(casa):.2f}-{max(casa):.2f}]   "
                      f"HTCondorCluster {statistics.median(baseline):6.2f} s [{min(baseline):.2f}-{max(baseline):.2f}]   "
                      f"ratio {ratio:5.2f} x", flush=True)
                print(f"        casa     {phases([c for c, _ in runs])}\n        jobqueue {phases([b for _, b in runs])}", flush=True)
            trips = measure_round_trip(site, args.calls)
        (t_call, t_conn), (d_call, d_conn) = trips["traefik"], trips["direct"]
        print(f"worker -> scheduler round trip: through Traefik {t_call * 1e3:.3f} ms, direct {d_call * 1e3:.3f} ms, "
              f"ratio {t_call / d_call:.2f} x")
        print(f"new TLS connection:             through Traefik {t_conn * 1e3:.2f} ms, direct {d_conn * 1e3:.2f} ms, "
              f"ratio {t_conn / d_conn:.2f} x")
    finally:
        watchdog.cancel()
        site.stop()
        pool.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
