"""Smoke test of ``benchmarks/audit.py``: every part runs (tiny counts: the tiers, the request
path, two dev nodes over HTTP) and the JSON has the agreed shape. Never asserts on speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import audit

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_audit_benchmark_runs_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit.json"
    args = ["--quick", "--events", "256", "--memories", "200", "--repeats", "2",
            "--duration", "0.3", "--connections", "4", "--json", str(out)]  # fmt: skip
    assert audit.main(args) == 0
    document = json.loads(out.read_text())
    assert document["benchmark"] == "audit"
    assert {"spool", "redis", "kafka", "request_path", "edge_recall"} <= set(document["results"])
    for side in ("with_audit", "without_audit"):
        result = document["results"]["edge_recall"][side]
        assert result["completed"] > 0 and result["errors"] == 0
    ratios = document["ratios"]
    assert ratios["edge_recall_with_audit_vs_without"] > 0
    assert ratios["edge_remember_with_audit_vs_without"] is None  # write auditing is always on
    assert document["meta"]["edge_recall_audit_batching"]["events"] > 0
    printed = capsys.readouterr().out
    assert "edge_recall_with_audit_vs_without" in printed and "target >= 0.85" in printed
