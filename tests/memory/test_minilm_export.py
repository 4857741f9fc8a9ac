"""Pruning the ONNX exports of other package versions (``minilm_export.prune``): pure file
handling, no model needed (the export itself is tested in ``test_minilm.py``)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from somabrain.memory.minilm_export import MODEL_NAME, ExportPaths, prune


def _files(directory: Path, key: str) -> list[Path]:
    out = []
    for suffix in ("onnx", "json", "lock"):
        path = directory / f"{MODEL_NAME}-{key}.{suffix}"
        path.write_bytes(b"x")
        out.append(path)
    return out


def test_prune_removes_other_exports_only(tmp_path: Path) -> None:
    paths = ExportPaths(tmp_path, {"version": "current"})
    mine = _files(tmp_path, paths.key)
    old = _files(tmp_path, "0123456789abcdef") + _files(tmp_path, "fedcba9876543210")
    unrelated = [tmp_path / "notes.txt", tmp_path / f"{MODEL_NAME}-short.onnx",
                 tmp_path / f".{MODEL_NAME}-0123456789abcdef.onnx.42.tmp"]  # fmt: skip
    for path in unrelated:
        path.write_bytes(b"x")

    assert sorted(prune(paths, dry_run=True)) == sorted(old)
    assert all(p.exists() for p in old)  # a dry run removes nothing

    assert sorted(prune(paths)) == sorted(old)
    assert not any(p.exists() for p in old)
    assert all(p.exists() for p in mine + unrelated)
    assert prune(paths) == []


def test_prune_leaves_an_export_being_made(tmp_path: Path) -> None:
    paths = ExportPaths(tmp_path, {"version": "current"})
    busy = _files(tmp_path, "0123456789abcdef")
    idle = _files(tmp_path, "fedcba9876543210")
    fd = os.open(busy[2], os.O_RDWR)  # another process holds the lock: it is exporting
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert sorted(prune(paths)) == sorted(idle)
        assert all(p.exists() for p in busy)
    finally:
        os.close(fd)
    assert sorted(prune(paths)) == sorted(busy)


def test_prune_without_a_lock_file(tmp_path: Path) -> None:
    paths = ExportPaths(tmp_path, {"version": "current"})
    onnx, manifest, lock = _files(tmp_path, "0123456789abcdef")
    lock.unlink()
    assert sorted(prune(paths)) == sorted([onnx, manifest])
