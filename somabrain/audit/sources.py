"""Reading stored audit events back: from Kafka, from the Redis streams, from the spool.

Each source yields ``(position, payload)`` in stored order; the position names where a record
is (``kafka:<partition>@<offset>``, ``redis:<stream>@<id>``, ``<segment>:<line>``) so that a
verification failure points at it. Used by ``somabrain audit verify`` and ``tail``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio

from ..actors.kafka_bridge import KafkaSettings
from .spool import read_spool

__all__ = ["follow_spool", "read_kafka", "read_redis", "read_spool_dir"]

Record = tuple[str, bytes]


def read_spool_dir(directory: str | Path) -> Iterator[Record]:
    yield from read_spool(Path(directory))


async def read_kafka(
    settings: KafkaSettings, topic: str, *, follow: bool = False, last: int | None = None
) -> AsyncIterator[Record]:
    """Every record of ``topic`` (all partitions, each in offset order); with ``follow``, keep
    waiting for new ones. ``last`` starts that many records before the end of each partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        client_id=settings.client_id,
        enable_auto_commit=False,
        request_timeout_ms=int(settings.request_timeout * 1000),
    )
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            start = begins[tp] if last is None else max(begins[tp], ends[tp] - last)
            consumer.seek(tp, start)
            position = start
            while position < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=2000, max_records=5000)
                records = batch.get(tp, [])
                if not records:
                    break
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    position = record.offset + 1
                    yield f"kafka:{tp.partition}@{record.offset}", record.value
        while follow:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in sorted(batch.items()):
                for record in records:
                    yield f"kafka:{tp.partition}@{record.offset}", record.value
    finally:
        await consumer.stop()


async def read_redis(
    url: str, prefix: str, *, node: str = "", follow: bool = False, last: int | None = None
) -> AsyncIterator[Record]:
    """The entries of every node's stream (or ``node``'s), oldest first, stream by stream."""
    import redis.asyncio as aioredis

    client: Any = aioredis.from_url(url)
    try:
        if node:
            streams = [(prefix + node).encode()]
        else:
            streams = sorted([key async for key in client.scan_iter(match=prefix + "*")])
        positions: dict[bytes, bytes] = {}
        for stream in streams:
            newest = b"0-0"
            if last is not None:
                # At least one entry, for the position to follow from (with ``last`` 0 too).
                entries = list(reversed(await client.xrevrange(stream, count=max(last, 1))))
                newest = entries[-1][0] if entries else newest
                entries = entries[max(0, len(entries) - last) :]
            else:
                entries = []
                cursor = b"-"
                while True:
                    page = await client.xrange(stream, min=cursor, count=1000)
                    page = [e for e in page if e[0] != cursor] if cursor != b"-" else page
                    if not page:
                        break
                    entries += page
                    cursor = page[-1][0]
            for entry_id, fields in entries:
                yield f"redis:{stream.decode()}@{entry_id.decode()}", fields[b"e"]
            positions[stream] = entries[-1][0] if entries else newest
        while follow:
            found = await client.xread({s: positions.get(s, b"0-0") for s in streams}, block=1000)
            for stream, entries in found or []:
                for entry_id, fields in entries:
                    positions[stream] = entry_id
                    yield f"redis:{stream.decode()}@{entry_id.decode()}", fields[b"e"]
    finally:
        await client.aclose()


async def follow_spool(
    directory: str | Path, *, last: int | None = None, interval: float = 0.5
) -> AsyncIterator[Record]:
    """Print-as-they-come for the spool: the last ``last`` records, then new ones (polling)."""
    seen = 0
    records = list(read_spool(Path(directory)))
    start = 0 if last is None else max(0, len(records) - last)
    for record in records[start:]:
        yield record
    newest = records[-1][1] if records else b""
    seen = len(records)
    while True:
        await anyio.sleep(interval)
        records = list(read_spool(Path(directory)))
        if records and newest and records[min(seen, len(records)) - 1][1] != newest:
            # Segments were drained and deleted: find where we were by content.
            index = next((i for i, r in enumerate(records) if r[1] == newest), -1)
            seen = index + 1
        for record in records[seen:]:
            yield record
        if records:
            newest, seen = records[-1][1], len(records)
