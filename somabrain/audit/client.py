"""What the rest of SomaBrain calls: ``system.resources["audit"].record(draft)``.

:class:`AuditLog` hands the draft to the writer actor and waits for its :class:`Receipt`,
which the writer completes once the event is durable in *some* tier (Kafka acks=all, the Redis
stream, or the fsynced spool). The call therefore never waits for Kafka when Kafka is down:
the writer has already fallen back. It raises :class:`AuditUnavailableError` when the event
could not be made durable in time; the change it describes must then be reported as failed.

Why a receipt and not ``ask``: the writer commits events in groups (one write and one fsync
for everything that arrived while the previous group was being written); an ``ask`` reply is
the return value of one message, while a receipt can be completed when its group is.

The timeout is enforced by one reaper task per log (started with the node's system), not by
a cancel scope around every wait: receipts are submitted in deadline order, so the reaper
fails the expired ones from the head of a queue, a few times per timeout. That removes a
timer from every audited request (on the edge's hot path when reads are audited); a receipt
fails between ``timeout`` and ``timeout`` plus a quarter of it (at most 1 s) late.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

import anyio
import msgspec

from ..actors import ActorRef, ActorStoppedError
from ..actors._backend import Backend, Reply, current_backend
from .errors import AuditUnavailableError
from .event import AuditDraft, new_event_id, utc_now

if TYPE_CHECKING:
    from ..actors import ActorSystem

__all__ = ["Append", "AuditLog", "Receipt"]


class Receipt:
    """Completed by the writer: ``seq`` once durable, or ``error``.

    Woken through the actor kernel's one-shot ``Reply`` (an asyncio future, or trio's
    reschedule) rather than an ``anyio.Event``: one per audited request, so the cheapest
    hand-off counts. ``done`` is the receipt's own flag, not the reply's: a waiter cancelled
    by its timeout may cancel the underlying future, which must not read as completed."""

    __slots__ = ("_reply", "done", "error", "event_id", "seq")

    def __init__(self, event_id: str, reply: Reply) -> None:
        self.event_id = event_id
        self.seq = 0
        self.error: BaseException | None = None
        self.done = False
        self._reply = reply

    def complete(self, seq: int) -> None:
        if not self.done:
            self.seq = seq
            self.done = True
            self._reply.set_result(None)

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.error = error
            self.done = True
            self._reply.set_result(None)

    async def wait(self) -> None:
        if not self.done:
            await self._reply.wait_untimed()


class Append(msgspec.Struct, frozen=True):
    """To the writer: seal ``draft`` into the chain and complete ``receipt`` when durable."""

    draft: AuditDraft
    receipt: Receipt


class AuditLog:
    """The audit API of a node (``system.resources["audit"]``).

    With ``system``, a reaper task of that system enforces ``timeout`` (module doc); without
    one, each :meth:`wait` does."""

    def __init__(
        self, writer: ActorRef, *, timeout: float = 10.0, system: ActorSystem | None = None
    ) -> None:
        self.writer = writer
        self.timeout = timeout
        self._system = system
        self._deadlines: deque[tuple[float, Receipt]] = deque()
        self._reaping = False

    def _backend(self) -> Backend:
        return self._system.backend if self._system is not None else current_backend()

    async def record(self, draft: AuditDraft) -> str:
        """Write one event; returns its ``event_id`` (the ``audit_id`` of API responses)."""
        receipt = await self.submit(draft)
        return await self.wait(receipt)

    async def submit(self, draft: AuditDraft) -> Receipt:
        """Hand ``draft`` over without waiting for durability (benchmarks, batch callers)."""
        if not draft.event_id or not draft.time:
            draft = msgspec.structs.replace(
                draft, event_id=draft.event_id or new_event_id(), time=draft.time or utc_now()
            )
        receipt = Receipt(draft.event_id, self._backend().new_reply())
        if not self.writer.alive:
            # A tell to a stopped actor becomes a dead letter, and nobody would complete the
            # receipt: fail now instead of at the timeout.
            raise AuditUnavailableError("audit writer is not running")
        try:
            await self.writer.tell(Append(draft, receipt))
        except ActorStoppedError as exc:
            raise AuditUnavailableError(f"audit writer is not running: {exc}") from exc
        if self._system is not None:
            self._deadlines.append((time.monotonic() + self.timeout, receipt))
            if not self._reaping:
                try:
                    self._system.start_soon(self._reap)
                    self._reaping = True
                except RuntimeError:  # the system is closing: wait() bounds itself
                    pass
        return receipt

    async def wait(self, receipt: Receipt) -> str:
        if self._reaping:
            await receipt.wait()
        else:
            with anyio.move_on_after(self.timeout):
                await receipt.wait()
            if not receipt.done:
                receipt.fail(self._timed_out(receipt))
        error = receipt.error
        if isinstance(error, AuditUnavailableError):
            raise error
        if error is not None:
            raise AuditUnavailableError(
                f"audit event {receipt.event_id} not written: {error!r}"
            ) from error
        return receipt.event_id

    def _timed_out(self, receipt: Receipt) -> AuditUnavailableError:
        return AuditUnavailableError(
            f"audit event {receipt.event_id} not durable after {self.timeout} s"
        )

    async def _reap(self) -> None:
        """Fail the receipts whose deadline passed (the others are completed by the writer)."""
        interval = min(1.0, self.timeout / 4)
        deadlines = self._deadlines
        try:
            while True:
                await anyio.sleep(interval)
                now = time.monotonic()
                while deadlines and (deadlines[0][1].done or deadlines[0][0] <= now):
                    _, receipt = deadlines.popleft()
                    if not receipt.done:
                        receipt.fail(self._timed_out(receipt))
        finally:
            self._reaping = False
