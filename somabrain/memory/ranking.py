"""Ranking a query over a ``HybridIndex``: every view, combined, with exact candidate pruning.

Combination rule: ``score = sum(w[v] * s[v]) / sum(w)`` over the views named in the weights (a
view missing from the weights has weight 0, but its score is still reported). Every view scores
in [0, 1]; results with a combined score of 0 (no signal at all) are not returned.

Which slots get scored. The two built-in views are dense by nature: the semantic view is one
matrix-vector product over every slot, BM25 accumulates its postings into a dense array. Their
weighted sum, the *base* score, is computed for every eligible slot. The extra views (graph,
recency, salience, any ``ScoreView``) are computed only on candidates:

* the ``m`` eligible slots with the best base score (``m`` starts at ``4 * top_k``, >= 32);
* the slots a view asks for in ``prepare`` (the graph view: the memories its walk reached).

Every other eligible slot scores at most ``base[m-th] + sum(w[v] * bound[v])``, where a view's
``bound`` is an upper bound of its score outside the slots it asked for (0 for the graph view;
for recency and salience, a bound from the per-column ranges the index keeps). When the k-th
best candidate beats that, the candidates hold the exact top k, ties broken by slot as the
dense ranking would; otherwise ``m`` grows fourfold and the test repeats, down to every eligible
slot. So the result is the one scoring every slot on every view would give, for about a third
of the cost at 10k memories: recency and salience need a transcendental function per slot, the
graph view a scatter into a dense array, and combining five dense arrays a few passes more.

Graph seeds. ``RecallQuery.ranked`` holds the candidates in base order: the graph view seeds its
walk from the first of them (the query's best semantic+lexical hits), which is what seeding
from a dense relevance array would pick, without the array.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from .types import RecallFilter
from .vector_index import top_k

if TYPE_CHECKING:
    from .hybrid import HybridIndex

__all__ = ["BUILTIN_VIEWS", "IndexHit", "RecallQuery", "ScoreView", "rank", "with_share"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

BUILTIN_VIEWS = ("semantic", "lexical")

#: Candidates first scored on every view: ``max(MIN_CANDIDATES, CANDIDATE_FACTOR * top_k)``.
MIN_CANDIDATES = 32
CANDIDATE_FACTOR = 4


def with_share(weights: dict[str, float], view: str, fraction: float) -> dict[str, float]:
    """``weights`` plus ``view`` at ``fraction`` of their sum (unless they name it already, or
    ``fraction`` is 0): how a learned view's default weight follows the others'."""
    out = dict(weights)
    if view not in out and fraction > 0.0:
        out[view] = fraction * sum(out.values())
    return out


class RecallQuery(NamedTuple):
    """Everything a view may need to score a query.

    ``now`` is the clock (expiry); ``at`` the time the query is about (recency). ``views`` holds
    the dense scores of the built-in views by name, ``weights`` the validated weights of this
    search, ``ranked`` eligible slots by decreasing base score (semantic+lexical as weighted;
    equally weighted when both weigh 0) and ``ranked_scores`` those scores. ``scratch`` is a
    per-query dict where a view keeps what ``prepare`` computed for ``scores``.
    """

    text: str
    tokens: Sequence[str]
    vector: F32
    namespace: str | None
    filter: RecallFilter | None
    now: float
    at: float
    views: Mapping[str, F32]
    weights: Mapping[str, float]
    ranked: I64
    ranked_scores: F32
    scratch: dict[str, Any]
    #: The tenant's learned form model (``form.FormView``); empty: none learned.
    form: Mapping[str, float] = MappingProxyType({})


class IndexHit(msgspec.Struct, frozen=True, gc=False):
    """One ranked slot: its key, combined score and every view's score."""

    key: str
    score: float
    views: dict[str, float]


class ScoreView(Protocol):
    """A pluggable view, scoring slots in [0, 1] (see the module doc for how search uses it).

    ``prepare`` runs once per query, after the base ranking: it returns the slots the view
    wants scored exactly (maybe none) and may keep state in ``query.scratch``. ``bound`` is an
    upper bound of the view's score on every slot ``prepare`` did not return. ``scores`` gives
    the view's scores on ``slots`` (an int64 array of live slots)."""

    @property
    def name(self) -> str: ...

    def prepare(self, index: HybridIndex, query: RecallQuery, eligible: Mask) -> I64: ...

    def bound(self, index: HybridIndex, query: RecallQuery) -> float: ...

    def scores(self, index: HybridIndex, query: RecallQuery, slots: I64) -> F32: ...


_NO_SLOTS = np.empty(0, dtype=np.int64)


class _BuiltinViews(Mapping[str, F32]):
    """``RecallQuery.views``: the semantic scores, and the lexical ones normalised on first use
    and kept (most searches never read the dense array, only the candidates' scores)."""

    __slots__ = ("_lex", "_normalised", "_scale", "_sem")

    def __init__(self, sem: F32, lex: F32, scale: float) -> None:
        self._sem, self._lex, self._scale = sem, lex, scale
        self._normalised: F32 | None = None

    def __getitem__(self, name: str) -> F32:
        if name == "semantic":
            return self._sem
        if name == "lexical":
            if self._normalised is None:
                self._normalised = self._lex * np.float32(self._scale)
            return self._normalised
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(BUILTIN_VIEWS)

    def __len__(self) -> int:
        return 2


def rank(
    index: HybridIndex,
    views: Sequence[ScoreView],
    mask: Mask,
    vector: F32,
    tokens: Sequence[str],
    k: int,
    *,
    text: str,
    namespace: str | None,
    flt: RecallFilter | None,
    weights: Mapping[str, float],
    now: float,
    at: float,
    form: Mapping[str, float] = MappingProxyType({}),
) -> list[IndexHit]:
    """The ``k`` best eligible slots (``mask``) for a unit query ``vector`` (see module doc)."""
    everything = bool(mask.all())
    sem = index.vectors.unit_scores(vector)
    np.maximum(sem, 0.0, out=sem)
    lex = index.lexical.scores(tokens)
    # BM25 is divided by the best eligible BM25: the division is folded into the weight, and
    # ``lex`` itself is normalised only where it is read (the hits, ``RecallQuery.views``).
    best_lex = float(lex.max() if everything else lex.max(where=mask, initial=0.0))
    lex_scale = 1.0 / best_lex if best_lex > 0.0 else 0.0
    total = sum(weights.values())
    w_sem = weights.get("semantic", 0.0) / total
    w_lex = weights.get("lexical", 0.0) / total
    builtin_weighted = w_sem > 0.0 or w_lex > 0.0
    if not builtin_weighted:  # rank candidates and seed the graph alike: adds no score
        w_sem, w_lex = 1.0, 1.0
    base = sem * np.float32(w_sem) if w_sem > 0.0 else np.zeros_like(sem)
    if w_lex > 0.0 and lex_scale > 0.0:
        base += lex * np.float32(w_lex * lex_scale)
    if not everything:  # ineligible slots sort below every eligible one (scores are >= 0)
        np.copyto(base, np.float32(-1.0), where=~mask)
    weighted = [(v, weights[v.name] / total) for v in views if weights.get(v.name, 0.0) > 0.0]

    m = max(MIN_CANDIDATES, CANDIDATE_FACTOR * k)
    extra = _NO_SLOTS
    query: RecallQuery | None = None
    while True:
        ranked = top_k(base, m)
        ranked_scores = base[ranked]
        eligible_ranked = ranked_scores >= 0.0
        exhaustive = m >= base.shape[0] or not eligible_ranked[-1]
        if not eligible_ranked.all():
            ranked, ranked_scores = ranked[eligible_ranked], ranked_scores[eligible_ranked]
        if query is None:  # the seeds of ``prepare`` are the head of ``ranked``: m only grows
            query = RecallQuery(text, tokens, vector, namespace, flt, now, at,
                                _BuiltinViews(sem, lex, lex_scale), weights,
                                ranked, ranked_scores, {}, form)  # fmt: skip
            prepared = [v.prepare(index, query, mask) for v, _ in weighted]
            extra = np.concatenate(prepared) if prepared else _NO_SLOTS
        candidates = np.union1d(ranked, extra) if extra.shape[0] else np.sort(ranked)
        combined = base[candidates] if builtin_weighted else np.zeros(candidates.shape, np.float32)
        view_scores: dict[str, F32] = {}
        for view, weight in weighted:
            part = view_scores[view.name] = view.scores(index, query, candidates)
            combined += np.float32(weight) * part
        order = top_k(combined, k)
        if exhaustive or order.shape[0] < k:
            break
        threshold = float(combined[order[-1]])
        outside = float(ranked_scores[-1]) if builtin_weighted else 0.0
        outside += sum(weight * view.bound(index, query) for view, weight in weighted)
        if outside < threshold or outside <= 0.0:  # no other slot can reach the top k
            break
        m *= CANDIDATE_FACTOR
    scores = combined[order]
    positive = scores > 0.0
    if not positive.all():
        order, scores = order[positive], scores[positive]
    if not order.shape[0]:
        return []
    slots = candidates[order]
    # Every view's score for every hit, views of weight 0 included: one row per view (float64
    # holds float32 and float64 scores exactly), clipped into [0, 1] in one call, since float32
    # rounding leaves a memory's cosine with its own text at 1.0000001. Ranking above read the
    # unclipped scores; only what the hits report is clipped.
    names = [*BUILTIN_VIEWS, *(view.name for view in views)]
    table = np.empty((len(names), slots.shape[0]))
    table[0] = sem[slots]
    table[1] = lex[slots] * np.float32(lex_scale)
    for row, view in enumerate(views, start=len(BUILTIN_VIEWS)):
        known = view_scores.get(view.name)
        table[row] = known[order] if known is not None else view.scores(index, query, slots)
    np.clip(table, 0.0, 1.0, out=table)
    keys = index.keys_of(slots)
    # Every row has one entry per hit by construction; strict zips cost half the loop.
    return [
        IndexHit(key, score, dict(zip(names, values, strict=False)))
        for key, score, values in zip(keys, scores.tolist(), table.T.tolist(), strict=False)
    ]
