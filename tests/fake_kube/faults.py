"""Fault injection rules for the fake API server.

A rule matches requests by method and regular expressions searched in the
path (and optionally the query string), and then answers with an error status, sleeps (past the client's
timeout), or drops the connection.  ``nth`` fails only the n-th matching
request, ``times`` limits how often a rule fires, ``probability`` makes it
fire at random from the fake's seeded generator, and ``after=True`` applies
the fault after the request has been carried out (the change is made, the
client never hears of it).
"""

from __future__ import annotations

import random
import re
import threading
from dataclasses import dataclass, field

STATUS_REASONS = {
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass
class Fault:
    """One rule: which requests, and what goes wrong."""

    path: str = ""
    method: str | None = None
    query: str | None = None
    status: int | None = 500
    delay: float = 0.0
    drop: bool = False
    nth: int | None = None
    times: int | None = None
    probability: float | None = None
    after: bool = False
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def __post_init__(self):
        self._path = re.compile(self.path)
        self._query = re.compile(self.query) if self.query is not None else None
        if self.method:
            self.method = self.method.upper()

    def matches(self, method: str, path: str, query: str = "") -> bool:
        return (
            (self.method is None or self.method == method)
            and bool(self._path.search(path))
            and (self._query is None or bool(self._query.search(query)))
        )

    def describe(self) -> str:
        what = "drop" if self.drop else (f"delay {self.delay}s" if self.delay and not self.status else f"status {self.status}")
        return f"{self.method or '*'} {self.path} -> {what}"


class FaultRules:
    """The active rules; thread-safe so a test can change them while the fake runs."""

    def __init__(self, seed: int = 0):
        self._rules: list[Fault] = []
        self._lock = threading.Lock()
        self.random = random.Random(seed)

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._rules.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        with self._lock:
            if fault in self._rules:
                self._rules.remove(fault)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def pick(self, method: str, path: str, after: bool, query: str = "") -> Fault | None:
        """The first rule that fires for this request at this stage, counting it."""
        with self._lock:
            for rule in self._rules:
                if rule.after != after or not rule.matches(method, path, query):
                    continue
                rule.seen += 1
                if rule.nth is not None and rule.seen != rule.nth:
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                if rule.probability is not None and self.random.random() >= rule.probability:
                    continue
                rule.fired += 1
                return rule
        return None
