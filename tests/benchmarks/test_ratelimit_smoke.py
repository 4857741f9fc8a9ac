"""Smoke test of ``benchmarks/ratelimit.py``: every part runs (tiny counts: take() in process,
two dev nodes over HTTP) and the JSON has the agreed shape. Never asserts on speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import ratelimit

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ratelimit_benchmark_runs_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ratelimit.json"
    args = ["--quick", "--calls", "256", "--concurrency", "4", "--memories", "20", "--repeats",
            "1", "--duration", "0.3", "--connections", "4", "--json", str(out)]  # fmt: skip
    assert ratelimit.main(args) == 0
    document = json.loads(out.read_text())
    assert document["benchmark"] == "ratelimit"
    assert {"local_1", "local_4", "redis_1", "redis_4"} <= set(document["results"]["take"])
    for side in ("local", "redis"):
        result = document["results"]["edge_recall"][side]
        assert result["completed"] > 0 and result["errors"] == 0
    assert set(document["ratios"]) == set(ratelimit.RATIO_EXPLANATIONS)
    assert all(value > 0 for value in document["ratios"].values())
    assert "edge_recall_redis_vs_local" in capsys.readouterr().out
