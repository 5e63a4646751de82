"""The example's coffea processor on 2 workers reading through the XCache (warm) vs 2 local workers reading local disk.

One NanoAOD-like file (``casa_spawner.demo.events``, ``--events`` of them) is written to local disk
and put in alice's area of a real XRootD origin behind a real XCache (the demo's ``XCacheServer``:
macaroons, HTTPS with the run's CA); one full read through the cache first makes it warm.  The same
processor (the example notebook's ``DimuonMass``) runs with coffea's ``processor.Runner`` and
``DaskExecutor`` on two workers of one thread each:

- *baseline*: two local worker processes (a ``LocalCluster``) read the file from local disk;
- *XCache*: two workers read it over HTTPS with alice's macaroon, each open building its HTTPS
  client on the worker (the notebook's read options) -- ``--workers local``: two more local worker
  processes; ``--workers htcondor``: ``CasaCluster`` as alice's HTCondor jobs on the one-machine pool
  (as ``bench.htcondor_workers`` sets it up; needs worker jobs that get ``XCACHE_HOST``,
  ``XCACHE_CA_FILE`` and the token).

The two sides alternate, ``--rounds`` times; both must give the same histogram.  Printed: events/s
of each (median, range) and the ratio XCache / baseline (goal >= 0.7).

    python3 -m bench.coffea [--workers local|htcondor] [--events 2000000] [--chunksize 200000] [--rounds 5] [--time-limit 1200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import awkward as ak
import cloudpickle
import dask.config
import hist
import requests
from coffea import processor
from coffea.nanoevents import NanoAODSchema
from distributed import Client, LocalCluster

from bench.watchdog import start_watchdog
from casa_hub.facility import Facility
from casa_hub.files import atomic_write
from casa_session.htcondor_workers import LoopThread
from casa_spawner.demo.events import write_events
from casa_spawner.demo.xcache import XCacheServer, ensure_macaroon_secret

SITE = "CASA_BENCH"
PATH = "/store/user/alice/events.root"
JOB_SIZE = {"cores": 1, "memory": "1 GiB", "disk": "256 MiB"}


class DimuonMass(processor.ProcessorABC):
    """The example notebook's processor, as it is there: opposite-sign dimuon mass of the events with two muons."""

    def process(self, events):
        mass = hist.Hist.new.StrCat([], growth=True, name="dataset").Reg(
            60, 60, 120, name="mass", label=r"$m_{\mu\mu}$ [GeV]").Int64()
        dimuon = events[ak.num(events.Muon) == 2]
        dimuon = dimuon[ak.sum(dimuon.Muon.charge, axis=1) == 0]
        mass.fill(dataset=events.metadata["dataset"], mass=(dimuon.Muon[:, 0] + dimuon.Muon[:, 1]).mass)
        return {"mass": mass, "events": len(events)}

    def postprocess(self, accumulator):
        return accumulator


async def xcache_https_client(**client_kwargs):
    """The notebook's read options: the HTTPS client of one open, made on the worker (the cache's CA, the current token)."""
    import aiohttp

    from casa_session.xcache import XCache

    worker_xcache = XCache()
    return aiohttp.ClientSession(headers=worker_xcache.headers(),
                                 connector=aiohttp.TCPConnector(ssl=worker_xcache.ssl_context()), **client_kwargs)


XCACHE_READ_OPTIONS = {"get_client": xcache_https_client, "skip_instance_cache": True}


def quiet_schema() -> None:
    """On a worker: no warning per chunk about the cross-references to collections the demo's file has not."""
    NanoAODSchema.warn_missing_crossrefs = False


def run_processor(client: Client, url: str, read_options: dict, chunksize: int) -> tuple[float, int, list[int]]:
    """Seconds for the whole run (preprocessing included), the events processed and the histogram."""
    runner = processor.Runner(executor=processor.DaskExecutor(client=client, status=False), schema=NanoAODSchema,
                              chunksize=chunksize)
    started = time.perf_counter()
    out = runner({"Zmumu": {"files": {url: "Events"}}}, processor_instance=DimuonMass(), uproot_options=read_options)
    seconds = time.perf_counter() - started
    return seconds, out["events"], out["mass"][{"dataset": "Zmumu"}].values().astype(int).tolist()


def warm(url: str, token: str, ca: str) -> int:
    """One full read through the cache: afterwards the cache serves the whole file from its disk."""
    size = 0
    with requests.get(url, headers={"Authorization": f"Bearer {token}"}, verify=ca, stream=True, timeout=300) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_content(1 << 20):
            size += len(chunk)
    return size


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def local_workers() -> tuple[LocalCluster, Client]:
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit="2 GiB")
    client = Client(cluster)
    client.wait_for_workers(2, timeout=120)
    return cluster, client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", choices=("local", "htcondor"), default="local", help="where the XCache side's workers run")
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--chunksize", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--time-limit", type=float, default=1200, help="seconds before the run ends itself, whatever it is doing")
    args = parser.parse_args()
    quiet_schema()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # HTCondor workers have no bench package

    workdir = Path(tempfile.mkdtemp(prefix="bench-coffea-"))
    stops = []  # what to stop, last started first

    def clean_up():
        for stop in reversed(stops):
            try:
                stop()
            except Exception as e:  # the others still stop
                print(f"clean-up: {e}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)

    watchdog = start_watchdog("bench/coffea.py", args.time_limit, clean_up)
    try:
        started = time.perf_counter()
        events_file = write_events(workdir / "events.root", n_events=args.events)
        print(f"{args.events} events, {events_file.stat().st_size / 1e6:.0f} MB, written in {time.perf_counter() - started:.1f} s",
              flush=True)
        secret = ensure_macaroon_secret(workdir / "macaroon-secret")
        server = XCacheServer(sitename=SITE, secret_file=str(secret), users=["alice"], files={PATH: events_file}, ready_timeout=60)
        loop = LoopThread("xcache")
        stops.append(loop.close)
        loop.run(server.start(), 120)
        stops.append(lambda: loop.run(server.stop(), 60))
        facility = Facility(macaroon_secret_file=str(secret), xcache_site=SITE, xcache_paths=["/store/user/{username}"])
        token = facility.xcache_token_file("alice", dt.datetime.now(dt.timezone.utc))
        token_file = atomic_write(workdir / "bearer_token", token.content, mode=0o600)
        # this process is alice's notebook: the cache's address, its CA and her token, as a session has them
        os.environ.update(XCACHE_HOST=server.url, XCACHE_CA_FILE=str(server.ca_file), BEARER_TOKEN_FILE=str(token_file))
        warmed = warm(server.url + PATH, token.content.decode().strip(), str(server.ca_file))
        print(f"cache warmed: {warmed / 1e6:.0f} MB read through it once", flush=True)

        baseline_cluster, baseline = local_workers()
        stops.append(baseline_cluster.close)
        stops.append(baseline.close)
        if args.workers == "local":
            xcache_cluster, through_cache = local_workers()
            stops.append(xcache_cluster.close)
            stops.append(through_cache.close)
            where = "2 local worker processes"
        else:
            through_cache, where = htcondor_workers(workdir, stops)

        for client in (baseline, through_cache):
            client.run(quiet_schema)
        print(f"coffea processor, 2 workers x 1 thread, chunks of {args.chunksize} events, {args.rounds} round(s) each:", flush=True)
        run_processor(baseline, str(events_file), {}, args.chunksize)  # warm-up: imports, numba, the page cache
        run_processor(through_cache, server.url + PATH, XCACHE_READ_OPTIONS, args.chunksize)
        disk, cache, histograms, server_cpu = [], [], set(), []
        for _ in range(args.rounds):  # interleaved: a busy machine slows both alike
            for rates, client, url, options in ((disk, baseline, str(events_file), {}),
                                                (cache, through_cache, server.url + PATH, XCACHE_READ_OPTIONS)):
                cpu = cpu_seconds(server.process.pid)
                seconds, n, counts = run_processor(client, url, options, args.chunksize)
                if n != args.events:
                    raise SystemExit(f"processed {n} events of {args.events}")
                rates.append(n / seconds)
                histograms.add(tuple(counts))
                if rates is cache:
                    server_cpu.append((cpu_seconds(server.process.pid) - cpu, seconds))
        if len(histograms) != 1:
            raise SystemExit("the runs gave different histograms")
        watchdog.cancel()
    finally:
        clean_up()
    for label, rates in (("local disk, 2 local worker processes", disk), (f"XCache (warm), {where}", cache)):
        print(f"  {label:<48} {statistics.median(rates):10.0f} events/s [{min(rates):.0f}-{max(rates):.0f}]")
    cpu, wall = (statistics.median(x) for x in zip(*server_cpu))
    print(f"  the XCache's own xrootd used {cpu:.2f} CPU-s per XCache run of {wall:.2f} s "
          f"(on one machine: the workers' cores; {os.cpu_count()} here)")
    print(f"ratio XCache / local disk: {statistics.median(cache) / statistics.median(disk):.2f} x (goal >= 0.7)")


def htcondor_workers(workdir: Path, stops: list) -> tuple[Client, str]:
    """``CasaCluster(workers="htcondor").scale(2)`` in alice's session on a one-machine pool (``bench.htcondor_workers``'s setup)."""
    from casa_session.cluster import CasaCluster
    from tests.condor_pool import PoolThread, worker_python
    from tests.htcondor_session import HTCondorSite

    (workdir / "pool").mkdir()
    pool = PoolThread(workdir / "pool", num_cpus=3).start()
    stops.append(pool.stop)
    site = HTCondorSite(pool, workdir / "session").start()
    stops.append(site.stop)
    session = {k: v for k, v in site.env.items() if k not in ("BEARER_TOKEN_FILE",)}  # the bench's cache and token stay
    os.environ.update(session, _CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS="IDTOKENS")
    config = {f"jobqueue.casa.{k}": v for k, v in JOB_SIZE.items()}
    dask.config.set({**config, "jobqueue.casa.python": worker_python()})
    cluster = CasaCluster(workers="htcondor")
    stops.append(cluster.close)
    cluster.scale(2)
    cluster.wait_for_workers(2, timeout=300)
    client = cluster.get_client()
    stops.append(client.close)
    return client, f"2 HTCondor jobs of {site.identity}"


if __name__ == "__main__":
    main()
