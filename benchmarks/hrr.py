"""HRR benchmark: a bundle's ``residual_vector`` (``superpose`` of 10 memories in 1024 dims),
with the key spectra derived in one batch against the former per-key seeded generator.

What it measures (one process, interleaved repeats), per superposition of 10 unit vectors:

* ``cold``: every key new (a memory never in a bundle of this process before, or evicted from
  the spectrum cache): ``superpose`` derives the 10 spectra in one vectorised pass (splitmix64
  phases from a table) against ``baseline_superpose`` below, the former derivation (a seeded
  ``numpy.random.Generator``, uniform phases, a complex ``exp`` per key);
* ``warm``: the same 10 keys every time (cached spectra on both sides: the former
  ``functools.lru_cache`` against the bounded cache that replaced it).

The keys derive different (equally random) vectors on the two sides, so only speed is compared;
``tests/context/test_hrr.py`` checks the algebra. Ratios: ``<workload>_vs_baseline`` =
superpositions/s of ``superpose`` over the baseline's (target >= 2 for ``cold``: the spectra are
~10x cheaper to derive, the FFTs of the vectors cost the same on both sides).

    python benchmarks/hrr.py --quick --json /tmp/hrr.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``somabrain`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    Measurement,
    Target,
    best_of,
    parse_args,
    print_ratios,
    print_results,
    ratio,
    write_json,
)
from somabrain.context.hrr import _seed, normalise, superpose

__all__ = ["BENCHMARK", "TARGETS", "baseline_superpose", "main"]

BENCHMARK = "hrr"
TARGETS = (Target("cold_vs_baseline", 2.0),)
DIM = 1024
KEYS_PER_BUNDLE = 10


# ------------------------------------------------------------------------------ the baseline


@lru_cache(maxsize=65_536)
def _baseline_spectrum(key: str, dim: int) -> npt.NDArray[np.complex128]:
    rng = np.random.default_rng(_seed(key, "soma-hrr-key"))  # the same BLAKE2b seed
    n = dim // 2 + 1
    spectrum: npt.NDArray[np.complex128] = np.exp(1j * rng.uniform(-np.pi, np.pi, n))
    spectrum[0] = 1.0 if rng.random() < 0.5 else -1.0
    if dim % 2 == 0:
        spectrum[-1] = 1.0 if rng.random() < 0.5 else -1.0
    return spectrum


def baseline_superpose(keys: Sequence[str], vectors: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``superpose`` as it was: one seeded generator per key, spectra in an ``lru_cache`` of
    65,536 entries (8 KB each at 1024 dims)."""
    arr = np.asarray(vectors, dtype=np.float64)
    dim = arr.shape[1]
    spectra = np.stack([_baseline_spectrum(k, dim) for k in keys])
    total = (np.fft.rfft(arr, axis=1) * spectra).sum(axis=0)
    return normalise(np.fft.irfft(total, n=dim))


# ------------------------------------------------------------------------------ the runs

Superpose = Callable[[Sequence[str], npt.ArrayLike], npt.NDArray[np.float64]]
_fresh = itertools.count()


def _run(func: Superpose, vectors: npt.NDArray[np.float64], count: int, cold: bool) -> float:
    if cold:  # names never used before in this process: both sides miss their caches
        batches = [[f"cold-{next(_fresh)}" for _ in range(KEYS_PER_BUNDLE)] for _ in range(count)]
    else:
        batches = [[f"warm-{i}" for i in range(KEYS_PER_BUNDLE)]] * count
        func(batches[0], vectors)
    started = time.perf_counter()
    for keys in batches:
        func(keys, vectors)
    return time.perf_counter() - started


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement")
    parser.add_argument("--count", type=int, default=None, help="superpositions per repeat")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args((__doc__ or "").split("\n\n")[0], argv, configure=_configure)
    count = args.count or (300 if args.quick else 2000)
    repeats = args.repeats or (5 if args.quick else 9)
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((KEYS_PER_BUNDLE, DIM))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    workloads = ("cold", "warm")
    sides: dict[str, Superpose] = {"superpose": superpose, "baseline": baseline_superpose}
    measurements: dict[str, Measurement] = {}
    for name in workloads:
        for side in sides:
            key = f"{name}.{side}"
            note = f"{KEYS_PER_BUNDLE} keys, {DIM} dims, {'new' if name == 'cold' else 'same'} keys"
            measurements[key] = Measurement(key, count, unit="bundles/s", note=note)
    for _ in range(repeats):  # interleaved: a noisy moment hits both sides alike
        for name in workloads:
            for side, func in sides.items():
                samples = best_of(1, lambda: _run(func, vectors, count, name == "cold"))  # noqa: B023
                measurements[f"{name}.{side}"].samples.extend(samples)

    print_results(measurements.values(), title="Residual vectors (in process)")
    ratios: dict[str, float | None] = {}
    medians: dict[str, float | None] = {}
    for name in workloads:
        new, old = measurements[f"{name}.superpose"], measurements[f"{name}.baseline"]
        ratios[f"{name}_vs_baseline"] = ratio(new.rate, old.rate)
        medians[f"{name}_vs_baseline"] = ratio(new.median_rate, old.median_rate)
    print_ratios(
        ratios,
        targets=TARGETS,
        medians=medians,
        explanations={
            "cold_vs_baseline": "new keys: spectra derived in one batch vs a generator per key",
            "warm_vs_baseline": "cached keys: the bounded cache vs the former lru_cache",
        },
    )
    if args.json is not None:
        write_json(args.json, BENCHMARK, measurements, ratios, {"count": count, "repeats": repeats})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
