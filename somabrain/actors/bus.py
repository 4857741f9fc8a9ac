"""The subject bus: NATS semantics behind one interface, two transports.

Subjects are dot-separated tokens; subscriptions take patterns where ``*`` matches one token
and ``>`` the rest (:mod:`.subjects`). Every plain subscriber whose pattern matches gets each
message; subscribers that name a queue group share the messages of that group, exactly one
member getting each. ``request`` publishes with a private reply subject (an inbox) and waits
for the first answer, failing at once with :class:`NoRespondersError` when nothing is
subscribed and with :class:`RequestTimeoutError` when nobody answers in time.

Two transports pass the same test suite: :class:`InProcessBus` (here: objects passed as they
are, no encoding) and ``NatsBus`` (:mod:`.nats_transport`: a real NATS server, encoded with a
:class:`~.codec.Codec`).

Full subscribers: backpressure in process, counted drops over NATS
-------------------------------------------------------------------
Each subscription has a bounded queue of pending messages. In process, a publish to a full
subscription *waits* for room, as ``ActorRef.tell`` does with the default mailbox policy: a
slow consumer slows its producers instead of losing messages, and nothing is dropped. The
price is the usual one of backpressure: a consumer that publishes into its own full queue
waits for itself, exactly like an actor telling itself into a full mailbox; keep handlers
that publish to their own subjects off the subscriptions they read, or give them room.
Over NATS the server cannot be made to wait for one subscriber, so a message that does not
fit is dropped and *counted* (``Subscription.statistics().dropped``), which is what NATS
calls a slow consumer. Either way nothing disappears without a counter going up.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol

import anyio
import anyio.abc
import msgspec
from anyio.lowlevel import checkpoint

from ._backend import Backend, Reply, current_backend
from ._exceptions import BusClosedError, NoRespondersError, RequestTimeoutError
from ._subscription import (
    DEFAULT_NEXT_MSG_TIMEOUT,
    DEFAULT_PENDING_LIMIT,
    ActorSubscription,
    Callback,
    Msg,
    Subscription,
    SubscriptionStatistics,
)
from .ref import ActorRef
from .subjects import SubjectIndex, SubjectMatch, validate_pattern, validate_queue, validate_subject

__all__ = [
    "DEFAULT_NEXT_MSG_TIMEOUT",
    "DEFAULT_PENDING_LIMIT",
    "DEFAULT_REQUEST_TIMEOUT",
    "Bus",
    "BusBase",
    "BusStatistics",
    "Callback",
    "InProcessBus",
    "Msg",
    "Subscription",
    "SubscriptionStatistics",
]

DEFAULT_REQUEST_TIMEOUT = 5.0

# Publishing into subscribers with room never suspends; without an occasional checkpoint a
# publishing loop would starve every other task (including the subscribers it feeds).
_CHECKPOINT_EVERY = 128


class BusStatistics(msgspec.Struct, frozen=True):
    transport: str
    subscriptions: int
    published: int
    requests: int
    no_responders: int
    request_timeouts: int
    #: Replies that arrived after their request gave up (or a second responder's answer).
    late_replies: int
    closed: bool


class Bus(Protocol):
    """What the node and the actors use; implemented by ``InProcessBus`` and ``NatsBus``."""

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Connect, and run callback tasks in ``task_group`` from now on."""

    async def close(self) -> None:
        """Stop: close every subscription, fail pending requests. Idempotent."""

    async def publish(
        self,
        subject: str,
        data: Any,
        *,
        reply: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send ``data`` to every subscriber of ``subject`` (one per queue group)."""

    async def subscribe(
        self,
        pattern: str,
        *,
        queue: str | None = None,
        cb: Callback | None = None,
        pending_limit: int = DEFAULT_PENDING_LIMIT,
    ) -> Subscription:
        """Subscribe to ``pattern``; with ``cb``, a task feeds it the messages in order."""

    async def subscribe_actor(
        self, pattern: str, ref: ActorRef, *, queue: str | None = None
    ) -> Subscription:
        """Deliver every matching message into the actor (``await ref.tell(msg)``)."""

    async def request(
        self,
        subject: str,
        data: Any,
        *,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
        headers: Mapping[str, str] | None = None,
    ) -> Msg:
        """Publish with a reply inbox and return the first reply."""

    async def flush(self, timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        """Wait until everything published so far has reached the transport's router."""

    def statistics(self) -> BusStatistics:
        """Counters for the whole bus (each subscription has its own)."""


class BusBase:
    """Lifecycle shared by the transports: the task group for callbacks, standalone use as an
    async context manager (which brings its own task group), the closed flag."""

    transport = "base"

    def __init__(self) -> None:
        self._task_group: anyio.abc.TaskGroup | None = None
        self._own_task_group: anyio.abc.TaskGroup | None = None
        self._backend: Backend | None = None
        self._closed = False
        self._subscriptions: dict[Subscription, None] = {}

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        if self._task_group is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        if self._closed:
            raise BusClosedError(f"{type(self).__name__} is closed")
        self._backend = current_backend()
        self._task_group = task_group

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        subscriptions, self._subscriptions = self._subscriptions, {}
        for subscription in subscriptions:
            subscription._cancel()

    async def __aenter__(self) -> BusBase:
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._own_task_group = task_group
        try:
            await self.start(task_group)
        except BaseException:
            # Nothing runs in the group yet: leave it quietly and raise the error as it is
            # (handing it to the group would wrap it in an exception group on trio).
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        task_group = self._own_task_group
        assert task_group is not None, "not entered"
        try:
            with anyio.CancelScope(shield=True):
                await self.close()
        finally:
            task_group.cancel_scope.cancel()
            suppress = await task_group.__aexit__(exc_type, exc, tb)
        return suppress

    def _check_open(self) -> Backend:
        if self._closed:
            raise BusClosedError(f"{type(self).__name__} is closed")
        if self._backend is None:
            raise RuntimeError(
                f"{type(self).__name__} is not started: use 'async with' or start(task_group)"
            )
        return self._backend

    @staticmethod
    def _validate_subscription(pattern: str, queue: str | None) -> None:
        validate_pattern(pattern)
        if queue is not None:
            validate_queue(queue)

    async def _start_callback(self, subscription: Subscription, cb: Callback) -> None:
        assert self._task_group is not None
        await self._task_group.start(
            subscription._run_callback, cb, name=f"bus callback {subscription.pattern}"
        )

    # ------------------------------------------------------------------ subscribing

    async def subscribe(
        self,
        pattern: str,
        *,
        queue: str | None = None,
        cb: Callback | None = None,
        pending_limit: int = DEFAULT_PENDING_LIMIT,
    ) -> Subscription:
        backend = self._check_open()
        self._validate_subscription(pattern, queue)
        subscription = Subscription(
            pattern,
            queue,
            backend=backend,
            on_unsubscribe=self._unsubscribe,
            pending_limit=pending_limit,
        )
        if cb is not None:
            await self._start_callback(subscription, cb)
        await self._attach(subscription, pending_limit)
        return subscription

    async def subscribe_actor(
        self, pattern: str, ref: ActorRef, *, queue: str | None = None
    ) -> Subscription:
        backend = self._check_open()
        self._validate_subscription(pattern, queue)
        subscription = ActorSubscription(
            pattern, queue, ref, backend=backend, on_unsubscribe=self._unsubscribe
        )
        await self._attach(subscription, DEFAULT_PENDING_LIMIT)
        return subscription

    async def _attach(self, subscription: Subscription, pending_limit: int) -> None:
        """Route messages matching the subscription to it (the transport-specific part)."""
        raise NotImplementedError

    async def _unsubscribe(self, subscription: Subscription) -> None:
        raise NotImplementedError


class _ReplyRouter:
    """The one subscription behind every in-process request: ``<inbox prefix>.*``. A reply
    resolves its request's slot by token, so requests never touch the index (no churn, and
    the subject cache stays warm)."""

    __slots__ = ("late", "pending", "prefix")

    queue = None  # never in a queue group

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pending: dict[str, Reply] = {}
        self.late = 0

    def _ready(self) -> bool:
        return True

    def _offer(self, msg: Msg) -> bool:
        reply = self.pending.pop(msg.subject[len(self.prefix) :], None)
        if reply is None:
            self.late += 1
        else:
            reply.set_result(msg)
        return True

    async def _put(self, msg: Msg) -> None:  # pragma: no cover - _offer always succeeds
        self._offer(msg)

    def _cancel(self) -> None:
        for reply in self.pending.values():
            reply.set_exception(BusClosedError("the bus closed before the reply arrived"))
        self.pending.clear()


_Target = Subscription | _ReplyRouter


class InProcessBus(BusBase):
    """The bus inside one process: objects are delivered as they are, never encoded.

    Queue groups pick their member round-robin (NATS picks at random; round-robin spreads as
    evenly and keeps tests deterministic), skipping members that are full or whose actor is
    dead while another one can take the message.
    """

    transport = "inprocess"

    def __init__(self, *, cache_size: int = 4096) -> None:
        super().__init__()
        self._index: SubjectIndex[_Target] = SubjectIndex(cache_size)
        self._router = _ReplyRouter(f"_INBOX.{secrets.token_hex(8)}.")
        self._index.add(self._router.prefix + "*", self._router)
        self._budget = _CHECKPOINT_EVERY
        self._cursors: dict[str | None, int] = {}  # queue group -> round-robin position
        self._request_seq = 0
        self._published = 0
        self._requests = 0
        self._no_responders = 0
        self._request_timeouts = 0

    async def __aenter__(self) -> InProcessBus:
        await super().__aenter__()
        return self

    async def close(self) -> None:
        if not self._closed:
            await super().close()
            self._router._cancel()
            self._index = SubjectIndex()

    # ------------------------------------------------------------------ subscribing

    async def _attach(self, subscription: Subscription, pending_limit: int) -> None:
        self._index.add(subscription.pattern, subscription, subscription.queue)
        self._subscriptions[subscription] = None

    async def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            del self._subscriptions[subscription]
            self._index.remove(subscription.pattern, subscription, subscription.queue)

    # ------------------------------------------------------------------ publishing

    async def publish(
        self,
        subject: str,
        data: Any,
        *,
        reply: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if self._closed or self._backend is None:
            self._check_open()
        self._budget -= 1
        if not self._budget:
            self._budget = _CHECKPOINT_EVERY
            await checkpoint()  # before delivering: a cancelled publish delivered nothing
        match = self._index.cached(subject)
        if match is None:
            match = self._match(subject)
        if reply is not None:
            validate_subject(reply)
        self._published += 1
        plain = match.plain
        if len(plain) == 1 and not match.groups:
            # The common case (one subscriber, often a wildcard one), kept short.
            msg = Msg(subject, data, reply, headers, self)
            target = plain[0]
            if not target._offer(msg):
                await target._put(msg)
        elif plain or match.groups:
            msg = Msg(subject, data, reply, headers, self)
            waiting = self._offer_all(match, msg)
            if waiting is not None:
                for target in waiting:
                    await target._put(msg)

    async def request(
        self,
        subject: str,
        data: Any,
        *,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
        headers: Mapping[str, str] | None = None,
    ) -> Msg:
        backend = self._check_open()
        match = self._match(subject)
        self._requests += 1
        if not (match.plain or match.groups):
            self._no_responders += 1
            raise NoRespondersError(subject)
        self._request_seq += 1
        token = str(self._request_seq)
        slot = backend.new_reply()
        router = self._router
        router.pending[token] = slot
        try:
            msg = Msg(subject, data, router.prefix + token, headers, bus=self)
            remaining = timeout
            waiting = self._offer_all(match, msg)
            if waiting is not None:
                # Backpressure counts against the request's timeout too.
                start = anyio.current_time()
                with anyio.move_on_after(timeout):
                    for target in waiting:
                        await target._put(msg)
                remaining = max(0.0, timeout - (anyio.current_time() - start))
            answer: Msg = await slot.wait(remaining, lambda: self._timed_out(subject, timeout))
            return answer
        finally:
            router.pending.pop(token, None)

    async def flush(self, timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        """Nothing to flush in process: a publish has reached its subscribers on return."""
        self._check_open()

    def _timed_out(self, subject: str, timeout: float) -> RequestTimeoutError:
        self._request_timeouts += 1
        return RequestTimeoutError(subject, timeout)

    def _match(self, subject: str) -> SubjectMatch[_Target]:
        if subject.startswith(self._router.prefix):
            # One-shot reply subjects: do not let them evict the hot subjects from the cache.
            return self._index.match(subject, cache=False)
        return self._index.match(subject)

    def _offer_all(self, match: SubjectMatch[_Target], msg: Msg) -> list[_Target] | None:
        """Offer ``msg`` to every target that can take it now. Returns ``None`` when all
        did, else the targets that need an awaited ``_put`` (backpressure, actors)."""
        waiting: list[_Target] | None = None
        for target in match.plain:
            if not target._offer(msg):
                if waiting is None:
                    waiting = []
                waiting.append(target)
        for members in match.groups:
            target = self._pick(members)
            if not target._offer(msg):
                if waiting is None:
                    waiting = []
                waiting.append(target)
        return waiting

    def _pick(self, members: tuple[_Target, ...]) -> _Target:
        count = len(members)
        if count == 1:
            return members[0]
        group = members[0].queue
        start = self._cursors.get(group, 0)
        self._cursors[group] = start + 1
        for offset in range(count):
            member = members[(start + offset) % count]
            if member._ready():
                return member
        return members[start % count]

    def statistics(self) -> BusStatistics:
        return BusStatistics(
            transport=self.transport,
            subscriptions=len(self._subscriptions),
            published=self._published,
            requests=self._requests,
            no_responders=self._no_responders,
            request_timeouts=self._request_timeouts,
            late_replies=self._router.late,
            closed=self._closed,
        )
