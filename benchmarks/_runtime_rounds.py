"""The rounds of the runtime benchmark: counts, interleaved runs, CPU noise, results, ratios.

The runs are interleaved: each round runs every scenario once (asyncio, then trio, then
pykka's threads), and each figure is the best of the rounds, with the median kept next to it.
Every ratio divides two rates measured seconds apart in the same process, once from the best
rates and once from the medians (how much luck is in a ratio).

A busy neighbour can only slow an event loop down, so its best round is the least disturbed
one. pykka's two threads hand the GIL over on every message and get *faster* when they share a
core, so ``CpuMonitor`` measures the cores other processes kept busy during each pykka sample,
and the samples taken on a busy machine are left out while quiet ones exist.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio
import sniffio

from benchmarks._common import CpuMonitor, Measurement, ratio
from benchmarks._runtime_baselines import (
    BareActor,
    bare_ask,
    bare_tell,
    nats_py_raw,
    nats_server,
    pykka_ask,
    pykka_tell,
)
from benchmarks._runtime_workloads import (
    CONCURRENT_ASKERS,
    FULL_WILDCARD,
    WILDCARD,
    Counter,
    bus_actor,
    bus_available,
    bus_callback,
    bus_iterate,
    nats_bus,
    nats_transport_available,
    soma_ask,
    soma_ask_concurrent,
    soma_tell,
)
from somabrain.actors import ActorSystem

__all__ = ["BUSY_NEIGHBOURS", "RATIOS", "Counts", "Report", "run_benchmark"]

# Above this many cores kept busy by other processes, pykka's two threads often share a core.
BUSY_NEIGHBOURS = 0.25

# ratio key -> (numerator result, denominator result, meaning)
RATIOS: dict[str, tuple[str, str, str]] = {
    "tell_asyncio_vs_pykka": ("soma.tell.asyncio", "pykka.tell", "tell, asyncio / pykka"),
    "ask_asyncio_vs_pykka": ("soma.ask.asyncio", "pykka.ask", "sequential ask / pykka ask"),
    "tell_trio_vs_pykka": ("soma.tell.trio", "pykka.tell", "tell, trio / pykka"),
    "ask_trio_vs_pykka": ("soma.ask.trio", "pykka.ask", "sequential ask, trio / pykka ask"),
    "ask16_asyncio_vs_pykka": ("soma.ask16.asyncio", "pykka.ask", "16 askers / pykka seq. ask"),
    "ask16_trio_vs_pykka": ("soma.ask16.trio", "pykka.ask", "16 askers, trio / pykka seq. ask"),
    "tell_asyncio_vs_bare_deque": (
        "soma.tell.asyncio",
        "bare_deque.tell",
        "kernel tell / least possible",
    ),
    "ask_asyncio_vs_bare_deque": (
        "soma.ask.asyncio",
        "bare_deque.ask",
        "kernel ask / least possible",
    ),
    "tell_trio_vs_asyncio": ("soma.tell.trio", "soma.tell.asyncio", "tell, trio / asyncio"),
    "ask_trio_vs_asyncio": ("soma.ask.trio", "soma.ask.asyncio", "ask, trio / asyncio"),
    "bus_asyncio_vs_tell": (
        "bus.cb.asyncio",
        "soma.tell.asyncio",
        "bus publish->callback / tell",
    ),
    "bus_trio_vs_asyncio": ("bus.cb.trio", "bus.cb.asyncio", "bus, trio / asyncio"),
    "natsbus_vs_nats_py": (
        "natsbus.cb.asyncio",
        "nats_py.cb.asyncio",
        "NATS transport / raw nats-py",
    ),
}


@dataclass(frozen=True)
class Counts:
    """How many operations each scenario performs per round."""

    tell: int = 200_000
    ask: int = 50_000
    ask_concurrent: int = 50_000
    bus: int = 100_000
    nats: int = 100_000
    pykka_tell: int = 200_000
    pykka_ask: int = 10_000
    bare_tell: int = 200_000
    bare_ask: int = 50_000

    @classmethod
    def quick(cls) -> Counts:
        return cls(
            tell=60_000,
            ask=20_000,
            ask_concurrent=20_000,
            bus=30_000,
            nats=30_000,
            pykka_tell=100_000,
            pykka_ask=3_000,
            bare_tell=60_000,
            bare_ask=20_000,
        )

    def scaled(self, factor: float) -> Counts:
        """Every count times ``factor`` (at least 16, so that 16 askers get one ask each)."""
        return Counts(
            **{
                name: max(CONCURRENT_ASKERS, round(value * factor))
                for name, value in self.__dict__.items()
            }
        )


@dataclass
class Report:
    """What a run measured: the best and median rates, the ratios, and the machine's load."""

    results: dict[str, Measurement]
    ratios: dict[str, float | None]
    #: The same ratios from the median rates (for information: how much luck is in a ratio).
    median_ratios: dict[str, float | None] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    #: Cores kept busy by other processes while the event loops / pykka's threads ran.
    background: dict[str, float | None] = field(default_factory=dict)
    #: The same for each pykka sample, in round order.
    pykka_background: dict[str, list[float | None]] = field(default_factory=dict)
    seconds: float = 0.0


# ================================================================================ the rounds


@dataclass
class _Round:
    """What one round needs, and where it puts its samples and the scenarios it skipped."""

    counts: Counts
    samples: dict[str, list[float]]
    skipped: dict[str, str]
    nats_url: str | None
    #: Per pykka sample: cores other processes kept busy while it ran.
    busy: dict[str, list[float | None]] = field(default_factory=dict)

    def add(self, key: str, seconds: float) -> None:
        self.samples.setdefault(key, []).append(seconds)

    def skip(self, key: str, why: str) -> None:
        self.skipped.setdefault(key, why)

    async def attempt(self, key: str, run: Callable[[], Awaitable[float]]) -> None:
        """Run a bus or NATS scenario. Those depend on other components (still being
        written, or a server): if one fails, the run goes on and the table says why."""
        if key in self.skipped:
            return
        try:
            self.add(key, await run())
        except Exception as exc:
            self.skip(key, f"{type(exc).__name__}: {exc}")


async def _backend_round(round_: _Round) -> None:
    """Every scenario of the current backend, once."""
    backend = sniffio.current_async_library()
    counts = round_.counts
    async with ActorSystem("bench") as system:
        ref = await system.spawn(Counter, "counter")
        round_.add(f"soma.tell.{backend}", await soma_tell(ref, counts.tell))
        round_.add(f"soma.ask.{backend}", await soma_ask(ref, counts.ask))
        round_.add(f"soma.ask16.{backend}", await soma_ask_concurrent(ref, counts.ask_concurrent))
        ref.stop()

        bus = system.bus
        scenarios: dict[str, Callable[[], Awaitable[float]]] = {
            f"bus.cb.{backend}": lambda: bus_callback(bus, counts.bus),
            f"bus.iter.{backend}": lambda: bus_iterate(bus, counts.bus),
            f"bus.actor.{backend}": lambda: bus_actor(system, bus, counts.bus),
            f"bus.cb_full_wildcard.{backend}": lambda: bus_callback(bus, counts.bus, FULL_WILDCARD),
        }
        missing = bus_available(bus)
        for key, run in scenarios.items():
            if missing is None:
                await round_.attempt(key, run)
            else:
                round_.skip(key, missing)

    if backend != "asyncio":
        return  # the baselines below are asyncio programs (NatsBus is asyncio-only too)

    async with anyio.create_task_group() as tg:
        bare = BareActor()
        tg.start_soon(bare.run)
        round_.add("bare_deque.tell", await bare_tell(bare, counts.bare_tell))
        round_.add("bare_deque.ask", await bare_ask(bare, counts.bare_ask))
        tg.cancel_scope.cancel()

    url = round_.nats_url
    if url is not None:
        await round_.attempt("nats_py.cb.asyncio", lambda: nats_py_raw(url, counts.nats))
        missing = nats_transport_available()
        if missing is None:
            await round_.attempt("natsbus.cb.asyncio", lambda: nats_bus(url, counts.nats))
        else:
            round_.skip("natsbus.cb.asyncio", missing)


def _threads_round(round_: _Round, monitor: CpuMonitor) -> None:
    counts = round_.counts
    for key, run, n in (
        ("pykka.tell", pykka_tell, counts.pykka_tell),
        ("pykka.ask", pykka_ask, counts.pykka_ask),
    ):
        with monitor.measure() as block:
            seconds = run(n)
        round_.add(key, seconds)
        round_.busy.setdefault(key, []).append(block.other_cores)


def _quiet_samples(samples: list[float], busy: list[float | None]) -> tuple[list[float], str]:
    """pykka's samples taken while other processes left its two threads two cores.

    For everything else a busy neighbour can only slow a run down, so the best of the rounds
    is the least disturbed one. pykka's threads get *faster* when they share a core, so its
    best round may be the most disturbed one: leave those rounds out while quiet ones exist.
    """
    quiet = [s for s, b in zip(samples, busy, strict=True) if b is None or b <= BUSY_NEIGHBOURS]
    if len(quiet) == len(samples):
        return samples, ""
    if quiet:
        left_out = len(samples) - len(quiet)
        return quiet, f"; {left_out} busy-machine round(s) left out"
    return samples, "; machine busy in every round: inflated"


# family (key without the backend) -> (count attribute, note); also the order of the table
_FAMILIES: dict[str, tuple[str, str]] = {
    "soma.tell": ("tell", "N tells + 1 ask"),
    "soma.ask": ("ask", "sequential, 1 task"),
    "soma.ask16": ("ask_concurrent", f"{CONCURRENT_ASKERS} concurrent askers"),
    "bus.cb": ("bus", f"publish -> cb on {WILDCARD}"),
    "bus.cb_full_wildcard": ("bus", f"publish -> cb on {FULL_WILDCARD}"),
    "bus.iter": ("bus", f"publish -> async for on {WILDCARD}"),
    "bus.actor": ("bus", f"publish -> subscribe_actor on {WILDCARD}"),
    "natsbus.cb": ("nats", f"NatsBus + codec, nats-server, cb on {WILDCARD}"),
    "nats_py.cb": ("nats", f"raw nats-py bytes, nats-server, cb on {WILDCARD}"),
    "bare_deque.tell": ("bare_tell", "asyncio deque+Future, N tells + 1 ask"),
    "bare_deque.ask": ("bare_ask", "asyncio deque+Future, sequential"),
    "pykka.tell": ("pykka_tell", "ThreadingActor, N tells + 1 ask"),
    "pykka.ask": ("pykka_ask", "ThreadingActor, sequential"),
}
_BACKEND_ORDER = {"asyncio": 0, "trio": 1}


def _family(key: str) -> tuple[str, str]:
    family, _, backend = key.rpartition(".")
    if family in _FAMILIES:
        return family, backend
    return key, ""


def _measurement(key: str, counts: Counts, samples: list[float]) -> Measurement:
    family, _ = _family(key)
    attribute, note = _FAMILIES[family]
    count = getattr(counts, attribute)
    if family == "soma.ask16":
        count = count // CONCURRENT_ASKERS * CONCURRENT_ASKERS
    return Measurement(key, count, samples, note=note)


def _sort_key(key: str) -> tuple[int, int, str]:
    family, backend = _family(key)
    return list(_FAMILIES).index(family), _BACKEND_ORDER.get(backend, 2), key


def run_benchmark(
    counts: Counts,
    repeats: int = 3,
    *,
    backends: Sequence[str] = ("asyncio", "trio"),
    with_nats: bool = True,
) -> Report:
    """Run ``repeats`` interleaved rounds of every scenario; each figure is the best round."""
    began = time.perf_counter()
    samples: dict[str, list[float]] = {}
    skipped: dict[str, str] = {}
    busy: dict[str, list[float | None]] = {}
    loops, threads = CpuMonitor(), CpuMonitor()
    with contextlib.ExitStack() as stack:
        url: str | None = None
        if with_nats:
            try:
                server = stack.enter_context(nats_server())
            except (OSError, RuntimeError) as exc:
                skipped["nats_py.cb.asyncio"] = skipped["natsbus.cb.asyncio"] = str(exc)
            else:
                url = server.url
                loops.ours.append(server.pid)
                threads.ours.append(server.pid)
        for _ in range(repeats):
            round_ = _Round(counts, samples, skipped, url, busy)
            for backend in backends:
                with loops.measure():
                    anyio.run(_backend_round, round_, backend=backend)
            _threads_round(round_, threads)

    notes = {}
    for key, flags in busy.items():
        samples[key], notes[key] = _quiet_samples(samples[key], flags)
    results = {
        key: _measurement(key, counts, samples[key]) for key in sorted(samples, key=_sort_key)
    }
    for key, note in notes.items():
        results[key].note += note
    for key in list(skipped):
        if key in results:  # failed in some rounds only: keep the rounds that worked
            results[key].note += f" (failed once: {skipped.pop(key)})"
    ratios: dict[str, float | None] = {}
    median_ratios: dict[str, float | None] = {}
    for key, (numerator, denominator, _) in RATIOS.items():
        num, den = results.get(numerator), results.get(denominator)
        ratios[key] = ratio(num.rate if num else None, den.rate if den else None)
        median_ratios[key] = ratio(
            num.median_rate if num else None, den.median_rate if den else None
        )
    background = {
        "event_loops": loops.other_cores,
        "pykka_threads": threads.other_cores,
    }
    return Report(
        results=results,
        ratios=ratios,
        median_ratios=median_ratios,
        skipped=skipped,
        background=background,
        pykka_background=busy,
        seconds=time.perf_counter() - began,
    )
