"""Smoke test of ``benchmarks/hrr.py``: both sides run (tiny counts) and the JSON has the
agreed shape; the baseline is still a valid superposition. Never asserts on speed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks import hrr
from somabrain.context.hrr import bind, normalise


def test_hrr_benchmark_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "hrr.json"
    assert hrr.main(["--quick", "--count", "5", "--repeats", "1", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["benchmark"] == "hrr"
    assert set(document["results"]) == {
        "cold.superpose",
        "cold.baseline",
        "warm.superpose",
        "warm.baseline",
    }
    assert all(result["rate"] > 0 for result in document["results"].values())
    assert set(document["ratios"]) == {"cold_vs_baseline", "warm_vs_baseline"}


def test_baseline_is_the_normalised_sum_of_unitary_bindings() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((3, 64))
    names = ["a", "b", "c"]
    keys = [np.fft.irfft(hrr._baseline_spectrum(n, 64), n=64) for n in names]
    assert all(np.allclose(np.abs(np.fft.rfft(k)), 1.0) for k in keys)
    expected = normalise(sum(bind(k, v) for k, v in zip(keys, vectors, strict=True)))
    assert np.allclose(hrr.baseline_superpose(names, vectors), expected, atol=1e-9)
