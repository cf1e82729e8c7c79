"""Fixed-window rate limits with the `RateLimit-*` headers.

The counters live in this process's memory. With N API workers a client gets up to N times
its limit in the worst case (each worker counts alone). That is acceptable for now: the
limits protect the service from runaway clients rather than meter anything billable, the
embedded default runs one process, and a shared store (PostgreSQL or Redis) can replace
`RateLimiter` behind the same `hit()` without touching its callers.

A fixed window (counted from the key's first request, not the wall-clock minute) keeps the
headers exact: `Remaining` is what is left of `Limit` and `Reset` is when it refills.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # until the window ends; also Retry-After when not allowed

    def headers(self) -> list[tuple[str, str]]:
        return [
            ("RateLimit-Limit", str(self.limit)),
            ("RateLimit-Remaining", str(self.remaining)),
            ("RateLimit-Reset", str(self.reset_seconds)),
        ]


class RateLimiter:
    """`hit(key)` counts one request against `key`'s window. Thread-safe: the event loop and
    the worker threads both call it."""

    def __init__(self, limit: int, window_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("a rate limit must allow at least one request per window")
        self.limit = limit
        self.window = window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (window start, count)
        self._next_sweep = clock() + window_seconds

    def hit(self, key: str) -> Decision:
        now = self._clock()
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            start, count = self._windows.get(key, (now, 0))
            if now - start >= self.window:
                start, count = now, 0
            allowed = count < self.limit
            if allowed:
                count += 1
            self._windows[key] = (start, count)
        reset = max(0, math.ceil(start + self.window - now))
        return Decision(allowed, self.limit, self.limit - count, reset)

    def _sweep(self, now: float) -> None:
        # Forget expired windows so memory tracks active clients, not every client ever seen.
        self._windows = {k: v for k, v in self._windows.items() if now - v[0] < self.window}
        self._next_sweep = now + self.window
