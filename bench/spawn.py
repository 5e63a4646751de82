"""N concurrent spawns with CasaKubeSpawner and with plain KubeSpawner against the same fake API.

The fake Kubernetes API (tests/fake_kube) runs as its own process with the same
per-request latency for both; the spawners run on this process's event loop, as
in the hub.  Printed per flavour: wall time of N concurrent starts and of N
concurrent stops, API requests per spawn, and the event loop's worst stall (a
ticker that wakes every 5 ms records how late it woke) — the figure that says
whether a spawner blocks the hub for everyone — beside the longest pause of
Python's garbage collector in the same window (a full collection of the hub's
heap that happens to land in a run is a stall no spawner code can avoid).  Then
the ratio Casa / plain.

Twice, each in a fresh process: with Python's collector as it comes (``--gc default``), and
with the start-up heap frozen first (``--gc freeze``: what a hub does with
``c.CasaKubeSpawner.freeze_startup_heap = True``; applied to both flavours, since it is the
hub's setting, not a spawner's).

    python3 -m bench.spawn [--users 50] [--latency 0.005] [--rounds 2] [--gc both|default|freeze]    (from the repository root)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.fake_kube import KUBECONFIG

os.environ["KUBECONFIG"] = KUBECONFIG  # before kubernetes_asyncio is imported

from kubespawner import KubeSpawner  # noqa: E402

from casa_spawner.heap import freeze_startup_heap  # noqa: E402
from casa_spawner.kube import CasaKubeSpawner  # noqa: E402
from tests.facilities import MasterSecrets, new_facility  # noqa: E402
from tests.fake_kube.spawners import make_spawner, reset_kubespawner  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class StallMeter:
    """A task that sleeps ``period`` and records how much later than asked it woke up,
    and the longest garbage-collector pause meanwhile."""

    def __init__(self, period: float = 0.005):
        self.period = period
        self.worst = 0.0
        self.lates: list[float] = []
        self.worst_gc = 0.0
        self._gc_started = 0.0
        self._task = None

    def _gc(self, phase, info):
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.worst_gc = max(self.worst_gc, time.perf_counter() - self._gc_started)

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.period)
            late = loop.time() - before - self.period
            self.lates.append(late)
            self.worst = max(self.worst, late)

    def __enter__(self):
        gc.callbacks.append(self._gc)
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc):
        self._task.cancel()
        gc.callbacks.remove(self._gc)


def start_fake(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_kube", "--latency", str(latency), "--max-seconds", "900"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"the fake API did not start: {line!r}")
    return proc, line.split()[-1]


def request_count(url: str) -> int:
    with urllib.request.urlopen(f"{url}/_fake/stats", timeout=10) as r:
        return json.load(r)["requests"]


async def one_run(cls, url: str, users: int, traits: dict) -> dict:
    spawners = [make_spawner(cls, url, f"user{i:03d}", start_timeout=120, k8s_api_request_retry_timeout=60, **traits)
                for i in range(users)]
    try:
        before = request_count(url)
        with StallMeter() as start_meter:
            t0 = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(s.start() for s in spawners)), 300)
            start_wall = time.perf_counter() - t0
        after_start = request_count(url)
        with StallMeter() as stop_meter:
            t0 = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(s.stop(now=True) for s in spawners)), 300)
            stop_wall = time.perf_counter() - t0
        after_stop = request_count(url)
    finally:
        await reset_kubespawner()
    lates = start_meter.lates + stop_meter.lates
    return {
        "start_wall": start_wall,
        "stop_wall": stop_wall,
        "start_requests": (after_start - before) / users,
        "stop_requests": (after_stop - after_start) / users,
        "start_stall": start_meter.worst,
        "stop_stall": stop_meter.worst,
        "gc_pause": max(start_meter.worst_gc, stop_meter.worst_gc),
        "p99_stall": statistics.quantiles(lates, n=100)[98] if len(lates) >= 100 else max(lates, default=0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.005, help="seconds the fake API adds to every request")
    parser.add_argument("--rounds", type=int, default=2, help="runs per flavour (alternating); the best wall time counts")
    parser.add_argument("--gc", choices=("both", "default", "freeze"), default="both",
                        help="the collector as it comes, the start-up heap frozen (gc.freeze), or both, each in its own process")
    args = parser.parse_args()
    if args.gc == "both":
        for mode in ("default", "freeze"):
            argv = [a for a in sys.argv[1:] if not a.startswith("--gc")]
            subprocess.run([sys.executable, "-m", "bench.spawn", *argv, f"--gc={mode}"], cwd=ROOT, check=True)
            print()
        return
    if args.gc == "freeze":
        freeze_startup_heap()

    with tempfile.TemporaryDirectory() as tmp:
        facility = new_facility(tmp, MasterSecrets.fresh())
        flavours = {
            "KubeSpawner": (KubeSpawner, {}),
            "CasaKubeSpawner": (CasaKubeSpawner, {"facility": facility}),
        }
        proc, url = start_fake(args.latency)
        try:
            results: dict[str, list[dict]] = {name: [] for name in flavours}
            for _ in range(args.rounds):
                for name, (cls, traits) in flavours.items():
                    results[name].append(asyncio.run(one_run(cls, url, args.users, traits)))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    collector = "start-up heap frozen (gc.freeze)" if args.gc == "freeze" else "collector as it comes"
    print(f"{args.users} concurrent spawns, fake API latency {args.latency * 1000:.1f} ms/request, best of {args.rounds}, {collector}")
    print("stall = how late a 5 ms ticker on the spawners' event loop woke up (worst over all runs)")
    print("gc pause = the garbage collector's longest pause in the same windows (part of the stalls)")
    print(f"{'':16} {'start wall':>11} {'stop wall':>10} {'req/start':>10} {'req/stop':>9} "
          f"{'stall start':>12} {'stall stop':>11} {'p99 stall':>10} {'gc pause':>9}")
    best = {}
    for name, runs in results.items():
        b = min(runs, key=lambda r: r["start_wall"])
        best[name] = b
        start_stall = max(r["start_stall"] for r in runs)
        stop_stall = max(r["stop_stall"] for r in runs)
        p99 = max(r["p99_stall"] for r in runs)
        gc_pause = max(r["gc_pause"] for r in runs)
        print(
            f"{name:16} {b['start_wall']:10.2f}s {b['stop_wall']:9.2f}s {b['start_requests']:10.1f} "
            f"{b['stop_requests']:9.1f} {start_stall * 1000:10.1f}ms {stop_stall * 1000:9.1f}ms {p99 * 1000:8.1f}ms "
            f"{gc_pause * 1000:7.1f}ms"
        )
    casa, plain = best["CasaKubeSpawner"], best["KubeSpawner"]
    print(f"ratio Casa/plain: start wall {casa['start_wall'] / plain['start_wall']:.2f}x, "
          f"stop wall {casa['stop_wall'] / plain['stop_wall']:.2f}x, "
          f"API requests per spawn (start+stop) {(casa['start_requests'] + casa['stop_requests']) / (plain['start_requests'] + plain['stop_requests']):.2f}x")


if __name__ == "__main__":
    main()
