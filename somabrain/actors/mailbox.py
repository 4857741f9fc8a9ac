"""Bounded mailboxes.

A mailbox is a deque with one reader (the actor's loop) and any number of writers. It is bounded:
when it is full, ``put`` either waits for room (policy ``wait``, backpressure) or raises a
counted :class:`MailboxFullError` (policy ``raise``); ``put_nowait`` always raises. Nothing is
dropped silently. The capacity can be changed while the mailbox is in use (config reload).

A mailbox outlives the incarnations of its actor: when a supervisor restarts an actor, the new
incarnation reads the same mailbox, so messages queued during the restart are not lost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

import msgspec

from ._backend import Backend, Parker
from ._exceptions import ActorStoppedError, MailboxFullError

__all__ = ["Mailbox", "MailboxStatistics", "OverflowPolicy"]


class OverflowPolicy(StrEnum):
    """What ``put`` does when the mailbox is full."""

    WAIT = "wait"
    RAISE = "raise"


class MailboxStatistics(msgspec.Struct, frozen=True):
    depth: int
    capacity: int
    overflow_policy: str
    enqueued_total: int
    overflow_total: int
    waiting_senders: int
    closed: bool


class Mailbox:
    """A bounded multi-writer, single-reader queue of envelopes."""

    __slots__ = (
        "_backend",
        "_closed_reason",
        "_queue",
        "_reader",
        "_senders",
        "capacity",
        "enqueued_total",
        "overflow_policy",
        "overflow_total",
        "owner",
    )

    def __init__(
        self,
        backend: Backend,
        owner: str,
        capacity: int = 1024,
        overflow_policy: OverflowPolicy | str = OverflowPolicy.WAIT,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"mailbox capacity must be >= 1, got {capacity}")
        self._backend = backend
        self.owner = owner
        self.capacity = capacity
        self.overflow_policy = OverflowPolicy(overflow_policy)
        self._queue: deque[Any] = deque()
        self._reader: Parker = backend.new_parker()
        self._senders: deque[Parker] = deque()
        self._closed_reason: BaseException | None = None
        self.enqueued_total = 0
        self.overflow_total = 0

    # ------------------------------------------------------------------ writers

    def put_nowait(self, item: Any) -> None:
        """Enqueue ``item`` or raise at once (full: :class:`MailboxFullError`, closed)."""
        if self._closed_reason is not None:
            raise self._closed_reason
        queue = self._queue
        if len(queue) >= self.capacity:
            self.overflow_total += 1
            raise MailboxFullError(self.owner, self.capacity)
        queue.append(item)
        self.enqueued_total += 1
        reader = self._reader
        if reader.parked:
            reader.unpark()

    async def put(self, item: Any) -> None:
        """Enqueue ``item``, applying the overflow policy when the mailbox is full."""
        if len(self._queue) < self.capacity or self.overflow_policy is OverflowPolicy.RAISE:
            self.put_nowait(item)
            return
        while len(self._queue) >= self.capacity and self._closed_reason is None:
            parker = self._backend.new_parker()
            self._senders.append(parker)
            try:
                await parker.park()
            except BaseException:
                if parker in self._senders:  # cancelled while waiting: leave the queue
                    self._senders.remove(parker)
                elif self._senders and len(self._queue) < self.capacity:
                    # Woken for a free slot, then cancelled before taking it (a plain asyncio
                    # ``task.cancel()`` lands even after the wake-up): the slot goes to the
                    # next sender, or it would wait for a reader that may never come again.
                    self._senders.popleft().unpark()
                raise
        self.put_nowait(item)

    # ------------------------------------------------------------------ reader

    def __len__(self) -> int:
        return len(self._queue)

    def get_nowait(self) -> Any:
        """Dequeue one item; raises ``IndexError`` when empty."""
        item = self._queue.popleft()
        if self._senders:
            self._senders.popleft().unpark()
        return item

    async def wait(self) -> None:
        """Park the reader until an item arrives or :meth:`wake_reader` is called.

        Returns at once if an item is queued; callers re-check their own conditions.
        """
        if not self._queue:
            await self._reader.park()

    def wake_reader(self) -> None:
        """Wake the reader without a message (stop requests use this)."""
        if self._reader.parked:
            self._reader.unpark()

    def drain(self) -> Iterator[Any]:
        """Remove and yield every queued item (used when the owner stops for good)."""
        while self._queue:
            yield self._queue.popleft()
        self._wake_senders()

    # ------------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    def close(self, reason: BaseException | None = None) -> None:
        """Refuse new items from now on; waiting senders wake and get the error."""
        self._closed_reason = reason or ActorStoppedError(self.owner)
        self._wake_senders()

    def reopen(self) -> None:
        self._closed_reason = None

    def resize(self, capacity: int) -> None:
        """Change the capacity in place (config reload). Never drops queued items."""
        if capacity < 1:
            raise ValueError(f"mailbox capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._wake_senders()

    def _wake_senders(self) -> None:
        while self._senders:
            self._senders.popleft().unpark()

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            depth=len(self._queue),
            capacity=self.capacity,
            overflow_policy=self.overflow_policy.value,
            enqueued_total=self.enqueued_total,
            overflow_total=self.overflow_total,
            waiting_senders=len(self._senders),
            closed=self.closed,
        )
