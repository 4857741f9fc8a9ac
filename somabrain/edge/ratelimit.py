"""Per-tenant token buckets, with per-tenant overrides of the rate and burst.

Each tenant has a bucket of ``burst`` tokens refilled at ``rate`` tokens per second; a request
takes one. An empty bucket answers how long until the next token, which the edge sends as
``Retry-After`` with a 429. Buckets are created on a tenant's first request and dropped once
full again (an idle tenant costs nothing), so the table holds only recently active tenants.

One setting for every tenant does not fit a shared node: a batch importer needs a higher rate
than an interactive agent, and a noisy tenant may need a lower one. ``edge.rate_limit.tenants``
overrides ``rate``, ``burst`` and ``enabled`` for the tenants it names; what an override leaves
out comes from the node-wide setting. Settings can change at run time (config reload): buckets
keep their level, capped at the tenant's new burst.

These buckets are the node's own. ``edge.rate_limit.redis_url`` puts them in Redis instead,
shared by the nodes of a cluster (``shared_ratelimit.py``), with these as the fallback while
Redis does not answer; ``build_limiter`` picks one from the settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from ..config import RateLimitSettings
    from .shared_ratelimit import SharedRateLimiter

__all__ = ["Limit", "LimitOverride", "RateLimiter", "build_limiter"]

_PRUNE_EVERY = 10_000


class Limit(NamedTuple):
    """The bucket parameters in force for one tenant."""

    rate: float
    burst: float
    enabled: bool


class LimitOverride(Protocol):
    """A tenant's override (``config.TenantRateLimit``): None inherits the node-wide value."""

    @property
    def rate(self) -> float | None: ...

    @property
    def burst(self) -> int | None: ...

    @property
    def enabled(self) -> bool | None: ...


class RateLimiter:
    """Token buckets keyed by tenant; not thread-safe (one event loop)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        enabled: bool = True,
        tenants: Mapping[str, LimitOverride] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}  # tenant -> [tokens, last refill time]
        self._calls = 0
        self.limited = 0
        self.configure(rate, burst, enabled=enabled, tenants=tenants)

    def configure(
        self,
        rate: float,
        burst: int,
        *,
        enabled: bool = True,
        tenants: Mapping[str, LimitOverride] | None = None,
    ) -> None:
        """Set the node-wide limit and the per-tenant overrides (all of them: a tenant left
        out of ``tenants`` gets the node-wide limit again)."""
        limits: dict[str, Limit] = {}
        for tenant, o in (tenants or {}).items():
            limits[tenant] = Limit(
                float(rate if o.rate is None else o.rate),
                float(burst if o.burst is None else o.burst),
                enabled if o.enabled is None else o.enabled,
            )
        for name, limit in [("", Limit(float(rate), float(burst), enabled)), *limits.items()]:
            if limit.rate <= 0 or limit.burst < 1:
                where = f" (tenant {name!r})" if name else ""
                raise ValueError(f"rate must be > 0 and burst >= 1{where}")
        self.rate = float(rate)
        self.burst = float(burst)
        self.enabled = enabled
        self._default = Limit(self.rate, self.burst, enabled)
        self._limits = limits

    def limit_of(self, tenant: str) -> Limit:
        """The limit in force for ``tenant`` (its override, else the node-wide one)."""
        return self._limits.get(tenant, self._default)

    def acquire(self, tenant: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens: 0.0 when allowed, else the seconds until it would be."""
        rate, burst, enabled = self._limits.get(tenant, self._default)
        if not enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = [burst, now]
        else:
            tokens = bucket[0] + (now - bucket[1]) * rate
            bucket[0] = tokens if tokens < burst else burst
            bucket[1] = now
        self._calls += 1
        if self._calls >= _PRUNE_EVERY:
            self._prune(now)
        if bucket[0] >= cost:
            bucket[0] -= cost
            return 0.0
        self.limited += 1
        return (cost - bucket[0]) / rate

    async def take(self, tenant: str, cost: float = 1.0) -> float:
        """``acquire``, with the signature of ``SharedRateLimiter.take`` (what the edge calls)."""
        return self.acquire(tenant, cost)

    async def health(self) -> dict[str, Any]:
        """``/health``'s ``rate_limit`` component."""
        return {"kind": "local", "status": "ok"}

    async def aclose(self) -> None:
        """Nothing to close (``SharedRateLimiter`` has a connection pool)."""

    def _prune(self, now: float) -> None:
        self._calls = 0
        full = []
        for tenant, (tokens, last) in self._buckets.items():
            rate, burst, _ = self._limits.get(tenant, self._default)
            if tokens + (now - last) * rate >= burst:
                full.append(tenant)
        for tenant in full:
            del self._buckets[tenant]

    def __len__(self) -> int:
        return len(self._buckets)


def build_limiter(settings: RateLimitSettings) -> RateLimiter | SharedRateLimiter:
    """The node's limiter for ``[edge.rate_limit]``: in Redis when ``redis_url`` is set."""
    if settings.redis_url:
        from .shared_ratelimit import SharedRateLimiter

        return SharedRateLimiter(
            settings.redis_url,
            settings.rate,
            settings.burst,
            enabled=settings.enabled,
            tenants=settings.tenants,
            prefix=settings.redis_prefix,
            timeout=settings.redis_timeout,
        )
    return RateLimiter(
        settings.rate, settings.burst, enabled=settings.enabled, tenants=settings.tenants
    )
