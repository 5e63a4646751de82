"""Optional, the operator's choice: take the hub's start-up heap out of the garbage collector's reach.

A hub holds a few hundred thousand long-lived objects once it has started (modules, the ORM, every
user's spawner).  Python's full (generation 2) collection walks all of them: a pause of tens to
hundreds of milliseconds on the event loop, i.e. for every user's request at once, that lands
wherever the allocation counters say -- in the middle of a burst of spawns, say (bench/spawn.py).
``gc.freeze()`` moves everything alive into a permanent generation that collections skip, so a
full collection walks only what was made since.  The price: cyclic garbage that exists at that
moment is never freed (one ``gc.collect()`` just before keeps that to nothing), and a process
that forks afterwards shares more pages (the reason CPython has it).

Switched on with ``c.CasaKubeSpawner.freeze_startup_heap = True`` (or ``CasaLocalSpawner``):
done once per process, just after the first spawner is made (at start-up, when the hub loads its
users' spawners).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

_frozen = False


def freeze_startup_heap(log: logging.Logger | logging.LoggerAdapter | None = None) -> bool:
    """Collect once, then ``gc.freeze()`` what is left; only the first call in a process does it."""
    global _frozen
    if _frozen:
        return False
    _frozen = True
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    if log is not None:
        log.info("Froze the hub's start-up heap: %d objects out of the collector's reach (%.0f ms)",
                 gc.get_freeze_count(), (time.perf_counter() - started) * 1000)
    return True


def freeze_soon(log=None) -> None:
    """:func:`freeze_startup_heap` once the current step of the event loop is done (now if none runs)."""
    if _frozen:
        return
    try:
        asyncio.get_running_loop().call_soon(freeze_startup_heap, log)
    except RuntimeError:
        freeze_startup_heap(log)
