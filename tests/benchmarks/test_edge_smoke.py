"""Smoke test of ``benchmarks/edge.py``: every scenario runs (tiny counts) and the JSON has the
agreed shape. Never asserts on speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import edge

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_edge_benchmark_runs_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "edge.json"
    args = ["--quick", "--memories", "300", "--repeats", "1", "--duration", "0.3",
            "--connections", "4", "--json", str(out)]  # fmt: skip
    assert edge.main(args) == 0
    document = json.loads(out.read_text())
    assert document["benchmark"] == "edge"
    assert set(document["results"]) == {
        "bare_hypercorn",
        "recall",
        "recall_100",
        "remember",
        "evaluate",
        "evaluate_on_loop",
    }
    for result in document["results"].values():
        assert result["completed"] > 0 and result["errors"] == 0
        assert result["p99_ms"] >= result["p50_ms"] > 0
    assert set(document["ratios"]) == {
        "recall_vs_bare_hypercorn",
        "remember_vs_bare_hypercorn",
        "recall_100_vs_bare_hypercorn",
        "evaluate_vs_evaluate_on_loop",
    }
    assert all(value > 0 for value in document["ratios"].values())
    printed = capsys.readouterr().out
    assert "recall_vs_bare_hypercorn" in printed and "p99" in printed
    assert document["meta"]["evaluate_p99_ms"] > 0 and "evaluate p99" in printed
