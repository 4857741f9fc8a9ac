"""Messages and subscriptions: the part of the bus both transports share.

A :class:`Subscription` owns a bounded deque of pending messages and the parkers of the tasks
waiting on it (readers when it is empty, publishers when it is full), built on the kernel's
``Parker`` the way mailboxes are, so that a publish into a subscriber with room costs a deque
append and at most one wake-up on both asyncio and trio.

A transport hands messages in through two private calls: ``_offer`` (never waits; returns
False when the subscription is full) and ``_put`` (waits for room: backpressure). The
in-process bus uses both; the NATS transport cannot make the server wait, so it only offers
and counts what does not fit as dropped (see ``nats_transport``).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import msgspec
from anyio.lowlevel import checkpoint

from ._backend import Backend, Parker
from ._exceptions import BusClosedError, BusError, MailboxFullError

if TYPE_CHECKING:
    from .bus import Bus
    from .ref import ActorRef

__all__ = [
    "DEFAULT_NEXT_MSG_TIMEOUT",
    "DEFAULT_PENDING_LIMIT",
    "Callback",
    "Msg",
    "Subscription",
    "SubscriptionStatistics",
]

logger = logging.getLogger("somabrain.actors.bus")

DEFAULT_PENDING_LIMIT = 1024
DEFAULT_NEXT_MSG_TIMEOUT = 5.0

# A callback that never suspends would otherwise starve the loop while messages keep coming.
_CHECKPOINT_EVERY = 128


class Msg:
    """One message as a subscriber sees it. The same object goes to every in-process
    subscriber, so treat ``data`` and ``headers`` as read-only."""

    __slots__ = ("_bus", "data", "headers", "reply", "subject")

    def __init__(
        self,
        subject: str,
        data: Any,
        reply: str | None = None,
        headers: Mapping[str, str] | None = None,
        bus: Bus | None = None,
    ) -> None:
        self.subject = subject
        self.data = data
        self.reply = reply
        self.headers = headers
        self._bus = bus

    def __repr__(self) -> str:
        return f"Msg(subject={self.subject!r}, data={self.data!r}, reply={self.reply!r})"

    async def respond(self, data: Any, *, headers: Mapping[str, str] | None = None) -> None:
        """Publish ``data`` to this message's reply subject (answer a request)."""
        if not self.reply:
            raise BusError(f"message on {self.subject!r} has no reply subject to respond to")
        if self._bus is None:
            raise BusError(f"message on {self.subject!r} is not attached to a bus")
        await self._bus.publish(self.reply, data, headers=headers)


Callback = Callable[[Msg], Awaitable[None]]


class SubscriptionStatistics(msgspec.Struct, frozen=True):
    pattern: str
    queue: str | None
    #: Messages accepted and not yet handed to the consumer.
    pending: int
    #: ``None`` for actor subscriptions: their queue is the actor's mailbox.
    pending_limit: int | None
    #: Messages handed to the consumer (iterator, callback or actor mailbox).
    delivered: int
    #: Messages this subscription should have had but lost, each one counted: slow consumer
    #: on NATS, a full mailbox with policy ``raise``, undecodable payloads, or messages still
    #: pending when the bus closed under a callback.
    dropped: int
    #: Exceptions raised by the callback (logged, the subscription keeps going).
    callback_errors: int
    #: The actor path for :meth:`Bus.subscribe_actor` subscriptions.
    actor: str | None
    closed: bool


class Subscription:
    """Messages matching ``pattern``: iterate with ``async for``, or take one with
    :meth:`next_msg`. A subscription made with a callback (or for an actor) delivers there
    instead and refuses iteration."""

    __slots__ = (
        "_backend",
        "_callback_errors",
        "_closed",
        "_delivered",
        "_dropped",
        "_has_callback",
        "_limit",
        "_on_unsubscribe",
        "_queue",
        "_readers",
        "_scope",
        "_senders",
        "_upstream_pending",
        "pattern",
        "queue",
    )

    def __init__(
        self,
        pattern: str,
        queue: str | None,
        *,
        backend: Backend,
        on_unsubscribe: Callable[[Subscription], Awaitable[None]],
        pending_limit: int = DEFAULT_PENDING_LIMIT,
    ) -> None:
        if pending_limit < 1:
            raise ValueError(f"pending_limit must be >= 1, got {pending_limit}")
        self.pattern = pattern
        self.queue = queue
        self._backend = backend
        self._on_unsubscribe = on_unsubscribe
        self._limit = pending_limit
        self._queue: deque[Msg] = deque()
        self._readers: deque[Parker] = deque()
        self._senders: deque[Parker] = deque()
        self._closed = False
        self._has_callback = False
        self._scope: anyio.CancelScope | None = None
        self._delivered = 0
        self._dropped = 0
        self._callback_errors = 0
        #: Messages a transport holds for us before ``_offer`` (nats-py's own queue).
        self._upstream_pending: Callable[[], int] | None = None

    def __repr__(self) -> str:
        queue = f" queue={self.queue!r}" if self.queue else ""
        return f"<Subscription {self.pattern!r}{queue}{' closed' if self._closed else ''}>"

    # ------------------------------------------------------------------ consumer

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Msg:
        """The next message; iteration ends once unsubscribed and drained."""
        self._check_iterable()
        if not self._queue:
            await self._wait_readable()
            if not self._queue:
                raise StopAsyncIteration
        return self._take()

    async def next_msg(
        self,
        timeout: float | None = DEFAULT_NEXT_MSG_TIMEOUT,
    ) -> Msg:
        """The next message. Raises ``TimeoutError`` after ``timeout`` seconds (``None``:
        wait forever) and :class:`BusClosedError` once unsubscribed and drained."""
        self._check_iterable()
        if not self._queue:
            with anyio.fail_after(math.inf if timeout is None else timeout):
                await self._wait_readable()
            if not self._queue:
                raise BusClosedError(f"subscription {self.pattern!r} is closed")
        return self._take()

    def next_msg_nowait(self) -> Msg:
        """The next message or ``anyio.WouldBlock`` at once (``BusClosedError`` if closed)."""
        self._check_iterable()
        if self._queue:
            return self._take()
        if self._closed:
            raise BusClosedError(f"subscription {self.pattern!r} is closed")
        raise anyio.WouldBlock

    async def unsubscribe(self) -> None:
        """Stop receiving new messages. Messages already pending can still be read (or are
        still handed to the callback); then iteration ends. Idempotent."""
        if not self._closed:
            await self._on_unsubscribe(self)
            self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> SubscriptionStatistics:
        upstream = self._upstream_pending() if self._upstream_pending is not None else 0
        return SubscriptionStatistics(
            pattern=self.pattern,
            queue=self.queue,
            pending=len(self._queue) + upstream,
            pending_limit=self._limit,
            delivered=self._delivered,
            dropped=self._dropped,
            callback_errors=self._callback_errors,
            actor=None,
            closed=self._closed,
        )

    def _check_iterable(self) -> None:
        if self._has_callback:
            raise BusError(f"subscription {self.pattern!r} delivers to a callback")

    def _take(self) -> Msg:
        msg = self._queue.popleft()
        self._delivered += 1
        if self._senders:
            self._senders.popleft().unpark()
        return msg

    async def _wait_readable(self) -> None:
        """Park until a message is pending or the subscription is closed."""
        queue = self._queue
        while not queue and not self._closed:
            await _wait_turn(self._backend, self._readers, queue.__len__)

    # ------------------------------------------------------------------ transport side

    def _ready(self) -> bool:
        """Could take a message now (queue groups prefer such a member)."""
        return not self._closed and len(self._queue) < self._limit

    def _offer(self, msg: Msg) -> bool:
        """Enqueue without waiting; False only when full. A closed subscription takes and
        discards: it asked for nothing more."""
        if self._closed:
            return True
        queue = self._queue
        if len(queue) >= self._limit:
            return False
        queue.append(msg)
        readers = self._readers
        if readers:
            readers.popleft().unpark()
        return True

    async def _put(self, msg: Msg) -> None:
        """Enqueue, waiting for room while the subscription is full (backpressure)."""
        queue = self._queue
        limit = self._limit
        while len(queue) >= limit and not self._closed:
            await _wait_turn(self._backend, self._senders, lambda: limit - len(queue))
        self._offer(msg)

    def _drop(self, count: int = 1) -> None:
        self._dropped += count

    def _close(self) -> None:
        """No new messages from now on; wake every waiter so it can see that."""
        self._closed = True
        for waiters in (self._readers, self._senders):
            while waiters:
                waiters.popleft().unpark()

    def _cancel(self) -> None:
        """Close and stop the callback task now (the bus is closing)."""
        self._close()
        if self._scope is not None:
            self._scope.cancel()

    async def _run_callback(
        self,
        callback: Callback,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """The task that feeds ``callback``, one message at a time, in order."""
        self._has_callback = True
        queue = self._queue
        budget = _CHECKPOINT_EVERY
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                task_status.started()
                while True:
                    if not queue:
                        await self._wait_readable()
                        if not queue:
                            return
                    msg = self._take()
                    try:
                        await callback(msg)
                    except Exception:
                        self._callback_errors += 1
                        logger.exception("callback of subscription %r failed", self.pattern)
                    budget -= 1
                    if not budget:
                        budget = _CHECKPOINT_EVERY
                        await checkpoint()
        finally:
            self._scope = None
            if queue:
                # Cancelled with messages accepted but never handled: count them.
                self._drop(len(queue))
                queue.clear()
            if not self._closed:
                # Cancelled from outside (its task group ended) rather than unsubscribed:
                # nobody will read this subscription again, so take it off the bus instead
                # of letting publishers wait for room in it forever.
                with anyio.CancelScope(shield=True):
                    await self.unsubscribe()
            self._close()


class ActorSubscription(Subscription):
    """Delivers each message into an actor with ``await ref.tell(msg)``, in the publisher's
    task: no queue and no task of its own, since the mailbox is already both."""

    __slots__ = ("ref",)

    def __init__(
        self,
        pattern: str,
        queue: str | None,
        ref: ActorRef,
        *,
        backend: Backend,
        on_unsubscribe: Callable[[Subscription], Awaitable[None]],
    ) -> None:
        super().__init__(pattern, queue, backend=backend, on_unsubscribe=on_unsubscribe)
        self.ref = ref

    def __repr__(self) -> str:
        return f"<ActorSubscription {self.pattern!r} -> {self.ref.path}>"

    def _check_iterable(self) -> None:
        raise BusError(f"subscription {self.pattern!r} delivers to actor {self.ref.path}")

    def _ready(self) -> bool:
        return not self._closed and self.ref.alive

    def _offer(self, msg: Msg) -> bool:
        return self._closed  # an open one always goes through _put, which tells the actor

    async def _put(self, msg: Msg) -> None:
        if self._closed:
            return
        try:
            await self.ref.tell(msg)  # a dead actor's ref records a dead letter: counted there
        except MailboxFullError:
            self._drop()  # policy "raise": the mailbox counted the overflow too
        else:
            self._delivered += 1

    def statistics(self) -> SubscriptionStatistics:
        return SubscriptionStatistics(
            pattern=self.pattern,
            queue=self.queue,
            pending=0,
            pending_limit=None,
            delivered=self._delivered,
            dropped=self._dropped,
            callback_errors=0,
            actor=self.ref.path,
            closed=self._closed,
        )


async def _wait_turn(
    backend: Backend, waiters: deque[Parker], available: Callable[[], int]
) -> None:
    """Park in ``waiters`` until unparked. If we are woken and then cancelled before using
    our turn, hand the wake-up to the next waiter so that it is not lost."""
    parker = backend.new_parker()
    waiters.append(parker)
    try:
        await parker.park()
    except BaseException:
        if parker in waiters:
            waiters.remove(parker)
        elif waiters and available() > 0:
            waiters.popleft().unpark()
        raise
