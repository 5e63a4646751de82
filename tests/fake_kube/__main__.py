"""Run the fake Kubernetes API as its own process (for bench/spawn.py): prints its URL, stops on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web
from jupyterhub.utils import random_port

from .server import FakeKubeApp


async def serve(args) -> None:
    fake = FakeKubeApp(latency=args.latency, pod_start_delay=args.pod_start_delay, garbage_collection=not args.no_gc)
    runner = web.AppRunner(fake.app, handle_signals=False, shutdown_timeout=1, access_log=None)
    await runner.setup()
    port = args.port or random_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake-kube listening on http://127.0.0.1:{port}", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    except asyncio.TimeoutError:
        pass
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m tests.fake_kube", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--pod-start-delay", type=float, default=0.05, help="seconds until a new pod is Running")
    parser.add_argument("--no-gc", action="store_true", help="no garbage collection of owned objects")
    parser.add_argument("--max-seconds", type=float, default=3600, help="stop by itself after this long")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
