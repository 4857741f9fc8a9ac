"""Smoke test of ``benchmarks/compaction.py``: every side runs a compaction (tiny tenant) and
the JSON has the agreed shape. Never asserts on speed."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import compaction


def test_compaction_benchmark_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "compaction.json"
    assert compaction.main(["--memories", "6000", "--repeats", "1", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["benchmark"] == "compaction"
    assert set(document["results"]) == {
        "node.thread",
        "node.on_loop",
        "worker.steps",
        "worker.one_go",
    }
    assert all(r["longest_pause_ms"] > 0 for r in document["results"].values())
    assert set(document["ratios"]) == {"node_pause_vs_one_go", "worker_pause_vs_one_go"}
