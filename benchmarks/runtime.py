"""Runtime benchmark: the actor kernel and the subject bus against pykka and a bare asyncio actor.

What it measures, side by side in one process and one run (rates in messages per second):

* the kernel, under asyncio and trio: ``soma.tell`` / ``soma.ask`` / ``soma.ask16`` into one
  actor, and the in-process subject bus, ``bus.cb`` / ``bus.iter`` / ``bus.actor`` /
  ``bus.cb_full_wildcard``; ``natsbus.cb.asyncio``: the bus over a real ``nats-server`` (when
  installed). What each one does: :mod:`benchmarks._runtime_workloads`.
* the baselines, doing the same work: ``pykka.tell`` / ``pykka.ask``, ``bare_deque.tell`` /
  ``bare_deque.ask`` (the least an asyncio actor can do, a floor for the kernel's overheads)
  and ``nats_py.cb.asyncio`` (raw nats-py): :mod:`benchmarks._runtime_baselines`.

The runs are interleaved in rounds and each figure is the best of the rounds; the median is
printed next to it (:mod:`benchmarks._runtime_rounds`). This module holds the targets, the
notes on the machine's load and the command line.

How to read it: "Results" gives the rates (higher is better). "Ratios" divides two rates
measured seconds apart in the same process, which is what compares across machines and
commits; the targets the kernel must meet apply to the ratio of the best rates and are marked
``ok`` or ``MISSED``. The ratio of the medians is shown too: pykka's tell is the noisiest
figure (two threads handing the GIL over), so a ``*_vs_pykka`` ratio that differs a lot
between the two columns was decided by one lucky pykka round. The ``*_vs_pykka`` ask ratios
use the *sequential* ask (pykka's ask is measured sequentially too); ``ask16`` is for
information. ``--quick`` takes about 10 s on 2 cores (the limit is 30 s).

    python benchmarks/runtime.py --quick --json /tmp/runtime.json
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``somabrain`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    Target,
    parse_args,
    print_ratios,
    print_results,
    print_table,
    write_json,
)
from benchmarks._runtime_rounds import BUSY_NEIGHBOURS, RATIOS, Counts, run_benchmark
from benchmarks._runtime_workloads import CONCURRENT_ASKERS

__all__ = [
    "RATIO_EXPLANATIONS",
    "REQUIRED_RATIOS",
    "TARGETS",
    "background_notes",
    "main",
    "missed_targets",
]

BENCHMARK = "runtime"

# The ratios the kernel must reach (see RATIOS in benchmarks/_runtime_rounds.py).
TARGETS = (
    Target("tell_asyncio_vs_pykka", 10.0),
    Target("ask_asyncio_vs_pykka", 6.0),
    Target("tell_trio_vs_pykka", 8.0),
    Target("ask_trio_vs_pykka", 3.0),
)
REQUIRED_RATIOS = tuple(target.key for target in TARGETS)
RATIO_EXPLANATIONS = {key: meaning for key, (_, _, meaning) in RATIOS.items()}


def missed_targets(ratios: dict[str, float | None]) -> list[str]:
    """The target keys whose ratio is below its minimum or could not be measured."""
    return [
        target.key
        for target in TARGETS
        if (value := ratios.get(target.key)) is None or value < target.minimum
    ]


def background_notes(background: dict[str, float | None]) -> list[str]:
    """What the machine's other load means for this run's figures."""
    loops, threads = background.get("event_loops"), background.get("pykka_threads")
    if loops is None or threads is None:
        return ["background load: not measured (no /proc)"]
    notes = [
        f"background load: other processes kept {loops:.2f} cores busy during the event-loop "
        f"runs, {threads:.2f} during pykka's (of {os.cpu_count()} CPUs)"
    ]
    if threads > BUSY_NEIGHBOURS:
        notes.append(
            "WARNING: the machine was busy while pykka ran. pykka's actor and caller threads "
            "hand the GIL over on every message, several times faster when they share one "
            "core than across two idle cores: pykka rounds taken on a busy machine are left "
            "out when quiet ones exist (see the pykka notes), else its figures are inflated "
            "and the *_vs_pykka ratios understated."
        )
    if loops > BUSY_NEIGHBOURS * 2:
        notes.append("WARNING: the machine was busy during the event-loop runs too.")
    return notes


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 7, quick 5)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count by this")
    parser.add_argument("--no-nats", action="store_true", help="skip the nats-server scenarios")
    parser.add_argument(
        "--fail-on-miss", action="store_true", help="exit with status 1 when a target is missed"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args((__doc__ or "").split("\n\n")[0], argv, configure=_configure)
    counts = (Counts.quick() if args.quick else Counts()).scaled(args.scale)
    repeats = args.repeats or (5 if args.quick else 7)
    report = run_benchmark(counts, repeats, with_nats=not args.no_nats)
    missed = missed_targets(report.ratios)

    print(f"SomaBrain runtime benchmark ({'quick, ' if args.quick else ''}best of {repeats})")
    print_results(report.results.values())
    if report.skipped:
        print_table(("not measured", "why"), sorted(report.skipped.items()), title="Not measured")
    print_ratios(
        report.ratios,
        targets=TARGETS,
        explanations=RATIO_EXPLANATIONS,
        medians=report.median_ratios,
        title="Ratios (best of each side; the targets apply to these)",
    )
    print(
        "\n*_vs_pykka ratios use the sequential ask (pykka's ask is sequential too); "
        f"ask16 = {CONCURRENT_ASKERS} concurrent askers, for information."
    )
    for line in background_notes(report.background):
        print(line)
    print(f"targets missed: {', '.join(missed) or 'none'}; total time: {report.seconds:.1f} s")

    if args.json is not None:
        write_json(
            args.json,
            BENCHMARK,
            report.results,
            report.ratios,
            meta={
                "quick": args.quick,
                "repeats": repeats,
                "counts": counts.__dict__,
                "seconds": report.seconds,
                "ratios_of_medians": report.median_ratios,
                "background_cores": report.background,
                "pykka_background_cores_per_round": report.pykka_background,
                "busy_threshold_cores": BUSY_NEIGHBOURS,
                "ask_ratio_uses": "sequential ask (one task); ask16 is informational",
                "targets": {target.key: target.minimum for target in TARGETS},
                "missed_targets": missed,
                "skipped": report.skipped,
                "ratio_definitions": {
                    key: {"numerator": num, "denominator": den, "meaning": meaning}
                    for key, (num, den, meaning) in RATIOS.items()
                },
            },
        )
        print(f"wrote {args.json}")
    return 1 if args.fail_on_miss and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
