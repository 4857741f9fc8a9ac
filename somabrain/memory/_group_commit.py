"""Group commit for the memory logs (the file log and the PostgreSQL log).

Concurrent appends join one batch, flushed as one unit of I/O (one ``fdatasync``, or one
transaction); each appender returns only after the flush covering its records completed. No
background task: the first appender that finds no flush in progress leads one batch, and while
its flush runs the next appenders gather into the next batch, so the flush time itself is the
batching window (``window`` seconds can be added to gather more). Flushes never overlap, so
batches reach the store in the order they were opened: the log order.

Cancellation: a cancelled append that was not yet handed to the flush is withdrawn; once handed
over it is flushed (it may survive a crash) but its caller sees the cancellation. The flush
itself is shielded, because abandoning it would leave the other appenders of the batch
unacknowledged forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

from .errors import LogError

__all__ = ["Batch", "GroupCommit"]


class Batch:
    """The appends gathered for one flush: one item per ``append`` (its encoded records)."""

    __slots__ = ("count", "done", "error", "items")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.count = 0  # records in all items
        self.done = False
        # Makes the error each appender of a failed batch raises (a fresh instance each, so
        # concurrent raisers do not share and grow one traceback).
        self.error: Callable[[], LogError] | None = None


class GroupCommit:
    """The batching half of a log; subclasses flush a batch in ``_flush_batch`` (which must
    set ``batch.done``, and ``batch.error`` when the batch failed)."""

    def __init__(self, window: float) -> None:
        if window < 0:
            raise ValueError("group_window must be >= 0")
        self._window = window
        self._open_batch = Batch()
        self._leader = False
        self._leader_done = anyio.Event()

    async def _flush_batch(self, batch: Batch) -> None:
        raise NotImplementedError

    def _take_open_batch(self) -> Batch:
        """The batch gathered so far, replaced by a new one (for a close that flushes it)."""
        batch, self._open_batch = self._open_batch, Batch()
        return batch

    async def _append_group(self, item: Any, count: int) -> None:
        batch = self._open_batch
        batch.items.append(item)
        batch.count += count
        try:
            while not batch.done:
                if self._leader:
                    await self._leader_done.wait()
                else:
                    await self._lead()
        except BaseException:
            if not batch.done and batch is self._open_batch:
                # Not handed to the flush yet: withdraw this append (by identity).
                for i, pending in enumerate(batch.items):
                    if pending is item:
                        del batch.items[i]
                        batch.count -= count
                        break
            raise
        if batch.error is not None:
            raise batch.error()

    async def _lead(self) -> None:
        """Flush the open batch (which holds the caller's records) as the one leader."""
        self._leader = True
        self._leader_done = done = anyio.Event()
        try:
            if self._window > 0:
                await anyio.sleep(self._window)
            else:
                await anyio.lowlevel.checkpoint()  # let ready appenders join this batch
            batch = self._take_open_batch()
            with anyio.CancelScope(shield=True):
                await self._flush_batch(batch)
        finally:
            self._leader = False
            done.set()
