"""The writer's remote tiers: Kafka (``soma.audit``) and a Redis Stream per node.

Both take sealed events as ``(seq, payload)`` and never re-order or re-seal them. Each knows
its ``tail_seq``: the highest sequence number of this node it holds (or held, for the Redis
stream, whose last id survives trimming). Before writing, a tier drops events at or below its
tail, which is what makes a re-sent batch (after a timeout whose acknowledgement was lost, or
after a restart) land exactly once.

Kafka: one partition per node (``crc32(node) % partitions``), written with explicit
``send_batch`` record batches (one record batch per round trip, acks=all), awaited one at a
time, so a batch never overtakes an earlier one that failed. The tail is found by reading the
partition backwards from its end until a record keyed by the node turns up.

Redis: ``XADD <prefix><node> <seq>-0 e <json>`` in a MULTI/EXEC; the stream id *is* the
sequence number, so Redis itself refuses a duplicate or out-of-order entry. Draining reads with
``XRANGE`` and forgets with ``XTRIM MINID``. Redis's own persistence decides how durable an
acknowledged entry is: run it with ``appendonly yes`` and ``appendfsync always`` for audit.

Both clients (aiokafka, redis.asyncio) need the asyncio backend.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import anyio

from ..actors.kafka_bridge import (
    KafkaSettings,
    bootstrap_hosts,
    ensure_topics,
    quiet_abandoned_kafka_futures,
)
from .errors import SinkUnavailableError

__all__ = ["KafkaSink", "RedisSink", "node_partition"]

_KAFKA_MAX_BATCH_BYTES = 1 << 20


def node_partition(node: str, partitions: int) -> int:
    return zlib.crc32(node.encode()) % partitions


class KafkaSink:
    name = "kafka"

    def __init__(self, settings: KafkaSettings, topic: str, node: str, timeout: float) -> None:
        self.settings = settings
        self.topic = topic
        self.node = node
        self.key = node.encode()
        self.timeout = timeout
        self.tail_seq = 0
        self.last_payload: bytes | None = None
        self.partition = 0
        self._producer: Any = None

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return bootstrap_hosts(self.settings.bootstrap)

    async def connect(self) -> None:
        """Start a producer, make sure the topic exists, and find this node's tail."""
        from aiokafka import AIOKafkaProducer

        await self.close()
        quiet_abandoned_kafka_futures()
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            client_id=self.settings.client_id,
            acks="all",
            enable_idempotence=False,  # not every Kafka-protocol broker supports it
            linger_ms=0,
            max_batch_size=_KAFKA_MAX_BATCH_BYTES,
            max_request_size=2 * _KAFKA_MAX_BATCH_BYTES,
            request_timeout_ms=int(self.settings.request_timeout * 1000),
            retry_backoff_ms=50,
        )
        try:
            with anyio.fail_after(self.timeout):
                await producer.start()
                self._producer = producer
                if self.settings.create_topics:
                    await ensure_topics(self.settings, [self.topic])
                partitions = await producer.partitions_for(self.topic)
                self.partition = node_partition(self.node, len(partitions))
                self.last_payload = await last_record_for_key(
                    self.settings, self.topic, self.partition, self.key
                )
        except Exception as exc:
            await self.close()
            raise SinkUnavailableError(self.name, repr(exc)) from exc
        self.tail_seq = _seq_of(self.last_payload)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with (
                anyio.move_on_after(self.settings.request_timeout + 1),
                anyio.CancelScope(shield=True),
            ):
                await producer.stop()

    async def write(self, seqs: Sequence[int], payloads: Sequence[bytes]) -> int:
        """Produce the events above the tail; returns how many were written."""
        producer = self._producer
        if producer is None:
            raise SinkUnavailableError(self.name, "not connected")
        start = _first_above(seqs, self.tail_seq)
        if start == len(seqs):
            return 0
        try:
            with anyio.fail_after(self.timeout):
                batch = producer.create_batch()
                for index in range(start, len(seqs)):
                    if batch.append(key=self.key, value=payloads[index], timestamp=None) is None:
                        # Full: send it and wait for it before the next one, so that a later
                        # batch can never land while an earlier one failed.
                        await self._send(producer, batch, seqs[index - 1])
                        batch = producer.create_batch()
                        batch.append(key=self.key, value=payloads[index], timestamp=None)
                await self._send(producer, batch, seqs[-1])
        except Exception as exc:
            raise SinkUnavailableError(self.name, repr(exc)) from exc
        self.last_payload = payloads[-1]
        return len(seqs) - start

    async def _send(self, producer: Any, batch: Any, last_seq: int) -> None:
        import asyncio

        # If we stop waiting (timeout), the producer still finishes the batch later: whatever
        # the outcome, mark it as seen, or asyncio reports an exception "never retrieved".
        task = asyncio.ensure_future(
            producer.send_batch(batch, self.topic, partition=self.partition)
        )
        task.add_done_callback(_retrieve_delivery)
        future = await asyncio.shield(task)
        await future
        self.tail_seq = last_seq


class RedisSink:
    name = "redis"

    def __init__(self, url: str, stream: str, timeout: float) -> None:
        self.url = url
        self.stream = stream
        self.timeout = timeout
        self.tail_seq = 0
        self.last_payload: bytes | None = None
        self.length = 0
        self._client: Any = None

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        from redis.asyncio.connection import parse_url

        kwargs = parse_url(self.url)
        return [(str(kwargs.get("host", "127.0.0.1")), int(kwargs.get("port", 6379)))]

    async def connect(self) -> None:
        import redis.asyncio as aioredis

        await self.close()
        client = aioredis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry_on_timeout=False,
        )
        self._client = client
        try:
            with anyio.fail_after(self.timeout):
                await client.ping()
                await self._refresh()
        except Exception as exc:
            await self.close()
            raise SinkUnavailableError(self.name, repr(exc)) from exc

    @property
    def has_backlog(self) -> bool:
        return self.length > 0

    async def _refresh(self) -> None:
        client = self._client
        if await client.exists(self.stream):
            info = await client.xinfo_stream(self.stream)
            self.tail_seq = int(info["last-generated-id"].split(b"-")[0])
            self.length = int(info["length"])
            last = await client.xrevrange(self.stream, count=1)
            self.last_payload = last[0][1][b"e"] if last else None
        else:
            self.tail_seq, self.length, self.last_payload = 0, 0, None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with anyio.move_on_after(self.timeout), anyio.CancelScope(shield=True):
                await client.aclose()

    async def write(self, seqs: Sequence[int], payloads: Sequence[bytes]) -> int:
        client = self._client
        if client is None:
            raise SinkUnavailableError(self.name, "not connected")
        start = _first_above(seqs, self.tail_seq)
        if start == len(seqs):
            return 0
        try:
            with anyio.fail_after(self.timeout):
                async with client.pipeline(transaction=True) as pipe:
                    for index in range(start, len(seqs)):
                        pipe.xadd(self.stream, {b"e": payloads[index]}, id=f"{seqs[index]}-0")
                    await pipe.execute()
        except Exception as exc:
            raise SinkUnavailableError(self.name, repr(exc)) from exc
        self.tail_seq = seqs[-1]
        self.last_payload = payloads[-1]
        self.length += len(seqs) - start
        return len(seqs) - start

    async def read_batch(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        client = self._client
        if client is None:
            raise SinkUnavailableError(self.name, "not connected")
        try:
            with anyio.fail_after(self.timeout):
                entries = await client.xrange(self.stream, min=f"{after_seq + 1}-0", count=limit)
        except Exception as exc:
            raise SinkUnavailableError(self.name, repr(exc)) from exc
        return [(int(entry_id.split(b"-")[0]), fields[b"e"]) for entry_id, fields in entries]

    async def discard_through(self, seq: int) -> None:
        """Forget the entries up to ``seq`` (they are held upstream now)."""
        client = self._client
        if client is None:
            raise SinkUnavailableError(self.name, "not connected")
        try:
            with anyio.fail_after(self.timeout):
                await client.xtrim(self.stream, minid=f"{seq + 1}-0", approximate=False)
                self.length = int(await client.xlen(self.stream))
        except Exception as exc:
            raise SinkUnavailableError(self.name, repr(exc)) from exc


def _retrieve(future: Any) -> None:
    if not future.cancelled():
        future.exception()


def _retrieve_delivery(task: Any) -> None:
    if task.cancelled():
        return
    if task.exception() is None:
        task.result().add_done_callback(_retrieve)


def _first_above(seqs: Sequence[int], tail: int) -> int:
    for index, seq in enumerate(seqs):
        if seq > tail:
            return index
    return len(seqs)


def _seq_of(payload: bytes | None) -> int:
    if payload is None:
        return 0
    from .event import decode_event

    return decode_event(payload).seq


async def last_record_for_key(
    settings: KafkaSettings, topic: str, partition: int, key: bytes, *, limit: int = 1_000_000
) -> bytes | None:
    """The value of the newest record with ``key`` in the partition (read backwards)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        client_id=settings.client_id,
        enable_auto_commit=False,
        request_timeout_ms=int(settings.request_timeout * 1000),
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        begin = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        window = 256
        scanned = 0
        while end > begin and scanned < limit:
            start = max(begin, end - window)
            consumer.seek(tp, start)
            found: bytes | None = None
            position = start
            while position < end:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=window)
                records = batch.get(tp, [])
                if not records:
                    break
                for record in records:
                    if record.offset >= end:
                        break
                    if record.key == key:
                        found = record.value
                    position = record.offset + 1
            if found is not None:
                return found
            scanned += end - start
            end = start
            window *= 4
        return None
    finally:
        await consumer.stop()
