"""One watchdog for every ask timeout of a system, instead of one timer per ask.

A timer per ask (``call_later`` on asyncio, a cancel scope on trio) was the largest single cost
of an ask round trip. Asks with the same timeout expire in the order they were made, so each
timeout value gets a FIFO of ``(deadline, reply)``; a single task wakes every
``RESOLUTION`` seconds while any ask is pending, fails the replies whose deadline passed, and
drops the heads that were already answered (which keeps the queues as short as the number of
asks in flight). A timeout therefore fires up to ``RESOLUTION`` late: fine for ask timeouts,
which are seconds long by default.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import anyio

from ._backend import Backend, Reply

__all__ = ["RESOLUTION", "Deadlines"]

RESOLUTION = 0.01

_Entry = tuple[float, Reply, Callable[[], BaseException]]


class Deadlines:
    def __init__(self, backend: Backend) -> None:
        self._now = backend.now
        self._queues: dict[float, deque[_Entry]] = {}
        self._parker = backend.new_parker()
        self._pending = False

    def add(self, reply: Reply, timeout: float, on_timeout: Callable[[], BaseException]) -> None:
        queue = self._queues.get(timeout)
        if queue is None:
            queue = self._queues[timeout] = deque()
        queue.append((self._now() + timeout, reply, on_timeout))
        if not self._pending:
            self._pending = True
            if self._parker.parked:
                self._parker.unpark()

    async def run(self) -> None:
        """The watchdog loop; runs until cancelled with its system."""
        idle_ticks = 0
        while True:
            if not self._pending:
                await self._parker.park()
                continue
            now = self._now()
            earliest = now + RESOLUTION
            for timeout, queue in list(self._queues.items()):
                while queue:
                    deadline, reply, on_timeout = queue[0]
                    if not reply.done and deadline > now:
                        earliest = min(earliest, deadline)
                        break
                    queue.popleft()
                    if not reply.done:
                        reply.set_exception(on_timeout())
                if not queue:
                    del self._queues[timeout]
            # Park only after a whole idle tick: with asks coming one after another, parking
            # as soon as the queues drain would cost a wake-up per ask.
            idle_ticks = 0 if self._queues else idle_ticks + 1
            if idle_ticks > 1:
                self._pending = False
                continue
            await anyio.sleep(max(0.0, earliest - now))
