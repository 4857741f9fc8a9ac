"""Smoke test of ``benchmarks/embedding.py``: every embedder runs (tiny counts) and the JSON has
the agreed shape. Never asserts on speed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import embedding
from somabrain.memory.minilm import minilm_available

MINILM_EXPECTED = "minilm" in os.environ.get("SOMA_EXTRAS", "").replace(" ", "").split(",")


def test_builtin_only_runs_and_leaves_the_model_ratios_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "embedding.json"
    args = ["--quick", "--embedders", "builtin", "--count", "16", "--repeats", "1",
            "--data", str(tmp_path / "no-locomo.json"), "--json", str(out)]  # fmt: skip
    assert embedding.main(args) == 0
    document = json.loads(out.read_text())
    assert document["benchmark"] == "embedding"
    assert document["results"]["builtin.batch64"]["rate"] > 0
    assert document["results"]["builtin.batch1"]["count"] == 4
    assert document["ratios"]["onnx_vs_torch.batch64"] is None
    assert document["meta"]["texts"].startswith("synthetic")
    assert "builtin.batch1" in capsys.readouterr().out


@pytest.mark.skipif(
    not MINILM_EXPECTED and not minilm_available(), reason="the minilm extra is not installed"
)
def test_both_runtimes_run_and_agree(minilm_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "embedding.json"
    args = ["--quick", "--count", "8", "--repeats", "1", "--cache-dir", str(minilm_cache),
            "--data", str(tmp_path / "no-locomo.json"), "--json", str(out)]  # fmt: skip
    assert embedding.main(args) == 0
    document = json.loads(out.read_text())
    assert not document["meta"]["skipped"]
    for name in ("torch", "onnx"):
        for batch in (1, 64):
            assert document["results"][f"{name}.batch{batch}"]["rate"] > 0
    assert document["results"]["agreement"] > 0.9999
    assert document["ratios"]["onnx_vs_torch.batch1"] > 0
    assert "export found in the cache" in document["meta"]["loading"]["onnx"]
