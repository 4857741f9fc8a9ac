"""Reading the audit trail back from Redis (``audit tail -n N`` and following), against a real
redis-server."""

from __future__ import annotations

import anyio
import pytest
import redis.asyncio as aioredis

from somabrain.audit.sources import read_redis
from tests.servers import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

PREFIX = "soma:audit:"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio


async def add(url: str, *payloads: bytes) -> None:
    client = aioredis.from_url(url)
    try:
        for payload in payloads:
            await client.xadd(PREFIX + "n", {"e": payload})
    finally:
        await client.aclose()


async def read(url: str, last: int | None) -> list[bytes]:
    return [payload async for _, payload in read_redis(url, PREFIX, last=last)]


@pytest.mark.parametrize(
    ("last", "shown"),
    [(None, [b"1", b"2", b"3"]), (0, []), (2, [b"2", b"3"]), (5, [b"1", b"2", b"3"])],
)
async def test_the_last_n_entries(
    redis_server: RedisServer, last: int | None, shown: list[bytes]
) -> None:
    await add(redis_server.url, b"1", b"2", b"3")
    assert await read(redis_server.url, last) == shown


async def test_following_from_the_last_zero_shows_only_new_entries(
    redis_server: RedisServer,
) -> None:
    await add(redis_server.url, b"1", b"2")
    seen: list[bytes] = []

    async def follow() -> None:
        async for _, payload in read_redis(redis_server.url, PREFIX, follow=True, last=0):
            seen.append(payload)
            return

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(follow)
            await anyio.sleep(0.3)  # the reader has found the end of the stream
            await add(redis_server.url, b"3")
    assert seen == [b"3"]
