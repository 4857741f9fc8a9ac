"""BatchingEmbedder: concurrent calls share model calls in a worker thread; errors and
cancellation never strand a waiter; the node's shared embedder."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import anyio
import numpy as np
import pytest

from somabrain.memory import HashingEmbedder
from somabrain.memory.embedding import BatchingEmbedder, shared_embedder

pytestmark = pytest.mark.anyio


class Recording:
    dim = 8

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.threads: set[int] = set()
        self.fail = fail

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        self.threads.add(threading.get_ident())
        if self.fail:
            raise RuntimeError("model broke")
        return np.array([[float(len(t))] * self.dim for t in texts], dtype=np.float32)


async def test_concurrent_calls_are_batched_off_the_loop() -> None:
    model = Recording()
    batcher = BatchingEmbedder(model, batch_size=16, window=0.01)
    results: dict[int, np.ndarray] = {}

    async def one(i: int) -> None:
        results[i] = await batcher.embed(["x" * i, "y" * i])

    async with anyio.create_task_group() as tg:
        for i in range(1, 11):
            tg.start_soon(one, i)
    assert sum(model.calls) == 20 and max(model.calls) <= 16 and len(model.calls) <= 3
    assert threading.get_ident() not in model.threads
    for i, vecs in results.items():
        assert vecs.shape == (2, 8) and vecs[0, 0] == i
    assert (await batcher.embed([])).shape == (0, 8)
    assert batcher.batches == len(model.calls) and batcher.texts == 20


async def test_errors_reach_every_caller() -> None:
    batcher = BatchingEmbedder(Recording(fail=True), window=0.01)
    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await batcher.embed(["a"])
        except RuntimeError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
    assert len(errors) == 3


async def test_a_cancelled_leader_hands_over() -> None:
    model = Recording()
    batcher = BatchingEmbedder(model, window=0.05)
    got: list[np.ndarray] = []
    leader_scope = anyio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            await batcher.embed(["leader"])

    async def follower() -> None:
        got.append(await batcher.embed(["follower"]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await anyio.sleep(0.01)  # the leader waits for company
        tg.start_soon(follower)
        await anyio.sleep(0.01)
        leader_scope.cancel()
    assert len(got) == 1 and got[0][0, 0] == len("follower")
    assert model.calls == [1]  # the cancelled leader's text was withdrawn


async def test_shared_embedder_is_created_once() -> None:
    resources: dict = {}
    first = await shared_embedder(resources, "builtin")
    assert isinstance(first, HashingEmbedder)
    assert await shared_embedder(resources, "builtin") is first
    with pytest.raises(ValueError):
        await shared_embedder({}, "nope")
    with pytest.raises(ValueError):
        BatchingEmbedder(Recording(), batch_size=0)
