"""A time limit for benchmarks that run real servers: a stuck run says where it is, stops what it started and exits."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
from collections.abc import Callable


def start_watchdog(name: str, time_limit: float, clean_up: Callable[[], None]) -> threading.Timer:
    """After ``time_limit`` seconds: print every thread's stack, run ``clean_up``, exit with status 3.
    ``cancel()`` the returned timer once the run has its result."""

    def give_up():
        print(f"{name}: no result within {time_limit:g}s; where each thread was:", file=sys.stderr)
        faulthandler.dump_traceback(all_threads=True)
        clean_up()
        os._exit(3)

    watchdog = threading.Timer(time_limit, give_up)
    watchdog.daemon = True
    watchdog.start()
    return watchdog
