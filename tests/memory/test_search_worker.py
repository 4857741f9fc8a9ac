"""The search worker's replica kept in step with a tenant, without a subprocess.

``Loopback`` plays the worker's side of ``SearchOffload``: every frame is packed, split back out
of a byte buffer, applied by ``search_worker.handle``, and its answer packed and read back as the
offload's reader does. Replicas are opened by ``TenantReplica`` (as the memory actor does), so
the snapshot, the feeds and the protocol are the real ones; only the pipe is missing.
"""

from __future__ import annotations

import gc
import math
import random
from types import SimpleNamespace
from typing import Any

import msgspec
import numpy as np
import pytest

from somabrain.memory import (
    HashingEmbedder,
    Link,
    Memory,
    RecallFilter,
    RecallHit,
    TenantMemory,
    search_offload,
    search_worker,
)
from somabrain.memory.associations import AssociationStore, AssociationView
from somabrain.memory.form import FEATURES, FORM
from somabrain.memory.hybrid import DEFAULT_WEIGHTS, HybridIndex, IndexCompaction, IndexHit
from somabrain.memory.messages import ContextRecall
from somabrain.memory.replica import OFFLOAD_RESOURCE, TenantReplica
from somabrain.memory.search_offload import (
    OffloadUnavailable,
    ReplicaFeed,
    SearchOffload,
    pack_snapshot,
)
from somabrain.memory.search_protocol import (
    Add,
    Associate,
    AssociationParams,
    Call,
    Failed,
    Hits,
    Open,
    Opened,
    Remove,
    Returned,
    Search,
    SetSalience,
    ViewParams,
    frames,
    pack,
    read_responses,
)
from somabrain.memory.search_worker import FUNCTIONS, Worker
from somabrain.memory.views import build_views, multiview

DIM = 64
ASSOC = AssociationParams(capacity=8, neighbours=3, min_similarity=0.0, sharpness=2.0)
VIEWS = ViewParams(("graph", "recency", "salience", "association"), 4, 0.85, 2, 3600.0, 1.0, ASSOC)
WORDS = ("cat", "dog", "sun", "moon", "tax", "report", "river", "stone", "paint", "sunrise",
         "garden", "train", "coffee", "letter", "music", "storm", "bread", "violin", "harbor",
         "lamp")  # fmt: skip
VIEW_NAMES = ("semantic", "lexical", "graph", "recency", "salience", "association")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Loopback(SearchOffload):
    """A ``SearchOffload`` whose worker is a ``Worker`` in this process: every frame is
    answered as it is sent, and every build runs to its end at once, unless ``hold``: then
    only ``step`` advances builds, and the test decides what happens between two steps."""

    running = True  # no process: every frame is answered as it is sent

    def __init__(self, chunk: int = 7) -> None:  # small chunks: builds take several steps
        super().__init__(command=["unused"])
        self.worker = Worker(chunk)
        self.replicas = self.worker.replicas
        self.failures: list[Failed] = []
        self.hold = False
        self.steps = 0

    def _send_packed(self, data: bytearray) -> None:  # where every frame is written
        buffer, answers = bytearray(data), bytearray()
        for request in frames(buffer):
            answer = self.worker.handle(request)
            if answer is not None:
                answers += pack(answer)
        assert not buffer
        self._answered(answers)
        if not self.hold:
            self.finish()

    def step(self) -> None:
        """One build step, and its answer read."""
        self.steps += 1
        answer = self.worker.step()
        if answer is not None:
            self._answered(bytearray(pack(answer)))

    def finish(self) -> None:
        while self.worker.building_now:  # not a build waiting for the rest of its snapshot
            self.step()

    def _answered(self, answers: bytearray) -> None:
        for response in read_responses(answers):  # what ``SearchOffload._read`` does
            if isinstance(response, Hits):
                self.answered += 1
                self._pending.pop(response.id)[0](response.hits, None)
            elif isinstance(response, Opened):
                self._feeds[response.replica].ready = True
            else:
                self.failures.append(response)
                self._failed(response)


def tenant(clock: Clock) -> tuple[TenantMemory, AssociationStore]:
    """A tenant with every view of ``VIEWS``, built as the memory actor builds it."""
    v, a = VIEWS, ASSOC
    store = AssociationStore.in_memory(DIM, capacity=a.capacity)
    views = [*multiview(graph_seeds=v.graph_seeds, graph_damping=v.graph_damping,
                        graph_steps=v.graph_steps, recency_half_life=v.recency_half_life,
                        salience_gain=v.salience_gain),
             AssociationView(store, neighbours=a.neighbours, min_similarity=a.min_similarity,
                             sharpness=a.sharpness)]  # fmt: skip
    embedder = HashingEmbedder(dim=DIM)
    return TenantMemory.in_memory("acme", embedder=embedder, clock=clock, views=views), store


def open_replica(
    tm: TenantMemory, store: AssociationStore, offload: Loopback, views: ViewParams = VIEWS
) -> TenantReplica:
    system = SimpleNamespace(resources={OFFLOAD_RESOURCE: offload})
    replica = TenantReplica(system, tm, store, views, min_memories=1)
    assert replica._usable_feed() is None  # opens it; the loopback answers Opened at once
    assert replica._usable_feed() is replica.feed is not None and replica.feed.usable
    return replica


def search(feed: ReplicaFeed, tm: TenantMemory, query: str, **kw: Any) -> list[IndexHit]:
    """The replica's answer to ``tm.recall(query, **kw)``."""
    got: list[tuple[Any, BaseException | None]] = []
    vector = kw.get("vector")
    feed.search(
        lambda hits, error: got.append((hits, error)),
        text=query,
        vector=b"" if vector is None else np.asarray(vector, np.float32).tobytes(),
        top_k=kw.get("top_k", 10),
        namespace=kw.get("namespace"),
        filter=kw.get("filters"),
        weights=dict(kw.get("weights") or DEFAULT_WEIGHTS),
        now=tm.now(),
        at=kw.get("at"),
        form=dict(kw.get("form") or {}),
    )
    [(hits, error)] = got
    if error is not None:
        raise error
    return list(hits)


def check(feed: ReplicaFeed, tm: TenantMemory, query: str, **kw: Any) -> list[RecallHit]:
    """The replica answers ``tm.recall(query, **kw)`` with the same hits, in the same order."""
    local, remote = tm.recall(query, **kw), search(feed, tm, query, **kw)
    assert [h.key for h in remote] == [h.key for h in local]
    for a, b in zip(local, remote, strict=True):
        assert b.score == pytest.approx(a.score, abs=1e-5)
        assert b.views.keys() == a.views.keys()
        for name, score in a.views.items():
            assert b.views[name] == pytest.approx(score, abs=1e-5), (a.key, name)
    return local


def text(rng: random.Random, n: tuple[int, int] = (3, 7)) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(*n)))


def random_memory(rng: random.Random, clock: Clock, keys: list[str]) -> Memory:
    kw: dict[str, Any] = {
        "content": text(rng),
        "namespace": rng.choice(("default", "default", "work")),
        "tags": tuple(rng.sample(("a", "b", "c"), rng.randint(0, 2))),
        "session_id": rng.choice((None, "s1", "s2")),
        "importance": round(rng.random(), 3),
    }
    if rng.random() < 0.3:  # an upsert of an explicit key
        kw["key"] = f"k{rng.randrange(30)}"
    if rng.random() < 0.5:
        kw["meta"] = {"kind": rng.choice(("note", "log")), "n": rng.randrange(3)}
    if rng.random() < 0.5:
        kw["occurred_at"] = clock.now - rng.uniform(0, 20_000)
    if rng.random() < 0.15:
        kw["expires_at"] = clock.now + rng.uniform(1, 300)
    if keys and rng.random() < 0.3:
        kw["links"] = (Link(to_key=rng.choice(keys), weight=round(rng.uniform(0.1, 2), 2)),)
    return Memory(**kw)


def random_recall(rng: random.Random, clock: Clock) -> dict[str, Any]:
    kw: dict[str, Any] = {"top_k": rng.choice((0, 1, 3, 5, 10, 20))}
    kw["namespace"] = rng.choice((None, None, "default", "work", "nope"))
    if rng.random() < 0.4:
        kw["filters"] = rng.choice((
            RecallFilter(tags=("a",)), RecallFilter(any_tags=("b", "c")),
            RecallFilter(session_id="s1"), RecallFilter(meta={"kind": "note"}),
            RecallFilter(meta={"n": 1}, tags=("c",)),
        ))  # fmt: skip
    if rng.random() < 0.7:
        names = rng.sample(VIEW_NAMES, rng.randint(1, len(VIEW_NAMES)))
        kw["weights"] = {name: round(rng.uniform(0.1, 1.0), 2) for name in names}
    if rng.random() < 0.3:
        kw["at"] = clock.now + rng.uniform(-30_000, 1_000)
    if rng.random() < 0.15:
        kw["vector"] = np.random.default_rng(rng.randrange(1 << 30)).normal(size=DIM)
    return kw


def count_compactions(index: HybridIndex) -> list[int]:
    """The sizes at which ``index`` was compacted (in the call, or built aside: ``install``)."""
    counted: list[int] = []
    install = index.install

    def counting(compaction: IndexCompaction) -> list[Any] | None:
        size = index.size
        installed = install(compaction)
        if installed:
            counted.append(size)
        return installed

    index.install = counting  # type: ignore[method-assign]
    return counted


async def change(
    rng: random.Random, clock: Clock, tm: TenantMemory, store: AssociationStore
) -> bool:
    """One random change through the tenant's API (False: none this time, recall instead)."""
    clock.now += rng.uniform(0, 20)
    keys = list(tm.keys())
    op = rng.random()
    if op < 0.2:
        await tm.remember(random_memory(rng, clock, keys))
    elif op < 0.3:
        await tm.remember_batch([random_memory(rng, clock, keys) for _ in range(4)])
    elif op < 0.45 and keys:
        key = rng.choice(keys)
        store.discard(key)  # as the memory actor forgets
        await tm.forget(key)
    elif op < 0.52 and len(keys) > 1:
        a, b = rng.sample(keys, 2)
        await tm.link(a, b, rng.choice(("related", "co_used")), rng.uniform(-0.5, 2))
    elif op < 0.56 and tm.link_count:
        ln = rng.choice(list(tm.links()))
        await tm.unlink(ln.from_key, ln.to_key, ln.rel)
    elif op < 0.62 and keys:
        await tm.reinforce(rng.sample(keys, min(3, len(keys))), rng.choice((-1.5, 0.5, 2)))
    elif op < 0.7 and keys:  # few distinct queries: equal similarities, the ring wraps
        query = text(rng, (1, 2))
        used = rng.sample(keys, min(len(keys), rng.randint(1, 2)))
        store.add(query, tm.embedder.embed([query])[0], used, clock.now)
    else:
        return False
    return True


@pytest.mark.anyio
@pytest.mark.parametrize("per_frame", [search_offload.SNAPSHOT_FRAME, 4])
async def test_replica_stays_equivalent_under_random_changes(
    monkeypatch: pytest.MonkeyPatch, per_frame: int
) -> None:
    """Also when the snapshot comes in parts (4 memories to a frame, salience after them)."""
    monkeypatch.setattr(search_offload, "SNAPSHOT_FRAME", per_frame)
    rng, clock = random.Random(20240607), Clock()
    tm, store = tenant(clock)
    await tm.remember_batch([random_memory(rng, clock, []) for _ in range(30)])
    for _ in range(200):  # a history before the snapshot: links, salience, associations
        await change(rng, clock, tm, store)
    assert tm.link_count and tm.statistics().index_dead_slots and len(store) == ASSOC.capacity
    for key in store.entries()[1][1]:  # an entry left empty, not the ring's oldest
        store.discard(key)
        await tm.forget(key)
    offload = Loopback()
    feed = open_replica(tm, store, offload).feed
    assert feed is not None
    worker = next(iter(offload.replicas.values()))
    # Compact early, on both sides at different times: slot numbers diverge between them.
    tm.index._compact_min, worker.index._compact_min = 8, 12
    local_compactions = count_compactions(tm.index)
    worker_compactions = count_compactions(worker.index)
    recalls = 0
    for _ in range(400):
        if not await change(rng, clock, tm, store):
            recalls += 1
            check(feed, tm, text(rng, (1, 3)), **random_recall(rng, clock))
    assert not offload.failures and feed.usable
    assert recalls > 100
    assert local_compactions and worker_compactions, (local_compactions, worker_compactions)
    assert len(worker.index) == len(tm.index) and worker.graph is not None
    assert sorted(map(str, worker.graph)) == sorted(map(str, tm.links()))
    assert worker.associations is not None
    assert worker.associations.entries() == store.entries()


@pytest.mark.anyio
async def test_replica_of_an_existing_state_answers_like_the_index() -> None:
    clock = Clock()
    tm, store = tenant(clock)
    contents = ["the cat sat on the mat", "the dog chased the cat",
                "a cat watched the sunrise over the river", "quarterly tax report",
                "coffee with a letter and a cat", "violin music for a cat in a storm",
                "bread from the harbor", "a lamp in the garden"]  # fmt: skip
    keys = [k for k, _ in await tm.remember_batch(
        [Memory(content=c, occurred_at=clock.now - 900 * i) for i, c in enumerate(contents)]
    )]  # fmt: skip
    await tm.link(keys[0], keys[4], weight=2.0)
    await tm.link(keys[2], keys[5], "co_used", 0.5)
    await tm.reinforce([keys[1], keys[6]], 2.0)
    await tm.reinforce([keys[7]], -1.0)

    def associate(query: str, *used: int) -> None:
        clock.now += 1
        store.add(query, tm.embedder.embed([query])[0], [keys[i] for i in used], clock.now)

    # The ring (capacity 8) wraps: the first is dropped, the second is the oldest kept. The
    # third loses its only memory, and five equal queries tie beyond the 3 neighbours read.
    for query, used in [("lamp garden", 7), ("sunrise", 2), ("tax", 3), ("cat", 0), ("cat", 1),
                        ("cat", 2), ("cat", 4), ("cat", 5), ("music", 5)]:  # fmt: skip
        associate(query, used)
    store.discard(keys[3])  # a memory forgotten: its associations lose it
    await tm.forget(keys[3])
    assert len(store) == ASSOC.capacity and ("tax", ()) in store.entries()
    offload = Loopback()
    feed = open_replica(tm, store, offload).feed
    assert feed is not None
    for _ in range(2):  # the snapshot as it is, then after the ring dropped its oldest
        seen: dict[str, float] = dict.fromkeys(VIEW_NAMES, 0.0)
        for query in ["cat", "the cat", "sunrise", "tax report", "music storm", "harbor", "lamp"]:
            for weights in [None, *({v: 1.0} for v in VIEW_NAMES), dict.fromkeys(VIEW_NAMES, 1.0)]:
                for at in (None, clock.now - 5_000):
                    for hit in check(feed, tm, query, weights=weights, at=at):
                        for v in VIEW_NAMES:  # how far from an unreinforced memory's score
                            seen[v] = max(seen[v], abs(hit.views[v] - 0.5 * (v == "salience")))
        assert all(seen.values()), seen  # every view took part
        associate("harbor", 6)
    worker = offload.replicas[feed.replica].associations
    assert worker is not None and worker.entries() == store.entries()
    assert not offload.failures


#: ``VIEWS`` and the form view, as a node with the default ``memory.extra_views`` has them.
FORM_VIEWS = msgspec.structs.replace(VIEWS, enabled=(*VIEWS.enabled, FORM))
NAMES = ("Caroline", "Melanie", "Paris", "June")


def formed_text(rng: random.Random) -> str:
    """A text of any length, sometimes with names, a number, a question or an exclamation."""
    words = [rng.choice(WORDS + NAMES) for _ in range(rng.randint(1, 25))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), str(rng.randrange(100)))
    if rng.random() < 0.3:
        words.insert(0, rng.choice(("I", "my", "me")))
    return " ".join(words) + rng.choice(("", "", "?", "!"))


@pytest.mark.anyio
async def test_a_search_with_a_form_model_answers_as_the_index_does() -> None:
    """The tenant's form model travels in the ``Search`` frame: the replica scores the form
    view as the node does, before and after changes (and compactions) on both sides."""
    rng, clock = random.Random(31), Clock()
    store = AssociationStore.in_memory(DIM, capacity=ASSOC.capacity)
    tm = TenantMemory.in_memory("acme", embedder=HashingEmbedder(dim=DIM), clock=clock,
                                views=build_views(FORM_VIEWS, store))  # fmt: skip
    keys = [k for k, _ in await tm.remember_batch(
        [Memory(content=formed_text(rng)) for _ in range(60)]
    )]  # fmt: skip
    for key in keys[:6]:
        await tm.forget(key)
    await tm.reinforce(keys[10:13], 1.5)
    offload = Loopback()
    replica = open_replica(tm, store, offload, FORM_VIEWS)
    feed = replica.feed
    assert feed is not None
    worker = offload.replicas[feed.replica]
    tm.index._compact_min, worker.index._compact_min = 4, 7
    local_compactions = count_compactions(tm.index)
    worker_compactions = count_compactions(worker.index)
    models = [{"words": 1.0}, {"question": -2.0, "number": 1.0, "names": 0.5},
              {name: rng.uniform(-3, 3) for name in FEATURES}]  # fmt: skip
    weightings = [{"semantic": 1.0, "lexical": 1.0, FORM: 2.0},
                  {FORM: 1.0}, {"semantic": 0.3, "lexical": 0.3, "salience": 0.2, FORM: 0.2},
                  None]  # fmt: skip
    lifted = reordered = 0
    for _ in range(4):
        for query in ("cat", "Caroline river", "tax report", "music storm lamp"):
            for weights in weightings:
                plain = check(feed, tm, query, weights=weights, top_k=8)
                assert all(h.views[FORM] == 0.5 for h in plain)  # no model: every memory alike
                for model in models:
                    hits = check(feed, tm, query, weights=weights, top_k=8, form=model)
                    lifted += any(h.views[FORM] != 0.5 for h in hits)
                    reordered += [h.key for h in hits] != [h.key for h in plain]
        # changes after the snapshot: the worker's form scores follow them
        clock.now += 10
        live = list(tm.keys())
        for key in rng.sample(live, 5):
            await tm.forget(key)
        await tm.remember_batch([Memory(content=formed_text(rng)) for _ in range(4)])
        await tm.remember(Memory(key=rng.choice(live), content=formed_text(rng)))  # an upsert
    assert lifted and reordered  # the model took part, and changed rankings
    assert local_compactions and worker_compactions
    assert len(worker.index) == len(tm.index) and not offload.failures and feed.usable

    # A context recall carries its form model to the worker (``TenantReplica.recall``).
    weights = {"semantic": 1.0, "lexical": 1.0, FORM: 2.0}
    for model in [None, *models]:
        message = ContextRecall(query="Caroline river", top_k=8, weights=weights, form=model)
        before = offload.answered
        ticket = replica.recall(message, weights)
        assert ticket is not None and offload.answered == before + 1  # the worker answered
        remote = await ticket.result(timeout=1)
        local = tm.recall("Caroline river", 8, weights=weights, form=model)
        assert [h.key for h in remote] == [h.key for h in local]
        assert [h.views[FORM] for h in remote] == pytest.approx([h.views[FORM] for h in local])
        assert [h.score for h in remote] == pytest.approx([h.score for h in local], abs=1e-5)


@pytest.mark.anyio
async def test_a_change_that_fails_drops_the_replica_and_never_answers_stale() -> None:
    clock = Clock()
    tm, store = tenant(clock)
    await tm.remember_batch([Memory(content=f"note {w}") for w in WORDS])
    offload = Loopback()
    replica = open_replica(tm, store, offload)
    tm2, store2 = tenant(clock)
    await tm2.remember(Memory(content="dog"))
    other = open_replica(tm2, store2, offload).feed  # another tenant's, unharmed
    feed = replica.feed
    assert feed is not None and other is not None and len(offload.replicas) == 2
    feed.associate("cat", np.ones(DIM + 1, np.float32), ("x",), 0.0)  # wrong dimension
    assert [(f.id, f.replica) for f in offload.failures] == [(0, feed.replica)]
    assert "replica dropped" in offload.failures[0].error
    assert feed.broken and not feed.usable and feed.replica not in offload.replicas
    assert other.usable and other.replica in offload.replicas
    with pytest.raises(OffloadUnavailable):  # the node searches locally instead
        search(feed, tm, "note cat")
    # Later changes meant for it land nowhere; a search naming it fails, never stale hits.
    for frame in (Add(feed.replica, [Memory(key="x", content="cat")], bytes(4 * DIM)),
                  Remove(feed.replica, "x")):  # fmt: skip
        assert offload.worker.handle(frame) is None
    answer = offload.worker.handle(Search(7, feed.replica, "cat", b"", 5, None, None,
                                          dict(DEFAULT_WEIGHTS), clock.now, None))  # fmt: skip
    assert isinstance(answer, Failed) and answer.id == 7 and "no replica" in answer.error
    # A bad Add drops a replica too.
    other.add([Memory(key="y", content="dog")], np.zeros((2, DIM), np.float32))
    assert other.broken and not offload.replicas
    # The next recall after the reopen pause opens a new replica (a new number), in step.
    await tm.forget(tm.recall("note cat")[0].key)
    assert replica._usable_feed() is None and replica.feed is feed  # within the pause
    replica._reopen_after = -math.inf  # the pause is over
    assert replica._usable_feed() is None and replica.feed is not feed
    new = replica._usable_feed()
    assert new is not None and new.replica not in (feed.replica, other.replica)
    check(new, tm, "note cat")


@pytest.mark.anyio
async def test_a_search_without_vector_needs_the_hashing_settings() -> None:
    clock = Clock()
    tm, _ = tenant(clock)
    await tm.remember_batch([Memory(content=text(random.Random(i))) for i in range(20)])
    memories, vectors, links, salience = tm.replica_snapshot()
    offload = Loopback()
    for hashing in (None, HashingEmbedder(dim=DIM).settings):
        feed = offload.open_replica(DIM, VIEWS, memories=memories, vectors=vectors,
                                    links=links, salience=salience, hashing=hashing)  # fmt: skip
        assert feed.usable
        vector = tm.embedder.embed(["cat sun"])[0] * 3.0
        check(feed, tm, "cat sun", vector=vector)
        if hashing is None:  # not a crash: this search fails and the replica stays
            with pytest.raises(OffloadUnavailable, match="embedder"):
                search(feed, tm, "cat sun")
            assert feed.usable and feed.replica in offload.replicas
            assert offload.failures[-1].replica == 0
        else:
            assert check(feed, tm, "cat sun")
            assert check(feed, tm, "garden train", namespace="default", top_k=3)


def held(offload: Loopback, tm: TenantMemory, store: AssociationStore) -> TenantReplica:
    """``tm``'s replica, opened as the memory actor opens it, with its build held."""
    offload.hold = True
    system = SimpleNamespace(resources={OFFLOAD_RESOURCE: offload})
    replica = TenantReplica(system, tm, store, VIEWS, min_memories=1)
    assert replica._usable_feed() is None and replica.feed is not None
    assert replica.feed.replica in offload.worker.building and not replica.feed.ready
    return replica


def search_anyway(offload: SearchOffload, replica: int, tm: TenantMemory) -> Any:
    """A search of ``replica`` sent whether or not its feed is usable: the answer."""
    got: list[tuple[Any, BaseException | None]] = []
    offload.search(replica, lambda hits, error: got.append((hits, error)), {
        "text": "zeppelin", "vector": b"", "top_k": 5, "namespace": None, "filter": None,
        "weights": dict(DEFAULT_WEIGHTS), "now": tm.now(), "at": None,
    })  # fmt: skip
    [(hits, error)] = got
    return hits if error is None else error


@pytest.mark.anyio
async def test_other_tenants_are_answered_while_a_replica_is_built() -> None:
    rng, clock = random.Random(11), Clock()
    small, small_store = tenant(clock)
    await small.remember_batch([random_memory(rng, clock, []) for _ in range(10)])
    offload = Loopback(chunk=5)
    other = open_replica(small, small_store, offload).feed
    assert other is not None
    big, big_store = tenant(clock)
    await big.remember_batch([random_memory(rng, clock, []) for _ in range(60)])
    for _ in range(150):  # links, salience and associations in the snapshot too
        await change(rng, clock, big, big_store)
    assert big.link_count and len(big_store)
    feed = held(offload, big, big_store).feed
    assert feed is not None
    steps = changes = 0
    while not feed.ready and steps < 500:
        # Another tenant's search, between two steps: the worker answers it, now.
        before = offload.answered
        check(other, small, text(rng, (1, 2)), **random_recall(rng, clock))
        assert offload.answered == before + 1
        # The tenant's own changes: queued, and applied before it is announced.
        changes += await change(rng, clock, big, big_store)
        if steps == 3:
            await big.remember(Memory(key="late", content="zeppelin over the harbor"))
            # The node never searches a replica before ``Opened``; a search that did would
            # run locally, and the replica is kept.
            error = search_anyway(offload, feed.replica, big)
            assert isinstance(error, OffloadUnavailable) and "being built" in str(error)
            assert not feed.broken and offload.failed_over == 1
        offload.step()
        steps += 1
    assert feed.usable and offload.failed_over == 1
    assert [(f.id, f.replica) for f in offload.failures] == [(5, 0)]  # that search only
    assert steps > 15 and changes > 5, (steps, changes)  # interleaved, for a while
    worker = offload.replicas[feed.replica]
    assert len(worker.index) == len(big.index) and worker.graph is not None
    assert sorted(map(str, worker.graph)) == sorted(map(str, big.links()))
    assert worker.associations is not None
    assert worker.associations.entries() == big_store.entries()
    assert check(feed, big, "zeppelin harbor")[0].key == "late"  # read-your-writes
    for _ in range(40):
        check(feed, big, text(rng, (1, 3)), **random_recall(rng, clock))


@pytest.mark.anyio
async def test_a_replica_closed_or_reopened_while_it_is_built() -> None:
    rng, clock = random.Random(12), Clock()
    tm, store = tenant(clock)
    await tm.remember_batch([random_memory(rng, clock, []) for _ in range(40)])
    offload = Loopback(chunk=5)
    replica = held(offload, tm, store)
    first = replica.feed
    assert first is not None
    offload.step()
    offload.step()
    await tm.remember(Memory(key="a", content="zeppelin"))  # queued
    replica.close()  # mid-build: the build stops, and nothing is announced
    assert first.broken and not offload.worker.building and not offload.replicas
    assert offload.worker.handle(Remove(first.replica, "a")) is None  # lands nowhere
    error = search_anyway(offload, first.replica, tm)
    assert isinstance(error, OffloadUnavailable) and "no replica" in str(error)
    # Reopened (after a lost replica, say): the memory actor closes the replica being built
    # and opens a new one, with a new number, from a new snapshot.
    replica._reopen_after = -math.inf
    assert replica._usable_feed() is None
    second = replica.feed
    assert second is not None and second is not first
    offload.step()
    await tm.remember(Memory(key="b", content="zeppelin over the harbor"))  # queued
    replica._open(offload)  # and again, mid-build
    third = replica.feed
    assert third is not None and second.broken
    assert list(offload.worker.building) == [third.replica]
    await tm.forget("a")
    offload.finish()
    assert third.usable and not first.ready and not second.ready
    assert list(offload.replicas) == [third.replica]
    assert [f.id for f in offload.failures] == [1]  # the search of the closed one only
    hits = check(third, tm, "zeppelin harbor")
    assert hits[0].key == "b" and "a" not in {h.key for h in hits}
    # An ``Open`` of a number being built replaces it: its snapshot and its queued changes.
    worker = Worker(chunk=1)

    def spec(*keys: str) -> Open:
        vectors = np.ones((len(keys), DIM), np.float32).tobytes()
        memories = [Memory(key=k, content=k) for k in keys]
        return Open(5, DIM, VIEWS, None, memories, vectors, [], {}, [])

    assert worker.handle(spec("x", "y", "z")) is None and worker.step() is None
    assert worker.handle(Add(5, [Memory(key="q", content="q")], bytes(4 * DIM))) is None
    assert worker.handle(spec("u", "v")) is None
    answers = [worker.step() for _ in range(3)]
    assert answers == [None, None, Opened(5)] and not worker.building
    index = worker.replicas[5].index
    assert len(index) == 2 and "u" in index and "v" in index


@pytest.mark.anyio
async def test_a_build_that_fails_is_a_failed_open_and_the_others_go_on() -> None:
    clock = Clock()
    tm, _ = tenant(clock)
    await tm.remember_batch([Memory(content=f"note {w}") for w in WORDS])
    memories, vectors, links, salience = tm.replica_snapshot()
    offload = Loopback(chunk=5)
    offload.hold = True

    def open_(vectors: Any, hashing: dict[str, Any] | None = None) -> ReplicaFeed:
        return offload.open_replica(DIM, VIEWS, memories=memories, vectors=vectors, links=links,
                                    salience=salience, hashing=hashing)  # fmt: skip

    good = open_(vectors)
    short = open_(vectors[:, :-1])  # not the dimension it claims: its first step fails
    late = open_(vectors)  # its snapshot builds, a change queued meanwhile does not apply
    late.associate("cat", np.ones(DIM + 1, np.float32), ("x",), 0.0)
    unbuildable = open_(vectors, hashing={"no such setting": 1})  # fails at once
    assert unbuildable.broken and [f.replica for f in offload.failures] == [unbuildable.replica]
    assert list(offload.worker.building) == [good.replica, short.replica, late.replica]
    offload.finish()
    assert [(f.id, f.replica) for f in offload.failures] == [
        (0, unbuildable.replica), (0, short.replica), (0, late.replica)
    ]  # fmt: skip
    assert all("replica dropped" in f.error for f in offload.failures)
    assert short.broken and late.broken and not late.ready
    assert good.usable and list(offload.replicas) == [good.replica]
    check(good, tm, "note cat", vector=tm.embedder.embed(["note cat"])[0])


def test_calls_run_the_named_functions_only() -> None:
    worker = Worker()
    payload = b"job"
    worker._functions["echo"] = bytes.upper  # as if imported from ``FUNCTIONS``
    assert worker.handle(Call(1, "echo", payload)) == Returned(1, b"JOB")
    refused = worker.handle(Call(2, "os.system", b"true"))
    assert isinstance(refused, Failed) and refused.id == 2 and "no function" in refused.error
    assert refused.replica == 0  # no replica dropped
    broken = worker.handle(Call(3, "context.bundle", b"not msgpack"))  # imported, raised
    assert isinstance(broken, Failed) and broken.id == 3 and broken.replica == 0
    assert set(FUNCTIONS) == {"context.bundle"}


def test_a_replica_is_opened_once_the_last_part_of_its_snapshot_is_in() -> None:
    memories = [Memory(key=f"k{i}", content=f"note {i}", created_at=1.0) for i in range(7)]
    vectors = np.eye(7, DIM, dtype=np.float32)
    views = ViewParams(("salience",), 4, 0.85, 2, 3600.0, 1.0, None)
    salience = {"k0": 1.0, "k6": 3.0}
    parts = pack_snapshot(1, DIM, views, None, memories, vectors, [], salience, [], per_frame=3)
    sent = [list(frames(bytearray(part))) for part in parts]
    assert [[type(f).__name__ for f in part] for part in sent] == [
        ["Open"], ["Add"], ["Add"], ["SetSalience"]
    ]  # fmt: skip
    [[first], *rest] = sent
    assert isinstance(first, Open) and first.parts == 3 and first.salience == {"k0": 1.0}
    assert first.size == 7  # room made for them all at once
    assert [m.key for f in rest[:2] for m in f[0].memories] == ["k3", "k4", "k5", "k6"]
    assert rest[2] == [SetSalience(1, "k6", 3.0)]

    worker = Worker(chunk=2)
    elsewhere = np.eye(1, DIM, DIM - 1, dtype=np.float32)[0].tobytes()  # near no memory
    probe = Search(9, 1, "", elsewhere, 1, None, None, {"salience": 1.0}, 2.0, None)
    assert worker.handle(first) is None
    for part in rest:
        # The part's memories so far are in, yet the replica waits for the rest: no
        # ``Opened``, no search, and nothing to step (the worker blocks on its pipe).
        assert [worker.step() for _ in range(5)] == [None] * 5 and not worker.building_now
        answer = worker.handle(probe)
        assert isinstance(answer, Failed) and "still being built" in answer.error
        for frame in part:
            assert worker.handle(frame) is None
    assert worker.building_now
    answers = [worker.step() for _ in range(5)]
    assert Opened(1) in answers and not worker.building
    hits = worker.handle(probe)
    assert isinstance(hits, Hits) and [h.key for h in hits.hits] == ["k6"]  # its salience


def opened(memories: list[Memory], vectors: np.ndarray, *, freeze: bool = False) -> Worker:
    """A worker holding replica 1 of ``memories``, built from a one-part snapshot."""
    n = len(memories)
    views = ViewParams((), 4, 0.85, 2, 3600.0, 1.0, None)
    worker = Worker(chunk=400, freeze=freeze)
    [part] = pack_snapshot(1, DIM, views, None, memories, vectors, [], {}, [], n)
    [opening] = frames(bytearray(part))
    worker.handle(opening)
    while worker.step() != Opened(1):
        pass
    return worker


def test_a_replica_matrix_is_doubled_ahead_of_need_between_other_frames(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(search_worker, "GROW_IN_STEPS", 16)
    monkeypatch.setattr(search_worker, "GROW_AHEAD", 0.5)
    monkeypatch.setattr(search_worker, "GROW_ROWS", 16)
    n = 520
    vectors = np.random.default_rng(6).standard_normal((n + 2, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    memories = [Memory(key=f"k{i}", content=f"note {i}", created_at=1.0) for i in range(n + 2)]
    worker = opened(memories[:n], vectors[:n])
    replica = worker.replicas[1]
    matrix = replica.index.vectors
    assert matrix.capacity == 1024 and not worker.growing

    def nearest(i: int) -> str:
        found = worker.handle(
            Search(i, 1, "", vectors[i].tobytes(), 1, None, None, {"semantic": 1.0}, 2.0, None)
        )
        assert isinstance(found, Hits)
        return found.hits[0].key

    worker.handle(Add(1, [memories[n]], vectors[n].tobytes()))  # past half full: due
    assert 1 in worker.growing and matrix.capacity == 1024
    worker.step()  # 16 of the 64 dimensions copied; other frames come in between
    worker.handle(Remove(1, "k3"))  # zeroed in the 16 rows copied, not in the copy
    worker.handle(Remove(1, "k400"))
    worker.handle(Add(1, [memories[n + 1]], vectors[n + 1].tobytes()))  # after the copy began
    assert nearest(n + 1) == f"k{n + 1}" and nearest(3) != "k3"
    steps = 1
    while worker.building_now:
        worker.step()
        steps += 1
    assert matrix.capacity == 2048 and steps == 5  # 64 dimensions, 16 a step, then adopted
    for i in (0, 3, 399, 400, n - 1, n, n + 1):
        assert (nearest(i) == f"k{i}") is (i not in (3, 400)), i
    assert len(replica.index) == n + 2 - 2


def test_a_replica_index_is_compacted_in_steps_between_other_frames(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(search_worker, "COMPACT_ROWS", 16)
    monkeypatch.setattr(search_worker, "COMPACT_POSTINGS", 64)
    n = 200
    vectors = np.random.default_rng(7).standard_normal((n + 1, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    memories = [
        Memory(key=f"k{i}", content=f"note {i} word{i % 5}", tags=(f"t{i % 3}",), created_at=1.0)
        for i in range(n + 1)
    ]
    worker = opened(memories[:n], vectors[:n])
    index = worker.replicas[1].index
    index._compact_min = 8

    def nearest(i: int, top_k: int = 1) -> Hits | Failed:
        found = worker.handle(
            Search(i, 1, "", vectors[i].tobytes(), top_k, None, None, {"semantic": 1.0}, 2.0,
                   None)
        )  # fmt: skip
        assert isinstance(found, Hits | Failed)
        return found

    removed = list(range(0, 2 * 51, 2))
    for i in removed:  # more than a quarter of the slots dead: due
        worker.handle(Remove(1, f"k{i}"))
    assert 1 in worker.compacting and index.size == n
    worker.step()  # 16 of the 64 dimensions; searched in between, nothing queued yet
    assert nearest(1).hits[0].key == "k1"  # type: ignore[union-attr]
    worker.handle(Remove(1, "k1"))  # queued until the compaction is in
    worker.handle(Add(1, [memories[n]], vectors[n].tobytes()))
    worker.handle(SetSalience(1, "k3", 2.0))
    stale = nearest(3)
    assert isinstance(stale, Failed) and stale.replica == 0  # searched locally, kept
    assert index.size == n and "k1" in index  # the old index, unchanged so far
    steps = 1
    while worker.building_now:
        worker.step()
        steps += 1
    assert steps > 4 and 1 in worker.replicas and not worker.compacting
    live = [i for i in range(n + 1) if i not in removed and i != 1]
    assert len(index) == len(live) and index.vectors.dead == 1  # "k1", removed after it
    for i in live:
        assert nearest(i).hits[0].key == f"k{i}", i  # type: ignore[union-attr]
    assert index.column("salience")[index.slot_of("k3")] == 2.0
    lexical = worker.handle(
        Search(9, 1, "word2", vectors[0].tobytes(), 100, None, RecallFilter(tags=("t1",)),
               {"lexical": 1.0}, 2.0, None)
    )  # fmt: skip
    assert isinstance(lexical, Hits)
    expected = {f"k{i}" for i in live if i % 5 == 2 and i % 3 == 1}
    assert {h.key for h in lexical.hits} == expected


def test_a_built_or_compacted_replica_is_left_out_of_later_full_collections() -> None:
    n = 200
    vectors = np.random.default_rng(8).standard_normal((n, DIM)).astype(np.float32)
    memories = [Memory(key=f"k{i}", content=f"note {i}", created_at=1.0) for i in range(n)]
    try:
        gc.unfreeze()
        worker = opened(memories, vectors, freeze=True)
        assert gc.get_freeze_count() > 0
        gc.unfreeze()  # what the build made is scanned again; the compaction must freeze anew
        worker.replicas[1].index._compact_min = 8
        for i in range(0, 120, 2):
            worker.handle(Remove(1, f"k{i}"))
        assert 1 in worker.compacting
        while worker.compacting:
            assert gc.get_freeze_count() == 0  # not before the compaction is in
            worker.step()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_frames_survive_any_chunking() -> None:
    rng = random.Random(5)
    vec = np.arange(2 * DIM, dtype=np.float32)
    requests: list[Any] = [
        Add(3, [Memory(key="a", content="x", tags=("t",)), Memory(key="b", content="y")],
            vec.tobytes()),
        Search(1, 3, "cat", b"", 5, "ns", RecallFilter(meta={"n": 1}), {"semantic": 1.0}, 2.5,
               None),
        Associate(3, "q", vec[:DIM].tobytes(), ("a", "b"), 1.0),
        Remove(3, "a" * 70_000),
        Call(4, "context.bundle", b"\x00" * 300),
    ]  # fmt: skip
    responses: list[Any] = [Hits(1, [IndexHit("a", 0.5, {"semantic": 0.5})]), Opened(3),
                            Returned(4, b"\x01" * 300), Failed(2, "boom", 3)]  # fmt: skip
    for sent, split in ((requests, frames), (responses, read_responses)):
        data = b"".join(pack(f) for f in sent)
        for chunking in ("bytes", "random", "random", "whole"):
            buffer, i = bytearray(), 0
            got: list[Any] = []
            while i < len(data):
                n = {"bytes": 1, "whole": len(data)}.get(chunking) or rng.randint(1, 9000)
                buffer += data[i : i + n]
                i += n
                got.extend(split(buffer))
                done = sum(len(pack(f)) for f in got)
                assert bytes(buffer) == data[done:i]  # the partial frame stays, whole
            assert got == sent and not buffer
        # A frame cut anywhere, its length included, waits for the rest.
        last = len(pack(sent[-1]))
        for cut in (1, 3, 4, 5, last - 1):
            buffer = bytearray(data[: len(data) - last + cut])
            assert list(split(buffer)) == sent[:-1] and len(buffer) == cut
