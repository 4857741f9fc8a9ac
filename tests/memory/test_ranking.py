"""Candidate pruning in ``ranking``: the same hits as scoring every slot on every view."""

from __future__ import annotations

import random

import numpy as np
import pytest

from somabrain.memory import HashingEmbedder, Memory, TenantMemory, multiview, tokenize
from somabrain.memory.hybrid import validate_weights
from somabrain.memory.ranking import RecallQuery
from somabrain.memory.vector_index import top_k

EMB = HashingEmbedder(dim=64)
DAY = 86_400.0
pytestmark = pytest.mark.anyio
WORDS = [
    "apple",
    "pear",
    "plum",
    "fig",
    "river",
    "stone",
    "cloud",
    "harbor",
    "violin",
    "garden",
    "tiger",
    "lemon",
]


def dense_rank(memory: TenantMemory, text: str, k: int, weights: dict[str, float], at: float):
    """The reference: every eligible slot scored on every view, then the top ``k``."""
    index = memory.index
    w = validate_weights(weights, index.view_names)
    total = sum(w.values())
    mask = index.eligible(None, None, at)
    tokens = tokenize(text)
    vector = index.vectors.normalise(EMB.embed([text])[0])[0]
    sem = np.maximum(index.vectors.unit_scores(vector), 0.0)
    lex = index.lexical.scores(tokens)
    best = float(lex.max(where=mask, initial=0.0))
    if best > 0:
        lex = lex / np.float32(best)
    w_sem, w_lex = w.get("semantic", 0.0) / total, w.get("lexical", 0.0) / total
    seed = sem * w_sem + lex * w_lex if w_sem or w_lex else sem + lex
    seed = np.where(mask, seed, -1.0).astype(np.float32)
    ranked = top_k(seed, seed.shape[0])
    ranked = ranked[seed[ranked] >= 0]
    query = RecallQuery(text, tokens, vector, None, None, at, at,
                        {"semantic": sem, "lexical": lex}, w, ranked, seed[ranked], {})  # fmt: skip
    slots = np.flatnonzero(mask).astype(np.int64)
    combined = (sem[slots] * w_sem + lex[slots] * w_lex).astype(np.float32)
    for view in index._views:
        view.prepare(index, query, mask)
        if w.get(view.name, 0.0) > 0:
            combined += np.float32(w[view.name] / total) * view.scores(index, query, slots)
    order = top_k(combined, k)
    order = order[combined[order] > 0]
    return [index.key_of(int(slots[i])) for i in order], combined[order].tolist()


async def random_memory(rng: random.Random) -> TenantMemory:
    memory = TenantMemory.in_memory(
        "acme", embedder=EMB, views=multiview(graph_seeds=rng.randint(1, 4)), clock=lambda: 0.0
    )
    n = rng.randint(1, 120)
    items = [
        Memory(
            key=f"m{i}",
            content=" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))),
            importance=rng.choice([0.5, 0.5, rng.random()]),
            occurred_at=rng.choice([None, rng.uniform(0, 400 * DAY)]),
        )
        for i in range(n)
    ]
    await memory.remember_batch(items)
    for _ in range(rng.randint(0, 2 * n)):
        a, b = rng.randrange(n), rng.randrange(n)
        if a != b:
            await memory.link(f"m{a}", f"m{b}", "rel", rng.uniform(0.1, 2.0))
    for i in rng.sample(range(n), rng.randint(0, n // 4)):
        await memory.reinforce([f"m{i}"], rng.uniform(-2.0, 3.0))
    for i in rng.sample(range(n), rng.randint(0, n // 5)):
        await memory.forget(f"m{i}")
    return memory


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # pure computation: one backend is enough


@pytest.mark.parametrize("seed", range(40))
async def test_pruned_ranking_equals_dense_ranking(seed: int) -> None:
    rng = random.Random(seed)
    memory = await random_memory(rng)
    if not len(memory.index):
        return
    for _ in range(5):
        text = " ".join(rng.choice([*WORDS, "unknownword"]) for _ in range(rng.randint(1, 4)))
        weights = {v: rng.choice([0.0, 0.05, rng.random()]) for v in memory.index.view_names}
        if sum(weights.values()) <= 0:
            weights["recency"] = 1.0
        k = rng.randint(1, 25)
        at = rng.uniform(0, 500 * DAY)
        hits = memory.index.search(
            EMB.embed([text])[0], tokenize(text), k, text=text, weights=weights, at=at
        )
        keys, scores = dense_rank(memory, text, k, weights, at)
        assert [h.key for h in hits] == keys, (text, weights, k)
        assert [h.score for h in hits] == pytest.approx(scores, rel=1e-5, abs=1e-7)


async def test_every_hit_reports_every_view_even_unweighted() -> None:
    memory = await random_memory(random.Random(3))
    hits = memory.recall("apple river", 5, weights={"lexical": 1.0})
    assert hits
    for hit in hits:
        assert set(hit.views) == {"semantic", "lexical", "graph", "recency", "salience"}
        assert hit.score == pytest.approx(hit.views["lexical"])


def test_reported_view_scores_are_clipped_into_the_unit_range() -> None:
    """float32 rounding can leave a cosine a hair above 1 (``1.0000001`` for a memory and its
    own text): the hit reports 1, as every view's score is documented in [0, 1]."""
    from somabrain.memory.hybrid import HybridIndex

    index = HybridIndex(4)
    index.add(Memory(content="apple", key="a", tenant="t"), [1.0, 0.0, 0.0, 0.0], ["apple"])
    # A query vector a rounding error longer than a unit vector, as an embedder may give.
    query = np.array([1.0000001, 0.0, 0.0, 0.0], dtype=np.float32)
    assert float(index.vectors.unit_scores(query)[0]) > 1.0
    [hit] = index.search(query, ["apple"], 1, unit=True)
    assert hit.views["semantic"] == 1.0
    assert all(0.0 <= score <= 1.0 for score in hit.views.values()), hit.views
