"""The fake API server in a background thread with its own event loop, for tests.

The spawners under test run on pytest's event loop; the fake runs on another
one in its own thread, so a test can read the store, add fault rules or cut
watch streams between (or during) spawner calls.
"""

from __future__ import annotations

import asyncio
import copy
import threading

from aiohttp import web
from jupyterhub.utils import random_port

from .faults import Fault
from .server import FakeKubeApp, Request
from .store import KINDS


class FakeKube:
    """The fake API server on 127.0.0.1 in a background thread with its own event loop."""

    def __init__(self, **options):
        self.app = FakeKubeApp(**options)
        self.port = random_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- life cycle ----------------------------------------------------------

    def start(self, timeout: float = 10) -> "FakeKube":
        ready = threading.Event()
        errors: list[BaseException] = []

        def run():
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._main(ready))
            except BaseException as e:  # reported to start()
                errors.append(e)
            finally:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()
                ready.set()

        self._thread = threading.Thread(target=run, name="fake-kube", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"fake Kubernetes API did not start in {timeout}s")
        if errors:
            raise RuntimeError(f"fake Kubernetes API failed to start: {errors[0]}")
        return self

    async def _main(self, ready: threading.Event):
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(self.app.app, handle_signals=False, shutdown_timeout=1, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        ready.set()
        await self._stopping.wait()
        await self._runner.cleanup()

    def stop(self, timeout: float = 10) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- for tests -------------------------------------------------------------

    def call(self, func, *args, timeout: float = 10):
        """Run ``func(*args)`` on the fake's loop (where the store lives) and return its result."""

        async def run():
            return func(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def objects(self, resource: str, namespace: str | None = None) -> list[dict]:
        return self.call(lambda: copy.deepcopy(self.app.store.list(resource, namespace)))

    def names(self, resource: str, namespace: str | None = None) -> list[str]:
        return sorted(o["metadata"]["name"] for o in self.objects(resource, namespace))

    def get(self, resource: str, namespace: str, name: str) -> dict | None:
        return self.call(lambda: copy.deepcopy(self.app.store.objects.get((resource, namespace, name))))

    def create(self, resource: str, namespace: str, obj: dict) -> dict:
        """Put an object into the cluster behind the spawner's back (a leftover, a stale pod)."""
        kind = KINDS.get(resource.split(".")[0]) if "." not in resource else None
        return self.call(lambda: copy.deepcopy(self.app.store.create(resource, namespace, obj, kind)))

    def inject(self, **rule) -> Fault:
        return self.app.faults.add(Fault(**rule))

    def clear_faults(self) -> None:
        self.app.faults.clear()

    @property
    def requests(self) -> list[Request]:
        return list(self.app.requests)

    def clear_requests(self) -> None:
        self.app.requests.clear()

    def cut_watches(self) -> int:
        """Abort every open watch stream; returns how many there were."""
        return self.call(self.app.cut_watches)

    def set_latency(self, seconds: float) -> None:
        self.app.latency = seconds

    def set_garbage_collection(self, enabled: bool) -> None:
        self.app.garbage_collection = enabled
