"""The graph, recency and salience views: ``ScoreView`` plug-ins for ``HybridIndex``.

Each view gives every slot a score in [0, 1] (see ``ranking`` for the combination rule):

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
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .associations import ASSOCIATION, AssociationStore, AssociationView
from .form import FORM, FormView
from .ranking import F32, I64, Mask, RecallQuery, ScoreView
from .search_protocol import AssociationParams, ViewParams

if TYPE_CHECKING:
    from .hybrid import HybridIndex

__all__ = [
    "MINILM_WEIGHTS",
    "MULTIVIEW_WEIGHTS",
    "VIEW_NAMES",
    "GraphView",
    "RecencyView",
    "SalienceView",
    "build_views",
    "default_weights",
    "multiview",
    "resolve_weights",
    "view_params",
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
_NO_SLOTS = np.empty(0, dtype=np.int64)


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
    ) -> None:
        if seeds < 1 or steps < 1 or max_nodes < 1:
            raise ValueError("seeds, steps and max_nodes must be >= 1")
        if not 0.0 < damping <= 1.0:
            raise ValueError(f"damping must be in (0, 1], got {damping}")
        self.seeds = seeds
        self.damping = damping
        self.steps = steps
        self.max_nodes = max_nodes

    def prepare(self, index: HybridIndex, query: RecallQuery, eligible: Mask) -> I64:
        """Walk from the seeds; the reached eligible memories are the slots to score."""
        reached = self._walk(index, query, eligible)
        query.scratch[self.name] = reached
        return np.fromiter(reached, np.int64, len(reached))

    def bound(self, index: HybridIndex, query: RecallQuery) -> float:
        return 0.0  # the walk reached every slot with a non-zero score

    def scores(self, index: HybridIndex, query: RecallQuery, slots: I64) -> F32:
        reached: dict[int, float] = query.scratch.get(self.name) or {}
        if not reached:
            return np.zeros(slots.shape[0], dtype=np.float32)
        get = reached.get
        return np.fromiter((get(s, 0.0) for s in slots.tolist()), np.float32, slots.shape[0])

    def _walk(self, index: HybridIndex, query: RecallQuery, eligible: Mask) -> dict[int, float]:
        """Reached eligible slot -> score (mass normalised so that the best scores 1)."""
        graph = index.graph
        if graph is None or not len(graph):
            return {}
        head = query.ranked_scores[: self.seeds]
        frontier: dict[str, float] = {}
        for slot, rel in zip(query.ranked[: self.seeds].tolist(), head.tolist(), strict=True):
            key = index.key_of(slot)
            if rel > 0.0 and key is not None:
                frontier[key] = rel
        total = sum(frontier.values())
        if total <= 0.0:
            return {}
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
        reached: dict[int, float] = {}
        for key, mass in acc.items():
            slot = index.slot_of(key)
            if slot is not None and eligible[slot] and mass > 0.0:
                reached[slot] = mass
        if reached:
            scale = 1.0 / max(reached.values())
            reached = {slot: mass * scale for slot, mass in reached.items()}
        return reached


class RecencyView:
    """Exponential decay of the distance in time between a memory and the query's ``at``."""

    name = "recency"

    def __init__(self, half_life: float = 30 * _DAY) -> None:
        if not half_life > 0.0:
            raise ValueError(f"half_life must be > 0 seconds, got {half_life}")
        self.half_life = float(half_life)

    def prepare(self, index: HybridIndex, query: RecallQuery, eligible: Mask) -> I64:
        return _NO_SLOTS

    def bound(self, index: HybridIndex, query: RecallQuery) -> float:
        """The score of the time closest to ``at`` among the index's event times."""
        lo, hi = index.column_range("event_time")
        gap = lo - query.at if query.at < lo else query.at - hi if query.at > hi else 0.0
        return float(2.0 ** (-gap / self.half_life)) if math.isfinite(gap) else 1.0

    def scores(self, index: HybridIndex, query: RecallQuery, slots: I64) -> F32:
        # Times ~1e308 apart (a client may send any finite epoch) overflow to an infinite age,
        # whose score is 0: the right limit, so the overflow is no error.
        with np.errstate(over="ignore"):
            age = np.abs(index.column("event_time")[slots] - query.at) * (1.0 / self.half_life)
        out: F32 = np.exp2(-age).astype(np.float32)
        return out


class SalienceView:
    """Importance moved by feedback: ``sigmoid(logit(importance) + gain * strength)``."""

    name = "salience"

    def __init__(self, gain: float = 1.0) -> None:
        if not (math.isfinite(gain) and gain >= 0.0):
            raise ValueError(f"gain must be finite and >= 0, got {gain}")
        self.gain = float(gain)

    def prepare(self, index: HybridIndex, query: RecallQuery, eligible: Mask) -> I64:
        return _NO_SLOTS

    def bound(self, index: HybridIndex, query: RecallQuery) -> float:
        return self._column(index)[1]

    def scores(self, index: HybridIndex, query: RecallQuery, slots: I64) -> F32:
        scores: F32 = self._column(index)[0][slots]
        return scores

    def _column(self, index: HybridIndex) -> tuple[F32, float]:
        """Every slot's score and their maximum. The score reads no query, so it is computed
        for all slots at once and kept until the index changes (``HybridIndex.version``):
        a read-mostly tenant pays a gather per search instead of a log and an exp per slot."""
        cached = index.view_state.get(self.name)
        if cached is not None and cached[0] == index.version:
            return cached[1], cached[2]
        imp = np.clip(index.column("importance").astype(np.float64), 0.01, 0.99)
        logit: npt.NDArray[np.float64] = np.log(imp / (1.0 - imp))
        logit += self.gain * index.column("salience")
        column: F32 = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        top = float(column.max(initial=0.0))
        index.view_state[self.name] = (index.version, column, top)
        return column, top


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


def view_params(extra_views: Sequence[str], views: Any, associations: Any) -> ViewParams:
    """The extra views of a tenant's index, from ``memory.extra_views``, ``context.views`` and
    ``context.associations``: what ``build_views`` builds, in the node and in the search
    worker alike."""
    assoc = None
    if ASSOCIATION in extra_views:
        a = associations
        assoc = AssociationParams(a.capacity, a.neighbour_count, a.min_similarity, a.sharpness)
    return ViewParams(
        tuple(extra_views), views.graph_seeds, views.graph_damping, views.graph_steps,
        views.recency_half_life, views.salience_gain, assoc,
    )  # fmt: skip


def build_views(params: ViewParams, associations: AssociationStore | None) -> list[ScoreView]:
    """The extra views ``params`` names, in the order they run; the association view reads
    ``associations`` (needed when ``params.association`` is set)."""
    views: list[ScoreView] = [
        view
        for view in multiview(
            graph_seeds=params.graph_seeds,
            graph_damping=params.graph_damping,
            graph_steps=params.graph_steps,
            recency_half_life=params.recency_half_life,
            salience_gain=params.salience_gain,
        )
        if view.name in params.enabled
    ]
    a = params.association
    if a is not None:
        if associations is None:
            raise ValueError("the association view needs an association store")
        views.append(AssociationView(associations, neighbours=a.neighbours,
                                     min_similarity=a.min_similarity,
                                     sharpness=a.sharpness))  # fmt: skip
    if FORM in params.enabled:
        views.append(FormView())
    return views
