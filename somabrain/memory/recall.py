"""The recall a context bundle is built from: long-term hits with their embeddings, plus the
session's working memory, in one call against one tenant's state.

The memory actor runs it for ``ContextRecall`` messages; the LoCoMo benchmark calls it directly,
so both measure the same code. The result stays in process (numpy arrays, never encoded): only
the planner, on the same node, reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .tenant import TenantMemory
from .text import tokenize
from .types import Memory, RecallFilter, RecallHit
from .working import WMHit, WorkingMemory

__all__ = ["ContextRecallResult", "context_recall"]

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class ContextRecallResult:
    hits: list[RecallHit]
    #: (len(hits), dim) unit embeddings of the hits, in order.
    vectors: F32
    working_memory: list[WMHit]
    #: (len(working_memory), dim) embeddings of the working-memory items.
    wm_vectors: F32
    query_vector: F32
    dim: int
    #: The stored memory of each working-memory hit (None if it was forgotten meanwhile).
    wm_memories: list[Memory | None] = field(default_factory=list)


def context_recall(
    memory: TenantMemory,
    working: WorkingMemory | None,
    query: str,
    top_k: int,
    *,
    namespace: str | None = None,
    filters: RecallFilter | Mapping[str, Any] | None = None,
    weights: Mapping[str, float] | None = None,
    at: float | None = None,
    session_id: str | None = None,
    wm_top_k: int = 5,
    query_vector: npt.ArrayLike | None = None,
) -> ContextRecallResult:
    """Recall ``top_k`` memories (with their vectors) and the session's best working-memory
    items. ``query_vector``: the query's embedding when the caller computed it already (the
    memory actor embeds off the event loop)."""
    dim = memory.embedder.dim
    tokens = tokenize(query)
    if query_vector is None:
        qvec = np.asarray(memory.embedder.embed([query])[0], dtype=np.float32)
    else:
        qvec = np.asarray(query_vector, dtype=np.float32)
    hits = memory.recall(query, top_k, namespace, filters, weights=weights, vector=qvec, at=at)
    vectors = np.zeros((len(hits), dim), dtype=np.float32)
    for i, h in enumerate(hits):
        vectors[i] = memory.index.vector_of(h.key)
    wm_hits: list[WMHit] = []
    wm_vectors = np.zeros((0, dim), dtype=np.float32)
    if working is not None and session_id is not None and wm_top_k > 0:
        wm_hits = working.search(session_id, qvec, tokens, wm_top_k)
        by_key = {it.key: it.vector for it in working.items(session_id)}
        if wm_hits:
            wm_vectors = np.stack([by_key[h.key] for h in wm_hits]).astype(np.float32)
    wm_memories = [memory.get(h.key) for h in wm_hits]
    return ContextRecallResult(hits, vectors, wm_hits, wm_vectors, qvec, dim, wm_memories)
