"""The Kafka bridge: bus subjects to Kafka topics, and topics back into subjects.

Config (``[kafka]`` for the connection, ``[bridge]`` for the routes)::

    [kafka]
    bootstrap = "127.0.0.1:9092"

    [[bridge.forward]]              # every message on the subjects -> the topic
    subjects = "soma.memory.events"
    topic = "soma.memory.events"

    [[bridge.consume]]              # the topic -> the subject (a consumer group)
    topic = "soma.feedback"
    subject = "soma.in.feedback"
    group = "soma-reward"

Forwarding: the bridge subscribes to each pattern and produces every message to its topic
(acks=all), in batches; the record key is the message's ``key`` header, else its subject, so
the messages of one subject stay in order in one partition. Messages are JSON (msgspec), which
any consumer can read; ``bytes`` payloads pass through untouched. While Kafka is unreachable
the bridge keeps retrying with the batch in hand and, because the in-process bus applies
backpressure, publishers slow down instead of messages being dropped; over NATS a full
subscription counts its drops (see :mod:`.bus`). Audit events do not take this path: the audit
writer has its own cascade with a stronger guarantee.

Consuming: one consumer per route, in its consumer group; each record is published on the
route's subject (as a request when ``ack = "reply"``: then a handler must answer), and the
offsets are committed only after the whole batch was handled, so a crash redelivers rather
than loses (at-least-once; handlers dedupe by the ids the events carry). A consume route may
not feed a subject that a forward route sends back to Kafka (that would loop); the config is
refused.

Kafka's client (aiokafka) runs on asyncio only: a node on the trio backend cannot bridge.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import anyio
import msgspec
from msgspec import Meta

from ._exceptions import ActorStoppedError, MailboxFullError, SomaError
from ._subscription import Msg, Subscription
from .actor import Actor
from .subjects import matches, validate_pattern, validate_subject

__all__ = [
    "BridgeConfigError",
    "BridgeSettings",
    "BridgeStatus",
    "ConsumeRoute",
    "ForwardRoute",
    "GetBridgeStatus",
    "KafkaBridge",
    "KafkaSettings",
    "bootstrap_hosts",
    "check_routes",
    "ensure_topics",
    "quiet_abandoned_kafka_futures",
]

logger = logging.getLogger("somabrain.bridge")

PositiveFloat = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(ge=1)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class KafkaSettings(_Section):
    """The Kafka cluster. An empty ``bootstrap`` means no Kafka (the dev node's default)."""

    #: ``host:port[,host:port...]``
    bootstrap: str = ""
    client_id: str = "somabrain"
    #: Create missing topics (with ``partitions`` partitions) when a producer starts.
    create_topics: bool = True
    partitions: PositiveInt = 1
    replication_factor: PositiveInt = 1
    #: Seconds a produce request may take before it counts as failed.
    request_timeout: PositiveFloat = 5.0


class ForwardRoute(_Section):
    #: Subject pattern (NATS wildcards allowed).
    subjects: str
    topic: str


class ConsumeRoute(_Section):
    topic: str
    subject: str
    group: str
    #: ``publish``: commit once published; ``reply``: commit once a handler answered.
    ack: Literal["publish", "reply"] = "publish"
    #: Where a new group starts reading.
    start: Literal["earliest", "latest"] = "earliest"


class BridgeSettings(_Section):
    forward: list[ForwardRoute] = msgspec.field(default_factory=list)
    consume: list[ConsumeRoute] = msgspec.field(default_factory=list)
    #: Messages produced per batch, and seconds between retries while Kafka is down.
    max_batch: PositiveInt = 1000
    retry_interval: PositiveFloat = 1.0


def bootstrap_hosts(bootstrap: str) -> list[tuple[str, int]]:
    """``"a:1,b:2"`` -> ``[("a", 1), ("b", 2)]`` (port 9092 when omitted)."""
    hosts: list[tuple[str, int]] = []
    for item in bootstrap.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        hosts.append((host, int(port)) if sep else (item, 9092))
    return hosts


def quiet_abandoned_kafka_futures() -> None:
    """Keep aiokafka's abandoned internal futures out of the loop's error handler.

    When a produce request fails after we stopped waiting for it, aiokafka sets the error on
    an internal "drain" future that nobody awaits, and asyncio reports "Future exception was
    never retrieved" when it is collected. The failure itself was already handled (the batch
    went to the next tier), so these reports are noise; every other report passes through.
    """
    import asyncio

    from aiokafka.errors import KafkaError

    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    if getattr(previous, "soma_kafka_filter", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == "Future exception was never retrieved" and isinstance(
            context.get("exception"), KafkaError
        ):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.soma_kafka_filter = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


async def ensure_topics(settings: KafkaSettings, topics: Sequence[str]) -> None:
    """Create the topics that do not exist yet (no error when they do)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap,
        client_id=settings.client_id,
        request_timeout_ms=int(settings.request_timeout * 1000),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            new = [NewTopic(t, settings.partitions, settings.replication_factor) for t in missing]
            try:
                await admin.create_topics(new)
            except Exception as exc:  # lost a race with another node: fine if it exists now
                if not set(missing) <= set(await admin.list_topics()):
                    raise exc
    finally:
        await admin.close()


class BridgeConfigError(SomaError, ValueError):
    """The routes would loop (a consumed topic fed back into a forwarded subject)."""


def check_routes(settings: BridgeSettings) -> None:
    for forward in settings.forward:
        validate_pattern(forward.subjects)
    for consume in settings.consume:
        validate_subject(consume.subject)
        for forward in settings.forward:
            if matches(forward.subjects, consume.subject):
                raise BridgeConfigError(
                    f"bridge loop: topic {consume.topic!r} feeds subject {consume.subject!r}, "
                    f"which the forward route {forward.subjects!r} sends back to Kafka"
                )


class GetBridgeStatus(msgspec.Struct, frozen=True):
    pass


class BridgeStatus(msgspec.Struct, frozen=True):
    forwarded: int
    consumed: int
    failures: int
    connected: bool


class _Poll(msgspec.Struct, frozen=True):
    pass


class _Shared:
    """Outlives an incarnation: the bus subscriptions (into the stable ref) and the Kafka
    clients a killed incarnation could not close."""

    def __init__(self) -> None:
        self.subscriptions: list[Subscription] = []
        self.clients: list[Any] = []


def _encode(data: Any) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    return msgspec.json.encode(data)


def _decode(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError:
        return value  # not JSON: hand the bytes over as they are


class KafkaBridge(Actor):
    """Forwards subjects to topics and feeds topics back into subjects (see module doc)."""

    async def on_start(self) -> None:
        system = self.context.system
        config = system.resources.get("config")
        self.kafka: KafkaSettings = getattr(config, "kafka", None) or KafkaSettings()
        self.settings: BridgeSettings = getattr(config, "bridge", None) or BridgeSettings()
        check_routes(self.settings)
        self.shared: _Shared = system.resources.setdefault(f"bridge:{self.context.path}", _Shared())
        for client in self.shared.clients:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await client.stop()
        self.shared.clients = []
        self.pending: dict[str, list[Msg]] = {}
        self.forwarded = self.consumed = self.failures = 0
        self.producer: Any = None
        self.consumers: list[tuple[ConsumeRoute, Any]] = []
        self.active = bool(self.kafka.bootstrap) and bool(
            self.settings.forward or self.settings.consume
        )
        if not self.active:
            return
        if system.backend.name != "asyncio":
            raise RuntimeError("the Kafka bridge needs the asyncio backend (aiokafka)")
        await self._connect()
        if not self.shared.subscriptions:
            for route in self.settings.forward:
                subscription = await system.bus.subscribe_actor(route.subjects, self.context.ref)
                self.shared.subscriptions.append(subscription)
        if self.consumers:
            self.context.ref.tell_nowait(_Poll())

    async def _connect(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        quiet_abandoned_kafka_futures()
        timeout_ms = int(self.kafka.request_timeout * 1000)
        topics = [r.topic for r in self.settings.forward] + [r.topic for r in self.settings.consume]
        if self.kafka.create_topics:
            await ensure_topics(self.kafka, sorted(set(topics)))
        if self.settings.forward:
            self.producer = AIOKafkaProducer(
                bootstrap_servers=self.kafka.bootstrap,
                client_id=self.kafka.client_id,
                acks="all",
                enable_idempotence=False,
                request_timeout_ms=timeout_ms,
                linger_ms=0,
            )
            self.shared.clients.append(self.producer)
            await self.producer.start()
        for route in self.settings.consume:
            consumer = AIOKafkaConsumer(
                route.topic,
                bootstrap_servers=self.kafka.bootstrap,
                client_id=self.kafka.client_id,
                group_id=route.group,
                enable_auto_commit=False,
                auto_offset_reset=route.start,
                request_timeout_ms=timeout_ms,
            )
            self.shared.clients.append(consumer)
            await consumer.start()
            self.consumers.append((route, consumer))

    async def on_stop(self) -> None:
        # A last try for what is pending, bounded: a stopping node does not wait for an
        # outage to end (those messages are counted as failures in the log).
        with anyio.move_on_after(2 * self.kafka.request_timeout + 1):
            await self._flush()
        for subscription in self.shared.subscriptions:
            await subscription.unsubscribe()
        self.shared.subscriptions = []
        for client in self.shared.clients:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await client.stop()
        self.shared.clients = []

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Msg):
            topic = self._topic_for(message.subject)
            if topic is not None:
                batch = self.pending.setdefault(topic, [])
                batch.append(message)
                full = len(batch) >= self.settings.max_batch
                if full or self.context.ref.statistics().mailbox.depth == 0:
                    await self._flush()
            return None
        # Anything else first sends what is pending: a batch must never wait behind a message
        # that is not a bus message (it would wait for the next bus message otherwise).
        await self._flush()
        if isinstance(message, _Poll):
            await self._poll()
            with contextlib.suppress(MailboxFullError, ActorStoppedError):
                self.context.ref.tell_nowait(_Poll())
            return None
        if isinstance(message, GetBridgeStatus):
            return BridgeStatus(
                self.forwarded, self.consumed, self.failures, self.producer is not None
            )
        raise TypeError(f"the Kafka bridge does not handle {type(message).__name__}")

    def _topic_for(self, subject: str) -> str | None:
        for route in self.settings.forward:
            if matches(route.subjects, subject):
                return route.topic
        return None

    async def _flush(self) -> None:
        """Produce what is pending, retrying until Kafka takes it: while it is down the
        mailbox fills and the bus pushes back on the publishers (nothing is dropped)."""
        while self.pending and self.producer is not None:
            topic, batch = next(iter(self.pending.items()))
            try:
                with anyio.fail_after(self.kafka.request_timeout + 1):
                    futures = [
                        await self.producer.send(
                            topic,
                            _encode(msg.data),
                            key=_key(msg.subject, msg.headers),
                            headers=[("subject", msg.subject.encode())],
                        )
                        for msg in batch
                    ]
                    for future in futures:
                        await future
            except Exception as exc:
                self.failures += 1
                logger.warning("bridge: Kafka refused a batch for %s (%r); retrying", topic, exc)
                await anyio.sleep(self.settings.retry_interval)
                continue
            del self.pending[topic]
            self.forwarded += len(batch)

    async def _poll(self) -> None:
        bus = self.context.system.bus
        for route, consumer in self.consumers:
            try:
                batches = await consumer.getmany(timeout_ms=50, max_records=500)
            except Exception as exc:
                self.failures += 1
                logger.warning("bridge: consuming %s failed: %r", route.topic, exc)
                continue
            if not batches:
                continue
            for records in batches.values():
                for record in records:
                    headers = {
                        "kafka-topic": record.topic,
                        "kafka-partition": str(record.partition),
                        "kafka-offset": str(record.offset),
                    }
                    data = _decode(record.value)
                    if route.ack == "reply":
                        await bus.request(route.subject, data, headers=headers)
                    else:
                        await bus.publish(route.subject, data, headers=headers)
                    self.consumed += 1
            # Handled (published, or answered): only now does the group move on.
            await consumer.commit()


def _key(subject: str, headers: Mapping[str, str] | None) -> bytes:
    if headers is not None and "key" in headers:
        return headers["key"].encode()
    return subject.encode()
