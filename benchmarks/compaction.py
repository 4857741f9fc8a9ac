"""Compaction benchmark: the pauses of squeezing a tenant's tombstones out of its index, built
off the event loop (in a worker thread, in the node) and in steps (in the search worker),
against the compaction in one go it replaced.

A tenant of ``--memories`` memories (384 dimensions, vectors given, so no embedding is timed)
forgets a third of them, one ``forget`` at a time; that makes the index's compaction due once
(a quarter of its slots dead). Measured, side by side in one process, repeats interleaved:

* ``node.thread`` / ``node.on_loop``: ``TenantMemory`` as the node runs it, its garbage
  collector frozen as the node's is, against the same with the compaction done inside the
  ``forget`` that made it due (``HybridIndex.auto_compact``, the former behaviour). A task
  ticking every millisecond records the event loop's longest pause: what every other tenant's
  request waited at worst;
* ``worker.steps`` / ``worker.one_go``: a search worker's replica of the same tenant fed the
  same ``Remove`` frames, its longest frame or step (``Worker.handle``, ``Worker.step``): what a
  search of another tenant waited at worst.

Ratios: ``<side>_pause_vs_one_go`` = the baseline's longest pause over the new one's (target
>= 10 for both: a compaction no longer holds up everyone for as long as it takes).

    python benchmarks/compaction.py --quick --json /tmp/compaction.json
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``somabrain`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    Target,
    parse_args,
    print_ratios,
    print_table,
    ratio,
    write_json,
)
from somabrain.memory import HashingEmbedder, Memory, TenantMemory
from somabrain.memory.search_offload import pack_snapshot
from somabrain.memory.search_protocol import Opened, Remove, ViewParams, frames
from somabrain.memory.search_worker import Worker

__all__ = ["BENCHMARK", "TARGETS", "main"]

BENCHMARK = "compaction"
TARGETS = (Target("node_pause_vs_one_go", 10.0), Target("worker_pause_vs_one_go", 10.0))
DIM = 384
BATCH = 2000


def _memories(n: int) -> tuple[list[Memory], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    memories = [
        Memory(key=f"k{i}", content=f"note {i} about w{i % 997} and v{i % 331}", created_at=1.0)
        for i in range(n)
    ]
    return memories, vectors


async def _node(memories: list[Memory], vectors: npt.NDArray[np.float32], one_go: bool) -> float:
    """The event loop's longest pause (seconds) while a third of the memories are forgotten."""
    tm = TenantMemory.in_memory("bench", embedder=HashingEmbedder(dim=DIM))
    tm.index.auto_compact = one_go
    for start in range(0, len(memories), BATCH):
        part = range(start, min(start + BATCH, len(memories)))
        await tm.remember_batch(
            [Memory(key=memories[i].key, content=memories[i].content,
                    vector=vectors[i].tolist()) for i in part]
        )  # fmt: skip
    gc.collect()
    gc.freeze()  # as the node does once its tree is up (``node.gc_freeze``)
    longest, done = 0.0, False

    async def tick() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:
            await anyio.sleep(0.001)
            now = time.perf_counter()
            longest, last = max(longest, now - last), now

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            for memory in memories[::3]:
                await tm.forget(memory.key)
            assert tm.index.vectors.dead < len(memories) // 4, "no compaction ran"
            done = True
    finally:
        gc.unfreeze()
    return longest


def _worker(memories: list[Memory], vectors: npt.NDArray[np.float32], one_go: bool) -> float:
    """The search worker's longest frame or step (seconds) for the same forgets."""
    views = ViewParams((), 4, 0.85, 2, 3600.0, 1.0, None)
    worker = Worker()
    n = len(memories)
    for part in pack_snapshot(1, DIM, views, None, memories, vectors, [], {}, [], n):
        for frame in frames(bytearray(part)):
            worker.handle(frame)
    while worker.step() != Opened(1):
        pass
    index = worker.replicas[1].index
    index.auto_compact = one_go
    gc.collect()
    gc.freeze()  # as the worker does once a replica is built
    longest = 0.0
    try:
        for memory in memories[::3]:
            started = time.perf_counter()
            worker.handle(Remove(1, memory.key))
            longest = max(longest, time.perf_counter() - started)
            while worker.building_now:
                started = time.perf_counter()
                worker.step()
                longest = max(longest, time.perf_counter() - started)
        assert index.vectors.dead < n // 4, "no compaction ran"
    finally:
        gc.unfreeze()
    return longest


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memories", type=int, default=None, help="memories of the tenant")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per side")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args((__doc__ or "").split("\n\n")[0], argv, configure=_configure)
    n = args.memories or (20_000 if args.quick else 100_000)
    repeats = args.repeats or (2 if args.quick else 3)
    memories, vectors = _memories(n)
    pauses: dict[str, list[float]] = {
        k: [] for k in ("node.thread", "node.on_loop", "worker.steps", "worker.one_go")
    }
    for _ in range(repeats):  # interleaved: a noisy moment hits both sides alike
        pauses["node.thread"].append(anyio.run(_node, memories, vectors, False))
        pauses["node.on_loop"].append(anyio.run(_node, memories, vectors, True))
        pauses["worker.steps"].append(_worker(memories, vectors, False))
        pauses["worker.one_go"].append(_worker(memories, vectors, True))
    results: dict[str, Any] = {
        name: {"longest_pause_ms": min(v) * 1000, "median_ms": statistics.median(v) * 1000,
               "repeats": len(v)}
        for name, v in pauses.items()
    }  # fmt: skip
    rows = [
        [name, f"{r['longest_pause_ms']:.1f}", f"{r['median_ms']:.1f}"]
        for name, r in results.items()
    ]
    print_table(
        ["side", "longest pause ms (best repeat)", "median repeat ms"],
        rows,
        title=f"Forgetting a third of {n} memories ({DIM} dimensions): one compaction",
    )
    best = {name: r["longest_pause_ms"] for name, r in results.items()}
    median = {name: r["median_ms"] for name, r in results.items()}
    ratios = {
        "node_pause_vs_one_go": ratio(best["node.on_loop"], best["node.thread"]),
        "worker_pause_vs_one_go": ratio(best["worker.one_go"], best["worker.steps"]),
    }
    medians = {
        "node_pause_vs_one_go": ratio(median["node.on_loop"], median["node.thread"]),
        "worker_pause_vs_one_go": ratio(median["worker.one_go"], median["worker.steps"]),
    }
    print_ratios(
        ratios,
        targets=TARGETS,
        medians=medians,
        explanations={
            "node_pause_vs_one_go": "event loop's longest pause: compaction on it / in a thread",
            "worker_pause_vs_one_go": "worker's longest frame or step: in one go / in steps",
        },
    )
    if args.json is not None:
        write_json(args.json, BENCHMARK, results, ratios, {"memories": n, "repeats": repeats})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
