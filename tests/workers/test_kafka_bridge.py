"""The Kafka bridge against a real Kafka-protocol broker (noida-db)."""

# ruff: noqa: ASYNC110  (the tests poll the bridge's counters and an external broker)

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from somabrain.actors import ActorSystem, Msg
from somabrain.actors.kafka_bridge import (
    BridgeConfigError,
    BridgeSettings,
    GetBridgeStatus,
    KafkaBridge,
    check_routes,
)
from somabrain.config import SomaConfig
from tests.servers import KafkaServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def bridge_config(kafka: KafkaServer, **bridge: Any) -> SomaConfig:
    return msgspec.convert(
        {"kafka": {"bootstrap": kafka.bootstrap, "request_timeout": 1.0}, "bridge": bridge},
        SomaConfig,
    )


@contextlib.asynccontextmanager
async def bridge_node(cfg: SomaConfig) -> AsyncIterator[ActorSystem]:
    async with ActorSystem("bridge-test") as system:
        system.resources["config"] = cfg
        yield system


async def topic_values(bootstrap: str, topic: str, count: int) -> list[Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    values: list[Any] = []
    try:
        with anyio.fail_after(20):
            while len(values) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    values += [msgspec.json.decode(r.value) for r in records]
    finally:
        await consumer.stop()
    return values


async def test_forwarded_subjects_reach_their_topic_in_order(kafka_server: KafkaServer) -> None:
    cfg = bridge_config(
        kafka_server,
        forward=[
            {"subjects": "soma.memory.events", "topic": "soma.memory.events"},
            {"subjects": "soma.telemetry.>", "topic": "soma.telemetry"},
        ],
    )
    async with bridge_node(cfg) as system:
        ref = await system.spawn(KafkaBridge, "bridge")
        for i in range(300):
            await system.bus.publish("soma.memory.events", {"n": i, "key": f"k{i}"})
        await system.bus.publish("soma.telemetry.edge", {"latency_ms": 3})
        with anyio.fail_after(20):
            while (await ref.ask(GetBridgeStatus())).forwarded < 301:
                await anyio.sleep(0.05)
    values = await topic_values(kafka_server.bootstrap, "soma.memory.events", 300)
    assert [v["n"] for v in values] == list(range(300))
    assert await topic_values(kafka_server.bootstrap, "soma.telemetry", 1) == [{"latency_ms": 3}]


async def test_forwarding_survives_a_kafka_outage(kafka_server: KafkaServer) -> None:
    cfg = bridge_config(
        kafka_server, forward=[{"subjects": "soma.feedback", "topic": "soma.feedback"}]
    )
    async with bridge_node(cfg) as system:
        ref = await system.spawn(KafkaBridge, "bridge")
        await system.bus.publish("soma.feedback", {"n": -1})
        with anyio.fail_after(10):
            while (await ref.ask(GetBridgeStatus())).forwarded < 1:
                await anyio.sleep(0.05)
        await anyio.to_thread.run_sync(kafka_server.stop)
        for i in range(50):
            await system.bus.publish("soma.feedback", {"n": i})
        await anyio.sleep(1.5)
        await anyio.to_thread.run_sync(kafka_server.start)
        with anyio.fail_after(30):
            while (await ref.ask(GetBridgeStatus(), timeout=30)).forwarded < 51:
                await anyio.sleep(0.1)
    values = [v["n"] for v in await topic_values(kafka_server.bootstrap, "soma.feedback", 51)]
    # At-least-once: a batch whose acknowledgement was lost may come twice, never out of order
    # with respect to its first copy, and nothing is missing.
    assert set(values) == set(range(-1, 50))


async def test_topics_feed_subjects_and_offsets_are_committed_after_handling(
    kafka_server: KafkaServer,
) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap, acks="all")
    await producer.start()
    for i in range(40):
        await producer.send_and_wait("soma.constitution.revisions", msgspec.json.encode({"v": i}))
    await producer.stop()
    cfg = bridge_config(
        kafka_server,
        consume=[
            {
                "topic": "soma.constitution.revisions",
                "subject": "soma.in.revisions",
                "group": "soma-test",
                "ack": "reply",
            }
        ],
    )
    got: list[int] = []
    async with bridge_node(cfg) as system:

        async def handler(msg: Msg) -> None:
            got.append(msg.data["v"])
            assert msg.headers is not None and msg.headers["kafka-topic"]
            await msg.respond("ok")

        await system.bus.subscribe("soma.in.revisions", cb=handler)
        await system.spawn(KafkaBridge, "bridge")
        with anyio.fail_after(30):
            while len(got) < 40:
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)  # the commit follows the batch
    assert got == list(range(40))
    check = AIOKafkaConsumer(
        bootstrap_servers=kafka_server.bootstrap, group_id="soma-test", enable_auto_commit=False
    )
    await check.start()
    try:
        tp = TopicPartition("soma.constitution.revisions", 0)
        assert await check.committed(tp) == 40
    finally:
        await check.stop()


def test_a_route_that_would_loop_is_refused(tmp_path: Path) -> None:
    settings = msgspec.convert(
        {
            "forward": [{"subjects": "soma.feedback.>", "topic": "soma.feedback"}],
            "consume": [{"topic": "soma.feedback", "subject": "soma.feedback.in", "group": "g"}],
        },
        BridgeSettings,
    )
    with pytest.raises(BridgeConfigError):
        check_routes(settings)
