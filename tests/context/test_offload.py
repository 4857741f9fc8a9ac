"""Bundles built in the search worker: the same bundle as in the node, and the node's own build
whenever the worker cannot answer."""

from __future__ import annotations

import os
import signal
import sys

import anyio
import anyio.to_thread
import msgspec
import pytest

from somabrain.context import ContextSettings, build_bundle
from somabrain.context.offload import FUNCTION, build, build_packed, pack_job
from somabrain.context.planner import PlannerSettings
from somabrain.memory import (
    MULTIVIEW_WEIGHTS,
    HashingEmbedder,
    Link,
    Memory,
    TenantMemory,
    multiview,
    tokenize,
)
from somabrain.memory.recall import ContextRecallResult, context_recall
from somabrain.memory.search_offload import SearchOffload
from somabrain.memory.working import WMItem, WorkingMemory
from tests.context import test_builder

EMB = HashingEmbedder()
TEXTS = [*test_builder.TEXTS, "Caroline asked Melanie about adoption and the support group"]
QUERY = "What is Caroline researching about adoption?"


def recall_of(tags: tuple[str, ...] = ()) -> ContextRecallResult:
    """A recall with everything a bundle shows: tags, times, sessions, working memory, and
    fields it must not carry (value, meta, a caller's vector)."""
    tm = TenantMemory.in_memory("acme", embedder=EMB, views=multiview())
    mems = [
        Memory(
            key=f"m{i}", content=t, tags=("t", f"n{i}"), occurred_at=1_700_000_000.0 + i,
            session_id=f"s{i % 2}", value={"i": i}, meta={"source": "test"},
            links=(Link(to_key=f"m{i - 1}"),) if i else (),
        )
        for i, t in enumerate(TEXTS)
    ]  # fmt: skip
    mems[3] = msgspec.structs.replace(mems[3], vector=EMB.embed([TEXTS[3]])[0].tolist())
    anyio.run(tm.remember_batch, mems)
    wm = WorkingMemory()
    for i, said in enumerate(["we talked about Caroline's adoption plans", "lunch was late"]):
        item = WMItem(f"w{i}", said, EMB.embed([said])[0], frozenset(tokenize(said)), 1.0 + i)
        wm.add("s1", [item])
    return context_recall(tm, wm, QUERY, 5, weights=MULTIVIEW_WEIGHTS, session_id="s1",
                          filters={"tags": list(tags)} if tags else None)  # fmt: skip


def local(recall: ContextRecallResult, settings: ContextSettings) -> object:
    return build_bundle(QUERY, recall, MULTIVIEW_WEIGHTS, settings, session_id="s1",
                        trace_id="t-1", planner_name="p0")  # fmt: skip


def remote(recall: ContextRecallResult, settings: ContextSettings) -> object:
    payload = pack_job(QUERY, recall, MULTIVIEW_WEIGHTS, settings, session_id="s1",
                       trace_id="t-1", planner_name="p0")  # fmt: skip
    return msgspec.msgpack.decode(build_packed(payload), type=type(local(recall, settings)))


def test_the_worker_builds_the_bundle_the_node_would() -> None:
    recall = recall_of()
    assert recall.working_memory and any(h.memory.value for h in recall.hits)
    settings = ContextSettings()
    expected = local(recall, settings)
    assert remote(recall, settings) == expected
    assert expected.working_memory and expected.plan is not None and expected.plan.selected


def test_changed_settings_reach_the_worker() -> None:
    """The settings are encoded once per settings object: a reload's new object is sent."""
    recall = recall_of()
    first = ContextSettings()
    assert remote(recall, first) == local(recall, first)
    tight = msgspec.structs.replace(
        first,
        temperature=1.0,
        planner=PlannerSettings(length_penalty=5.0),
        limits=msgspec.structs.replace(first.limits, hrr_dim=256),
    )
    built = remote(recall, tight)
    assert built == local(recall, tight) and built != local(recall, first)
    assert len(built.residual_vector) == 256  # type: ignore[attr-defined]


def test_an_empty_recall_is_built_too() -> None:
    recall = recall_of(tags=("nobody's",))
    assert not recall.hits and recall.working_memory
    settings = ContextSettings()
    assert remote(recall, settings) == local(recall, settings)


@pytest.mark.anyio
async def test_build_goes_to_a_running_worker_and_falls_back_without_one() -> None:
    recall = await anyio.to_thread.run_sync(recall_of)  # (it runs its own event loop)
    settings = ContextSettings()
    expected = local(recall, settings)

    async def built(offload: SearchOffload | None) -> object:
        return await build(offload, QUERY, recall, MULTIVIEW_WEIGHTS, settings,
                           session_id="s1", trace_id="t-1", planner_name="p0")  # fmt: skip

    assert await built(None) == expected
    offload = SearchOffload()
    assert await built(offload) == expected and offload.calls == 0  # not started: local
    async with anyio.create_task_group() as tg:
        await tg.start(offload.run)
        with anyio.fail_after(30):  # the worker imports first: slow on a busy machine
            while offload.calls == 0:  # (until then, bundles are built here)
                assert await built(offload) == expected
                await anyio.sleep(0.05)
        calls, failed_over = offload.calls, offload.failed_over
        for _ in range(3):
            assert await built(offload) == expected
        assert offload.calls == calls + 3 and offload.failed_over == failed_over
        # A worker that dies while building: the bundle is built here, none is lost.
        pid = offload.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        results = [await built(offload) for _ in range(3)]
        assert results == [expected] * 3
        await offload.close()
    assert offload.calls >= 3


@pytest.mark.anyio
async def test_a_call_the_worker_cannot_run_is_answered_unavailable() -> None:
    offload = SearchOffload()
    async with anyio.create_task_group() as tg:
        await tg.start(offload.run)
        errors: list[BaseException | None] = []
        done = anyio.Event()

        def answered(payload: object, error: BaseException | None) -> None:
            errors.append(error)
            done.set()

        offload.call(FUNCTION, b"not a job", answered)
        with anyio.fail_after(20):
            await done.wait()
        assert errors[0] is not None and "not a job" not in str(errors[0])
        assert offload.failed_over == 1 and offload.calls == 0 and offload.running
        await offload.close()


@pytest.mark.anyio
async def test_a_silent_worker_leaves_the_bundle_to_the_node() -> None:
    silent = SearchOffload([sys.executable, "-c", "import time; time.sleep(30)"])
    recall = await anyio.to_thread.run_sync(recall_of)
    settings = ContextSettings()
    async with anyio.create_task_group() as tg:
        await tg.start(silent.run)
        with anyio.fail_after(10):
            bundle = await build(silent, QUERY, recall, MULTIVIEW_WEIGHTS, settings,
                                 session_id="s1", trace_id="t-1", planner_name="p0")  # fmt: skip
        assert bundle == local(recall, settings)
        assert silent.failed_over == 1 and silent.stalled
        await silent.close()
