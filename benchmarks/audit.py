"""Audit benchmark: events/s made durable through each tier, and what auditing costs a request.

    python -m benchmarks.audit [--quick] [--json PATH]

Tiers, each measured alone (the writer configured with only that tier, so every event takes
it): the fsynced local spool, a Redis Stream (Debian redis-server, appendfsync always) and
Kafka (the noida-db Kafka-protocol broker, acks=all). ``concurrency`` recorders call
``record()`` in a loop, as concurrent requests would; the writer's group commit turns them into
batches. Reported: durable events/s and the latency of one ``record()``.

Request-path cost: an in-process request (an ``ask`` to an actor that does a little work, as
the edge asks a memory actor) with and without ``await audit.record(...)`` before answering,
at the same concurrency. ``request_with_audit_vs_without`` is the throughput ratio; the request
without audit is far cheaper than a real HTTP request (~5k req/s on these machines), so this
ratio is the worst case, not the edge's. The edge
comparison (``edge_recall_with_audit_vs_without``) needs the edge to record audit events; it is
``null`` until it does (see the report of issue 6).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``somabrain`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import parse_args, percentile, ratio, write_json
from somabrain.actors import Actor, ActorSystem
from somabrain.audit import AuditDraft, request_meta
from somabrain.audit.writer import AuditWriter
from somabrain.config import SomaConfig
from tests.servers import KafkaServer, RedisServer

__all__ = ["main"]


def _draft(i: int) -> AuditDraft:
    return AuditDraft(
        tenant="acme",
        actor="agent",
        action="memory.recall",
        decision="allow",
        trace_id=f"t{i}",
        request=request_meta(method="POST", path="/memory/recall", status=200, content=f"q{i}"),
    )


def _config(kafka: str = "", redis: str = "") -> SomaConfig:
    return msgspec.convert(
        {"kafka": {"bootstrap": kafka}, "audit": {"redis_url": redis}}, SomaConfig
    )


async def _tier(cfg: SomaConfig, events: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with ActorSystem("bench") as system:
            system.resources["config"] = cfg
            system.resources["data_dir"] = Path(tmp)
            await system.spawn(AuditWriter, "audit", mailbox_size=65536)
            log = system.resources["audit"]
            latencies: list[float] = []
            per = events // concurrency

            async def recorder(w: int) -> None:
                for i in range(per):
                    start = time.perf_counter()
                    await log.record(_draft(w * per + i))
                    latencies.append(time.perf_counter() - start)

            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for w in range(concurrency):
                    tg.start_soon(recorder, w)
            elapsed = time.perf_counter() - start
    return {
        "events_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


class _Work(Actor):
    """Stands in for a memory actor: a little CPU per request."""

    async def receive(self, message: Any) -> Any:
        return sum(range(200))


async def _request_path(requests: int, concurrency: int, audited: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        async with ActorSystem("bench") as system:
            system.resources["config"] = _config()
            system.resources["data_dir"] = Path(tmp)
            await system.spawn(AuditWriter, "audit", mailbox_size=65536)
            work = await system.spawn(_Work, "work")
            log = system.resources["audit"]
            per = requests // concurrency

            async def client(w: int) -> None:
                for i in range(per):
                    await work.ask(i)
                    if audited:
                        await log.record(_draft(i))

            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for w in range(concurrency):
                    tg.start_soon(client, w)
            return per * concurrency / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    events = 2_000 if args.quick else 20_000
    concurrency = 32
    results: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        RedisServer.running_in(Path(tmp) / "redis") as redis,
        KafkaServer.running_in(Path(tmp) / "kafka") as kafka,
    ):
        assert isinstance(redis, RedisServer) and isinstance(kafka, KafkaServer)
        paths = {
            "spool": _config(),
            "redis": _config(redis=redis.url),
            "kafka": _config(kafka=kafka.bootstrap),
        }
        for name, cfg in paths.items():
            # The spool stays as the cascade's floor, but with its tier up every event
            # takes the tier under test.
            results[name] = anyio.run(_tier, cfg, events, concurrency)
    without = max(anyio.run(_request_path, events, concurrency, False) for _ in range(3))
    with_audit = max(anyio.run(_request_path, events, concurrency, True) for _ in range(3))
    results["request_path"] = {"without_audit_rps": without, "with_audit_rps": with_audit}
    ratios = {
        "request_with_audit_vs_without": ratio(with_audit, without),
        "edge_recall_with_audit_vs_without": None,
        "kafka_vs_spool_events": ratio(
            results["kafka"]["events_per_s"], results["spool"]["events_per_s"]
        ),
        "redis_vs_spool_events": ratio(
            results["redis"]["events_per_s"], results["spool"]["events_per_s"]
        ),
    }
    print(f"audit benchmark: {events} events, {concurrency} concurrent recorders")
    for name in ("spool", "redis", "kafka"):
        r = results[name]
        print(
            f"  {name:6s} {r['events_per_s']:10.0f} durable events/s"
            f"   record() p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
        )
    print(f"  request path: {without:.0f} req/s without audit, {with_audit:.0f} with")
    for key, value in ratios.items():
        print(f"  {key}: {'n/a' if value is None else f'{value:.3f}'}")
    if args.json:
        write_json(Path(args.json), "audit", results, ratios, {"events": events})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
