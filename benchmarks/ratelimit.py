"""Rate-limit benchmark: what shared buckets in Redis cost next to the node-local ones.

    python benchmarks/ratelimit.py [--quick] [--json PATH]

In process: ``take`` calls per second on a ``RateLimiter`` (a dict of buckets) and on a
``SharedRateLimiter`` against a local redis-server (Debian's, without an append-only file; one
``EVALSHA`` per call, shared by the calls in flight together), one caller at a time (the
latency of a call) and ``--concurrency`` callers (32, as concurrent requests would). On these
machines a bare loopback round trip (raw asyncio ``PING``) takes ~180 us; redis-py and the
script add ~150-200 us to that.

Over HTTP: two dev nodes side by side, rate limits on with limits no request reaches, one with
node-local buckets and one with ``edge.rate_limit.redis_url``; ``POST /memory/recall`` against
a tenant of ``--memories`` (100: a search that costs next to nothing, so that the limiter's
share of a request shows) at ``--connections`` (32), in rounds alternating A B, B A, ...; each
side keeps its best round. ``edge_recall_redis_vs_local`` is the Redis side's req/s over the
local side's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``somabrain`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    CpuMonitor,
    format_number,
    parse_args,
    print_ratios,
    print_table,
    ratio,
    write_json,
)
from benchmarks._devnode import alternating_recall_rounds, side_by_side
from benchmarks._http_load import print_load_results
from somabrain.edge.ratelimit import RateLimiter
from somabrain.edge.shared_ratelimit import SharedRateLimiter
from tests.servers import RedisServer

RATIO_EXPLANATIONS = {
    "take_redis_vs_local": "take() calls/s, Redis over node-local, one caller",
    "take_redis_vs_local_concurrent": "take() calls/s, Redis over node-local, concurrent callers",
    "edge_recall_redis_vs_local": "recall req/s over HTTP, Redis buckets over node-local",
}


class CacheRedis(RedisServer):
    """redis-server as rate limits want it: no append-only file. The test servers' one is set
    up for audit (``appendfsync always``), where every bucket update would wait for an fsync."""

    def command(self) -> list[str]:
        command = super().command()
        at = command.index("--appendonly")
        command[at + 1] = "no"
        return command


#: High enough that no request of the run is refused: the run measures the check, not 429s.
_UNREACHED = {"SOMA_EDGE__RATE_LIMIT__ENABLED": "true", "SOMA_EDGE__RATE_LIMIT__RATE": "1e9",
              "SOMA_EDGE__RATE_LIMIT__BURST": "1000000000"}  # fmt: skip


async def _takes(limiter: Any, calls: int, concurrency: int) -> float:
    """``take`` calls per second, ``concurrency`` callers, tenants spread over 100."""
    per = calls // concurrency

    async def caller(c: int) -> None:
        for i in range(per):
            wait = await limiter.take(f"t{(c * per + i) % 100}")
            assert wait == 0.0, wait

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for c in range(concurrency):
            tg.start_soon(caller, c)
    return per * concurrency / (time.perf_counter() - start)


async def _in_process(url: str, calls: int, concurrency: int, repeats: int) -> dict[str, Any]:
    local = RateLimiter(1e9, 10**9)
    shared = SharedRateLimiter(url, 1e9, 10**9, timeout=1.0)
    results: dict[str, Any] = {}
    try:
        await _takes(shared, 1000, concurrency)  # connections and the script loaded
        for name, limiter in (("local", local), ("redis", shared)):
            for width in (1, concurrency):
                rates = [await _takes(limiter, calls, width) for _ in range(repeats)]
                results[f"{name}_{width}"] = {
                    "best": max(rates),
                    "median": statistics.median(rates),
                }
        assert shared.shared and shared.local_decisions == 0, "Redis did not answer every call"
    finally:
        await shared.aclose()
    return results


def _edge(
    url: str, memories: int, connections: int, repeats: int, warmup: float, duration: float,
    monitor: CpuMonitor,
) -> dict[str, Any]:  # fmt: skip
    sides = {
        "local": dict(_UNREACHED),
        "redis": {**_UNREACHED, "SOMA_EDGE__RATE_LIMIT__REDIS_URL": url},
    }
    with side_by_side(sides, monitor, memories) as nodes:
        rounds = alternating_recall_rounds(
            nodes,
            monitor,
            repeats=repeats,
            connections=connections,
            warmup=warmup,
            duration=duration,
        )
    best = {name: max(results, key=lambda r: r.rate) for name, results in rounds.items()}
    medians = {name: statistics.median(r.rate for r in rs) for name, rs in rounds.items()}
    return {
        "best": best,
        "medians": medians,
        "ratio": ratio(best["redis"].rate, best["local"].rate),
        "median_ratio": ratio(medians["redis"], medians["local"]),
    }


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=None, help="take() calls per measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent take() callers")
    parser.add_argument("--connections", type=int, default=32, help="HTTP connections")
    parser.add_argument("--memories", type=int, default=100, help="memories of the tenant")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 6, quick 3)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per HTTP round")


def main(argv: list[str] | None = None) -> int:
    args = parse_args((__doc__ or "").split("\n\n")[0], argv, configure=_configure)
    calls = args.calls or (4_000 if args.quick else 20_000)
    repeats = args.repeats or (3 if args.quick else 6)
    duration = args.duration or (1.5 if args.quick else 3.0)
    warmup = 0.3 if args.quick else 0.5
    started = time.perf_counter()
    monitor = CpuMonitor()
    with tempfile.TemporaryDirectory() as tmp, CacheRedis.running_in(Path(tmp)) as redis:
        assert isinstance(redis, RedisServer)
        takes = anyio.run(_in_process, redis.url, calls, args.concurrency, repeats)
        edge = _edge(redis.url, args.memories, args.connections, repeats, warmup, duration, monitor)
    width = args.concurrency
    ratios: dict[str, float | None] = {
        "take_redis_vs_local": ratio(takes["redis_1"]["best"], takes["local_1"]["best"]),
        "take_redis_vs_local_concurrent": ratio(
            takes[f"redis_{width}"]["best"], takes[f"local_{width}"]["best"]
        ),
        "edge_recall_redis_vs_local": edge["ratio"],
    }
    print(f"SomaBrain rate-limit benchmark ({'quick' if args.quick else 'full'})")
    print_table(
        ("limiter", "callers", "best calls/s", "median", "us per call (best)"),
        (
            (
                name,
                str(w),
                format_number(takes[f"{name}_{w}"]["best"]),
                format_number(takes[f"{name}_{w}"]["median"]),
                f"{1e6 / takes[f'{name}_{w}']['best']:.2f}",
            )
            for name in ("local", "redis")
            for w in (1, width)
        ),
        title=f"take() in process ({calls} calls, best of {repeats})",
    )
    print_load_results(
        edge["best"],
        edge["medians"],
        first="redis",
        title=(
            f"Edge recall over HTTP (best of {repeats} x {duration:g} s, {args.connections}"
            f" connections, {args.memories} memories)"
        ),
    )
    print_ratios(
        ratios,
        explanations=RATIO_EXPLANATIONS,
        medians={"edge_recall_redis_vs_local": edge["median_ratio"]},
    )
    print(f"\nmedian-round ratio edge_recall_redis_vs_local: {format_number(edge['median_ratio'])}")
    if monitor.other_cores is not None:
        print(f"other processes kept {monitor.other_cores:.2f} cores busy during the HTTP rounds")
    if args.json:
        write_json(
            args.json,
            "ratelimit",
            {"take": takes, "edge_recall": {n: r.to_json() for n, r in edge["best"].items()}},
            ratios,
            meta={
                "edge_recall_median_ratio": edge["median_ratio"],
                "background_cores": monitor.other_cores,
                "seconds": time.perf_counter() - started,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
