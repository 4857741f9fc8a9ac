"""A small, fast HTTP/1.1 load generator for the benchmarks (asyncio protocols, keep-alive).

``run_load`` opens N connections and keeps exactly one request in flight on each: as soon as a
response is complete (``Content-Length`` framing), the next request goes out. Requests come
from a callable returning ready-made bytes, so the client does almost nothing per request and
stays far from being the bottleneck of the server it measures (a raw protocol costs a few
microseconds per request where an HTTP client library costs tens). Completions are counted
and their latencies kept only inside the measured window, after a warm-up.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks._common import format_number, percentile, print_table

__all__ = ["LoadResult", "post_request", "print_load_results", "run_load"]


@dataclass
class LoadResult:
    """One timed run: completions inside the measured window and their latencies."""

    name: str
    connections: int
    seconds: float
    completed: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000.0

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "completed": self.completed,
            "errors": self.errors,
            "seconds": self.seconds,
            "connections": self.connections,
            "p50_ms": self.latency_ms(50),
            "p90_ms": self.latency_ms(90),
            "p99_ms": self.latency_ms(99),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending the next request as soon as a response is complete."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = run.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.run.next_request())

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _CONTENT_LENGTH.search(buffer, 0, end + 2)
            length = int(match.group(1)) if match else 0
            if len(buffer) < end + 4 + length:
                return
            status = int(buffer[9:12])
            del buffer[: end + 4 + length]
            now = time.perf_counter()
            if not self.run.record(status, now - self.sent_at, now):
                assert self.transport is not None
                self.transport.close()
                return
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Run:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        next_request: Callable[[], bytes],
        measure_from: float,
        measure_until: float,
        result: LoadResult,
    ) -> None:
        self.loop = loop
        self.next_request = next_request
        self.start = measure_from
        self.end = measure_until
        self.result = result

    def record(self, status: int, latency: float, now: float) -> bool:
        if now > self.end:
            return False
        if now >= self.start:
            result = self.result
            result.completed += 1
            result.latencies.append(latency)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status != 200:
                result.errors += 1
        return True


async def run_load(
    name: str,
    port: int,
    next_request: Callable[[], bytes],
    *,
    connections: int,
    warmup: float,
    duration: float,
) -> LoadResult:
    """Drive ``connections`` keep-alive connections for ``warmup + duration`` seconds."""
    loop = asyncio.get_running_loop()
    result = LoadResult(name, connections, duration)
    now = time.perf_counter()
    run = _Run(loop, next_request, now + warmup, now + warmup + duration, result)
    protocols = []
    for _ in range(connections):
        _, protocol = await loop.create_connection(lambda: _Connection(run), "127.0.0.1", port)
        protocols.append(protocol)
    await asyncio.wait_for(asyncio.gather(*(p.closed for p in protocols)), warmup + duration + 60.0)
    return result


def post_request(path: str, body: bytes, token: str) -> bytes:
    """A complete ``POST`` request (JSON body, bearer token) as bytes."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def print_load_results(
    best: dict[str, LoadResult], medians: dict[str, float], *, first: str, title: str
) -> None:
    """The table of HTTP load results: one row per scenario (its best round) with the median
    rate of its rounds; ``first`` heads the scenario column."""
    print_table(
        (first, "req/s", "median req/s", "p50 ms", "p99 ms", "errors", "requests"),
        (
            (
                name,
                format_number(result.rate),
                format_number(medians[name]),
                f"{result.latency_ms(50):.2f}",
                f"{result.latency_ms(99):.2f}",
                str(result.errors),
                str(result.completed),
            )
            for name, result in best.items()
        ),
        title=title,
    )
