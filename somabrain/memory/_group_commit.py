"""What the memory logs (the file log and the PostgreSQL log) share: group commit, the fsync
policy, and the state every log reports.

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

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Self

import anyio
import anyio.lowlevel

from .errors import LogError

if TYPE_CHECKING:
    from .types import LogRecord

__all__ = ["Batch", "FsyncPolicy", "GroupCommit"]

FsyncPolicy = Literal["always", "group", "never"]


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
    """The shared half of a log. Subclasses append in ``append_many`` (through
    ``_append_group``), flush a batch in ``_flush_batch`` (which must set ``batch.done``, and
    ``batch.error`` when the batch failed), close in ``aclose``, and keep ``_records`` and
    ``_closed`` up to date."""

    def __init__(self, window: float, policy: FsyncPolicy, records: int = 0) -> None:
        if window < 0:
            raise ValueError("group_window must be >= 0")
        if policy not in ("always", "group", "never"):
            raise ValueError(f"fsync policy must be always, group or never, got {policy!r}")
        self._window = window
        self._policy: FsyncPolicy = policy
        self._records = records  # in the log now (replayed ones included)
        self._closed = False
        self._open_batch = Batch()
        self._leader = False
        self._leader_done = anyio.Event()

    @property
    def policy(self) -> FsyncPolicy:
        return self._policy

    @property
    def record_count(self) -> int:
        """Records in the log now (replayed ones included)."""
        return self._records

    @property
    def closed(self) -> bool:
        return self._closed

    async def append(self, record: LogRecord) -> None:
        """Append one record; returns once it is durable per the fsync policy."""
        await self.append_many((record,))

    async def append_many(self, records: Sequence[LogRecord]) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

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
