"""Edge benchmark: remember and recall over HTTP against the dev node, next to a bare Hypercorn.

What it measures, in one run (rates in requests per second, latencies in milliseconds):

* ``bare_hypercorn``: the ceiling. A bare ASGI app served by the same Hypercorn (asyncio
  worker, same settings, its own process like the node) that decodes the recall JSON with the
  same msgspec ``RecallRequest`` decoder as the edge and answers a constant.
* ``recall``: ``POST /memory/recall`` (top_k 10, a different query each time, bearer token)
  against ``somabrain dev`` with 10,000 memories preloaded into the tenant: routing, JWT,
  rate-limit check, decode, ask the tenant's memory actor, hybrid recall (semantic + lexical
  over every memory, in the node's search worker process: the tenant is above
  ``memory.offload_min_memories``), encode.
* ``recall_100``: the same recall requests against a tenant of 100 memories: the same
  response (10 results with their views), a search that costs next to nothing (in the node:
  the tenant is below the search worker's threshold). What the edge and Hypercorn cost for a
  recall response of this size.
* ``remember``: ``POST /memory/remember`` (a new memory each time, so no deduplication) into
  another tenant, acknowledged only once durable (group-commit fsync, the default).
* ``evaluate``: ``POST /context/evaluate`` (top_k 10, a different query each time) on the same
  10,000 memories, at ``--evaluate-connections`` (16 by default): the governance gate, a
  planner of the pool (bus request, queue group), the tenant's memory actor (five views and
  the working memory), the planner's hill-climb, the HRR residual vector (1024 floats), encode.
  Under this load the bundle (hill-climb and residual vector) is built in the node's search
  worker process (``context.build_in_worker = "busy"``, the default).
* ``evaluate_on_loop``: the same evaluate requests against a second dev node with the same
  memories whose planners build the bundle on the event loop (``context.build_in_worker =
  "never"``): the baseline of ``evaluate_vs_evaluate_on_loop``.

The load generator is a raw asyncio HTTP/1.1 client in this process (keep-alive, one request
in flight per connection, ``--connections`` of them, 32 by default): cheap enough to stay far
from being the bottleneck. Each round runs the scenarios in turn for ``--duration``
seconds after a warm-up; each figure is the best round, with the latencies of that round.
Rate limits are disabled on the node for the run (``SOMA_EDGE__RATE_LIMIT__ENABLED=false``).

Targets: ``recall_vs_bare_hypercorn >= 0.6``, recall p99 <= 30 ms at 32 connections and
evaluate p99 <= 50 ms at 16 connections.

    python benchmarks/edge.py --quick --json /tmp/edge.json
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``somabrain`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    CpuMonitor,
    Target,
    parse_args,
    print_ratios,
    ratio,
    write_json,
)
from benchmarks._devnode import (
    Server,
    evaluate_requests,
    node_env,
    preload,
    recall_requests,
    remember_requests,
    start_dev_node,
    token_for,
)
from benchmarks._http_load import LoadResult, print_load_results, run_load

__all__ = ["BENCHMARK", "TARGETS", "LoadResult", "main", "run_load"]

BENCHMARK = "edge"
TARGETS = (Target("recall_vs_bare_hypercorn", 0.6),)
P99_TARGET_MS = 30.0
EVALUATE_P99_TARGET_MS = 50.0
RATIO_EXPLANATIONS = {
    "recall_vs_bare_hypercorn": "recall req/s over the bare Hypercorn ceiling",
    "remember_vs_bare_hypercorn": "durable remember req/s over the bare Hypercorn ceiling",
    "recall_100_vs_bare_hypercorn": "recall over 100 memories: the edge's own cost, no search",
    "evaluate_vs_evaluate_on_loop": "evaluate req/s, bundles built in the worker / on the loop",
}
#: What the baseline node of ``evaluate_on_loop`` changes.
_ON_LOOP = {"SOMA_CONTEXT__BUILD_IN_WORKER": "never"}
_SMALL_TENANT_MEMORIES = 100


# ------------------------------------------------------------------------------ servers


def _bare_app() -> Any:
    import msgspec

    from somabrain.edge.schemas import RecallRequest, RememberRequest

    decoders: dict[str, msgspec.json.Decoder[Any]] = {
        "/memory/recall": msgspec.json.Decoder(RecallRequest),
        "/memory/remember": msgspec.json.Decoder(RememberRequest),
    }
    constant = b'{"results":[],"wm_hits":0,"ltm_hits":0,"duration_ms":0.0}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(constant))]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        decoders[scope["path"]].decode(body)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": constant})

    return app


def serve_bare() -> None:
    """The ceiling: hypercorn's asyncio worker, configured as the edge configures it."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from somabrain.config import EdgeSettings

    edge = EdgeSettings()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(edge.backlog)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.backlog = edge.backlog
    config.keep_alive_timeout = edge.keep_alive_timeout
    config.graceful_timeout = edge.graceful_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("bare")
    print(f"listening on {port}", flush=True)
    asyncio.run(serve(_bare_app(), config))


# ------------------------------------------------------------------------------ the benchmark


@dataclass
class Settings:
    connections: int = 32
    memories: int = 10_000
    evaluate_connections: int = 16
    repeats: int = 5
    warmup: float = 1.0
    duration: float = 5.0


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument("--memories", type=int, default=10_000, help="memories preloaded")
    parser.add_argument(
        "--evaluate-connections", type=int, default=16, help="connections for /context/evaluate"
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 5, quick 2)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)


def run_benchmark(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    monitor = CpuMonitor()
    with (
        tempfile.TemporaryDirectory(prefix="soma-edge-bench-") as tmp,
        tempfile.TemporaryDirectory(prefix="soma-edge-bench-loop-") as loop_tmp,
    ):
        node = start_dev_node(tmp)
        loop_node = start_dev_node(loop_tmp, _ON_LOOP)
        bare = Server([sys.executable, __file__, "--serve-bare"], r"listening on (\d+)", node_env())
        monitor.ours += [node.pid, loop_node.pid, bare.pid]
        try:
            node_port, bare_port = int(node.address), int(bare.address)
            loop_port = int(loop_node.address)
            recall_token = token_for(tmp, ["bench"])
            write_token = token_for(tmp, ["bench-write"])
            small_token = token_for(tmp, ["bench-small"])
            loop_token = token_for(loop_tmp, ["bench"])
            loaded = preload(f"http://127.0.0.1:{node_port}", recall_token, settings.memories)
            preload(f"http://127.0.0.1:{node_port}", small_token, _SMALL_TENANT_MEMORIES)
            preload(f"http://127.0.0.1:{loop_port}", loop_token, settings.memories)
            scenarios: list[tuple[str, int, Callable[[], bytes]]] = [
                ("bare_hypercorn", bare_port, recall_requests(recall_token, seed=3)),
                ("recall", node_port, recall_requests(recall_token, seed=3)),
                ("recall_100", node_port, recall_requests(small_token, seed=3)),
                ("remember", node_port, remember_requests(write_token, "bench")),
                ("evaluate", node_port, evaluate_requests(recall_token, seed=5)),
                ("evaluate_on_loop", loop_port, evaluate_requests(loop_token, seed=5)),
            ]
            rounds: dict[str, list[LoadResult]] = {name: [] for name, _, _ in scenarios}
            background: list[float] = []
            for _ in range(settings.repeats):
                for name, port, requests in scenarios:
                    with monitor.measure() as block:
                        result = asyncio.run(
                            run_load(
                                name,
                                port,
                                requests,
                                connections=settings.evaluate_connections
                                if name.startswith("evaluate")
                                else settings.connections,
                                warmup=settings.warmup,
                                duration=settings.duration,
                            )
                        )
                    rounds[name].append(result)
                    if block.other_cores is not None:
                        background.append(block.other_cores)
        finally:
            node.stop()
            loop_node.stop()
            bare.stop()
    best = {name: max(results, key=lambda r: r.rate) for name, results in rounds.items()}
    medians = {
        name: sorted(r.rate for r in results)[len(results) // 2] for name, results in rounds.items()
    }
    ceiling = best["bare_hypercorn"].rate
    return {
        "best": best,
        "medians": medians,
        "ratios": {
            "recall_vs_bare_hypercorn": ratio(best["recall"].rate, ceiling),
            "remember_vs_bare_hypercorn": ratio(best["remember"].rate, ceiling),
            "recall_100_vs_bare_hypercorn": ratio(best["recall_100"].rate, ceiling),
            "evaluate_vs_evaluate_on_loop": ratio(
                best["evaluate"].rate, best["evaluate_on_loop"].rate
            ),
        },
        "median_ratios": {
            "recall_vs_bare_hypercorn": ratio(medians["recall"], medians["bare_hypercorn"]),
            "remember_vs_bare_hypercorn": ratio(medians["remember"], medians["bare_hypercorn"]),
            "recall_100_vs_bare_hypercorn": ratio(medians["recall_100"], medians["bare_hypercorn"]),
            "evaluate_vs_evaluate_on_loop": ratio(medians["evaluate"], medians["evaluate_on_loop"]),
        },
        "preload_seconds": loaded,
        "background_cores": max(background) if background else None,
        "seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args((__doc__ or "").split("\n\n")[0], argv, configure=_configure)
    if args.serve_bare:
        serve_bare()
        return 0
    settings = Settings(
        connections=args.connections,
        memories=args.memories,
        evaluate_connections=args.evaluate_connections,
        repeats=args.repeats or (2 if args.quick else 5),
        warmup=0.5 if args.quick else 1.0,
        duration=args.duration or (2.0 if args.quick else 5.0),
    )
    report = run_benchmark(settings)
    best: dict[str, LoadResult] = report["best"]
    print(
        f"SomaBrain edge benchmark ({'quick, ' if args.quick else ''}best of {settings.repeats}"
        f" x {settings.duration:g} s, {settings.connections} connections, "
        f"{settings.memories} memories preloaded in {report['preload_seconds']:.1f} s)"
    )
    print_load_results(
        best, report["medians"], first="scenario", title="Results (the best round of each scenario)"
    )
    print_ratios(
        report["ratios"],
        targets=TARGETS,
        explanations=RATIO_EXPLANATIONS,
        medians=report["median_ratios"],
        title="Ratios (best of each side; the targets apply to these)",
    )
    p99 = best["recall"].latency_ms(99)
    verdict = "ok" if p99 <= P99_TARGET_MS else "MISSED"
    print(f"\nrecall p99 {p99:.1f} ms at {settings.connections} connections: target <= "
          f"{P99_TARGET_MS:g} ms {verdict}")  # fmt: skip
    if "evaluate" in best:
        ev99 = best["evaluate"].latency_ms(99)
        verdict = "ok" if ev99 <= EVALUATE_P99_TARGET_MS else "MISSED"
        print(f"evaluate p99 {ev99:.1f} ms at {settings.evaluate_connections} connections: "
              f"target <= {EVALUATE_P99_TARGET_MS:g} ms {verdict}")  # fmt: skip
    if report["background_cores"] is not None:
        print(f"other processes kept up to {report['background_cores']:.2f} cores busy")
    print(f"total time: {report['seconds']:.1f} s")
    if args.json is not None:
        write_json(
            args.json,
            BENCHMARK,
            {name: result.to_json() for name, result in best.items()},
            report["ratios"],
            meta={
                "quick": args.quick,
                "connections": settings.connections,
                "memories": settings.memories,
                "repeats": settings.repeats,
                "duration": settings.duration,
                "ratios_of_medians": report["median_ratios"],
                "median_rates": report["medians"],
                "recall_p99_ms": p99,
                "recall_p99_target_ms": P99_TARGET_MS,
                "evaluate_p99_ms": best["evaluate"].latency_ms(99),
                "evaluate_p99_target_ms": EVALUATE_P99_TARGET_MS,
                "evaluate_connections": settings.evaluate_connections,
                "targets": {target.key: target.minimum for target in TARGETS},
                "background_cores": report["background_cores"],
                "seconds": report["seconds"],
            },
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
