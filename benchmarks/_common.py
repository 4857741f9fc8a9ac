"""Shared helpers for the benchmark scripts: arguments, timing, percentiles, tables and JSON.

Every benchmark of the project compares things side by side in one run and reports ratios,
because these machines are noisy: an absolute figure measured on Monday says little about a
figure measured on Tuesday, but two figures measured a second apart on the same process compare
well. The conventions shared by all scripts live here:

* command line: ``--quick`` (small counts, the whole script finishes in well under 30 s) and
  ``--json PATH`` (write the results there as well as printing them);
* a measurement repeats the same run a few times and keeps the best (the least disturbed) and
  the median (to show how noisy the machine was);
* the JSON document is ``{"benchmark": name, "results": {...}, "ratios": {...}, "meta": {...}}``;
  ``ratios`` maps a key to a number (or ``null`` when a side could not be measured), so that
  other tools can read one key without knowing the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CpuBlock",
    "CpuMonitor",
    "Measurement",
    "Target",
    "abest_of",
    "best_of",
    "format_number",
    "free_port",
    "machine_info",
    "parse_args",
    "percentile",
    "print_ratios",
    "print_results",
    "print_table",
    "ratio",
    "summarize",
    "write_json",
]

# ------------------------------------------------------------------------------ arguments


def parse_args(
    description: str,
    argv: Sequence[str] | None = None,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """Parse the common options (``--quick``, ``--json PATH``) plus any ``configure`` adds."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts: the whole run takes seconds"
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", default=None, help="also write the results here"
    )
    if configure is not None:
        configure(parser)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------ timing


@dataclass
class Measurement:
    """Repeated timings of the same run: ``count`` operations took ``samples[i]`` seconds."""

    name: str
    count: int
    samples: list[float] = field(default_factory=list)
    unit: str = "msg/s"
    note: str = ""

    @property
    def best_seconds(self) -> float:
        return min(self.samples) if self.samples else math.nan

    @property
    def rate(self) -> float:
        """Operations per second of the best (fastest) repeat."""
        best = self.best_seconds
        return self.count / best if self.samples and best > 0 else math.nan

    @property
    def median_rate(self) -> float:
        if not self.samples:
            return math.nan
        median = statistics.median(self.samples)
        return self.count / median if median > 0 else math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": _finite_or_none(self.rate),
            "median_rate": _finite_or_none(self.median_rate),
            "unit": self.unit,
            "count": self.count,
            "repeats": len(self.samples),
            "best_seconds": _finite_or_none(self.best_seconds),
            "note": self.note,
        }


def _prepare() -> None:
    # Start each repeat from the same heap state: garbage left by the previous repeat would
    # otherwise be collected (and billed) in the middle of this one.
    gc.collect()


def best_of(repeats: int, run: Callable[[], float]) -> list[float]:
    """Call ``run`` (which returns the seconds it measured) ``repeats`` times."""
    samples = []
    for _ in range(repeats):
        _prepare()
        samples.append(run())
    return samples


async def abest_of(repeats: int, run: Callable[[], Awaitable[float]]) -> list[float]:
    """The async form of :func:`best_of`."""
    samples = []
    for _ in range(repeats):
        _prepare()
        samples.append(await run())
    return samples


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """count, mean, p50, p90, p99 and max of latencies (or any values)."""
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "mean": statistics.fmean(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either side is missing or not positive."""
    if numerator is None or denominator is None:
        return None
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator <= 0:
        return None
    return numerator / denominator


# ------------------------------------------------------------------------------ output


def format_number(value: float | None, digits: int = 3) -> str:
    """``1234567`` -> ``1.23M``; ``None`` and NaN -> ``n/a``."""
    if value is None or not math.isfinite(value):
        return "n/a"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.{digits}g}{suffix}"
    return f"{value:.{digits}g}"


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, title: str = "") -> None:
    """Print an aligned plain-text table (first column left-aligned, the others right)."""
    table = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        cells = [
            cell.ljust(width) if i == 0 or i == len(row) - 1 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    if title:
        print(f"\n{title}")
    print(line(table[0]))
    print("  ".join("-" * width for width in widths))
    for row in table[1:]:
        print(line(row))
    sys.stdout.flush()


def print_results(measurements: Iterable[Measurement], *, title: str = "Results") -> None:
    """One row per measurement: best rate, median rate, count x repeats, note."""
    print_table(
        ("measurement", "best", "median", "unit", "n x repeats", "note"),
        (
            (
                m.name,
                format_number(m.rate),
                format_number(m.median_rate),
                m.unit,
                f"{m.count} x {len(m.samples)}",
                m.note,
            )
            for m in measurements
        ),
        title=title,
    )


@dataclass(frozen=True)
class Target:
    """A ratio the project commits to: ``ratios[key] >= minimum``."""

    key: str
    minimum: float


def print_ratios(
    ratios: Mapping[str, float | None],
    *,
    targets: Iterable[Target] = (),
    explanations: Mapping[str, str] | None = None,
    medians: Mapping[str, float | None] | None = None,
    title: str = "Ratios",
) -> None:
    """One row per ratio with its target (if any) and whether the target is met.

    ``medians`` (optional) are the same ratios computed from median rates instead of best
    ones: shown next to them so that a ratio carried by one lucky repeat stands out.
    """
    by_key = {target.key: target for target in targets}
    explanations = explanations or {}

    def shown(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}x"

    rows = []
    for key, value in ratios.items():
        target = by_key.get(key)
        if target is None:
            verdict, wanted = "", ""
        else:
            wanted = f">= {target.minimum:g}x"
            verdict = "n/a" if value is None else "ok" if value >= target.minimum else "MISSED"
        row = [key, shown(value)]
        if medians is not None:
            row.append(shown(medians.get(key)))
        rows.append((*row, wanted, verdict, explanations.get(key, "")))
    headers = ["ratio", "best"]
    if medians is not None:
        headers.append("median")
    print_table((*headers, "target", "", "meaning"), rows, title=title)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Measurement):
        return value.to_json()
    if isinstance(value, float):
        return _finite_or_none(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (goes into the JSON ``meta``)."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_json(
    path: Path,
    benchmark: str,
    results: Mapping[str, Any],
    ratios: Mapping[str, float | None],
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``{"benchmark", "results", "ratios", "meta"}`` to ``path``; returns the document.

    Non-finite numbers become ``null`` so that the file is strict JSON.
    """
    document: dict[str, Any] = {
        "benchmark": benchmark,
        "results": _jsonable(dict(results)),
        "ratios": _jsonable(dict(ratios)),
        "meta": _jsonable({**machine_info(), **(meta or {})}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return document


# ------------------------------------------------------------------------------ machine load


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_seconds() -> float | None:
    """CPU seconds all processes spent busy since boot (Linux ``/proc/stat``), else None."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...: everything but idle and iowait
    values = [int(value) for value in fields[1:9]]
    return (sum(values) - values[3] - values[4]) / _CLOCK_TICKS


def _stat(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _process_seconds(pid: int) -> float:
    """CPU seconds used by process ``pid`` and its children, live (the node's search worker)
    or reaped (0 if it is gone)."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # utime, stime, then cutime, cstime: the children it has waited for.
    ticks = sum(int(f) for f in fields[11:15])
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (child := _stat(entry)) is not None and child[1] == str(pid):
            ticks += int(child[11]) + int(child[12])
    return ticks / _CLOCK_TICKS


@dataclass
class CpuBlock:
    """One measured block: its wall time and the CPU seconds other processes used meanwhile."""

    wall: float = 0.0
    other: float = 0.0

    @property
    def other_cores(self) -> float | None:
        return self.other / self.wall if self.wall > 0 else None


class CpuMonitor:
    """How busy *other* processes kept the CPUs while some blocks of ours ran, in cores.

    On a shared machine this decides how far figures can be trusted, and not uniformly:
    a single-threaded event loop on its own core barely notices one busy neighbour, while
    two threads handing the GIL over (pykka) get much *faster* once they share a core.
    Linux only (``/proc``); elsewhere every ``other_cores`` is ``None``.
    ``ours`` are extra pids to count as ours (servers the benchmark started).
    """

    def __init__(self) -> None:
        self.total = CpuBlock()
        self.available = _busy_seconds() is not None
        self.ours: list[int] = []

    def _snapshot(self) -> tuple[float, float, float]:
        mine = time.process_time() + sum(_process_seconds(pid) for pid in self.ours)
        return time.perf_counter(), _busy_seconds() or 0.0, mine

    @contextlib.contextmanager
    def measure(self) -> Iterator[CpuBlock]:
        """Count the other processes' CPU time while the ``with`` block runs; the block's
        figures are filled in on exit and added to :attr:`total`."""
        block = CpuBlock()
        if not self.available:
            yield block
            return
        wall0, busy0, mine0 = self._snapshot()
        try:
            yield block
        finally:
            wall1, busy1, mine1 = self._snapshot()
            block.wall = wall1 - wall0
            block.other = max(0.0, (busy1 - busy0) - (mine1 - mine0))
            self.total.wall += block.wall
            self.total.other += block.other

    @property
    def other_cores(self) -> float | None:
        """Average number of cores other processes kept busy (``None``: not measured)."""
        return self.total.other_cores if self.available else None


# ------------------------------------------------------------------------------ servers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (for servers started by a benchmark)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
