"""The graph, recency and salience views, and durable salience reinforcement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from somabrain.memory import (
    MULTIVIEW_WEIGHTS,
    GraphView,
    HashingEmbedder,
    Link,
    Memory,
    RecencyView,
    SalienceView,
    TenantMemory,
    multiview,
)

EMB = HashingEmbedder(dim=64)
DAY = 86_400.0


class Clock:
    def __init__(self, now: float = 100 * DAY) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tm(**kw) -> TenantMemory:
    kw.setdefault("embedder", EMB)
    kw.setdefault("views", multiview())
    return TenantMemory.in_memory("acme", **kw)


async def chain(memory: TenantMemory) -> None:
    """q asks about volcanoes; the answer a follows it (linked), z is unrelated."""
    await memory.remember_batch(
        [
            Memory(key="q", content="Caroline: did you hike the volcano in Iceland?"),
            Memory(
                key="a", content="Melanie: yes, we climbed it at dawn", links=(Link(to_key="q"),)
            ),
            Memory(key="z", content="Melanie: the weather at dawn was grey"),
        ]
    )


pytestmark = pytest.mark.anyio


async def test_every_view_is_reported_in_unit_range() -> None:
    memory = tm()
    await chain(memory)
    hits = memory.recall("volcano Iceland", weights=MULTIVIEW_WEIGHTS)
    assert hits
    for h in hits:
        assert set(h.views) == {"semantic", "lexical", "graph", "recency", "salience"}
        assert all(0.0 <= v <= 1.0 for v in h.views.values())
        expected = sum(MULTIVIEW_WEIGHTS[v] * s for v, s in h.views.items()) / sum(
            MULTIVIEW_WEIGHTS.values()
        )
        assert h.score == pytest.approx(expected, rel=1e-5)


async def test_graph_lifts_the_neighbour_of_a_strong_hit() -> None:
    memory = tm()
    await chain(memory)
    lexical_only = [h.key for h in memory.recall("volcano Iceland", weights={"lexical": 1.0})]
    assert lexical_only == ["q"]  # "a" shares no term with the query
    hits = {h.key: h for h in memory.recall("volcano Iceland", weights={"lexical": 1, "graph": 1})}
    assert "a" in hits and hits["a"].views["graph"] > 0.0
    assert hits["a"].views["graph"] > hits["z"].views["graph"] if "z" in hits else True
    # a memory reached from no seed scores 0 on the graph view
    assert memory.recall("grey weather", weights={"graph": 1.0, "lexical": 1.0})[0].key == "z"


async def test_graph_view_without_links_scores_zero() -> None:
    memory = tm()
    await memory.remember(Memory(key="x", content="alpha beta"))
    [hit] = memory.recall("alpha", weights=MULTIVIEW_WEIGHTS)
    assert hit.views["graph"] == 0.0


async def test_graph_walk_is_bounded_and_deterministic() -> None:
    memory = tm(views=(GraphView(seeds=1, steps=3, max_nodes=5),))
    hub = Memory(key="hub", content="hub topic word")
    spokes = [
        Memory(key=f"s{i}", content=f"spoke {i}", links=(Link(to_key="hub", weight=1.0 + i),))
        for i in range(50)
    ]
    await memory.remember_batch([hub, *spokes])
    first = memory.recall("topic", top_k=60, weights={"lexical": 1, "graph": 1})
    second = memory.recall("topic", top_k=60, weights={"lexical": 1, "graph": 1})
    assert first == second
    reached = [h for h in first if h.views["graph"] > 0]
    assert 1 <= len(reached) <= 6  # the hub plus at most max_nodes spokes


async def test_recency_decays_with_distance_to_the_query_time() -> None:
    clock = Clock()
    memory = tm(clock=clock, views=(RecencyView(half_life=10 * DAY),))
    await memory.remember_batch(
        [
            Memory(key="old", content="report one", occurred_at=clock.now - 20 * DAY),
            Memory(key="new", content="report two", occurred_at=clock.now - 10 * DAY),
            Memory(key="undated", content="report three"),  # created now
        ]
    )
    views = {h.key: h.views["recency"] for h in memory.recall("report", weights={"recency": 1})}
    assert views["undated"] == pytest.approx(1.0)
    assert views["new"] == pytest.approx(0.5)
    assert views["old"] == pytest.approx(0.25)
    # a query about the past: distance, not age, decides
    at = clock.now - 20 * DAY
    views = {
        h.key: h.views["recency"] for h in memory.recall("report", weights={"recency": 1}, at=at)
    }
    assert views["old"] == pytest.approx(1.0) and views["new"] == pytest.approx(0.5)


async def test_recency_of_times_at_the_ends_of_the_float_range() -> None:
    """Any finite epoch is accepted: ages that overflow score 0 (no overflow warning)."""
    memory = tm(views=(RecencyView(),))
    await memory.remember_batch(
        [
            Memory(key="past", content="report one", occurred_at=-1e308),
            Memory(key="future", content="report two", occurred_at=1e308),
        ]
    )
    for at, near, far in ((1e308, "future", "past"), (-1e308, "past", "future")):
        hits = memory.recall("report", weights={"recency": 1}, at=at)
        views = {h.key: h.views["recency"] for h in hits}
        assert views[near] == 1.0 and views.get(far, 0.0) == 0.0


async def test_salience_follows_importance_and_reinforcement(tmp_path: Path) -> None:
    memory = await TenantMemory.open(tmp_path, "acme", embedder=EMB, views=(SalienceView(),))
    async with memory:
        await memory.remember_batch(
            [
                Memory(key="low", content="note a", importance=0.2),
                Memory(key="mid", content="note b"),
                Memory(key="high", content="note c", importance=0.9),
            ]
        )
        views = {h.key: h.views["salience"] for h in memory.recall("note", weights={"salience": 1})}
        assert views["low"] < views["mid"] < views["high"]
        assert views["mid"] == pytest.approx(0.5)
        assert await memory.reinforce(["low", "unknown"], 5.0) == {"low": 5.0}
        assert await memory.reinforce([], 1.0) == {}
        ranked = [h.key for h in memory.recall("note", weights={"salience": 1})]
        assert ranked[0] == "low"
        await memory.reinforce(["low"], 100.0)
        assert memory.salience("low") == 8.0  # clipped
        # an upsert keeps the salience of its key
        await memory.remember(Memory(key="low", content="note a, edited", importance=0.2))
        assert memory.recall("note", weights={"salience": 1})[0].key == "low"
        with pytest.raises(ValueError):
            await memory.reinforce(["low"], float("nan"))
    # durable: replayed from the log, and kept by compaction
    reopened = await TenantMemory.open(tmp_path, "acme", embedder=EMB, views=(SalienceView(),))
    async with reopened:
        assert reopened.salience("low") == 8.0
        assert reopened.recall("note", weights={"salience": 1})[0].key == "low"
        assert await reopened.compact()
    async with await TenantMemory.open(tmp_path, "acme", embedder=EMB) as again:
        assert again.salience("low") == 8.0 and again.salience("mid") == 0.0
        assert again.statistics().log_dead_records == 0
        await again.forget("low")
        assert again.salience("low") == 0.0


def test_view_parameters_are_validated() -> None:
    with pytest.raises(ValueError):
        GraphView(seeds=0)
    with pytest.raises(ValueError):
        GraphView(damping=0.0)
    with pytest.raises(ValueError):
        RecencyView(half_life=0.0)
    with pytest.raises(ValueError):
        SalienceView(gain=-1.0)


def test_salience_view_is_a_logistic_of_importance() -> None:
    from somabrain.memory import HybridIndex, tokenize

    index = HybridIndex(EMB.dim, views=(SalienceView(gain=2.0),))
    mems = [Memory(key="a", content="x", importance=0.5), Memory(key="b", content="y")]
    index.add_batch(mems, EMB.embed(["x", "y"]), [tokenize("x"), tokenize("y")])
    index.set_salience("a", 1.0)
    assert not index.set_salience("missing", 1.0)
    hits = {h.key: h for h in index.search(EMB.embed(["x"])[0], ["x"], weights={"salience": 1})}
    assert hits["a"].views["salience"] == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-5)
    assert hits["b"].views["salience"] == pytest.approx(0.5)
