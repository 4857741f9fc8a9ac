"""``ActorRef``: the only handle other code holds on an actor.

A ref names a mailbox, not an incarnation: it stays valid across restarts, and messages sent
while a supervisor restarts the actor wait in the mailbox for the next incarnation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._exceptions import ActorStoppedError, AskTimeoutError
from .mailbox import Mailbox, OverflowPolicy

if TYPE_CHECKING:
    from ._cell import ActorCell

__all__ = ["DEFAULT_ASK_TIMEOUT", "ActorRef"]

DEFAULT_ASK_TIMEOUT = 5.0


class ActorRef:
    __slots__ = ("_cell", "_mailbox", "path")

    def __init__(self, cell: ActorCell) -> None:
        self._cell = cell
        self._mailbox: Mailbox = cell.mailbox
        self.path: str = cell.path

    def __repr__(self) -> str:
        return f"<ActorRef {self.path}>"

    async def tell(self, message: Any) -> None:
        """Send without waiting for a reply; applies the mailbox's overflow policy when full."""
        mailbox = self._mailbox
        queue = mailbox._queue
        # The hot path, inlined: room in an open mailbox. Everything else takes the slow path.
        if len(queue) < mailbox.capacity and mailbox._closed_reason is None:
            queue.append((message, None))
            mailbox.enqueued_total += 1
            reader = mailbox._reader
            if reader.parked:
                reader.unpark()
        elif mailbox.overflow_policy is OverflowPolicy.RAISE:
            self._put_nowait(message, None)
        else:
            await self._put_waiting(message, None)

    def tell_nowait(self, message: Any) -> None:
        """Send or raise at once (:class:`MailboxFullError` when full). Never waits."""
        self._put_nowait(message, None)

    @property
    def queued(self) -> int:
        """Messages waiting in the mailbox (cheaper than ``statistics().mailbox.depth``)."""
        return len(self._mailbox._queue)

    @property
    def has_room(self) -> bool:
        """True when a ``tell`` or ``ask`` now would queue at once, without waiting for room."""
        mailbox = self._mailbox
        return (
            len(mailbox._queue) < mailbox.capacity
            or mailbox.overflow_policy is OverflowPolicy.RAISE
        )

    async def ask(self, message: Any, timeout: float = DEFAULT_ASK_TIMEOUT) -> Any:
        """Send and wait for the reply; the handler's exception is raised here.

        Raises :class:`AskTimeoutError` after ``timeout`` seconds and
        :class:`ActorStoppedError` if the actor stops before handling the message.
        """
        reply = self._cell.backend.new_reply()
        mailbox = self._mailbox
        if (
            len(mailbox._queue) < mailbox.capacity
            or mailbox.overflow_policy is OverflowPolicy.RAISE
        ):
            self._put_nowait(message, reply)
        else:
            await self._put_waiting(message, reply)
        self._cell.system.deadlines.add(reply, timeout, lambda: AskTimeoutError(self.path, timeout))
        return await reply.wait_untimed()

    def _put_nowait(self, message: Any, reply: Any) -> None:
        mailbox = self._mailbox
        if mailbox.closed:
            self._cell.dead_letter(message, reply)
            return
        mailbox.put_nowait((message, reply))

    async def _put_waiting(self, message: Any, reply: Any) -> None:
        if self._mailbox.closed:
            self._cell.dead_letter(message, reply)
            return
        try:
            await self._mailbox.put((message, reply))
        except ActorStoppedError:  # closed while we waited for room
            self._cell.dead_letter(message, reply)

    def stop(self) -> None:
        """Ask the current incarnation to stop after the message it is handling."""
        self._cell.request_stop()

    def kill(self) -> None:
        """End the current incarnation at once, as a failure (chaos testing, brutal kill)."""
        self._cell.kill()

    @property
    def alive(self) -> bool:
        return not self._mailbox.closed

    def statistics(self) -> Any:
        return self._cell.statistics()
