"""Audit benchmark: events/s made durable through each tier, and what auditing costs requests.

    python benchmarks/audit.py [--quick] [--json PATH]

Tiers, each measured alone (the writer configured with only that tier, so every event takes
it): the fsynced local spool, a Redis Stream (Debian redis-server, appendfsync always) and
Kafka (the noida-db Kafka-protocol broker, acks=all). ``concurrency`` recorders call
``record()`` in a loop, as concurrent requests would; the writer's group commit turns them into
batches. Reported: durable events/s and the latency of one ``record()``.

Request-path cost, in process: an ``ask`` to an actor that does a little work (as the edge
asks a memory actor) with and without ``await audit.record(...)`` before answering, at the
same concurrency. The request without audit is far cheaper than a real HTTP request, so
``request_with_audit_vs_without`` is a worst case, not the edge's.

The edge's cost, over HTTP: two dev nodes side by side in one run, one with ``audit.reads``
on (``SOMA_AUDIT__READS=true``: every recall waits until its ``memory.recall`` event is
durable in the fsynced spool) and one without, rate limits off, the same ``--memories``
preloaded into each, then ``POST /memory/recall`` (top_k 10, the same query sequence) at
``--connections`` (32), in short rounds alternating A B, B A, ... so that both sides see
the same drift of a shared machine's load; each side keeps its best round.
``edge_recall_with_audit_vs_without`` is audited req/s over unaudited req/s (target >= 0.85:
auditing costs the edge at most 15%); the ratio of medians and the round-by-round ratios are
printed next to it, and the p50/p99 columns show the latency a request pays.

There is no ``edge_remember_with_audit_vs_without``: write auditing has no switch (every state
change is audited by design), so there is no unaudited remember to compare with; it is
reported as ``null``.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``somabrain`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    CpuMonitor,
    Target,
    format_number,
    parse_args,
    percentile,
    print_ratios,
    print_table,
    ratio,
    write_json,
)
from benchmarks._devnode import alternating_recall_rounds, post_json, side_by_side
from benchmarks._http_load import LoadResult, print_load_results
from somabrain.actors import Actor, ActorSystem
from somabrain.audit import AuditDraft, request_meta
from somabrain.audit.writer import AuditWriter
from somabrain.config import SomaConfig
from tests.servers import KafkaServer, RedisServer

__all__ = ["BENCHMARK", "TARGETS", "main"]

BENCHMARK = "audit"
TARGETS = (Target("edge_recall_with_audit_vs_without", 0.85),)
RATIO_EXPLANATIONS = {
    "edge_recall_with_audit_vs_without": "HTTP recall req/s, reads audited over not audited",
    "edge_remember_with_audit_vs_without": "n/a: write auditing has no switch (always on)",
    "request_with_audit_vs_without": "in-process ask + record() over a bare ask (worst case)",
    "kafka_vs_spool_events": "durable events/s, Kafka tier over the spool",
    "redis_vs_spool_events": "durable events/s, Redis Stream tier over the spool",
}


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


# ------------------------------------------------------------------------------ the edge


@dataclass
class EdgeSettings:
    connections: int = 32
    memories: int = 10_000
    repeats: int = 8
    warmup: float = 0.5
    duration: float = 3.0


def _edge_recall(settings: EdgeSettings, monitor: CpuMonitor) -> dict[str, Any]:
    """Recall over HTTP against two dev nodes, reads audited on one (see the module doc)."""
    sides = {"without_audit": {}, "with_audit": {"SOMA_AUDIT__READS": "true"}}
    with side_by_side(sides, monitor, settings.memories) as nodes:
        for name, (node, token) in nodes.items():
            url = f"http://127.0.0.1:{node.address}/memory/recall"
            probe = post_json(url, token, {"query": "river", "top_k": 1})
            # Check the sides are what they claim to be before timing them.
            assert (probe["audit_id"] is not None) == (name == "with_audit"), probe
        rounds = alternating_recall_rounds(
            nodes,
            monitor,
            repeats=settings.repeats,
            connections=settings.connections,
            warmup=settings.warmup,
            duration=settings.duration,
        )
        audited = nodes["with_audit"][0]
        batching = _audit_batching(f"http://127.0.0.1:{audited.address}/metrics")
    best = {name: max(results, key=lambda r: r.rate) for name, results in rounds.items()}
    medians = {name: statistics.median(r.rate for r in rs) for name, rs in rounds.items()}
    pairs = [
        a.rate / b.rate
        for a, b in zip(rounds["with_audit"], rounds["without_audit"], strict=True)
        if b.rate > 0
    ]
    return {
        "best": best,
        "medians": medians,
        "ratio": ratio(best["with_audit"].rate, best["without_audit"].rate),
        "median_ratio": ratio(medians["with_audit"], medians["without_audit"]),
        "pair_ratios": pairs,
        "batching": batching,
    }


def _audit_batching(url: str) -> dict[str, float]:
    """Events and group commits of a node's audit writer, from its ``/metrics``."""
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    found = {}
    for name in ("soma_audit_events_total", "soma_audit_batches_total"):
        match = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
        found[name] = float(match.group(1)) if match else math.nan
    events, batches = found["soma_audit_events_total"], found["soma_audit_batches_total"]
    return {"events": events, "batches": batches, "events_per_batch": events / max(batches, 1)}


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connections", type=int, default=32, help="HTTP connections")
    parser.add_argument(
        "--memories", type=int, default=None, help="memories preloaded (default 10000, quick 2000)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 8, quick 4)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per round")
    parser.add_argument("--events", type=int, default=None, help="events per tier measurement")


def main(argv: list[str] | None = None) -> int:
    args = parse_args((__doc__ or "").split("\n\n")[0], argv, configure=_configure)
    events = args.events or (2_000 if args.quick else 20_000)
    concurrency = 32
    edge = EdgeSettings(
        connections=args.connections,
        memories=args.memories or (2_000 if args.quick else 10_000),
        repeats=args.repeats or (4 if args.quick else 8),
        warmup=0.3 if args.quick else 0.5,
        duration=args.duration or (1.5 if args.quick else 3.0),
    )
    started = time.perf_counter()
    monitor = CpuMonitor()
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
    recall = _edge_recall(edge, monitor)
    best: dict[str, LoadResult] = recall["best"]
    results["edge_recall"] = {name: r.to_json() for name, r in best.items()}
    spool_rate = results["spool"]["events_per_s"]
    ratios: dict[str, float | None] = {
        "edge_recall_with_audit_vs_without": recall["ratio"],
        "edge_remember_with_audit_vs_without": None,
        "request_with_audit_vs_without": ratio(with_audit, without),
        "kafka_vs_spool_events": ratio(results["kafka"]["events_per_s"], spool_rate),
        "redis_vs_spool_events": ratio(results["redis"]["events_per_s"], spool_rate),
    }
    medians = {"edge_recall_with_audit_vs_without": recall["median_ratio"]}
    pairs = recall["pair_ratios"]

    print(f"SomaBrain audit benchmark ({'quick' if args.quick else 'full'})")
    print_table(
        ("tier", "durable events/s", "record() p50 ms", "p99 ms"),
        (
            (
                name,
                format_number(results[name]["events_per_s"]),
                f"{results[name]['p50_ms']:.2f}",
                f"{results[name]['p99_ms']:.2f}",
            )
            for name in ("spool", "redis", "kafka")
        ),
        title=f"Tiers ({events} events, {concurrency} concurrent recorders, one tier each)",
    )
    print(f"\nin-process request path: {without:.0f} req/s without audit, {with_audit:.0f} with")
    print_load_results(
        best,
        recall["medians"],
        first="recall",
        title=(
            f"Edge recall over HTTP (best of {edge.repeats} x {edge.duration:g} s, "
            f"{edge.connections} connections, {edge.memories} memories)"
        ),
    )
    print_ratios(
        ratios,
        targets=TARGETS,
        explanations=RATIO_EXPLANATIONS,
        medians=medians,
        title="Ratios (best of each side; the target applies to these)",
    )
    batching = recall["batching"]
    print(
        f"\naudited node: {batching['events']:.0f} audit events in {batching['batches']:.0f} "
        f"group commits ({batching['events_per_batch']:.1f} per fsync); round by round "
        f"with/without: {' '.join(f'{p:.2f}' for p in pairs)} (median "
        f"{statistics.median(pairs) if pairs else math.nan:.3f})"
    )
    value = ratios["edge_recall_with_audit_vs_without"]
    verdict = "n/a" if value is None else "ok" if value >= 0.85 else "MISSED"
    shown = "n/a" if value is None else f"{value:.3f}"
    print(f"\nedge_recall_with_audit_vs_without {shown}: target >= 0.85 {verdict}")
    print("edge_remember_with_audit_vs_without: skipped (write auditing cannot be turned off)")
    if monitor.other_cores is not None:
        print(f"other processes kept {monitor.other_cores:.2f} cores busy during the HTTP rounds")
    seconds = time.perf_counter() - started
    print(f"total time: {seconds:.1f} s")
    if args.json:
        write_json(
            Path(args.json),
            BENCHMARK,
            results,
            ratios,
            {
                "quick": args.quick,
                "events": events,
                "concurrency": concurrency,
                "connections": edge.connections,
                "memories": edge.memories,
                "repeats": edge.repeats,
                "duration": edge.duration,
                "ratios_of_medians": medians,
                "edge_recall_median_rates": recall["medians"],
                "edge_recall_round_ratios": pairs,
                "edge_recall_audit_batching": batching,
                "targets": {t.key: t.minimum for t in TARGETS},
                "background_cores": monitor.other_cores,
                "seconds": seconds,
            },
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
