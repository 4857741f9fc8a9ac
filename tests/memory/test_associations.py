"""What feedback teaches a tenant's memory: the association view, its journal, co-use links."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from somabrain.memory import HashingEmbedder, Link, Memory, TenantMemory, multiview, tokenize
from somabrain.memory.associations import (
    ASSOCIATION,
    CO_USED,
    MAGIC,
    AssociationSettings,
    AssociationStore,
    AssociationView,
    FeedbackLearner,
    association_journal_path,
    with_association,
)
from somabrain.memory.views import MULTIVIEW_WEIGHTS

from .test_ranking import WORDS, dense_rank

pytestmark = pytest.mark.anyio
EMB = HashingEmbedder(dim=64)
WEIGHTS = with_association(dict(MULTIVIEW_WEIGHTS), 0.5)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # files and computation: one backend is enough


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


async def embed(texts: Sequence[str]) -> np.ndarray:
    return EMB.embed(list(texts))


# ------------------------------------------------------------------------------ the store


def test_lifts_are_relative_to_the_nearest_stored_query() -> None:
    store = AssociationStore.in_memory(3)
    store.add("a", unit(1, 0, 0), ["x", "y"])
    store.add("b", unit(1, 1, 0), ["y", "z"])
    store.add("c", unit(0, 0, 1), ["w"])
    q = unit(1, 0.2, 0)
    lifts = store.lifts(q, neighbours=5, sharpness=1.0)
    s_a, s_b = float(unit(1, 0, 0) @ q), float(unit(1, 1, 0) @ q)
    assert lifts["x"] == pytest.approx(1.0)
    assert lifts["y"] == pytest.approx(1.0)  # the maximum over the queries that used it
    assert lifts["z"] == pytest.approx(s_b / s_a)
    assert "w" not in lifts  # cosine 0: not similar at all
    assert store.lifts(q, neighbours=5, sharpness=2.0)["z"] == pytest.approx((s_b / s_a) ** 2)
    assert set(store.lifts(q, neighbours=1)) == {"x", "y"}
    assert store.lifts(q, neighbours=5, min_similarity=0.99) == {}
    assert store.lifts(unit(0, -1, 0)) == {}  # nothing similar


def test_capacity_drops_the_oldest_and_discard_forgets_a_key() -> None:
    store = AssociationStore.in_memory(2, capacity=2)
    store.add("first", unit(1, 0), ["a"])
    store.add("second", unit(0, 1), ["b", "c"])
    store.add("third", unit(1, 1), ["c"])
    assert [q for q, _ in store.entries()] == ["second", "third"]
    store.discard("c")
    assert store.entries() == [("second", ("b",)), ("third", ())]
    assert store.lifts(unit(1, 1)) == {"b": 1.0}
    store.add("empty", unit(1, 0), [])  # nothing used: nothing stored
    assert len(store) == 2
    with pytest.raises(ValueError, match="dimensions"):
        store.add("bad", unit(1, 0, 0), ["a"])


async def test_journal_survives_a_reopen_torn_tail_and_compaction(tmp_path: Path) -> None:
    path = association_journal_path(tmp_path / "memory", "acme")
    store = await AssociationStore.open(path, EMB.dim, embed, capacity=3)
    assert store.durable and path.read_bytes() == MAGIC
    for i, keys in enumerate([["a"], ["b", "c"], ["c"], ["d"]]):
        store.add(f"query {i} about {' '.join(keys)}", EMB.embed([f"query {i}"])[0], keys)
    await store.sync()
    store.discard("c")
    await store.aclose()
    with path.open("ab") as f:  # a crash in the middle of a frame
        f.write(b"\x05\x00\x00\x00\x00")
    again = await AssociationStore.open(path, EMB.dim, embed, capacity=3)
    # capacity 3 keeps the last three; "c" forgotten everywhere, the entry left empty dropped
    assert again.entries() == [("query 1 about b c", ("b",)), ("query 3 about d", ("d",))]
    # the queries are embedded again (the journal holds text only)
    lifts = again.lifts(EMB.embed(["query 1 about b c"])[0], neighbours=1)
    assert lifts == {"b": pytest.approx(1.0)}
    await again.aclose()
    # the reopened journal was rewritten as a snapshot: no torn tail, no forgotten key
    assert b"query 0" not in path.read_bytes() and b"\x05\x00\x00\x00\x00" not in path.read_bytes()
    other = await AssociationStore.open(path, 16, lambda t: _embed_dim(t, 16), capacity=3)
    assert len(other) == 2  # another embedder (dimension) re-embeds the same queries
    await other.aclose()


async def _embed_dim(texts: Sequence[str], dim: int) -> np.ndarray:
    return HashingEmbedder(dim=dim).embed(list(texts))


async def test_an_unwritable_journal_leaves_the_store_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = await AssociationStore.open(blocker / "acme.assoc", EMB.dim, embed)
    assert not store.durable
    store.add("q", EMB.embed(["q"])[0], ["a"])
    await store.sync()
    assert len(store) == 1
    await store.aclose()


# ------------------------------------------------------------------------------ the view


async def tenant(store: AssociationStore, texts: Sequence[str]) -> TenantMemory:
    views = [*multiview(), AssociationView(store, neighbours=5)]
    memory = TenantMemory.in_memory("acme", embedder=EMB, views=views, clock=lambda: 0.0)
    await memory.remember_batch([Memory(key=f"m{i}", content=t) for i, t in enumerate(texts)])
    return memory


TEXTS = [
    "Caroline went to the support group on Monday",
    "Caroline painted a lake at sunrise",
    "Melanie ran a charity race for mental health",
    "Melanie took the kids camping in the mountains",
    "Caroline is researching adoption agencies",
    "Melanie signed up for a pottery class",
]


async def test_the_view_lifts_what_helped_a_similar_query_in_proportion_to_relevance() -> None:
    store = AssociationStore.in_memory(EMB.dim)
    memory = await tenant(store, TEXTS)
    query = "what did Melanie do with the kids"
    before = [h.key for h in memory.recall(query, 6, weights=WEIGHTS)]
    assert before.index("m2") > before.index("m5")
    asked = "did Melanie run a charity race"
    store.add(asked, EMB.embed([asked])[0], ["m2"])
    hits = memory.recall(query, 6, weights=WEIGHTS)
    after = [h.key for h in hits]
    assert after.index("m2") < after.index("m5")  # lifted above its rival
    lifted = next(h for h in hits if h.key == "m2")
    assert 0.0 < lifted.views[ASSOCIATION] < 1.0  # below the best hit's relevance
    assert all(h.views[ASSOCIATION] == 0.0 for h in hits if h.key != "m2")
    # the same association for the query it answered: the full lift
    again = memory.recall(asked, 1, weights=WEIGHTS)[0]
    assert again.key == "m2" and again.views[ASSOCIATION] == pytest.approx(1.0)
    # weight 0: reported, no effect on the ranking
    plain = {k: v for k, v in WEIGHTS.items() if k != ASSOCIATION}
    assert [h.key for h in memory.recall(query, 6, weights=plain)] == before
    # a memory that shares nothing with the query is not lifted, whatever helped before
    store.add("sunrise lake", EMB.embed(["sunrise lake"])[0], ["m1"])
    hits = memory.recall("Melanie charity race", 6, weights=WEIGHTS)
    assert next(h for h in hits if h.key == "m1").views[ASSOCIATION] < 0.1
    # a forgotten memory is never lifted
    await memory.forget("m2")
    assert "m2" not in [h.key for h in memory.recall(query, 6, weights=WEIGHTS)]


async def test_the_view_respects_filters() -> None:
    store = AssociationStore.in_memory(EMB.dim)
    views = [*multiview(), AssociationView(store)]
    memory = TenantMemory.in_memory("acme", embedder=EMB, views=views, clock=lambda: 0.0)
    await memory.remember_batch([
        Memory(key="a", content="pottery class on Monday", namespace="x"),
        Memory(key="b", content="pottery class on Friday", namespace="y"),
    ])  # fmt: skip
    store.add("pottery", EMB.embed(["pottery"])[0], ["a", "b"])
    hits = memory.recall("pottery class", 5, namespace="y", weights=WEIGHTS)
    assert [h.key for h in hits] == ["b"] and hits[0].views[ASSOCIATION] > 0


@pytest.mark.parametrize("seed", range(20))
async def test_pruned_ranking_with_the_view_equals_dense_ranking(seed: int) -> None:
    rng = random.Random(seed)
    store = AssociationStore.in_memory(EMB.dim)
    n = rng.randint(1, 80)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))) for _ in range(n)]
    memory = await tenant(store, texts)
    for i in range(rng.randint(1, 2 * n)):
        a, b = rng.randrange(n), rng.randrange(n)
        if a != b and i % 2:
            await memory.link(f"m{a}", f"m{b}", "rel", rng.uniform(0.1, 2.0))
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        store.add(q, EMB.embed([q])[0], [f"m{rng.randrange(n)}" for _ in range(rng.randint(1, 3))])
    for _ in range(5):
        text = " ".join(rng.choice([*WORDS, "unknownword"]) for _ in range(rng.randint(1, 4)))
        weights = {v: rng.choice([0.0, 0.05, rng.random()]) for v in memory.index.view_names}
        weights[ASSOCIATION] = rng.choice([0.0, rng.random()])
        if sum(weights.values()) <= 0:
            weights["recency"] = 1.0
        k = rng.randint(1, 25)
        hits = memory.index.search(
            EMB.embed([text])[0], tokenize(text), k, text=text, weights=weights, at=0.0
        )
        keys, scores = dense_rank(memory, text, k, weights, 0.0)
        assert [h.key for h in hits] == keys, (text, weights, k)
        assert [h.score for h in hits] == pytest.approx(scores, rel=1e-5, abs=1e-7)


def test_with_association() -> None:
    assert with_association({"a": 0.6, "b": 0.4}, 0.5) == {"a": 0.6, "b": 0.4, ASSOCIATION: 0.5}
    assert with_association({"a": 1.0}, 0.0) == {"a": 1.0}
    assert with_association({"a": 1.0, ASSOCIATION: 0.2}, 0.5)[ASSOCIATION] == 0.2


# ------------------------------------------------------------------------------ learning


def co_used(memory: TenantMemory) -> dict[tuple[str, str], float]:
    return {(ln.from_key, ln.to_key): ln.weight for ln in memory.links() if ln.rel == CO_USED}


async def test_learning_reinforces_associates_and_links_what_was_used_together(
    tmp_path: Path,
) -> None:
    settings = AssociationSettings(co_use_weight=1.0, co_use_max_weight=2.5, co_use_max_keys=3)
    memories = [Memory(key=k, content=f"turn {k}") for k in "abcde"]
    path = association_journal_path(tmp_path, "acme")
    async with await TenantMemory.open(tmp_path, "acme", embedder=EMB) as memory:
        await memory.remember_batch(memories)
        store = await AssociationStore.open(path, EMB.dim, embed)
        learner = FeedbackLearner(memory, store, settings)
        vector = EMB.embed(["which turns"])[0]
        out = await learner.learn(["c", "a", "zz", "b", "d"], 1.0, query="which", vector=vector)
        assert set(out) == {"a", "b", "c", "d"}  # unknown keys are ignored
        assert store.entries() == [("which", ("c", "a", "b", "d"))]
        # pairs of the first three used keys, each link from the smaller key
        assert co_used(memory) == {("a", "c"): 1.0, ("a", "b"): 1.0, ("b", "c"): 1.0}
        for _ in range(2):
            await learner.learn(["a", "c"], 0.5, query="again", vector=vector)
        assert co_used(memory)[("a", "c")] == 2.5  # grows with repetition, up to the cap
        # negative feedback weakens salience only
        await learner.learn(["b", "e"], -1.0, query="bad", vector=vector)
        assert memory.salience("e") == -1.0 and ("b", "e") not in co_used(memory)
        assert len(store) == 3
        await store.aclose()
    # links (in the memory log) and associations (in the journal) survive a restart
    async with await TenantMemory.open(tmp_path, "acme", embedder=EMB) as memory:
        assert co_used(memory)[("a", "c")] == 2.5
        again = await AssociationStore.open(path, EMB.dim, embed)
        assert [q for q, _ in again.entries()] == ["which", "again", "again"]
        await again.aclose()


async def test_co_use_links_feed_the_graph_view() -> None:
    memory = TenantMemory.in_memory("acme", embedder=EMB, views=multiview(), clock=lambda: 0.0)
    await memory.remember_batch([
        Memory(key="a", content="Melanie took the kids camping"),
        Memory(key="b", content="the tent broke in the rain"),
        Memory(key="c", content="Caroline painted a lake", links=(Link(to_key="a"),)),
    ])  # fmt: skip
    weights = dict(MULTIVIEW_WEIGHTS)
    before = {h.key: h.views["graph"] for h in memory.recall("camping kids", 3, weights=weights)}
    assert before.get("b", 0.0) == 0.0
    await FeedbackLearner(memory, None).learn(["a", "b"], 1.0)
    after = {h.key: h.views["graph"] for h in memory.recall("camping kids", 3, weights=weights)}
    assert after["b"] > 0.0
