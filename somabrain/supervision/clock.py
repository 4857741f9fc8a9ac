"""Time as supervisors see it: a real clock in production, a virtual one in tests.

Supervisors read time for two things, the restart-intensity window and backoff delays. Both go
through a ``Clock`` so that tests can check exact backoff timing without sleeping: the
``VirtualClock`` jumps forward by the requested amount whenever somebody sleeps on it (trio's
autojump idea) and records every sleep.
"""

from __future__ import annotations

from typing import Protocol

import anyio
from anyio.lowlevel import checkpoint

__all__ = ["Clock", "SystemClock", "VirtualClock"]


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The event loop's monotonic clock."""

    def now(self) -> float:
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class VirtualClock:
    """A clock that only moves when someone sleeps on it, or when a test calls :meth:`advance`."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now += max(0.0, seconds)
        await checkpoint()
