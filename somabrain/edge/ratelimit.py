"""Per-tenant token buckets.

Each tenant has a bucket of ``burst`` tokens refilled at ``rate`` tokens per second; a request
takes one. An empty bucket answers how long until the next token, which the edge sends as
``Retry-After`` with a 429. Buckets are created on a tenant's first request and dropped once
full again (an idle tenant costs nothing), so the table holds only recently active tenants.
Settings can change at run time (config reload): buckets keep their level, capped at the new
burst.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RateLimiter"]

_PRUNE_EVERY = 10_000


class RateLimiter:
    """Token buckets keyed by tenant; not thread-safe (one event loop)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}  # tenant -> [tokens, last refill time]
        self._calls = 0
        self.limited = 0
        self.configure(rate, burst, enabled=enabled)

    def configure(self, rate: float, burst: int, *, enabled: bool = True) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.enabled = enabled

    def acquire(self, tenant: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens: 0.0 when allowed, else the seconds until it would be."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = [self.burst, now]
        else:
            tokens = bucket[0] + (now - bucket[1]) * self.rate
            bucket[0] = tokens if tokens < self.burst else self.burst
            bucket[1] = now
        self._calls += 1
        if self._calls >= _PRUNE_EVERY:
            self._prune(now)
        if bucket[0] >= cost:
            bucket[0] -= cost
            return 0.0
        self.limited += 1
        return (cost - bucket[0]) / self.rate

    def _prune(self, now: float) -> None:
        self._calls = 0
        full = [
            t
            for t, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rate >= self.burst
        ]
        for tenant in full:
            del self._buckets[tenant]

    def __len__(self) -> int:
        return len(self._buckets)
