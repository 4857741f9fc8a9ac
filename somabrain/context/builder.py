"""Build a ``ContextBundle`` from a context recall: weights, plan, residual vector. Pure.

Steps, for the ``top_k`` memories the tenant's weights ranked best:

1. memory weights ``softmax(score / temperature)`` (they sum to 1; a lower temperature
   concentrates the weight on the best memories);
2. the planner's candidates: those memories with their weights (``1 - wm_share`` of the total),
   plus the working-memory items not already among them (``wm_share``, split by their
   working-memory score), and the cosine matrix of all their embeddings;
3. ``plan`` hill-climbs the prompt (``planner``);
4. the residual vector: the memories' embeddings projected to ``hrr_dim`` and superposed,
   each bound to its key vector (``hrr``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from ..memory.recall import ContextRecallResult
from .hrr import Projection, superpose
from .messages import BundleMemory, BundleWorkingMemory, ContextBundle, PlanSummary
from .planner import Candidate, plan
from .settings import ContextSettings

__all__ = ["build_bundle", "memory_weights", "projection"]


@lru_cache(maxsize=16)
def projection(src: int, dst: int) -> Projection:
    """The (cached: drawing it costs milliseconds) projection from embeddings to HRR space."""
    return Projection(src, dst)


def memory_weights(scores: list[float], temperature: float) -> list[float]:
    """``softmax(score / temperature)``, stable; empty in, empty out."""
    if not scores:
        return []
    s = np.asarray(scores, dtype=np.float64) / temperature
    e = np.exp(s - s.max())
    return (e / e.sum()).tolist()  # type: ignore[no-any-return]


def build_bundle(
    query: str,
    recall: ContextRecallResult,
    weights: Mapping[str, float],
    settings: ContextSettings,
    *,
    session_id: str | None = None,
    trace_id: str | None = None,
    planner_name: str = "",
) -> ContextBundle:
    limits = settings.limits
    hits = recall.hits
    mw = memory_weights([h.score for h in hits], settings.temperature)
    memories = [
        BundleMemory(
            key=h.key,
            content=h.memory.content,
            weight=w,
            score=h.score,
            views=h.views,
            occurred_at=h.memory.occurred_at,
            session_id=h.memory.session_id,
            tags=list(h.memory.tags),
        )
        for h, w in zip(hits, mw, strict=True)
    ]
    in_bundle = {h.key for h in hits}
    wm = [(i, h) for i, h in enumerate(recall.working_memory) if h.key not in in_bundle]
    share = settings.working_memory.share if wm else 0.0
    candidates = [
        Candidate(m.key, m.content, (1.0 - share) * m.weight, "memories") for m in memories
    ]
    wm_total = sum(h.score for _, h in wm) or 1.0
    candidates += [
        Candidate(h.key, h.content, share * h.score / wm_total, "working_memory") for _, h in wm
    ]
    vectors = recall.vectors
    if wm:
        vectors = np.concatenate([vectors, recall.wm_vectors[[i for i, _ in wm]]])
    similarity = vectors @ vectors.T if len(candidates) > 1 else None
    chosen = plan(
        query,
        candidates,
        similarity,
        max_prompt_chars=limits.max_prompt_chars,
        max_memories=limits.max_memories,
        settings=settings.planner,
    )
    dim = min(limits.hrr_dim, limits.max_vector_dim)
    residual = (
        superpose([h.key for h in hits], projection(recall.dim, dim)(recall.vectors))
        if hits
        else np.zeros(dim)
    )
    return ContextBundle(
        query=query,
        prompt=chosen.prompt,
        memories=memories,
        weights=dict(weights),
        residual_vector=residual.astype(np.float32).tolist(),
        working_memory=[
            BundleWorkingMemory(key=h.key, content=h.content, score=h.score, views=h.views)
            for h in recall.working_memory
        ],
        trace_id=trace_id,
        session_id=session_id,
        plan=PlanSummary(
            selected=chosen.selected,
            utility=chosen.utility,
            coverage=chosen.coverage,
            iterations=chosen.iterations,
            variants=chosen.variants,
            planner=planner_name,
        ),
    )
