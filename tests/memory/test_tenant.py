"""TenantMemory: the write/read API, dedupe, links, rebuild from the log and compaction."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import numpy as np
import pytest

from somabrain.memory import (
    HashingEmbedder,
    InvalidVectorError,
    Link,
    Memory,
    RecallFilter,
    TenantMemory,
    TenantMismatchError,
    UnknownMemoryError,
    content_key,
)

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def open_tm(path: Path, **kw) -> TenantMemory:
    kw.setdefault("embedder", HashingEmbedder(dim=64))
    return await TenantMemory.open(path, "acme", **kw)


def snapshot(tm: TenantMemory) -> tuple:
    mems = {k: tm.get(k) for k in sorted(tm.keys())}
    links = sorted((ln.from_key, ln.to_key, ln.rel, ln.weight) for ln in tm.links())
    return mems, links


async def test_remember_get_recall_forget(tmp_path: Path) -> None:
    clock = Clock()
    async with await open_tm(tmp_path, clock=clock) as tm:
        key, dedup = await tm.remember(Memory(content="Melanie painted a sunrise", tags=("art",)))
        assert key == content_key("default", "Melanie painted a sunrise") and not dedup
        m = tm.get(key)
        assert m is not None and m.tenant == "acme" and m.created_at == 1_000.0
        hits = tm.recall("who painted the sunrise?", top_k=3)
        assert hits[0].key == key and hits[0].memory.content == "Melanie painted a sunrise"
        assert set(hits[0].views) == {"semantic", "lexical"}
        assert tm.recall("sunrise", filters={"tags": ["art"]})[0].key == key
        assert tm.recall("sunrise", filters=RecallFilter(tags=("nope",))) == []
        assert await tm.forget(key) is True
        assert await tm.forget(key) is False
        assert tm.get(key) is None and tm.recall("sunrise") == [] and len(tm) == 0


async def test_dedupe_rules() -> None:
    tm = TenantMemory.in_memory("acme", embedder=HashingEmbedder(dim=64))
    k1, d1 = await tm.remember(Memory(content="same text", tags=("a",)))
    k2, d2 = await tm.remember(Memory(content="same text", tags=("b",)))
    assert (k1, d1, d2) == (k2, False, True)
    assert tm.get(k1).tags == ("a",)  # a deduplicated remember writes nothing
    # Another namespace is another memory.
    k3, d3 = await tm.remember(Memory(content="same text", namespace="other"))
    assert k3 != k1 and not d3
    # An explicit key is an upsert; it is deduplicated only if nothing changed.
    assert await tm.remember(Memory(key="x", content="same text")) == ("x", False)
    assert await tm.remember(Memory(key="x", content="same text")) == ("x", True)
    assert await tm.remember(Memory(key="x", content="same text", importance=0.9)) == ("x", False)
    assert tm.get("x").importance == 0.9
    # A keyless remember of content held under an explicit key finds a holder, not a twin.
    await tm.forget(k1)
    assert await tm.remember(Memory(content="same text")) == ("x", True)
    # A malformed vector is refused even where deduplication would have ignored it.
    with pytest.raises(InvalidVectorError):
        await tm.remember(Memory(content="same text", vector=(1.0, 2.0)))


async def test_upsert_keeps_created_at_and_replaces_content() -> None:
    clock = Clock()
    tm = TenantMemory.in_memory("acme", clock=clock, embedder=HashingEmbedder(dim=64))
    await tm.remember(Memory(key="k", content="old apples"))
    clock.now += 50
    await tm.remember(Memory(key="k", content="new pears"))
    assert tm.get("k").created_at == 1_000.0 and tm.get("k").content == "new pears"
    assert all(h.views["lexical"] == 0.0 for h in tm.recall("apples"))
    assert tm.recall("pears")[0].key == "k"
    assert len(tm) == 1


async def test_generated_key_collision_with_explicit_key() -> None:
    tm = TenantMemory.in_memory("acme", embedder=HashingEmbedder(dim=64))
    squatted = content_key("default", "hello")
    await tm.remember(Memory(key=squatted, content="something else"))
    key, dedup = await tm.remember(Memory(content="hello"))
    assert key != squatted and not dedup and tm.get(key).content == "hello"


async def test_batch_embeds_once_and_handles_duplicates() -> None:
    calls = []

    class Counting:
        """Any object with ``dim`` and ``embed`` is an embedder (not only HashingEmbedder)."""

        dim = 64
        inner = HashingEmbedder(dim=64)

        def embed(self, texts):
            calls.append(len(texts))
            return self.inner.embed(texts)

    tm = TenantMemory.in_memory("acme", embedder=Counting())
    results = await tm.remember_batch(
        [
            Memory(content="one"),
            Memory(content="two"),
            Memory(content="one"),  # deduplicated within the batch
            Memory(key="k", content="first"),
            Memory(key="k", content="second"),  # a later upsert in the batch wins
        ]
    )
    assert [r.deduplicated for r in results] == [False, False, True, False, False]
    assert results[0].key == results[2].key
    assert calls == [3] and len(tm) == 3 and tm.get("k").content == "second"
    assert await tm.remember_batch([]) == []


async def test_validation_writes_nothing(tmp_path: Path) -> None:
    async with await open_tm(tmp_path) as tm:
        with pytest.raises(TenantMismatchError):
            await tm.remember(Memory(content="x", tenant="other"))
        with pytest.raises(ValueError):
            await tm.remember(Memory(content="   "))
        with pytest.raises(InvalidVectorError):
            await tm.remember(Memory(content="x", vector=[1.0, 2.0]))
        with pytest.raises(UnknownMemoryError):
            await tm.remember_batch(
                [Memory(content="ok"), Memory(content="y", links=(Link(to_key="missing"),))]
            )
        with pytest.raises(ValueError):
            tm.recall("x", top_k=-1)
        with pytest.raises(msgspec.ValidationError):
            tm.recall("x", filters={"tags": 5})
        assert len(tm) == 0 and tm.log is not None and tm.log.record_count == 0


async def test_links(tmp_path: Path) -> None:
    async with await open_tm(tmp_path) as tm:
        await tm.remember(Memory(key="a", content="alpha"))
        await tm.remember_batch(
            [
                Memory(key="b", content="beta", links=(Link(to_key="a", rel="cites"),)),
                Memory(key="c", content="gamma", links=(Link(to_key="d"),)),  # d: same batch
                Memory(key="d", content="delta"),
            ]
        )
        link = await tm.link("a", "b", "next", 0.25)
        assert link == Link(from_key="a", to_key="b", rel="next", weight=0.25)
        await tm.link("a", "b", "next", 0.75)  # re-weight, not a second edge
        assert tm.link_count == 3
        assert tm.get("a").links == (Link(from_key="a", to_key="b", rel="next", weight=0.75),)
        assert [ln.from_key for ln in tm.links_to("a")] == ["b"]
        with pytest.raises(UnknownMemoryError) as info:
            await tm.link("a", "zzz")
        assert info.value.key == "zzz" and "zzz" in str(info.value)
        assert await tm.unlink("a", "b", "next") and not await tm.unlink("a", "b", "next")
        await tm.forget("a")  # drops b -> a
        assert tm.link_count == 1 and tm.links_from("b") == []
        before = snapshot(tm)
    async with await open_tm(tmp_path) as tm:
        assert snapshot(tm) == before


async def test_rebuild_from_log_equals_live_state(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    async with await open_tm(tmp_path) as tm:
        for i in range(60):
            op = rng.integers(0, 4)
            key = f"k{rng.integers(0, 15)}"
            if op < 2:
                await tm.remember(Memory(key=key, content=f"text {i} about topic {i % 5}"))
            elif op == 2:
                await tm.forget(key)
            elif key in tm and "k0" in tm:
                await tm.link(key, "k0", "rel", float(i))
        before = snapshot(tm)
        recall_before = tm.recall("topic 3 text")
    async with await open_tm(tmp_path) as tm:
        assert snapshot(tm) == before
        recall_after = tm.recall("topic 3 text")
        # Same vectors, but a rebuilt index has no dead slots: BLAS may sum in another order.
        assert [h.key for h in recall_after] == [h.key for h in recall_before]
        assert [h.score for h in recall_after] == pytest.approx([h.score for h in recall_before])


async def test_user_vectors_survive_restart_and_compaction(tmp_path: Path) -> None:
    vec = np.zeros(64, dtype=np.float32)
    vec[3] = 2.0
    async with await open_tm(tmp_path, compact_min_records=4, compact_ratio=0.5) as tm:
        await tm.remember(Memory(key="v", content="opaque", vector=vec.tolist()))
        assert tm.recall("", vector=vec)[0].key == "v"
        for i in range(6):
            await tm.remember(Memory(key="churn", content=f"version {i}"))
        assert tm.statistics().compactions >= 1
    async with await open_tm(tmp_path) as tm:
        hit = tm.recall("", vector=vec)[0]
        assert hit.key == "v" and hit.views["semantic"] == pytest.approx(1.0)
        assert tm.get("v").vector is None  # the vector lives in the index, not the record


async def test_compaction_shrinks_the_log_and_keeps_state(tmp_path: Path) -> None:
    async with await open_tm(tmp_path, compact_min_records=50, compact_ratio=0.5) as tm:
        await tm.remember(Memory(key="keep", content="kept memory"))
        await tm.remember(Memory(key="other", content="other memory"))
        await tm.link("keep", "other")
        for i in range(200):
            await tm.remember(Memory(key=f"tmp{i % 3}", content=f"churn {i}"))
            if i % 2:
                await tm.forget(f"tmp{i % 3}")
        stats = tm.statistics()
        assert stats.compactions >= 1
        assert stats.log_records < 100
        before = snapshot(tm)
        assert tm.log is not None
        size = tm.log.path.stat().st_size
        assert await tm.compact() is True
        assert tm.log.path.stat().st_size <= size
        assert tm.log.record_count == len(tm) + tm.link_count
    async with await open_tm(tmp_path) as tm:
        assert snapshot(tm) == before


async def test_expired_memories_are_hidden_and_dropped(tmp_path: Path) -> None:
    clock = Clock()
    async with await open_tm(tmp_path, clock=clock) as tm:
        await tm.remember(Memory(key="e", content="ephemeral note", expires_at=1_010.0))
        await tm.remember(Memory(key="p", content="permanent note"))
        assert {h.key for h in tm.recall("note")} == {"e", "p"}
        clock.now = 1_010.0
        assert tm.get("e") is None and {h.key for h in tm.recall("note")} == {"p"}
        # Keyless remember of expired content creates it afresh rather than deduplicating.
        assert (await tm.remember(Memory(content="ephemeral note"))).deduplicated is False
    async with await open_tm(tmp_path, clock=clock) as tm:
        assert "e" not in tm and len(tm) == 2


async def test_concurrent_upserts_apply_in_log_order(tmp_path: Path) -> None:
    async with await open_tm(tmp_path) as tm:
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(tm.remember, Memory(key="k", content=f"version {i}"))
        live = tm.get("k")
    async with await open_tm(tmp_path) as tm:
        assert tm.get("k") == live


async def test_statistics_and_counts(tmp_path: Path) -> None:
    async with await open_tm(tmp_path) as tm:
        await tm.remember(Memory(key="a", content="alpha", namespace="n1"))
        await tm.remember(Memory(key="b", content="beta", namespace="n2"))
        await tm.remember(Memory(key="a", content="alpha two", namespace="n1"))
        stats = tm.statistics()
        assert (stats.tenant, stats.memories, stats.links, stats.namespaces) == ("acme", 2, 0, 2)
        assert stats.log_records == 3 and stats.log_dead_records == 1
        assert stats.log is not None and stats.log.policy == "group"
        assert tm.memory_count == len(tm) == 2 and "a" in tm
    assert TenantMemory.in_memory("x").statistics().log is None


async def test_open_failure_closes_the_log(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        await TenantMemory.open(tmp_path, "acme", compact_ratio=2.0)
    async with await open_tm(tmp_path):  # the lock was released
        pass


async def test_a_large_vector_matrix_grows_in_a_worker_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ``GROW_IN_THREAD`` slots the copy is made off the event loop, and what the
    loop changed meanwhile is in the adopted matrix."""
    import threading

    from somabrain.memory import tenant as tenant_module
    from somabrain.memory.vector_index import VectorIndex

    monkeypatch.setattr(tenant_module, "GROW_IN_THREAD", 16)
    threads: list[int] = []
    grown = VectorIndex.grown

    def recording(self: VectorIndex, extra: int):  # type: ignore[no-untyped-def]
        threads.append(threading.get_ident())
        return grown(self, extra)

    monkeypatch.setattr(VectorIndex, "grown", recording)
    tm = TenantMemory.in_memory("acme")
    capacity = tm.index.vectors.capacity
    contents = [f"note {i} about the river" for i in range(capacity + 40)]
    async with anyio.create_task_group() as tg:  # concurrent batches: one copy at a time
        for i in range(0, len(contents), 20):
            tg.start_soon(tm.remember_batch, [Memory(content=c) for c in contents[i : i + 20]])
    assert tm.index.vectors.capacity >= 2 * capacity
    assert threads and threading.get_ident() not in threads
    assert len(tm) == len(contents)
    for i in (0, capacity - 1, capacity, len(contents) - 1):
        assert tm.recall(contents[i], 1)[0].memory.content == contents[i]


async def test_the_index_is_compacted_in_a_worker_thread_while_recalls_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The compaction is built off the event loop: recalls are answered meanwhile, and a
    change made meanwhile waits for it, then lands in the compacted index."""
    import threading

    from somabrain.memory.hybrid import HybridIndex

    tm = TenantMemory.in_memory("acme")
    tm.index._compact_min = 8
    building, release = threading.Event(), threading.Event()
    threads: list[int] = []
    compacted = HybridIndex.compacted

    def held(self: HybridIndex):  # type: ignore[no-untyped-def]
        threads.append(threading.get_ident())
        building.set()
        release.wait(10)  # bounded: the test sets it
        return compacted(self)

    monkeypatch.setattr(HybridIndex, "compacted", held)
    contents = [f"note {i} about the river" for i in range(40)]
    keys = [r.key for r in await tm.remember_batch([Memory(content=c) for c in contents])]

    async def forget_half() -> None:
        for key in keys[::2]:
            await tm.forget(key)

    async with anyio.create_task_group() as tg:
        tg.start_soon(forget_half)
        for _ in range(500):  # bounded
            if building.is_set():
                break
            await anyio.sleep(0.01)
        assert building.is_set()
        dead = tm.index.vectors.dead
        assert dead >= 8 and tm.recall(contents[1], 1)[0].key == keys[1]
        late = Memory(key="late", content="written during the compaction")
        tg.start_soon(tm.remember, late)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert "late" not in tm
        assert tm.index.vectors.dead == dead  # nothing installed, nothing changed meanwhile
        release.set()
    assert threads and threading.get_ident() not in threads
    assert tm.index.vectors.dead < 8 and len(tm) == 21
    for content in [*contents[1::2], "written during the compaction"]:
        assert tm.recall(content, 1)[0].memory.content == content


async def test_a_failed_index_compaction_fails_no_write_and_is_tried_again_later(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from somabrain.memory.hybrid import HybridIndex

    tm = TenantMemory.in_memory("acme")
    tm.index._compact_min = 8
    compacted, tries = HybridIndex.compacted, []

    def failing(self: HybridIndex):  # type: ignore[no-untyped-def]
        tries.append(self.vectors.dead)
        raise MemoryError("no room for the compacted copy")

    monkeypatch.setattr(HybridIndex, "compacted", failing)
    contents = [f"note {i} about the river" for i in range(80)]
    keys = [r.key for r in await tm.remember_batch([Memory(content=c) for c in contents])]
    for key in keys[:30]:
        assert await tm.forget(key)  # acknowledged: the compaction's failure is not the write's
    assert tries == [21] and tm.index.vectors.dead == 30  # once, not at every forget since
    assert "index compaction failed" in caplog.text
    assert tm.recall(contents[40], 1)[0].key == keys[40] and len(tm) == 50
    monkeypatch.setattr(HybridIndex, "compacted", compacted)
    for key in keys[30:42]:  # dead slots twice those of the failed try: tried again
        await tm.forget(key)
    assert tm.index.vectors.dead < 8 and len(tm) == 38
    assert tm.recall(contents[50], 1)[0].key == keys[50]
