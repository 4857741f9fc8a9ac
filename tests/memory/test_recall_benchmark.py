"""Smoke test of ``benchmarks/recall.py`` with tiny sizes: it runs and its JSON has the shape
other tools read. No assertion on timings: speed is what the benchmark reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import recall

pytest.importorskip("qdrant_client")


def test_tiny_run_writes_the_expected_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "recall.json"
    assert (
        recall.main(["--quick", "--sizes", "300,1000", "--queries", "6", "--json", str(out)]) == 0
    )
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "recall"
    assert set(doc["results"]) == {"300", "1k"}
    one = doc["results"]["1k"]
    for side in ("ours_hybrid_ms", "ours_semantic_ms", "qdrant_local_ms"):
        assert one[side]["count"] == 6 and one[side]["p50"] > 0
    assert one["agreement_top10"] > 0.9  # same vectors, both exact
    for key in recall.REQUIRED_RATIOS:
        assert key in doc["ratios"]  # null when that size was not measured
    assert doc["ratios"]["recall_100k_speedup_vs_qdrant_local"] is None
    assert doc["ratios"]["recall_1k_speedup_vs_qdrant_local"] > 0
    assert "Latency" in capsys.readouterr().out


def test_corpus_is_deterministic_without_locomo(tmp_path: Path) -> None:
    a = recall.build_corpus(50, 5, tmp_path / "missing.json", seed=3)
    assert a == recall.build_corpus(50, 5, tmp_path / "missing.json", seed=3)
    assert len(a[0]) == 50 and len(a[1]) == 5
