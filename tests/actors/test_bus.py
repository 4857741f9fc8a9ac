"""One suite for every bus transport: in process on asyncio and trio, NATS on asyncio.

A few tests pin down where the transports differ on purpose (in-process backpressure versus
counted drops over NATS, round-robin versus random queue members); they say so and run on the
transports concerned only. Nothing here sleeps to wait: tests wait on events and messages
under small ``fail_after`` bounds, use ``flush`` + ``wait_all_tasks_blocked`` to let queued
work settle, and only the timeout tests spend (short) real time.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import msgspec
import pytest
from anyio import wait_all_tasks_blocked
from anyio.lowlevel import checkpoint

from somabrain.actors import (
    Actor,
    ActorSystem,
    BusClosedError,
    BusConnectError,
    BusError,
    InvalidSubjectError,
    NoRespondersError,
    RequestTimeoutError,
)
from somabrain.actors.bus import InProcessBus, Msg, Subscription
from somabrain.actors.codec import Codec
from somabrain.actors.nats_transport import NatsBus
from tests.servers import NatsServer

pytestmark = pytest.mark.anyio

AnyBus = InProcessBus | NatsBus

IN_PROCESS = ["inprocess-asyncio", "inprocess-trio"]
NATS = [pytest.param("nats-asyncio", marks=pytest.mark.integration)]


class Job(msgspec.Struct, frozen=True, tag=True):
    n: int


class Done(msgspec.Struct, frozen=True, tag=True):
    n: int
    by: str


@pytest.fixture(params=[*IN_PROCESS, *NATS])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def anyio_backend(transport: str) -> str:
    return transport.split("-")[1]


@pytest.fixture
def make_bus(transport: str, request: pytest.FixtureRequest) -> Callable[[], AnyBus]:
    """A factory of unstarted buses (an ActorSystem starts its own)."""
    if transport.startswith("nats"):
        server: NatsServer = request.getfixturevalue("nats_server")
        return lambda: NatsBus(server.url, codec=Codec([Job, Done]))
    return InProcessBus


@pytest.fixture
async def bus(make_bus: Callable[[], AnyBus]) -> AsyncIterator[AnyBus]:
    async with make_bus() as bus:
        yield bus


@pytest.fixture
def p() -> str:
    """A subject root of this test's own: tests share one NATS server."""
    return f"t{uuid.uuid4().hex[:10]}"


async def settle(bus: AnyBus) -> None:
    """Everything published so far has reached its subscriptions' queues or callbacks."""
    await bus.flush()
    await wait_all_tasks_blocked()


async def read(sub: Subscription, count: int) -> list[Any]:
    with anyio.fail_after(5):
        return [(await sub.next_msg()).data for _ in range(count)]


# ---------------------------------------------------------------------------- publishing


async def test_publish_subscribe_passes_data_and_headers(bus: AnyBus, p: str) -> None:
    sub = await bus.subscribe(f"{p}.greet")
    await bus.publish(f"{p}.greet", {"hello": ["world", 1]}, headers={"x-trace": "t-1"})
    await bus.publish(f"{p}.greet", Job(7))
    with anyio.fail_after(5):
        first, second = await sub.next_msg(), await sub.next_msg()
    assert first.subject == f"{p}.greet"
    assert first.data == {"hello": ["world", 1]}
    assert first.headers is not None and first.headers["x-trace"] == "t-1"
    assert first.reply is None
    assert second.data == Job(7)


async def test_wildcards(bus: AnyBus, p: str) -> None:
    subs = {
        "exact": await bus.subscribe(f"{p}.a.b"),
        "star": await bus.subscribe(f"{p}.*.b"),
        "tail": await bus.subscribe(f"{p}.a.>"),
        "all": await bus.subscribe(f"{p}.>"),
    }
    published = [f"{p}.a.b", f"{p}.x.b", f"{p}.a.b.c", f"{p}.a", f"{p}.z.z.z"]
    for subject in published:
        await bus.publish(subject, "msg")
    await bus.publish(f"{p}.a.b", "END")  # every subscription matches it: a FIFO barrier

    async def until_end(sub: Subscription) -> list[str]:
        seen = []
        with anyio.fail_after(5):
            async for msg in sub:
                if msg.data == "END":
                    return seen
                seen.append(msg.subject.removeprefix(f"{p}."))
        raise AssertionError("subscription ended early")

    assert await until_end(subs["exact"]) == ["a.b"]
    assert await until_end(subs["star"]) == ["a.b", "x.b"]
    assert await until_end(subs["tail"]) == ["a.b", "a.b.c"]
    assert await until_end(subs["all"]) == ["a.b", "x.b", "a.b.c", "a", "z.z.z"]


async def test_queue_groups_deliver_each_message_to_one_member(bus: AnyBus, p: str) -> None:
    count = 30
    received: dict[str, list[int]] = {}
    groups = {"workers": ["w1", "w2", "w3"], "auditors": ["a1", "a2"]}
    done = {group: anyio.Event() for group in groups}

    def member(group: str, name: str) -> Callable[[Msg], Any]:
        received[name] = []

        async def handle(msg: Msg) -> None:
            received[name].append(msg.data)
            if sum(len(received[m]) for m in groups[group]) == count:
                done[group].set()

        return handle

    for group, names in groups.items():
        for name in names:
            # Members may use different patterns: the group is the queue name.
            pattern = f"{p}.jobs.*" if name != "w3" else f"{p}.jobs.>"
            await bus.subscribe(pattern, queue=group, cb=member(group, name))
    plain = await bus.subscribe(f"{p}.jobs.>")
    for n in range(count):
        await bus.publish(f"{p}.jobs.run", n)

    with anyio.fail_after(5):
        for event in done.values():
            await event.wait()
    for names in groups.values():
        together = sorted(n for name in names for n in received[name])
        assert together == list(range(count)), "each message exactly once per group"
    assert await read(plain, count) == list(range(count)), "plain subscribers get everything"


@pytest.mark.parametrize("transport", IN_PROCESS, indirect=True)
async def test_in_process_queue_groups_are_round_robin(bus: AnyBus, p: str) -> None:
    members = [await bus.subscribe(f"{p}.q", queue="g") for _ in range(3)]
    pair = [await bus.subscribe(f"{p}.*", queue="pair") for _ in range(2)]
    for n in range(9):
        await bus.publish(f"{p}.q", n)
    assert [m.statistics().pending for m in members] == [3, 3, 3]
    assert [await read(m, 3) for m in members] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert [await read(m, n) for m, n in zip(pair, [5, 4], strict=True)] == [
        [0, 2, 4, 6, 8],
        [1, 3, 5, 7],
    ]


# -------------------------------------------------------------------------- request-reply


async def test_request_reply(bus: AnyBus, p: str) -> None:
    async def double(msg: Msg) -> None:
        await msg.respond(Done(msg.data.n * 2, by="doubler"))

    await bus.subscribe(f"{p}.svc.double", cb=double)
    with anyio.fail_after(5):
        reply = await bus.request(f"{p}.svc.double", Job(21))
    assert reply.data == Done(42, by="doubler")
    assert bus.statistics().requests == 1


async def test_request_reply_with_an_iterating_responder_and_headers(bus: AnyBus, p: str) -> None:
    sub = await bus.subscribe(f"{p}.svc.echo")

    async def serve() -> None:
        async for msg in sub:
            await msg.respond({"echo": msg.data, "trace": (msg.headers or {}).get("x-trace")})

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        with anyio.fail_after(5):
            for n in range(3):
                reply = await bus.request(f"{p}.svc.echo", n, headers={"x-trace": f"t{n}"})
                assert reply.data == {"echo": n, "trace": f"t{n}"}
        await sub.unsubscribe()  # ends serve()


async def test_request_to_a_queue_group_gets_one_answer(bus: AnyBus, p: str) -> None:
    answered: list[str] = []

    def responder(name: str) -> Callable[[Msg], Any]:
        async def answer(msg: Msg) -> None:
            answered.append(name)
            await msg.respond(name)

        return answer

    for name in ["r1", "r2", "r3"]:
        await bus.subscribe(f"{p}.svc", queue="pool", cb=responder(name))
    with anyio.fail_after(5):
        replies = [(await bus.request(f"{p}.svc", n)).data for n in range(6)]
    assert replies == answered  # one responder per request, the one that answered


async def test_no_responders_fails_immediately(bus: AnyBus, p: str) -> None:
    with anyio.fail_after(1), pytest.raises(NoRespondersError) as caught:
        await bus.request(f"{p}.nobody.home", 1, timeout=60)
    assert caught.value.subject == f"{p}.nobody.home"
    assert bus.statistics().no_responders == 1


async def test_request_timeout(bus: AnyBus, p: str) -> None:
    await bus.subscribe(f"{p}.silent")  # a responder that never answers
    with pytest.raises(RequestTimeoutError) as caught:
        await bus.request(f"{p}.silent", 1, timeout=0.05)
    assert isinstance(caught.value, TimeoutError)
    assert (caught.value.subject, caught.value.timeout) == (f"{p}.silent", 0.05)
    assert bus.statistics().request_timeouts == 1


async def test_respond_needs_a_reply_subject(bus: AnyBus, p: str) -> None:
    sub = await bus.subscribe(f"{p}.plain")
    await bus.publish(f"{p}.plain", 1)
    msg = await sub.next_msg(timeout=5)
    with pytest.raises(BusError, match="no reply subject"):
        await msg.respond(2)


async def test_explicit_reply_subjects(bus: AnyBus, p: str) -> None:
    replies = await bus.subscribe(f"{p}.replies.*")
    await bus.subscribe(f"{p}.svc", cb=lambda msg: msg.respond(msg.data + 1))
    await bus.publish(f"{p}.svc", 1, reply=f"{p}.replies.one")
    with anyio.fail_after(5):
        msg = await replies.next_msg()
    assert (msg.subject, msg.data) == (f"{p}.replies.one", 2)


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize("subject", ["", "a..b", ".a", "a.", "a b", "a\r\nPUB x 1", "x.*", "x.>"])
async def test_invalid_publish_subjects_are_refused(bus: AnyBus, subject: str) -> None:
    with pytest.raises(InvalidSubjectError):
        await bus.publish(subject, 1)
    with pytest.raises(InvalidSubjectError):
        await bus.request(subject, 1)
    with pytest.raises(InvalidSubjectError):
        await bus.publish("ok.subject", 1, reply=subject)


@pytest.mark.parametrize("pattern", ["", "a..b", "a b", "a\nb", "a.b*", "a.>.b", "a.b>"])
async def test_invalid_patterns_are_refused(bus: AnyBus, pattern: str) -> None:
    with pytest.raises(InvalidSubjectError):
        await bus.subscribe(pattern)
    assert bus.statistics().subscriptions == 0


async def test_invalid_queue_names_are_refused(bus: AnyBus, p: str) -> None:
    with pytest.raises(InvalidSubjectError, match="queue group"):
        await bus.subscribe(f"{p}.x", queue="two words")


# -------------------------------------------------------------------- subscription lifecycle


async def test_unsubscribe(bus: AnyBus, p: str) -> None:
    sub = await bus.subscribe(f"{p}.u.*")
    witness = await bus.subscribe(f"{p}.u.>")
    await bus.publish(f"{p}.u.1", 1)
    assert await read(sub, 1) == [1]

    await sub.unsubscribe()
    await sub.unsubscribe()  # idempotent
    await bus.publish(f"{p}.u.2", 2)
    assert await read(witness, 2) == [1, 2]  # the second one was published and routed
    assert [msg async for msg in sub] == []  # ...but not to the closed subscription
    with pytest.raises(BusClosedError):
        await sub.next_msg()
    stats = sub.statistics()
    assert (stats.closed, stats.delivered, stats.pending, stats.dropped) == (True, 1, 0, 0)

    await witness.unsubscribe()
    with pytest.raises(NoRespondersError):
        await bus.request(f"{p}.u.3", 3, timeout=5)
    assert bus.statistics().subscriptions == 0


async def test_pending_messages_survive_unsubscribe_and_statistics(bus: AnyBus, p: str) -> None:
    sub = await bus.subscribe(f"{p}.s", pending_limit=10)
    for n in range(3):
        await bus.publish(f"{p}.s", n)
    await settle(bus)
    stats = sub.statistics()
    assert (stats.pending, stats.delivered, stats.dropped, stats.pending_limit) == (3, 0, 0, 10)
    assert sub.next_msg_nowait().data == 0
    assert (sub.statistics().pending, sub.statistics().delivered) == (2, 1)

    await sub.unsubscribe()
    assert [msg.data async for msg in sub] == [1, 2]
    stats = sub.statistics()
    assert (stats.pending, stats.delivered, stats.dropped, stats.closed) == (0, 3, 0, True)
    assert stats.pattern == f"{p}.s" and stats.queue is None and stats.actor is None


async def test_next_msg_timeout_and_nowait(bus: AnyBus, p: str) -> None:
    sub = await bus.subscribe(f"{p}.quiet")
    with pytest.raises(anyio.WouldBlock):
        sub.next_msg_nowait()
    with pytest.raises(TimeoutError):
        await sub.next_msg(timeout=0.01)


async def test_callback_errors_are_counted_and_the_subscription_goes_on(
    bus: AnyBus, p: str
) -> None:
    got: list[int] = []
    done = anyio.Event()

    async def flaky(msg: Msg) -> None:
        if msg.data == 1:
            raise ValueError("bad message")
        got.append(msg.data)
        if msg.data == 2:
            done.set()

    sub = await bus.subscribe(f"{p}.cb", cb=flaky)
    for n in range(3):
        await bus.publish(f"{p}.cb", n)
    with anyio.fail_after(5):
        await done.wait()
    assert got == [0, 2]
    stats = sub.statistics()
    assert (stats.delivered, stats.callback_errors, stats.dropped) == (3, 1, 0)
    with pytest.raises(BusError, match="delivers to a callback"):
        await sub.next_msg()


async def test_close(make_bus: Callable[[], AnyBus], p: str) -> None:
    async with make_bus() as bus:
        sub = await bus.subscribe(f"{p}.c")
        await bus.publish(f"{p}.c", 1)
        await settle(bus)
        await bus.subscribe(f"{p}.silent")
        outcome: list[str] = []

        async def waiting_request() -> None:
            with pytest.raises(BusClosedError):
                await bus.request(f"{p}.silent", 1, timeout=30)
            outcome.append("failed with BusClosedError")

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiting_request)
            await wait_all_tasks_blocked()
            await bus.close()
    assert outcome == ["failed with BusClosedError"]
    assert [msg.data async for msg in sub] == [1]  # what had arrived can still be read
    assert sub.closed and bus.statistics().closed
    with pytest.raises(BusClosedError):
        await bus.publish(f"{p}.c", 2)
    with pytest.raises(BusClosedError):
        await bus.subscribe(f"{p}.c")
    await bus.close()  # idempotent


async def test_close_cancels_callbacks_and_counts_what_they_missed(
    make_bus: Callable[[], AnyBus], p: str
) -> None:
    started = anyio.Event()

    async def stuck(msg: Msg) -> None:
        started.set()
        await anyio.sleep_forever()

    async with make_bus() as bus:
        sub = await bus.subscribe(f"{p}.stuck", cb=stuck)
        for n in range(3):
            await bus.publish(f"{p}.stuck", n)
        with anyio.fail_after(5):
            await started.wait()
        await settle(bus)
        assert sub.statistics().pending == 2
    stats = sub.statistics()
    assert (stats.delivered, stats.pending, stats.dropped, stats.closed) == (1, 0, 2, True)


async def test_a_callback_outliving_its_task_group_leaves_the_bus(
    make_bus: Callable[[], AnyBus], p: str
) -> None:
    bus = make_bus()
    try:
        async with anyio.create_task_group() as tg:
            await bus.start(tg)
            sub = await bus.subscribe(f"{p}.cb", cb=lambda msg: checkpoint(), pending_limit=1)
            tg.cancel_scope.cancel()
        assert sub.closed and bus.statistics().subscriptions == 0
        with anyio.fail_after(5):
            for n in range(3):  # nobody reads any more, and nobody waits for room either
                await bus.publish(f"{p}.cb", n)
    finally:
        await bus.close()


# ------------------------------------------------------------------------ full subscribers


@pytest.mark.parametrize("transport", IN_PROCESS, indirect=True)
async def test_in_process_full_subscription_applies_backpressure(bus: AnyBus, p: str) -> None:
    sub = await bus.subscribe(f"{p}.bp", pending_limit=2)
    published: list[int] = []

    async def producer() -> None:
        for n in range(5):
            await bus.publish(f"{p}.bp", n)
            published.append(n)

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        await wait_all_tasks_blocked()
        assert published == [0, 1]  # the third publish waits for room
        assert sub.statistics().pending == 2
        assert await read(sub, 1) == [0]
        await wait_all_tasks_blocked()
        assert published == [0, 1, 2]
        assert await read(sub, 4) == [1, 2, 3, 4]
    assert sub.statistics().dropped == 0


@pytest.mark.parametrize("transport", NATS, indirect=True)
async def test_nats_full_subscription_counts_drops(bus: AnyBus, p: str) -> None:
    sub = await bus.subscribe(f"{p}.slow", pending_limit=2)
    for n in range(5):
        await bus.publish(f"{p}.slow", n)
    await settle(bus)
    stats = sub.statistics()
    assert (stats.pending, stats.dropped) == (2, 3)
    assert await read(sub, 2) == [0, 1]


@pytest.mark.parametrize("transport", IN_PROCESS, indirect=True)
async def test_in_process_request_timeout_covers_backpressure(bus: AnyBus, p: str) -> None:
    await bus.subscribe(f"{p}.stuck", pending_limit=1)
    for _ in range(2):  # the first fills the queue, the second waits for room, in vain
        with pytest.raises(RequestTimeoutError):
            await bus.request(f"{p}.stuck", 1, timeout=0.02)


@pytest.mark.parametrize("transport", IN_PROCESS, indirect=True)
async def test_in_process_late_replies_are_counted(bus: AnyBus, p: str) -> None:
    for name in ["one", "two"]:
        await bus.subscribe(f"{p}.both", cb=lambda msg, name=name: msg.respond(name))
    assert (await bus.request(f"{p}.both", 1, timeout=5)).data in {"one", "two"}
    await wait_all_tasks_blocked()
    assert bus.statistics().late_replies == 1


# --------------------------------------------------------------------------------- actors


class Collector(Actor):
    """Records the messages it gets; answers requests with its name."""

    def __init__(self, seen: list[tuple[str, Msg]], expected: int, done: anyio.Event) -> None:
        self.seen, self.expected, self.done = seen, expected, done

    async def receive(self, message: Any) -> Any:
        assert isinstance(message, Msg)
        if message.reply:
            await message.respond(Done(message.data, by=self.context.name))
            return None
        self.seen.append((self.context.name, message))
        if len(self.seen) == self.expected:
            self.done.set()
        return None


async def test_subscribe_actor_delivers_into_the_mailbox(
    make_bus: Callable[[], AnyBus], p: str
) -> None:
    seen: list[tuple[str, Msg]] = []
    done = anyio.Event()
    async with ActorSystem("bus-test", bus=make_bus()) as system:
        bus = system.bus
        ref = await system.spawn(lambda: Collector(seen, 3, done), "collector")
        sub = await bus.subscribe_actor(f"{p}.act.*", ref)
        for n in range(3):
            await bus.publish(f"{p}.act.tell", n)
        with anyio.fail_after(5):
            await done.wait()
            reply = await bus.request(f"{p}.act.ask", 5)
        assert [(name, m.subject, m.data) for name, m in seen] == [
            ("collector", f"{p}.act.tell", n) for n in range(3)
        ]
        assert reply.data == Done(5, by="collector")
        stats = sub.statistics()
        assert (stats.actor, stats.delivered, stats.dropped) == (ref.path, 4, 0)
        with pytest.raises(BusError, match="delivers to actor"):
            await sub.next_msg()
        await sub.unsubscribe()
        with pytest.raises(NoRespondersError):
            await bus.request(f"{p}.act.ask", 6)


async def test_actors_in_a_queue_group(make_bus: Callable[[], AnyBus], p: str) -> None:
    seen: list[tuple[str, Msg]] = []
    done = anyio.Event()
    count = 10
    async with ActorSystem("bus-test", bus=make_bus()) as system:
        for name in ["a", "b"]:
            ref = await system.spawn(lambda: Collector(seen, count, done), name)
            await system.bus.subscribe_actor(f"{p}.pool", ref, queue="pool")
        for n in range(count):
            await system.bus.publish(f"{p}.pool", n)
        with anyio.fail_after(5):
            await done.wait()
    assert sorted(m.data for _, m in seen) == list(range(count))
    if isinstance(system.bus, InProcessBus):
        assert sorted(name for name, _ in seen) == ["a"] * 5 + ["b"] * 5


# ----------------------------------------------------------------------- transport edges


@pytest.mark.parametrize("transport", ["inprocess-asyncio"], indirect=True)
async def test_a_bus_must_be_started_once() -> None:
    bus = InProcessBus()
    with pytest.raises(RuntimeError, match="not started"):
        await bus.publish("a", 1)
    async with bus, anyio.create_task_group() as tg:
        with pytest.raises(RuntimeError, match="already started"):
            await bus.start(tg)


@pytest.mark.parametrize("transport", ["nats-trio"], indirect=True)
async def test_nats_bus_refuses_trio() -> None:
    with pytest.raises(RuntimeError, match="needs the asyncio backend"):
        async with NatsBus("nats://127.0.0.1:4222"):
            pass


@pytest.mark.parametrize("transport", ["nats-asyncio"], indirect=True)
async def test_nats_bus_reports_connection_failure() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bus = NatsBus(f"nats://127.0.0.1:{port}", connect_timeout=0.2)
    with anyio.fail_after(5), pytest.raises(BusError, match="cannot connect to NATS"):
        async with bus:
            pass


@pytest.mark.parametrize("transport", ["nats-asyncio"], indirect=True)
async def test_nats_bus_fails_its_start_at_the_first_refusal() -> None:
    """One attempt per start (nats-py would keep trying until connect_timeout): whoever
    starts the bus decides when to try again. No credentials in what it says."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bus = NatsBus(f"nats://user:pw-secret@127.0.0.1:{port}", connect_timeout=30)
    with anyio.fail_after(5), pytest.raises(BusConnectError) as caught:
        async with bus:
            pass
    assert caught.value.url == f"nats://***@127.0.0.1:{port}"
    assert caught.value.reason == "connection refused"
    assert "pw-secret" not in str(caught.value)


@pytest.mark.parametrize("transport", ["nats-asyncio"], indirect=True)
async def test_nats_bus_reports_refused_credentials_without_showing_them() -> None:
    with NatsServer.running("--user", "soma", "--pass", "right-secret") as server:
        for userinfo in ("soma:wrong-secret", "a-token-secret"):
            bus = NatsBus(f"nats://{userinfo}@127.0.0.1:{server.port}", connect_timeout=30)
            with anyio.fail_after(5), pytest.raises(BusConnectError) as caught:
                async with bus:
                    pass
            # nats-py sees the server's error or the connection it then closes, whichever
            # reaches it first.
            reason = caught.value.reason
            assert "Authorization Violation" in reason or "refuse the credentials" in reason
            assert "secret" not in str(caught.value)


@pytest.mark.parametrize("transport", ["nats-asyncio"], indirect=True)
async def test_nats_bus_reports_a_malformed_url_as_a_connect_error() -> None:
    bus = NatsBus("nats://user:pw-secret@127.0.0.1:not-a-port")
    with anyio.fail_after(5), pytest.raises(BusConnectError) as caught:
        async with bus:
            pass
    assert "pw-secret" not in str(caught.value)
