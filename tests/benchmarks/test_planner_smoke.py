"""Smoke test of ``benchmarks/planner.py``: both planners run (tiny counts), their plans agree,
and the JSON has the agreed shape. Never asserts on speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import planner


def test_planner_benchmark_runs_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "planner.json"
    args = ["--quick", "--count", "20", "--repeats", "1",
            "--data", str(tmp_path / "no-locomo.json"), "--json", str(out)]  # fmt: skip
    assert planner.main(args) == 0
    document = json.loads(out.read_text())
    assert document["benchmark"] == "planner"
    assert set(document["results"]) == {
        "default.planner",
        "default.baseline",
        "tight.planner",
        "tight.baseline",
    }
    assert all(result["rate"] > 0 for result in document["results"].values())
    assert set(document["ratios"]) == {"default_vs_baseline", "tight_vs_baseline"}
    assert all(value > 0 for value in document["ratios"].values())
    assert document["meta"]["texts"].startswith("synthetic")
    assert "every plan equal to the baseline's" in capsys.readouterr().out
