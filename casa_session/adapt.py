"""CasaCluster.adapt: distributed's ``AdaptiveCore`` over a cluster whose scheduler already runs elsewhere.

``AdaptiveCore`` owns the decisions (the scheduler's ``adaptive_target``, ``workers_to_close``,
``wait_count`` rounds before a worker is let go); this module supplies its state and actions:
``plan``/``requested`` are the launched workers (a job that left the queue drops out, so the
next round replaces it), ``observed`` those the scheduler sees, ``scale_up`` is
``CasaCluster.scale`` and ``scale_down`` retires, then stops.  The launcher's calls block (HTCondor's
tools), so they run in a thread, never on the client's event loop.

A round that fails is logged and the next one tries again: an unreachable scheduler as a
warning, a refused submission (``CasaError``) with its message, anything else with its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from distributed.comm.core import CommClosedError
from distributed.deploy.adaptive_core import AdaptiveCore

from casa_hub.errors import CasaError

log = logging.getLogger("casa.cluster")


class AdaptiveLoop(AdaptiveCore):
    """Adaptive scaling of a :class:`~casa_session.cluster.CasaCluster`, one round per ``interval``."""

    def __init__(self, cluster, minimum: int = 0, maximum: int = 4, wait_count: int = 3):
        super().__init__(minimum=minimum, maximum=maximum, wait_count=wait_count)
        self.cluster = cluster
        self._launched: set[str] = set()
        self._seen: set[str] = set()

    @property
    def plan(self) -> set:
        return self._launched

    @property
    def requested(self) -> set:
        return self._launched

    @property
    def observed(self) -> set:
        return self._seen

    async def target(self) -> int:
        # refresh the state first (blocking calls, in a thread): AdaptiveCore reads it right after
        self._launched = set(await asyncio.to_thread(self.cluster.launcher.running))
        self._seen = set(await asyncio.to_thread(self.cluster._connected)) & self._launched
        return await self.cluster._control().scheduler.adaptive_target()

    async def workers_to_close(self, target: int) -> list:
        names = await self.cluster._control().scheduler.workers_to_close(target=target, attribute="name")
        return [str(n) for n in names if str(n) in self._seen]

    async def scale_up(self, n: int) -> None:
        await asyncio.to_thread(self.cluster.scale, n)

    async def scale_down(self, workers) -> None:
        await asyncio.to_thread(self.cluster._retire_and_stop, sorted(workers))

    def run(self, stop: threading.Event, interval: float) -> None:
        """Adapt every ``interval`` seconds until ``stop`` is set (the body of the adapt thread)."""
        unreachable = False
        while not stop.wait(interval):
            try:
                client = self.cluster._control()
                client.sync(self.adapt)
            except (OSError, asyncio.TimeoutError, CommClosedError) as e:
                if not unreachable:
                    log.warning("CasaCluster.adapt: the scheduler did not answer (%s); trying again every %s s", e, interval)
                unreachable = True
                continue
            except CasaError as e:  # e.g. the schedd refused a submission: the user can act on the message
                log.error("CasaCluster.adapt could not scale: %s; trying again in %s s", e, interval)
            except Exception:
                log.exception("CasaCluster.adapt could not scale; trying again in %s s", interval)
            unreachable = False
