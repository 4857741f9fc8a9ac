"""The search worker as the memory actors use it: a real worker process, kept in step with
every change, killed mid-load, stopped with the node."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import numpy as np
import pytest

from somabrain.actors import ActorSystem
from somabrain.config import SomaConfig
from somabrain.memory import Memory, RecallFilter, RecallHit
from somabrain.memory.actor import STORES_RESOURCE
from somabrain.memory.messages import (
    ContextRecall,
    Forget,
    LinkMemories,
    Recall,
    Reinforce,
    Remember,
    ask_memory,
)
from somabrain.memory.recall import context_recall
from somabrain.memory.replica import OFFLOAD_RESOURCE
from somabrain.memory.search_offload import OffloadUnavailable, SearchOffload
from somabrain.memory.search_protocol import ViewParams
from somabrain.supervision import DynamicSupervisor
from tests.memory.test_actor import memory_tree

pytestmark = pytest.mark.anyio

#: Explicit weights, so that the local recall the tests compare with weighs alike.
WEIGHTS = {"semantic": 0.3, "lexical": 0.3, "graph": 0.2, "recency": 0.1, "salience": 0.1}
WORDS = ["river", "stone", "garden", "lamp", "winter", "coffee",
         "train", "violin", "harbor", "lemon", "candle", "forest"]  # fmt: skip


def memories(n: int, start: int = 0) -> tuple[Memory, ...]:
    return tuple(
        Memory(
            key=f"k{i}",
            content=f"{WORDS[i % 12]} {WORDS[(i * 5) % 12]} {WORDS[(i * 7) % 11]} note {i}",
            tags=("even",) if i % 2 == 0 else (),
        )
        for i in range(start, start + n)
    )


@asynccontextmanager
async def offloading_tree(
    data_dir: Path, min_memories: int = 1
) -> AsyncIterator[tuple[ActorSystem, DynamicSupervisor]]:
    config = msgspec.convert(
        {"memory": {"offload_min_memories": min_memories}}, SomaConfig, strict=False
    )
    async with memory_tree(data_dir, config=config) as (tree, supervisor):
        yield tree.system, supervisor


async def ask(sup: DynamicSupervisor, message: object, tenant: str = "acme") -> Any:
    return await ask_memory(sup.ref(tenant), message, timeout=10)  # type: ignore[arg-type]


def offload_of(system: ActorSystem) -> SearchOffload:
    offload = system.resources[OFFLOAD_RESOURCE]
    assert isinstance(offload, SearchOffload)
    return offload


async def recall_remotely(
    system: ActorSystem, sup: DynamicSupervisor, recall: Recall | ContextRecall
) -> Any:
    """Recall until the worker answers (the first recalls open the replica, and run locally
    until the worker has built it)."""
    with anyio.fail_after(20):
        while True:
            offload = system.resources.get(OFFLOAD_RESOURCE)
            before = offload.answered if offload is not None else 0
            hits = await ask(sup, recall)
            if offload is not None and offload.answered > before:
                return hits
            await anyio.sleep(0.01)


def local_recall(system: ActorSystem, recall: Recall, tenant: str = "acme") -> list[RecallHit]:
    memory = system.resources[STORES_RESOURCE][tenant].memory
    return memory.recall(  # type: ignore[no-any-return]
        recall.query, recall.top_k, recall.namespace, recall.filters, weights=WEIGHTS
    )


def same_hits(a: list[RecallHit], b: list[RecallHit]) -> bool:
    return [h.key for h in a] == [h.key for h in b] and all(
        abs(x.score - y.score) < 1e-5 for x, y in zip(a, b, strict=True)
    )


async def test_the_worker_answers_as_the_local_index_would(tmp_path: Path) -> None:
    async with offloading_tree(tmp_path) as (system, sup):
        await ask(sup, Remember(memories(300)))
        await ask(sup, LinkMemories(from_key="k3", to_key="k200", rel="next"))
        await ask(sup, Reinforce(keys=("k7", "k9"), amount=2.0))
        queries = [
            Recall(query=f"{a} {b}", weights=WEIGHTS)
            for a, b in zip(WORDS, WORDS[3:], strict=False)
        ]
        queries.append(
            Recall(
                query="lamp note", top_k=5, filters=RecallFilter(tags=("even",)), weights=WEIGHTS
            )
        )
        first = await recall_remotely(system, sup, queries[0])
        assert same_hits(first, local_recall(system, queries[0]))
        offload = offload_of(system)
        for recall in queries:
            before = offload.answered
            remote = await ask(sup, recall)
            assert offload.answered == before + 1  # answered by the worker, not locally
            assert same_hits(remote, local_recall(system, recall))
            assert all(h.memory.key == h.key for h in remote)


async def test_every_acknowledged_change_is_in_the_next_recall(tmp_path: Path) -> None:
    async with offloading_tree(tmp_path) as (system, sup):
        await ask(sup, Remember(memories(100)))
        await recall_remotely(system, sup, Recall(query="river"))
        offload = offload_of(system)
        before = offload.answered
        await ask(sup, Remember((Memory(key="new", content="zeppelin over the harbor"),)))
        [hit, *_] = await ask(sup, Recall(query="zeppelin"))
        assert hit.key == "new"
        await ask(sup, LinkMemories(from_key="new", to_key="k5", rel="seen"))
        hits = await ask(sup, Recall(query="zeppelin", top_k=3, weights=WEIGHTS))
        assert hits[0].key == "new" and any(h.key == "k5" for h in hits)  # the graph view
        assert same_hits(
            hits, local_recall(system, Recall(query="zeppelin", top_k=3, weights=WEIGHTS))
        )
        assert await ask(sup, Forget("new")) is True
        assert all(h.key != "new" for h in await ask(sup, Recall(query="zeppelin")))
        assert offload.answered == before + 3 and offload.failed_over == 0


async def test_compactions_on_both_sides_keep_every_recall_right(tmp_path: Path) -> None:
    """Forgetting half of a tenant compacts its index in the node (in a thread) and its
    replica in the worker (in steps), while recalls go on: no recall ever returns a memory
    whose forget was acknowledged before it was sent, and afterwards the worker answers as
    the local index does."""
    async with offloading_tree(tmp_path) as (system, sup):
        n = 2400  # compaction is due past 1024 dead slots and a quarter of them
        await ask(sup, Remember(memories(n)))
        await recall_remotely(system, sup, Recall(query="river"))
        offload = offload_of(system)
        memory = system.resources[STORES_RESOURCE]["acme"].memory
        content = {m.key: m.content for m in memories(n)}
        gone: list[str] = []
        checked = 0

        async def forget(keys: list[str]) -> None:
            for key in keys:
                assert await ask(sup, Forget(key)) is True
                gone.append(key)

        async def recall_meanwhile(done: anyio.Event) -> None:
            nonlocal checked
            while not done.is_set():
                before = set(gone)
                # The memory forgotten last, by its own words: a stale index ranks it first.
                query = content[gone[-1]] if gone else "river note"
                hits = await ask(sup, Recall(query=query, top_k=5))
                assert not before.intersection(h.key for h in hits)
                checked += 1

        doomed = [f"k{i}" for i in range(0, n, 2)]
        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(recall_meanwhile, done)
            async with anyio.create_task_group() as forgetters:
                for part in range(8):
                    forgetters.start_soon(forget, doomed[part::8])
            done.set()
        assert checked > 10 and memory.index.vectors.dead < 1024  # compacted in the node
        assert offload.health()["replicas"] == 1  # the worker's replica was never dropped
        for word in WORDS:
            recall = Recall(query=f"{word} note", top_k=10, weights=WEIGHTS)
            remote = await recall_remotely(system, sup, recall)
            assert same_hits(remote, local_recall(system, recall))
            assert all(int(h.key[1:]) % 2 == 1 for h in remote)


async def test_a_killed_worker_fails_over_to_local_search_and_comes_back(
    tmp_path: Path,
) -> None:
    async with offloading_tree(tmp_path) as (system, sup):
        await ask(sup, Remember(memories(500)))
        recall = Recall(query="violin lemon", weights=WEIGHTS)
        expected = await recall_remotely(system, sup, recall)
        offload = offload_of(system)
        pid = offload.pid
        assert pid is not None
        answers: list[Any] = []

        async def agent(n: int) -> None:
            for _ in range(n):
                answers.append(await ask(sup, recall))
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(agent, 40)
            await anyio.sleep(0.01)
            os.kill(pid, signal.SIGKILL)
        assert len(answers) == 320
        assert all(same_hits(a, expected) for a in answers)  # none lost, none different
        assert offload.failed_over >= 1  # some were in the worker when it died
        with anyio.fail_after(20):
            while offload.starts < 2 or not offload.running:  # noqa: ASYNC110 (no event to wait on)
                await anyio.sleep(0.05)
        assert offload.pid != pid
        assert same_hits(await recall_remotely(system, sup, recall), expected)
    assert offload.pid is None  # the node stopped its worker


async def test_small_tenants_stay_local(tmp_path: Path) -> None:
    async with offloading_tree(tmp_path, min_memories=50) as (system, sup):
        await ask(sup, Remember(memories(49)))
        for _ in range(3):
            assert await ask(sup, Recall(query="river"))
        assert OFFLOAD_RESOURCE not in system.resources  # no worker process at all
        await ask(sup, Remember(memories(1, start=49)))
        await recall_remotely(system, sup, Recall(query="river"))


async def test_a_snapshot_larger_than_the_pipe_arrives_whole() -> None:
    """20k memories with their vectors (~25 MB): most of the snapshot waits for the pipe to
    drain, and the searches queued behind it are answered from the whole replica."""
    n, dim = 20_000, 64
    vectors = unit_vectors(n, dim, 7)
    stored = [Memory(key=f"k{i}", content=f"memory {i}", created_at=1.0) for i in range(n)]
    views = ViewParams((), 8, 0.85, 2, 86400.0, 1.0, None)
    offload = SearchOffload()
    async with anyio.create_task_group() as tg:
        await tg.start(offload.run)
        feed = offload.open_replica(
            dim, views, memories=stored, vectors=vectors, links=[], salience={}
        )
        with anyio.fail_after(60):
            while not feed.ready:  # noqa: ASYNC110 (the reader task sets it)
                await anyio.sleep(0.01)
        answers: list[Any] = []
        done = anyio.Event()

        def answered(hits: Any, error: BaseException | None) -> None:
            answers.append((hits, error))
            if len(answers) == 3:
                done.set()

        for i in (0, n // 2, n - 1):  # each memory's own vector finds it first
            feed.search(answered, text="", vector=vectors[i].tobytes(), top_k=1,
                        namespace=None, filter=None, weights={"semantic": 1.0},
                        now=2.0, at=None)  # fmt: skip
        with anyio.fail_after(20):
            await done.wait()
        assert [(hits[0].key, error) for hits, error in answers] == [
            ("k0", None), (f"k{n // 2}", None), (f"k{n - 1}", None)
        ]  # fmt: skip
        await offload.close()


def unit_vectors(n: int, dim: int, seed: int) -> Any:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def search_worker(offload: SearchOffload, replica: int, vector: Any) -> Any:
    """The keys the worker finds nearest ``vector`` in ``replica``, or the error it answers
    (sent whether or not the replica is usable)."""
    answers: list[tuple[Any, BaseException | None]] = []
    done = anyio.Event()

    def answered(hits: Any, error: BaseException | None) -> None:
        answers.append((hits, error))
        done.set()

    offload.search(replica, answered, {
        "text": "", "vector": vector.tobytes(), "top_k": 1, "namespace": None, "filter": None,
        "weights": {"semantic": 1.0}, "now": 2.0, "at": None,
    })  # fmt: skip
    with anyio.fail_after(20):
        await done.wait()
    [(hits, error)] = answers
    return error if error is not None else [h.key for h in hits]


async def test_other_tenants_are_searched_in_the_worker_while_a_large_replica_is_built() -> None:
    """Building a 20k-memory replica takes the worker a while: the searches of a replica
    already built, sent after the large snapshot, are answered meanwhile (none fails over),
    and the changes sent while it is packed and built are in its first answers."""
    n, dim = 20_000, 64
    vectors = unit_vectors(n + 1, dim, 8)
    stored = [Memory(key=f"k{i}", content=f"memory {i}", created_at=1.0) for i in range(n + 1)]
    views = ViewParams((), 8, 0.85, 2, 86400.0, 1.0, None)
    offload = SearchOffload()
    async with anyio.create_task_group() as tg:
        await tg.start(offload.run)
        small = offload.open_replica(
            dim, views, memories=stored[:10], vectors=vectors[:10], links=[], salience={}
        )
        with anyio.fail_after(20):
            while not small.ready:  # noqa: ASYNC110 (the reader task sets it)
                await anyio.sleep(0.01)
        large = offload.open_replica(
            dim, views, memories=stored[:n], vectors=vectors[:n], links=[], salience={}
        )
        assert large.held is not None  # packed in a thread: its changes wait for it
        large.add([stored[n]], vectors[n : n + 1])
        large.remove("k7")
        during = 0
        with anyio.fail_after(60):
            while not large.ready:
                assert await search_worker(offload, small.replica, vectors[3]) == ["k3"]
                during += not large.ready  # answered before the worker announced it
        assert during >= 1 and offload.failed_over == 0
        for i, found in ((n, f"k{n}"), (n // 2, f"k{n // 2}"), (0, "k0")):
            assert await search_worker(offload, large.replica, vectors[i]) == [found]
        assert await search_worker(offload, large.replica, vectors[7]) != ["k7"]
        assert offload.failed_over == 0 and offload.answered == during + 5
        await offload.close()


async def test_a_large_snapshot_closed_or_unpackable_is_never_sent() -> None:
    n, dim = 20_000, 16
    vectors = unit_vectors(n, dim, 9)
    stored = [Memory(key=f"k{i}", content=f"memory {i}", created_at=1.0) for i in range(n)]
    views = ViewParams((), 8, 0.85, 2, 86400.0, 1.0, None)
    offload = SearchOffload()
    async with anyio.create_task_group() as tg:
        await tg.start(offload.run)
        large = offload.open_replica(
            dim, views, memories=stored, vectors=vectors, links=[], salience={}
        )
        assert large.held is not None
        large.remove("k1")
        large.close()
        garbled = [*stored[1:], Memory(key="x", content="x", meta={"x": object()})]
        unpackable = offload.open_replica(
            dim, views, memories=garbled, vectors=vectors, links=[], salience={}
        )
        with anyio.fail_after(20):
            while large.held is not None or unpackable.held is not None:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert unpackable.broken and offload.health()["replicas"] == 0
        # Whatever was sent for them went before this one; once this one is built, the
        # worker has seen it all, and it knows of neither.
        small = offload.open_replica(
            dim, views, memories=stored[:10], vectors=vectors[:10], links=[], salience={}
        )
        with anyio.fail_after(20):
            while not small.ready:  # noqa: ASYNC110 (the reader task sets it)
                await anyio.sleep(0.01)
        for feed in (large, unpackable):
            error = await search_worker(offload, feed.replica, vectors[3])
            assert isinstance(error, OffloadUnavailable) and "no replica" in str(error)
        assert await search_worker(offload, small.replica, vectors[3]) == ["k3"]
        assert offload.starts == 1  # the worker was never at fault
        await offload.close()


async def test_a_worker_that_cannot_start_is_retried_and_searches_stay_local(
    tmp_path: Path,
) -> None:
    broken = SearchOffload(
        [sys.executable, "-c", "raise SystemExit(3)"], restart_pause=0.001, max_restart_pause=0.01
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(broken.run)
        with anyio.fail_after(20):
            while broken.starts < 4:  # noqa: ASYNC110 (no event to wait on)
                await anyio.sleep(0.01)
        await broken.close()
    assert broken.answered == 0 and not broken.running
    # A node whose worker cannot start still answers every recall, from its own index.
    async with offloading_tree(tmp_path) as (system, sup):
        system.resources[OFFLOAD_RESOURCE] = broken_node_offload = SearchOffload(
            [sys.executable, "-c", "raise SystemExit(3)"], restart_pause=0.001
        )
        system.start_soon(broken_node_offload.run)
        await ask(sup, Remember(memories(50)))
        for _ in range(20):
            [hit, *_] = await ask(sup, Recall(query="violin note 7", weights=WEIGHTS))
            assert hit.key == "k7"
        assert broken_node_offload.answered == 0
        await broken_node_offload.close()


async def test_a_context_recall_searches_in_the_worker_too(tmp_path: Path) -> None:
    async with offloading_tree(tmp_path) as (system, sup):
        await ask(sup, Remember(memories(200)))
        message = ContextRecall(query="harbor lemon", top_k=8, weights=WEIGHTS, wm_top_k=3)
        remote = await recall_remotely(system, sup, message)
        store = system.resources[STORES_RESOURCE]["acme"]
        local = context_recall(store.memory, store.working, "harbor lemon", 8, weights=WEIGHTS)
        assert same_hits(remote.hits, local.hits)
        assert np.array_equal(remote.vectors, local.vectors)
        assert np.array_equal(remote.query_vector, local.query_vector)


async def test_a_context_recall_carries_its_form_model_to_the_worker(tmp_path: Path) -> None:
    async with offloading_tree(tmp_path) as (system, sup):
        longer = tuple(
            Memory(key=f"f{i}", content=" ".join(["harbor", "lemon", *WORDS[:i]]) + "?" * (i % 2))
            for i in range(12)
        )  # memories of every length, some of them questions
        await ask(sup, Remember(memories(200) + longer))
        weights = WEIGHTS | {"form": 0.5}
        model = {"words": 1.0, "question": -1.0}
        message = ContextRecall(
            query="harbor lemon", top_k=8, weights=weights, wm_top_k=0, form=model
        )
        remote = await recall_remotely(system, sup, message)
        store = system.resources[STORES_RESOURCE]["acme"]
        local = context_recall(store.memory, store.working, "harbor lemon", 8, weights=weights,
                               wm_top_k=0, form=model)  # fmt: skip
        assert same_hits(remote.hits, local.hits)
        assert [h.views["form"] for h in remote.hits] == pytest.approx(
            [h.views["form"] for h in local.hits], abs=1e-6
        )
        assert any(h.views["form"] != 0.5 for h in remote.hits)
        plain = context_recall(store.memory, store.working, "harbor lemon", 8, weights=weights,
                               wm_top_k=0)  # fmt: skip
        assert [h.key for h in plain.hits] != [h.key for h in remote.hits]  # the model counted


async def test_a_garbled_answer_restarts_the_worker_and_not_the_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    garbling = SearchOffload(
        [
            sys.executable,
            "-c",
            "import os, time; os.write(1, b'\\x05\\0\\0\\0junk!'); time.sleep(9)",
        ],
        restart_pause=0.001,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(garbling.run)
        with anyio.fail_after(20):
            while garbling.starts < 3:  # noqa: ASYNC110 (no event to wait on)
                await anyio.sleep(0.01)
        await garbling.close()
    assert "search worker connection failed" in caplog.text


async def test_a_search_the_busy_worker_leaves_unanswered_runs_in_the_node() -> None:
    silent = SearchOffload([sys.executable, "-c", "import time; time.sleep(30)"])
    async with anyio.create_task_group() as tg:
        await tg.start(silent.run)
        views = ViewParams((), 8, 0.85, 2, 86400.0, 1.0, None)
        feed = silent.open_replica(
            4, views, memories=[], vectors=np.zeros((0, 4), np.float32), links=[], salience={}
        )
        feed.ready = True  # as if built: the worker is busy with something else
        failed = anyio.Event()
        errors: list[BaseException | None] = []

        def answered(hits: Any, error: BaseException | None) -> None:
            errors.append(error)
            failed.set()

        feed.search(answered, text="x", vector=b"", top_k=1, namespace=None, filter=None,
                    weights={"semantic": 1.0}, now=1.0, at=None)  # fmt: skip
        with anyio.fail_after(10):
            await failed.wait()
        assert isinstance(errors[0], OffloadUnavailable) and silent.failed_over == 1
        assert silent.stalled and not feed.usable  # the next searches stay in the node
        await silent.close()
