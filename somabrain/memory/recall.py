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

__all__ = ["ContextRecallResult", "context_recall", "query_embedding", "with_working_memory"]

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
    form: Mapping[str, float] | None = None,
) -> ContextRecallResult:
    """Recall ``top_k`` memories (with their vectors) and the session's best working-memory
    items. ``query_vector``: the query's embedding when the caller computed it already (the
    memory actor embeds off the event loop); ``form``: the tenant's form model."""
    qvec = query_embedding(memory, query, query_vector)
    hits = memory.recall(query, top_k, namespace, filters, weights=weights, vector=qvec, at=at,
                         form=form)  # fmt: skip
    return with_working_memory(memory, working, hits, query, qvec, session_id, wm_top_k)


def query_embedding(
    memory: TenantMemory, query: str, query_vector: npt.ArrayLike | None = None
) -> F32:
    """The query's embedding: ``query_vector`` when the caller has it, else the tenant's."""
    if query_vector is None:
        return np.asarray(memory.embedder.embed([query])[0], dtype=np.float32)
    return np.asarray(query_vector, dtype=np.float32)


def with_working_memory(
    memory: TenantMemory,
    working: WorkingMemory | None,
    hits: list[RecallHit],
    query: str,
    qvec: F32,
    session_id: str | None,
    wm_top_k: int,
) -> ContextRecallResult:
    """The long-term ``hits`` (recalled with ``qvec``, here or in the search worker) with their
    vectors, and the session's best working-memory items."""
    dim = memory.embedder.dim
    vectors = np.zeros((len(hits), dim), dtype=np.float32)
    for i, h in enumerate(hits):
        vectors[i] = memory.index.vector_of(h.key)
    wm_hits: list[WMHit] = []
    wm_vectors = np.zeros((0, dim), dtype=np.float32)
    if working is not None and session_id is not None and wm_top_k > 0:
        wm_hits = working.search(session_id, qvec, tokenize(query), wm_top_k)
        by_key = {it.key: it.vector for it in working.items(session_id)}
        if wm_hits:
            wm_vectors = np.stack([by_key[h.key] for h in wm_hits]).astype(np.float32)
    wm_memories = [memory.get(h.key) for h in wm_hits]
    return ContextRecallResult(hits, vectors, wm_hits, wm_vectors, qvec, dim, wm_memories)
