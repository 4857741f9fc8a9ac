"""The dev node (or any server) as a child process of a benchmark, and the HTTP workloads the
benchmarks drive it with.

``Server`` starts a process and waits for the banner line that says where it listens (never a
fixed sleep); ``start_dev_node`` runs ``somabrain dev --port 0`` with rate limits off (a
benchmark measures the node, not its limiter), ``/metrics`` open (the node listens on loopback,
and :func:`settle` reads it without a token) plus any ``SOMA_*`` overrides. ``preload`` fills a
tenant through ``/memory/remember/batch``; ``recall_requests`` / ``evaluate_requests`` /
``remember_requests`` return callables producing ready-made request bytes for
:func:`benchmarks._http_load.run_load`, the same sequence for the same seed, so two nodes
compared side by side get the same queries. ``side_by_side`` starts one node per
configuration and ``alternating_recall_rounds`` loads them in turns, for benchmarks that
compare two configurations of the whole node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks._http_load import LoadResult, post_request, run_load

__all__ = [
    "Server",
    "evaluate_requests",
    "node_env",
    "post_json",
    "preload",
    "recall_requests",
    "remember_requests",
    "sentence",
    "settle",
    "start_dev_node",
    "token_for",
]

START_TIMEOUT = 60.0
_ROOT = str(Path(__file__).resolve().parent.parent)
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


# ------------------------------------------------------------------------------ workloads


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _query_requests(path: str, token: str, seed: int, **fields: Any) -> Callable[[], bytes]:
    """``POST path`` with a different query each time (20,000 of them, then again), top_k 10
    and ``fields``: the same sequence for the same seed."""
    rng = random.Random(seed)
    queries = [sentence(rng, rng.randint(2, 5)) for _ in range(20_000)]
    index = 0

    def next_request() -> bytes:
        nonlocal index
        index += 1
        body = {"query": queries[index % len(queries)], "top_k": 10, **fields}
        return post_request(path, json.dumps(body).encode(), token)

    return next_request


def recall_requests(token: str, seed: int = 1) -> Callable[[], bytes]:
    """``POST /memory/recall`` (top_k 10), a different query each time."""
    return _query_requests("/memory/recall", token, seed)


def evaluate_requests(token: str, seed: int = 1) -> Callable[[], bytes]:
    """``POST /context/evaluate`` (top_k 10, one session), a different query each time."""
    return _query_requests("/context/evaluate", token, seed, session_id="bench")


def remember_requests(token: str, tag: str) -> Callable[[], bytes]:
    """``POST /memory/remember``, a new memory each time (so never deduplicated)."""
    rng = random.Random(tag)
    counter = 0

    def next_request() -> bytes:
        nonlocal counter
        counter += 1
        content = f"{sentence(rng, 12)} ({tag} {counter})"
        return post_request("/memory/remember", json.dumps({"content": content}).encode(), token)

    return next_request


# ------------------------------------------------------------------------------ processes


class Server:
    """A server process whose banner says where it listens (``pattern``'s first group)."""

    def __init__(self, command: Sequence[str], pattern: str, env: Mapping[str, str]) -> None:
        self.output: list[str] = []
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(env)
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
        if not ready.wait(START_TIMEOUT) or not found:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.output))
        self.address = found[0]

    @property
    def pid(self) -> int:
        return self.process.pid

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


def node_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment, rate limits off, ``/metrics`` without a token, the project
    importable, plus ``overrides``."""
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        SOMA_EDGE__RATE_LIMIT__ENABLED="false",
        SOMA_EDGE__METRICS_PUBLIC="true",
    )
    env["PYTHONPATH"] = _ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(overrides or {})
    return env


def start_dev_node(data_dir: str | Path, overrides: Mapping[str, str] | None = None) -> Server:
    """``somabrain dev`` on a free port; ``int(server.address)`` is the port."""
    return Server(
        [sys.executable, "-m", "somabrain.cli", "dev", "--port", "0", "--data-dir", str(data_dir)],
        r"url:\s+http://127\.0\.0\.1:(\d+)",
        node_env(overrides),
    )


@contextlib.contextmanager
def side_by_side(
    sides: Mapping[str, Mapping[str, str]], monitor: Any, memories: int
) -> Iterator[dict[str, tuple[Server, str]]]:
    """One dev node per side (its ``SOMA_*`` overrides) in a temporary data directory, its pid
    counted as ours by ``monitor`` (a ``CpuMonitor``), with a token for tenant ``bench``
    holding ``memories`` memories; all stopped on exit."""
    nodes: dict[str, tuple[Server, str]] = {}
    with tempfile.TemporaryDirectory(prefix="soma-bench-") as tmp:
        try:
            for name, overrides in sides.items():
                data_dir = Path(tmp) / name
                node = start_dev_node(data_dir, overrides)
                nodes[name] = (node, token_for(data_dir, ["bench"]))
                monitor.ours.append(node.pid)
            for node, token in nodes.values():
                preload(f"http://127.0.0.1:{node.address}", token, memories)
            yield nodes
        finally:
            for node, _ in nodes.values():
                node.stop()


def alternating_recall_rounds(
    nodes: Mapping[str, tuple[Server, str]],
    monitor: Any,
    *,
    repeats: int,
    connections: int,
    warmup: float,
    duration: float,
) -> dict[str, list[LoadResult]]:
    """``repeats`` rounds of recall load on each node, in the order A B, B A, A B...: each side
    runs first as often, so a drift of the machine's load (other users' jobs) does not favour
    one side."""
    rounds: dict[str, list[LoadResult]] = {name: [] for name in nodes}
    names = list(nodes)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            node, token = nodes[name]
            with monitor.measure():
                result = asyncio.run(
                    run_load(
                        name,
                        int(node.address),
                        recall_requests(token, seed=3),
                        connections=connections,
                        warmup=warmup,
                        duration=duration,
                    )
                )
            rounds[name].append(result)
    return rounds


def token_for(data_dir: str | Path, tenants: Sequence[str]) -> str:
    """A token signed with the node's dev secret (what ``somabrain token`` prints)."""
    from somabrain.config import AuthSettings
    from somabrain.edge.auth import Authenticator

    return Authenticator(AuthSettings(), Path(data_dir)).issuer().issue(tenants, ttl=24 * 3600)


def post_json(url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def settle(url: str, timeout: float = 120.0) -> float:
    """Wait until the node's background work on what was written is done (every memory event
    published and checked by the integrity worker), so that it does not run during a
    measurement; returns the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
            text = response.read().decode()
        counters = {
            name: float(value)
            for name, value in re.findall(
                r"^(soma_memory_events_\w+|soma_integrity_checked_total) (\S+)$", text, re.MULTILINE
            )
        }
        queued = counters.get("soma_memory_events_queued", 0.0)
        published = counters.get("soma_memory_events_published_total", 0.0)
        if queued == 0 and counters.get("soma_integrity_checked_total", published) >= published:
            break
        time.sleep(0.05)
    return time.perf_counter() - started


def preload(url: str, token: str, count: int, seed: int = 7) -> float:
    """Remember ``count`` memories in batches of 1000 and wait until the node has settled
    (:func:`settle`); returns the seconds it took."""
    rng = random.Random(seed)
    started = time.perf_counter()
    for start in range(0, count, 1000):
        items = [
            {"content": f"{sentence(rng, rng.randint(8, 20))} (memory {i})", "tags": ["bench"]}
            for i in range(start, min(count, start + 1000))
        ]
        done = post_json(f"{url}/memory/remember/batch", token, {"items": items})
        assert done["count"] == len(items)
    settle(url)
    return time.perf_counter() - started
