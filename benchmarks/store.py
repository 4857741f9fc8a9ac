"""Memory store benchmark: a tenant's log in a file against the same log in PostgreSQL.

    python benchmarks/store.py [--quick] [--json PATH]

Both sides run the same ``TenantMemory`` (built-in embedder) in one process, one after the
other in each round: the file log (``memory.fsync = "group"``: an fdatasync per group commit)
and the PostgreSQL log (a local Debian ``postgres`` started for the run on a loopback port, a
commit per group, ``synchronous_commit`` on). Workloads:

* ``remember_c1``: one writer remembering one memory at a time (latency bound: a commit each);
* ``remember_c32``: 32 concurrent writers (group commit shares a flush among them);
* ``reopen``: open the tenant and rebuild it from its log (what a restarted or reactivated
  memory actor does), ``memories`` memories.

Ratios: ``postgres_vs_file_<workload>`` = operations/s with PostgreSQL over operations/s with
the file (no target: what an operator pays for keeping memories off the node's disk).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``somabrain`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    Measurement,
    abest_of,
    parse_args,
    print_ratios,
    print_results,
    ratio,
    write_json,
)
from somabrain.memory import Memory, TenantMemory
from somabrain.memory.pg_log import PostgresLogs
from tests.servers import PostgresServer

__all__ = ["BENCHMARK", "main"]

BENCHMARK = "store"
WORKLOADS = ("remember_c1", "remember_c32", "reopen")
EXPLANATIONS = {
    f"postgres_vs_file_{w}": f"{w} operations/s, PostgreSQL log over file log" for w in WORKLOADS
}

Opener = Callable[[str], Awaitable[TenantMemory]]


def _memory(side: str, i: int) -> Memory:
    # Each side its own words: the built-in embedder caches word hashes, and the side that
    # ran second would find them warm.
    return Memory(content=f"the {side} agent noted fact number {i} about project {i % 97}")


async def _remember(open_tenant: Opener, tenant: str, count: int, writers: int) -> float:
    memory = await open_tenant(tenant)
    per = count // writers

    async def writer(w: int) -> None:
        for i in range(per):
            await memory.remember(_memory(tenant, w * per + i))

    try:
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for w in range(writers):
                tg.start_soon(writer, w)
        return time.perf_counter() - start
    finally:
        await memory.aclose()


async def _fill(open_tenant: Opener, tenant: str, count: int) -> None:
    memory = await open_tenant(tenant)
    try:
        for start in range(0, count, 1000):
            end = min(count, start + 1000)
            await memory.remember_batch([_memory(tenant, i) for i in range(start, end)])
    finally:
        await memory.aclose()


async def _reopen(open_tenant: Opener, tenant: str) -> float:
    start = time.perf_counter()
    memory = await open_tenant(tenant)
    elapsed = time.perf_counter() - start
    await memory.aclose()
    return elapsed


async def _measure(
    side: str, open_tenant: Opener, writes: int, memories: int, repeats: int
) -> dict[str, Measurement]:
    rounds = iter(range(10**6))
    out: dict[str, Measurement] = {}
    for name, writers, count in (("remember_c1", 1, writes // 4), ("remember_c32", 32, writes)):

        def one_round(writers: int = writers, count: int = count) -> Awaitable[float]:
            return _remember(open_tenant, f"{side}-{next(rounds)}", count, writers)

        samples = await abest_of(repeats, one_round)
        out[name] = Measurement(f"{name} {side}", count - count % writers, samples, "writes/s")
    await _fill(open_tenant, f"{side}-big", memories)
    samples = await abest_of(repeats, lambda: _reopen(open_tenant, f"{side}-big"))
    out["reopen"] = Measurement(f"reopen {side}", memories, samples, "memories/s")
    return out


async def _run(writes: int, memories: int, repeats: int, data: Path, url: str) -> dict[str, Any]:
    async def from_file(tenant: str) -> TenantMemory:
        return await TenantMemory.open(data, tenant)

    logs = await PostgresLogs.connect(url)

    async def from_postgres(tenant: str) -> TenantMemory:
        return await TenantMemory.from_log(await logs.open_tenant(tenant), tenant)

    try:
        file = await _measure("file", from_file, writes, memories, repeats)
        postgres = await _measure("postgres", from_postgres, writes, memories, repeats)
    finally:
        await logs.aclose()
    return {"file": file, "postgres": postgres}


def main(argv: list[str] | None = None) -> int:
    args = parse_args((__doc__ or "").split("\n\n")[0], argv)
    writes = 800 if args.quick else 4000
    memories = 5_000 if args.quick else 50_000
    repeats = 2 if args.quick else 3
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, PostgresServer.running_in(Path(tmp)) as server:
        assert isinstance(server, PostgresServer)
        sides = anyio.run(_run, writes, memories, repeats, Path(tmp) / "files", server.url)
    file, postgres = sides["file"], sides["postgres"]
    ratios = {f"postgres_vs_file_{w}": ratio(postgres[w].rate, file[w].rate) for w in WORKLOADS}
    medians = {
        f"postgres_vs_file_{w}": ratio(postgres[w].median_rate, file[w].median_rate)
        for w in WORKLOADS
    }
    print(f"SomaBrain store benchmark ({'quick' if args.quick else 'full'})")
    print_results([m for w in WORKLOADS for m in (file[w], postgres[w])])
    print_ratios(ratios, explanations=EXPLANATIONS, medians=medians)
    seconds = time.perf_counter() - started
    print(f"total time: {seconds:.1f} s")
    if args.json:
        results = {side: {w: m.to_json() for w, m in ms.items()} for side, ms in sides.items()}
        write_json(
            Path(args.json),
            BENCHMARK,
            results,
            ratios,
            {
                "quick": args.quick,
                "writes": writes,
                "memories": memories,
                "repeats": repeats,
                "ratios_of_medians": medians,
                "seconds": seconds,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
