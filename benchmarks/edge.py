"""Edge benchmark: remember and recall over HTTP against the dev node, next to a bare Hypercorn.

What it measures, in one run (rates in requests per second, latencies in milliseconds):

* ``bare_hypercorn``: the ceiling. A bare ASGI app served by the same Hypercorn (asyncio
  worker, same settings, its own process like the node) that decodes the recall JSON with the
  same msgspec ``RecallRequest`` decoder as the edge and answers a constant.
* ``recall``: ``POST /memory/recall`` (top_k 10, a different query each time, bearer token)
  against ``somabrain dev`` with 10,000 memories preloaded into the tenant: routing, JWT,
  rate-limit check, decode, ask the tenant's memory actor, hybrid recall (semantic + lexical
  over every memory), encode.
* ``remember``: ``POST /memory/remember`` (a new memory each time, so no deduplication) into
  another tenant, acknowledged only once durable (group-commit fsync, the default).
* ``evaluate``: ``POST /context/evaluate`` (top_k 10, a different query each time) on the same
  10,000 memories, at ``--evaluate-connections`` (16 by default): the governance gate, a
  planner of the pool (bus request, queue group), the tenant's memory actor (five views and
  the working memory), the planner's hill-climb, the HRR residual vector (1024 floats), encode.

The load generator is a raw asyncio HTTP/1.1 client in this process (keep-alive, one request
in flight per connection, ``--connections`` of them, 32 by default): cheap enough to stay far
from being the bottleneck. Each round runs the three scenarios in turn for ``--duration``
seconds after a warm-up; each figure is the best round, with the latencies of that round.
Rate limits are disabled on the node for the run (``SOMA_EDGE__RATE_LIMIT__ENABLED=false``).

Targets: ``recall_vs_bare_hypercorn >= 0.6``, recall p99 <= 30 ms at 32 connections and
evaluate p99 <= 50 ms at 16 connections.

    python benchmarks/edge.py --quick --json /tmp/edge.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``somabrain`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    CpuMonitor,
    Target,
    format_number,
    parse_args,
    print_ratios,
    print_table,
    ratio,
    write_json,
)
from benchmarks._http_load import LoadResult, post_request, run_load

__all__ = ["BENCHMARK", "TARGETS", "LoadResult", "main", "run_load"]

BENCHMARK = "edge"
TARGETS = (Target("recall_vs_bare_hypercorn", 0.6),)
P99_TARGET_MS = 30.0
EVALUATE_P99_TARGET_MS = 50.0
RATIO_EXPLANATIONS = {
    "recall_vs_bare_hypercorn": "recall req/s over the bare Hypercorn ceiling",
    "remember_vs_bare_hypercorn": "durable remember req/s over the bare Hypercorn ceiling",
}
_START_TIMEOUT = 60.0
_VOCABULARY = """
alpha amber anchor apple april arrow autumn bakery banana basket beach berry bicycle bird
blanket bottle bridge brother bucket cabin camera candle canyon carpet castle cherry
chess church circle cloud coffee comet cookie copper corner cotton country cousin dance
desert diamond dinner doctor dragon dream drum eagle engine evening fabric falcon family
farmer feather festival field forest fountain friend garden garlic ginger glacier guitar
harbor harvest hammer helmet honey horizon island jacket jungle kettle kitchen ladder
lantern lemon letter library lighthouse lizard market meadow melody mirror monday morning
mountain museum needle novel ocean orange orchard painter palace paper parrot pencil
pepper piano picnic pillow planet pocket poem potato puzzle rabbit rainbow river rocket
saddle sailor school shadow silver sister sketch snow soccer spider spring station stone
summer sunset table teacher temple thunder ticket tiger tomato tower train travel turtle
umbrella valley violin volcano wagon window winter wizard yellow yogurt zebra
"""
_WORDS = _VOCABULARY.split()


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def recall_requests(token: str, seed: int = 1) -> Callable[[], bytes]:
    rng = random.Random(seed)
    queries = [_sentence(rng, rng.randint(2, 5)) for _ in range(20_000)]
    index = 0

    def next_request() -> bytes:
        nonlocal index
        index += 1
        body = json.dumps({"query": queries[index % len(queries)], "top_k": 10}).encode()
        return post_request("/memory/recall", body, token)

    return next_request


def evaluate_requests(token: str, seed: int = 1) -> Callable[[], bytes]:
    rng = random.Random(seed)
    queries = [_sentence(rng, rng.randint(2, 5)) for _ in range(20_000)]
    index = 0

    def next_request() -> bytes:
        nonlocal index
        index += 1
        body = {"query": queries[index % len(queries)], "top_k": 10, "session_id": "bench"}
        return post_request("/context/evaluate", json.dumps(body).encode(), token)

    return next_request


def remember_requests(token: str, tag: str) -> Callable[[], bytes]:
    rng = random.Random(tag)
    counter = 0

    def next_request() -> bytes:
        nonlocal counter
        counter += 1
        content = f"{_sentence(rng, 12)} ({tag} {counter})"
        return post_request("/memory/remember", json.dumps({"content": content}).encode(), token)

    return next_request


# ------------------------------------------------------------------------------ servers


def _bare_app() -> Any:
    import msgspec

    from somabrain.edge.schemas import RecallRequest, RememberRequest

    decoders = {
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
    import logging

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


class Server:
    """A server process whose banner says where it listens."""

    def __init__(self, command: Sequence[str], pattern: str, env: dict[str, str]) -> None:
        self.output: list[str] = []
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        found: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.output.append(line)
                match = re.search(pattern, line)
                if match and not found:
                    found.append(match.group(1))
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(_START_TIMEOUT) or not found:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.output))
        self.address = found[0]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)  # ends at EOF, once the process has exited
        if self.process.stdout is not None:
            self.process.stdout.close()


def _post(url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def preload(url: str, token: str, count: int, seed: int = 7) -> float:
    """Remember ``count`` memories in batches of 1000; returns the seconds it took."""
    rng = random.Random(seed)
    started = time.perf_counter()
    for start in range(0, count, 1000):
        items = [
            {"content": f"{_sentence(rng, rng.randint(8, 20))} (memory {i})", "tags": ["bench"]}
            for i in range(start, min(count, start + 1000))
        ]
        assert _post(f"{url}/memory/remember/batch", token, {"items": items})["count"] == len(items)
    return time.perf_counter() - started


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


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", SOMA_EDGE__RATE_LIMIT__ENABLED="false")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _token(data_dir: Path, tenants: Sequence[str]) -> str:
    from somabrain.config import AuthSettings
    from somabrain.edge.auth import Authenticator

    return Authenticator(AuthSettings(), data_dir).issuer().issue(tenants, ttl=24 * 3600)


def run_benchmark(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    monitor = CpuMonitor()
    with tempfile.TemporaryDirectory(prefix="soma-edge-bench-") as tmp:
        data_dir = Path(tmp)
        env = _env()
        node = Server(
            [sys.executable, "-m", "somabrain.cli", "dev", "--port", "0", "--data-dir", tmp],
            r"url:\s+http://127\.0\.0\.1:(\d+)",
            env,
        )
        bare = Server([sys.executable, __file__, "--serve-bare"], r"listening on (\d+)", env)
        monitor.ours += [node.process.pid, bare.process.pid]
        try:
            node_port, bare_port = int(node.address), int(bare.address)
            recall_token = _token(data_dir, ["bench"])
            write_token = _token(data_dir, ["bench-write"])
            loaded = preload(f"http://127.0.0.1:{node_port}", recall_token, settings.memories)
            scenarios: list[tuple[str, int, Callable[[], bytes]]] = [
                ("bare_hypercorn", bare_port, recall_requests(recall_token, seed=3)),
                ("recall", node_port, recall_requests(recall_token, seed=3)),
                ("remember", node_port, remember_requests(write_token, "bench")),
                ("evaluate", node_port, evaluate_requests(recall_token, seed=5)),
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
                                if name == "evaluate"
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
        },
        "median_ratios": {
            "recall_vs_bare_hypercorn": ratio(medians["recall"], medians["bare_hypercorn"]),
            "remember_vs_bare_hypercorn": ratio(medians["remember"], medians["bare_hypercorn"]),
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
    print_table(
        ("scenario", "req/s", "median req/s", "p50 ms", "p99 ms", "errors", "requests"),
        (
            (
                name,
                format_number(result.rate),
                format_number(report["medians"][name]),
                f"{result.latency_ms(50):.2f}",
                f"{result.latency_ms(99):.2f}",
                str(result.errors),
                str(result.completed),
            )
            for name, result in best.items()
        ),
        title="Results (the best round of each scenario)",
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
