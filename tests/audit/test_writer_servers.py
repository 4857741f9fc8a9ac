"""The writer's cascade against real servers: Kafka (noida-db) and Redis (redis-server).

These are the fault tests of the issue: Kafka stops in the middle of a stream of requests,
then Redis, then both come back; the writer is killed while it drains. Every time, the chain
read back from Kafka holds every acknowledged event exactly once, in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from somabrain.audit.sources import read_kafka, read_redis
from somabrain.config import SomaConfig
from tests.audit.harness import (
    AuditNode,
    audit_config,
    check_exactly_once,
    running_node,
    spool_records,
)
from tests.servers import KafkaServer, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiokafka and redis.asyncio


def cascade_config(kafka: KafkaServer | None, redis: RedisServer | None) -> SomaConfig:
    return audit_config(
        kafka={"bootstrap": kafka.bootstrap if kafka else "", "request_timeout": 1.0},
        audit={
            "redis_url": redis.url if redis else "",
            "connect_timeout": 1.0,
            "write_timeout": 0.5,
            "retry_interval": 0.1,
            "drain_batch": 300,
        },
    )


async def kafka_records(cfg: SomaConfig) -> list[tuple[str, bytes]]:
    return [r async for r in read_kafka(cfg.kafka, cfg.audit.topic)]


async def redis_records(cfg: SomaConfig) -> list[tuple[str, bytes]]:
    return [r async for r in read_redis(cfg.audit.redis_url, cfg.audit.redis_stream_prefix)]


def tier(status: Any, name: str) -> Any:
    return next(t for t in status.tiers if t.name == name)


async def wait_until_drained(node: AuditNode, timeout: float = 30.0) -> Any:
    with anyio.fail_after(timeout):
        while True:
            status = await node.sync()
            if (
                all(t.up and t.backlog is not True for t in status.tiers[:-1])
                and not tier(status, "spool").backlog
            ):
                return status
            await anyio.sleep(0.1)


async def test_kafka_takes_everything_when_it_is_up(
    tmp_path: Path, kafka_server: KafkaServer, redis_server: RedisServer
) -> None:
    cfg = cascade_config(kafka_server, redis_server)
    async with running_node(cfg, tmp_path) as node:
        await node.load(600, concurrency=12)
        status = await node.status()
    assert tier(status, "kafka").written == 600
    assert tier(status, "redis").written == 0 and tier(status, "spool").written == 0
    check_exactly_once(await kafka_records(cfg), node.acked)
    assert spool_records(tmp_path) == []


async def test_kafka_then_redis_stop_mid_stream_and_come_back(
    tmp_path: Path, kafka_server: KafkaServer, redis_server: RedisServer
) -> None:
    cfg = cascade_config(kafka_server, redis_server)
    async with running_node(cfg, tmp_path) as node:

        async def chaos() -> None:
            await anyio.sleep(0.3)
            await anyio.to_thread.run_sync(kafka_server.stop)
            await anyio.sleep(1.5)  # the first batch waits write_timeout, then Redis takes over
            await anyio.to_thread.run_sync(redis_server.stop)
            await anyio.sleep(1.5)
            await anyio.to_thread.run_sync(kafka_server.start)
            await anyio.to_thread.run_sync(redis_server.start)

        async with anyio.create_task_group() as tg:
            tg.start_soon(chaos)
            tg.start_soon(node.load, 4000, 8, 0.002)
        assert node.failed == 0
        status = await wait_until_drained(node)
        # Every tier took part: the cascade really fell through and drained back up.
        assert tier(status, "redis").written > 0, status
        assert tier(status, "spool").written > 0, status
        assert status.drained > 0
    report = check_exactly_once(await kafka_records(cfg), node.acked)
    assert report.last_seq == status.head_seq == len(node.acked)
    assert await redis_records(cfg) == []
    assert spool_records(tmp_path) == []


async def test_killing_the_writer_mid_drain(
    tmp_path: Path, kafka_server: KafkaServer, redis_server: RedisServer
) -> None:
    cfg = cascade_config(kafka_server, redis_server)
    async with running_node(cfg, tmp_path) as node:
        await node.load(200, concurrency=4)
        await anyio.to_thread.run_sync(kafka_server.stop)
        await node.load(1500, concurrency=8)  # -> Redis
        await anyio.to_thread.run_sync(redis_server.stop)
        await node.load(1500, concurrency=8)  # -> spool
        status = await node.status()
        assert tier(status, "redis").written > 0 and tier(status, "spool").written > 0
        await anyio.to_thread.run_sync(kafka_server.start)
        await anyio.to_thread.run_sync(redis_server.start)

        async def killer() -> None:
            for _ in range(6):
                await anyio.sleep(0.15)
                await node.kill_writer()

        async with anyio.create_task_group() as tg:
            tg.start_soon(killer)
            tg.start_soon(node.load, 800, 8, 0.001)
        status = await wait_until_drained(node)
    report = check_exactly_once(await kafka_records(cfg), node.acked)
    assert report.last_seq == status.head_seq
    assert await redis_records(cfg) == []
    assert spool_records(tmp_path) == []
