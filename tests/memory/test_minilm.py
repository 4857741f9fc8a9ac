"""The MiniLM embedder on both runtimes (runs when the ``minilm`` extra is installed, else skipped).

When ``SOMA_EXTRAS`` lists ``minilm`` (``scripts/test`` sets it and installs the extra), the
extra is expected: these tests then run, and fail without it instead of skipping, so CI cannot
pass while silently leaving them out.

The ONNX export is made once for the session, in a temporary cache, by the child process a node
would start (``somabrain embedder export``; ``minilm_cache`` in tests/conftest.py); tests that
damage an export work on a copy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from somabrain.memory.minilm import (
    MINILM_DIM,
    minilm_available,
    onnx_runtime_available,
    select_runtime,
)

EXPECTED = "minilm" in os.environ.get("SOMA_EXTRAS", "").replace(" ", "").split(",")

pytestmark = pytest.mark.skipif(
    not EXPECTED and not minilm_available(),
    reason="the minilm extra is not installed (SOMA_EXTRAS=minilm installs it and requires it)",
)

#: Short, long (well past the 256-token limit), unicode, empty and blank texts.
MIXED = [
    "A cat sat on the mat.",
    "",
    "naïve café — Zürich, 東京, Москва 🙂",
    "word " * 400,
    "The quarterly report was filed late because the auditor was ill. " * 30,
    "   ",
    "ok",
    "Caroline went to the LGBTQ support group on 7 May 2023 and felt accepted.",
    "e\u0301 (a combining accent) and ﬁ (a ligature)",
]


def test_the_extra_is_installed_when_expected() -> None:
    assert minilm_available() and onnx_runtime_available(), (
        "SOMA_EXTRAS lists minilm but the extra is not installed: "
        "pip install torch==2.13.0 && pip install -e '.[dev,minilm]'"
    )


@pytest.fixture(scope="module")
def torch_model():
    from somabrain.memory.minilm import MiniLMEmbedder

    return MiniLMEmbedder()


@pytest.fixture(scope="module")
def cache(minilm_cache: Path) -> Path:
    return minilm_cache  # exported by a child process, as a node does (tests/conftest.py)


@pytest.fixture(scope="module")
def onnx_model(cache: Path):
    from somabrain.memory.minilm import OnnxMiniLMEmbedder

    return OnnxMiniLMEmbedder(cache_dir=cache)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_vectors_are_normalised_and_semantic(runtime: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(f"{runtime}_model")
    vecs = model.embed(["A cat sat on the mat.", "A kitten rested on the rug.", "Tax forms"])
    assert vecs.shape == (3, MINILM_DIM) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.2  # meaning, not shared words
    assert model.embed([]).shape == (0, MINILM_DIM)


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_deterministic(runtime: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(f"{runtime}_model")
    a = model.embed(["the same sentence"])
    b = model.embed(["the same sentence", "another"])[:1]
    assert np.allclose(a, b, atol=1e-5)


def test_onnx_vectors_equal_torch_vectors(torch_model, onnx_model) -> None:
    expected = torch_model.embed(MIXED)
    assert np.all(_cosines(onnx_model.embed(MIXED), expected) > 0.9999)
    # One at a time (no padding) and in small batches (padding to each batch's longest).
    singles = np.vstack([onnx_model.embed([t]) for t in MIXED])
    assert np.all(_cosines(singles, expected) > 0.9999)
    from somabrain.memory.minilm import OnnxMiniLMEmbedder

    small = OnnxMiniLMEmbedder(batch_size=3, threads=1, cache_dir=onnx_model.path.parent.parent)
    assert np.all(_cosines(small.embed(MIXED), expected) > 0.9999)
    assert np.allclose(np.linalg.norm(singles, axis=1), 1.0, atol=1e-5)


def test_long_texts_are_truncated_at_the_model_limit(torch_model, onnx_model) -> None:
    # Past 256 tokens nothing counts: both runtimes cut at the same place.
    assert onnx_model.max_tokens == 256
    base = "alpha beta gamma delta " * 100
    for model in (torch_model, onnx_model):
        a, b = model.embed([base, base + " completely different ending about tax forms"])
        assert a @ b > 0.9999


def test_onnx_embedder_is_safe_from_several_threads(onnx_model) -> None:
    batches = [MIXED[i:] + MIXED[:i] for i in range(len(MIXED))]
    expected = [onnx_model.embed(b) for b in batches]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                results[i] = onnx_model.embed(batches[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, want in enumerate(expected):
        assert np.allclose(results[i], want, atol=1e-5)


def test_runtime_path_does_not_import_torch(onnx_model, cache: Path) -> None:
    code = (
        "import sys\n"
        "from somabrain.memory.minilm import load_minilm\n"
        f"model = load_minilm('auto', cache_dir={str(cache)!r})\n"
        "assert model.embed(['hello world']).shape == (1, 384)\n"
        "print(type(model).__name__)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'onnx')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["OnnxMiniLMEmbedder", "[]"]


def _copy_cache(cache: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    return copy


def test_corrupt_export_is_detected_and_redone(onnx_model, cache: Path, tmp_path: Path) -> None:
    from somabrain.memory.minilm import OnnxMiniLMEmbedder
    from somabrain.memory.minilm_export import export_paths, read_export

    copy = _copy_cache(cache, tmp_path)
    paths = export_paths(copy)
    good = read_export(paths)
    assert good is not None
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped bit in the weights still loads
    paths.onnx.write_bytes(bytes(damaged))
    assert read_export(paths) is None
    paths.onnx.write_bytes(good[: len(good) // 3])  # truncated
    assert read_export(paths) is None

    redone = OnnxMiniLMEmbedder(cache_dir=copy, isolate_export=False)  # exports here, again
    assert read_export(paths) is not None
    assert np.all(_cosines(redone.embed(MIXED), onnx_model.embed(MIXED)) > 0.9999)


def test_stale_export_is_never_used(cache: Path, tmp_path: Path) -> None:
    from somabrain.memory.minilm_export import export_paths, model_dir, read_export

    copy = _copy_cache(cache, tmp_path)
    paths = export_paths(copy)
    # Another model version (here: another config) has another key, so another file name.
    other_model = tmp_path / "model"
    other_model.mkdir()
    (other_model / "model.safetensors").symlink_to(model_dir() / "model.safetensors")
    config = json.loads((model_dir() / "config.json").read_text())
    (other_model / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    other = export_paths(copy, model=other_model)
    assert other.key != paths.key and other.onnx != paths.onnx
    assert read_export(other) is None
    # A manifest that names another version than its key says is not trusted either.
    manifest = json.loads(paths.manifest.read_text())
    manifest["identity"]["version"] = "0.0.1"
    paths.manifest.write_text(json.dumps(manifest))
    assert read_export(paths) is None
    paths.manifest.unlink()
    assert read_export(paths) is None


def test_concurrent_exports_make_one_whole_file(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two exporters at once (threads here; the lock is per open file, so it holds between
    threads as between processes): one exports, the other waits and finds the file made."""
    from somabrain.memory import minilm_export
    from somabrain.memory.minilm_export import export, export_paths, read_export

    good = read_export(export_paths(cache))
    assert good is not None
    calls: list[int] = []
    inside = threading.Event()

    def fake_export(model: Path, out: Path) -> dict[str, object]:
        calls.append(threading.get_ident())
        inside.set()
        with out.open("wb") as f:  # slowly, in pieces: a reader must never see this half
            for i in range(0, len(good), len(good) // 4):
                f.write(good[i : i + len(good) // 4])
                threading.Event().wait(0.05)
        return {}

    monkeypatch.setattr(minilm_export, "_export_graph", fake_export)
    paths = export_paths(tmp_path / "fresh")
    made: list[bool] = []
    first = threading.Thread(target=lambda: made.append(export(paths)))
    first.start()
    inside.wait(10)
    assert read_export(paths) is None  # mid-export: nothing half-written is readable
    second = threading.Thread(target=lambda: made.append(export(paths)))
    second.start()
    first.join()
    second.join()
    assert len(calls) == 1 and sorted(made) == [False, True]
    assert read_export(paths) == good
    assert not list(paths.directory.glob(".*.tmp"))


def test_select_runtime() -> None:
    assert select_runtime("torch", onnx_installed=True) == "torch"
    assert select_runtime("auto", onnx_installed=True) == "onnx"
    assert select_runtime("auto", onnx_installed=False) == "torch"
    assert select_runtime("onnx", onnx_installed=True) == "onnx"
    with pytest.raises(ImportError, match="onnxruntime"):
        select_runtime("onnx", onnx_installed=False)
    with pytest.raises(ValueError, match="unknown MiniLM runtime"):
        select_runtime("tensorflow", onnx_installed=True)


def test_auto_falls_back_to_torch_when_no_export_can_be_made(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from somabrain.memory.minilm import MiniLMEmbedder, load_minilm
    from somabrain.memory.minilm_export import MiniLMExportError

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = blocker / "cache"  # a directory cannot be made under a file
    with caplog.at_level(logging.WARNING):
        model = load_minilm("auto", cache_dir=unwritable)
    assert isinstance(model, MiniLMEmbedder)
    assert "running it on torch" in caplog.text
    with pytest.raises(MiniLMExportError):
        load_minilm("onnx", cache_dir=unwritable)
    assert isinstance(load_minilm("torch", cache_dir=unwritable), MiniLMEmbedder)


def test_embedder_cli_reports_and_exports(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from somabrain.cli import main

    config = tmp_path / "node.toml"
    config.write_text('[context]\nembedder = "minilm"\n')
    info = ["embedder", "info", "--config", str(config), "--cache-dir", str(cache)]
    assert main(info) == 0
    out = capsys.readouterr().out
    assert "minilm (all-MiniLM-L6-v2, 384 dimensions)" in out
    assert "auto -> onnx" in out and "(valid)" in out
    assert main(["embedder", "export", "--cache-dir", str(cache)]) == 0  # already there
    assert "already exported" in capsys.readouterr().out
    stale = cache / "minilm" / "all-MiniLM-L6-v2-0123456789abcdef.onnx"
    stale.write_bytes(b"an export made for another version")
    assert main(["embedder", "prune", "--cache-dir", str(cache), "--dry-run"]) == 0
    assert f"would remove {stale}" in capsys.readouterr().out and stale.exists()
    assert main(["embedder", "prune", "--cache-dir", str(cache)]) == 0
    assert f"removed {stale}" in capsys.readouterr().out and not stale.exists()
    assert main(info) == 0
    assert "(valid)" in capsys.readouterr().out  # this environment's export is kept


def test_runtime_setting_is_validated() -> None:
    import msgspec

    from somabrain.context.settings import EmbedderSettings

    assert EmbedderSettings().runtime == "auto"
    parsed = msgspec.convert({"runtime": "torch", "onnx_dir": "/x"}, EmbedderSettings)
    assert parsed.runtime == "torch" and parsed.onnx_dir == "/x"
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"runtime": "cuda"}, EmbedderSettings)


@pytest.mark.anyio
async def test_shared_embedder_batches_minilm_off_the_loop(cache: Path, onnx_model) -> None:
    from somabrain.context.settings import EmbedderSettings
    from somabrain.memory.embedding import BatchingEmbedder, shared_embedder
    from somabrain.memory.minilm import OnnxMiniLMEmbedder

    settings = EmbedderSettings(onnx_dir=str(cache))
    batcher = await shared_embedder({}, "minilm", settings)
    assert isinstance(batcher, BatchingEmbedder) and batcher.dim == MINILM_DIM
    assert isinstance(batcher.embedder, OnnxMiniLMEmbedder)
    out = await batcher.embed(["hello world"])
    assert out.shape == (1, MINILM_DIM)
    assert np.allclose(out, onnx_model.embed(["hello world"]), atol=1e-5)
