"""The workloads the runtime benchmark measures on SomaBrain: tell, ask and the subject bus.

Rates in messages per second, each under asyncio and trio unless said otherwise:

* ``soma.tell.<backend>``: one task does ``await ref.tell(msg)`` N times into one actor spawned
  with ``ActorSystem.spawn`` (default mailbox: 1024, policy ``wait``), then one ``ask`` that
  returns only when every tell was handled.
* ``soma.ask.<backend>``: one task does N sequential ``await ref.ask(msg)`` round trips.
* ``soma.ask16.<backend>``: 16 tasks share N asks to the same actor (16 in flight).
* ``bus.<how>.<backend>``: messages published on the in-process subject bus (``system.bus``)
  to ``soma.mem.t<i>.remember`` (8 tenants in turn), counted when one subscriber on
  ``soma.mem.*.remember`` (or ``soma.>``) has seen the last one; ``cb`` = ``subscribe(cb=)``,
  ``iter`` = ``async for msg in sub``, ``actor`` = ``subscribe_actor`` into an actor's mailbox.
* ``natsbus.cb.asyncio`` (when ``nats-server`` is installed; asyncio only, as nats-py is): the
  same through ``NatsBus`` (codec on both sides) against a real ``nats-server``. The server and
  this figure's baseline, raw nats-py, are in :mod:`benchmarks._runtime_baselines`; both
  subscribers get room for all N messages.

Every handler does the same work (count the message, return the count). The baselines reuse
``timed_tells`` / ``timed_asks``, the message and the subjects defined here, so that both sides
of a ratio run the same loop.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import anyio
import msgspec

from somabrain.actors import Actor, ActorRef, ActorSystem

__all__ = [
    "CONCURRENT_ASKERS",
    "FULL_WILDCARD",
    "LIMIT_SECONDS",
    "MESSAGE",
    "SUBJECTS",
    "TENANTS",
    "WILDCARD",
    "Counter",
    "Remember",
    "bus_actor",
    "bus_available",
    "bus_callback",
    "bus_iterate",
    "check_handled",
    "nats_bus",
    "nats_transport_available",
    "soma_ask",
    "soma_ask_concurrent",
    "soma_tell",
    "timed_asks",
    "timed_tells",
]

CONCURRENT_ASKERS = 16
TENANTS = 8
SUBJECTS = tuple(f"soma.mem.t{i}.remember" for i in range(TENANTS))
WILDCARD = "soma.mem.*.remember"
FULL_WILDCARD = "soma.>"
LIMIT_SECONDS = 30.0  # a delivery that takes longer than this is reported as failed


class Remember(msgspec.Struct, frozen=True, tag=True):
    """A typical small message (what the memory actors receive)."""

    tenant: str
    content: str


MESSAGE = Remember("t1", "the cat sat on the mat")


def check_handled(got: int, expected: int, what: str) -> None:
    """Fail the run when an actor handled another number of messages than it was sent: a
    rate computed over lost (or extra) messages would mean nothing."""
    if got != expected:
        raise AssertionError(f"{what}: expected {expected} messages handled, got {got}")


# ================================================================================ the kernel


class Counter(Actor):
    """Counts messages; the reply to an ask is the count so far."""

    def __init__(self) -> None:
        self.count = 0

    async def receive(self, message: Any) -> Any:
        self.count += 1
        return self.count


class _Countable(Protocol):
    """What the tell/ask timings need: our ActorRef and the bare baseline both fit."""

    async def tell(self, message: Any) -> None: ...

    async def ask(self, message: Any) -> Any: ...


async def timed_tells(target: _Countable, n: int, label: str) -> float:
    """``n`` tells and one ask (which waits for all of them); returns the seconds taken."""
    tell = target.tell
    message = MESSAGE
    before = await target.ask(message)
    start = time.perf_counter()
    for _ in range(n):
        await tell(message)
    after = await target.ask(message)
    elapsed = time.perf_counter() - start
    check_handled(after - before, n + 1, label)
    return elapsed


async def timed_asks(target: _Countable, n: int, label: str) -> float:
    """``n`` sequential asks from one task."""
    ask = target.ask
    message = MESSAGE
    before = await ask(message)
    start = time.perf_counter()
    for _ in range(n):
        await ask(message)
    elapsed = time.perf_counter() - start
    check_handled(await ask(message) - before, n + 1, label)
    return elapsed


async def soma_tell(ref: ActorRef, n: int) -> float:
    return await timed_tells(ref, n, "soma tell")


async def soma_ask(ref: ActorRef, n: int) -> float:
    return await timed_asks(ref, n, "soma ask")


async def soma_ask_concurrent(ref: ActorRef, n: int, askers: int = CONCURRENT_ASKERS) -> float:
    """``n`` asks shared by ``askers`` tasks, each asking sequentially (``askers`` in flight)."""
    ask = ref.ask
    message = MESSAGE
    per_task = n // askers

    async def asker() -> None:
        for _ in range(per_task):
            await ask(message)

    before = await ask(message)
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(askers):
            tg.start_soon(asker)
    elapsed = time.perf_counter() - start
    check_handled(await ask(message) - before, per_task * askers + 1, "soma ask (concurrent)")
    return elapsed


# ================================================================================ the bus


def bus_available(bus: Any) -> str | None:
    """``None`` when ``bus`` has the subscribe/publish API, else why not."""
    for name in ("subscribe", "publish"):
        if not callable(getattr(bus, name, None)):
            return f"{type(bus).__name__} has no {name}() yet"
    return None


async def bus_callback(
    bus: Any, n: int, pattern: str = WILDCARD, *, pending_limit: int | None = None
) -> float:
    """Publish ``n`` messages over the tenants' subjects, delivered to a ``cb=`` subscriber.

    ``pending_limit`` is the subscription's queue (default: the bus's own default).
    """
    received = 0
    done = anyio.Event()

    async def on_message(_msg: Any) -> None:
        nonlocal received
        received += 1
        if received == n:
            done.set()

    options = {} if pending_limit is None else {"pending_limit": pending_limit}
    sub = await bus.subscribe(pattern, cb=on_message, **options)
    try:
        elapsed = await _publish_until(bus, n, done)
        _check_delivery(sub, received, n, pattern)
    finally:
        await sub.unsubscribe()
    return elapsed


async def _publish(bus: Any, n: int) -> None:
    """``n`` messages to the tenants' subjects, in turn."""
    publish = bus.publish
    subjects = SUBJECTS
    data = MESSAGE
    for i in range(n):
        await publish(subjects[i % TENANTS], data)


async def _publish_until(bus: Any, n: int, done: anyio.Event) -> float:
    """Seconds to publish ``n`` messages and see ``done`` set (at most ``LIMIT_SECONDS``)."""
    start = time.perf_counter()
    await _publish(bus, n)
    with anyio.move_on_after(LIMIT_SECONDS):
        await done.wait()
    return time.perf_counter() - start


async def bus_iterate(bus: Any, n: int, pattern: str = WILDCARD) -> float:
    """The same, with the subscriber consuming ``async for msg in sub`` in its own task."""
    received = 0
    done = anyio.Event()
    sub = await bus.subscribe(pattern)

    async def consume() -> None:
        nonlocal received
        async for _msg in sub:
            received += 1
            if received == n:
                done.set()
                return

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            elapsed = await _publish_until(bus, n, done)
            tg.cancel_scope.cancel()
        _check_delivery(sub, received, n, pattern)
    finally:
        await sub.unsubscribe()
    return elapsed


async def bus_actor(system: ActorSystem, bus: Any, n: int, pattern: str = WILDCARD) -> float:
    """The same, delivered into an actor's mailbox by ``subscribe_actor``; ends with an ask."""
    ref = await system.spawn(Counter, f"bus-counter-{time.monotonic_ns()}")
    sub = await bus.subscribe_actor(pattern, ref)
    try:
        start = time.perf_counter()
        await _publish(bus, n)
        # In process the tells are queued before publish returns, so the first ask is the
        # last message; a transport that hands over asynchronously needs a few more polls.
        polls = 0
        with anyio.move_on_after(LIMIT_SECONDS):
            while True:
                count = await ref.ask(None)
                polls += 1
                if count - polls >= n:
                    break
                await anyio.sleep(0.0005)
        elapsed = time.perf_counter() - start
        _check_delivery(sub, count - polls, n, pattern)
    finally:
        await sub.unsubscribe()
        ref.stop()
    return elapsed


def _check_delivery(sub: Any, received: int, n: int, pattern: str) -> None:
    if received != n:
        dropped = sub.statistics().dropped
        raise AssertionError(
            f"subscriber on {pattern} got {received} of {n} messages ({dropped} counted dropped)"
        )


# ================================================================================ the bus over NATS


async def nats_bus(url: str, n: int, pattern: str = WILDCARD) -> float:
    """``NatsBus`` (asyncio only) against the same server: publish the ``Remember`` struct
    (encoded by the bus's codec), one wildcard ``cb=`` subscriber (decoded by the codec).

    The subscription gets room for all ``n`` messages, as the raw baseline does, so that the
    figure is throughput and not the slow-consumer policy.
    """
    from somabrain.actors.codec import Codec
    from somabrain.actors.nats_transport import NatsBus

    async with NatsBus(url, codec=Codec([Remember])) as bus:
        return await bus_callback(bus, n, pattern, pending_limit=n + 1)


def nats_transport_available() -> str | None:
    """``None`` when ``somabrain.actors.nats_transport`` imports, else why not."""
    try:
        import somabrain.actors.nats_transport  # noqa: F401
    except ImportError as exc:
        return f"somabrain.actors.nats_transport: {exc}"
    return None
