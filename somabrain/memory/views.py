"""The graph, recency and salience views: ``ScoreView`` plug-ins for ``HybridIndex``.

Each view gives every slot a score in [0, 1] (see ``hybrid`` for the combination rule):

``graph``     proximity in the link graph to the query's best hits: a truncated personalized
              PageRank seeded by the top ``seeds`` memories of the seed views (semantic and
              lexical, weighted as in the search), walked over links in both directions;
              normalised so that the best-connected memory scores 1.
``recency``   ``2 ** (-|at - t| / half_life)``, with ``t`` the memory's ``occurred_at`` (its
              ``created_at`` when unknown) and ``at`` the time the query is about.
``salience``  ``sigmoid(logit(importance) + strength)``: the caller's importance, moved up or
              down by the strength feedback accumulated (``TenantMemory.reinforce``). An
              unreinforced memory of default importance 0.5 scores 0.5.

Why a truncated PageRank series, and why seeded by semantic + lexical only. The personalized
PageRank of seed distribution ``s`` is ``(1 - d) * sum_k d**k * P**k s``; we keep the terms
``k = 1 .. steps`` (the ``k = 0`` term would only repeat the seeds' own relevance, which the
other views already count) and walk them sparsely from the seeds, so the cost depends on the
seeds' neighbourhoods, never on the tenant's size. On LoCoMo (consecutive turns linked) two
steps gave the whole gain (recall@10 of the built-in hybrid from 0.59 to 0.65-0.67) and more
steps changed nothing. Seeding from salience or recency would lift the neighbours of memories
that are merely popular or recent, not relevant to this query: measured, it cost recall.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from .hybrid import F32, HybridIndex, Mask, RecallQuery, ScoreView
from .vector_index import top_k

__all__ = [
    "MINILM_WEIGHTS",
    "MULTIVIEW_WEIGHTS",
    "VIEW_NAMES",
    "GraphView",
    "RecencyView",
    "SalienceView",
    "default_weights",
    "multiview",
    "resolve_weights",
]

VIEW_NAMES = ("semantic", "lexical", "graph", "recency", "salience")

#: Default weights of the five views (normalised by their sum when combined). Picked on the
#: LoCoMo dev split (``benchmarks/locomo.py``): semantic, lexical and graph share the weight;
#: recency and salience carry little until a tenant's feedback says otherwise.
MULTIVIEW_WEIGHTS: Mapping[str, float] = {
    "semantic": 0.3,
    "lexical": 0.3,
    "graph": 0.3,
    "recency": 0.05,
    "salience": 0.05,
}

#: The semantic view deserves more weight when the embedder is a real sentence model: with
#: all-MiniLM-L6-v2 these weights gave LoCoMo recall@10 0.717 against 0.698 with the ones above
#: (the built-in hashing embedder is best served by the equal split: 0.649 against 0.644).
MINILM_WEIGHTS: Mapping[str, float] = {
    "semantic": 0.4,
    "lexical": 0.2,
    "graph": 0.4,
    "recency": 0.05,
    "salience": 0.05,
}

_DAY = 86_400.0


def default_weights(embedder: str = "builtin") -> dict[str, float]:
    """The default view weights for an embedder (``"builtin"`` or ``"minilm"``)."""
    return dict(MINILM_WEIGHTS if embedder == "minilm" else MULTIVIEW_WEIGHTS)


def resolve_weights(
    configured: Mapping[str, float], enabled: Sequence[str], embedder: str = "builtin"
) -> dict[str, float]:
    """A tenant's starting weights: ``configured`` when given, else the embedder's defaults
    restricted to the enabled views (semantic and lexical are always enabled)."""
    if configured:
        return dict(configured)
    names = {"semantic", "lexical", *enabled}
    return {v: w for v, w in default_weights(embedder).items() if v in names}


class GraphView:
    """Truncated personalized PageRank from the query's best hits (see the module doc)."""

    name = "graph"

    def __init__(
        self,
        *,
        seeds: int = 8,
        damping: float = 0.85,
        steps: int = 2,
        max_nodes: int = 4096,
        seed_views: Sequence[str] = ("semantic", "lexical"),
    ) -> None:
        if seeds < 1 or steps < 1 or max_nodes < 1:
            raise ValueError("seeds, steps and max_nodes must be >= 1")
        if not 0.0 < damping <= 1.0:
            raise ValueError(f"damping must be in (0, 1], got {damping}")
        self.seeds = seeds
        self.damping = damping
        self.steps = steps
        self.max_nodes = max_nodes
        self.seed_views = tuple(seed_views)

    def _relevance(self, query: RecallQuery, eligible: Mask) -> F32 | None:
        present = [v for v in self.seed_views if v in query.views]
        weights = {v: query.weights.get(v, 0.0) for v in present}
        if sum(weights.values()) <= 0.0:  # seed views weigh nothing here: count them alike
            weights = dict.fromkeys(present, 1.0)
        rel: F32 | None = None
        for name, w in weights.items():
            if w > 0.0:
                part = query.views[name] * np.float32(w)
                rel = part if rel is None else rel + part
        if rel is not None:
            rel = rel * eligible
        return rel

    def scores(self, index: HybridIndex, query: RecallQuery, eligible: Mask) -> F32:
        out = np.zeros(index.size, dtype=np.float32)
        graph = index.graph
        if graph is None or not len(graph):
            return out
        rel = self._relevance(query, eligible)
        if rel is None:
            return out
        frontier: dict[str, float] = {}
        for slot in top_k(rel, self.seeds).tolist():
            key = index.key_of(slot)
            if rel[slot] > 0.0 and key is not None:
                frontier[key] = float(rel[slot])
        total = sum(frontier.values())
        if total <= 0.0:
            return out
        frontier = {k: v / total for k, v in frontier.items()}
        acc: dict[str, float] = {}
        d = self.damping
        for _ in range(self.steps):
            nxt: dict[str, float] = {}
            for key, mass in frontier.items():
                nbrs = graph.neighbours(key)
                if not nbrs:
                    continue  # a dangling node keeps its mass to itself: the walk ends
                share = d * mass / sum(w for _, w in nbrs)
                for other, w in nbrs:
                    nxt[other] = nxt.get(other, 0.0) + share * w
            if len(nxt) > self.max_nodes:  # bound the work around hubs: keep the heaviest
                nxt = dict(heapq.nlargest(self.max_nodes, nxt.items(), key=lambda kv: kv[1]))
            for key, mass in nxt.items():
                acc[key] = acc.get(key, 0.0) + mass
            frontier = nxt
        for key, mass in acc.items():
            slot = index.slot_of(key)
            if slot is not None:
                out[slot] = mass
        out *= eligible
        best = float(out.max(initial=0.0))
        if best > 0.0:
            out *= np.float32(1.0 / best)
        return out


class RecencyView:
    """Exponential decay of the distance in time between a memory and the query's ``at``."""

    name = "recency"

    def __init__(self, half_life: float = 30 * _DAY) -> None:
        if not half_life > 0.0:
            raise ValueError(f"half_life must be > 0 seconds, got {half_life}")
        self.half_life = float(half_life)

    def scores(self, index: HybridIndex, query: RecallQuery, eligible: Mask) -> F32:
        occurred = index.column("occurred_at")
        t = np.where(np.isnan(occurred), index.column("created_at"), occurred)
        age = np.abs(query.at - t) * (1.0 / self.half_life)
        out: F32 = np.exp2(-age).astype(np.float32)
        return out


class SalienceView:
    """Importance moved by feedback: ``sigmoid(logit(importance) + gain * strength)``."""

    name = "salience"

    def __init__(self, gain: float = 1.0) -> None:
        if not (math.isfinite(gain) and gain >= 0.0):
            raise ValueError(f"gain must be finite and >= 0, got {gain}")
        self.gain = float(gain)

    def scores(self, index: HybridIndex, query: RecallQuery, eligible: Mask) -> F32:
        imp = np.clip(index.column("importance").astype(np.float64), 0.01, 0.99)
        logit: npt.NDArray[np.float64] = np.log(imp / (1.0 - imp))
        logit += self.gain * index.column("salience")
        out: F32 = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        return out


def multiview(
    *,
    graph_seeds: int = 8,
    graph_damping: float = 0.85,
    graph_steps: int = 2,
    recency_half_life: float = 30 * _DAY,
    salience_gain: float = 1.0,
) -> tuple[ScoreView, ...]:
    """The three extra views, in the order they must run (graph last: it reads the others)."""
    return (
        RecencyView(recency_half_life),
        SalienceView(salience_gain),
        GraphView(seeds=graph_seeds, damping=graph_damping, steps=graph_steps),
    )
