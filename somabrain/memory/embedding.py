"""Embedding off the event loop, in batches; the node's one shared embedder.

``BatchingEmbedder`` wraps an ``Embedder`` whose ``embed`` is CPU-heavy (a real model): callers
``await embed(texts)``, concurrent calls are gathered into one model call of up to
``batch_size`` texts, and the call runs in a worker thread, so the event loop keeps serving
while the model computes. No background task: the first caller that finds no batch running
leads (waits ``window`` seconds for company, then runs batches until the queue is empty), the
way the memory log's group commit works. If the leader is cancelled while others wait, the next
waiter is promoted to lead, so no request is stranded.

The built-in hashing embedder is not wrapped: it costs ~20 us per short text, less than the
hand-off to a thread, so it runs inline.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt

from .embedder import Embedder, HashingEmbedder

__all__ = ["EMBEDDER_RESOURCE", "BatchingEmbedder", "shared_embedder"]

EMBEDDER_RESOURCE = "memory.embedder"
logger = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]


class _Request:
    __slots__ = ("error", "event", "lead", "result", "texts")

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.event = anyio.Event()
        self.result: F32 | None = None
        self.error: BaseException | None = None
        self.lead = False  # promoted: the previous leader was cancelled


class BatchingEmbedder:
    """Gathers concurrent ``embed`` calls into model calls run in a worker thread."""

    def __init__(self, embedder: Embedder, *, batch_size: int = 64, window: float = 0.002):
        if batch_size < 1 or window < 0:
            raise ValueError("batch_size must be >= 1 and window >= 0")
        self.embedder = embedder
        self.batch_size = batch_size
        self.window = window
        self._queue: deque[_Request] = deque()
        self._leading = False
        self.batches = 0
        self.texts = 0

    @property
    def dim(self) -> int:
        return self.embedder.dim

    async def embed(self, texts: Sequence[str]) -> F32:
        if not texts:
            await anyio.lowlevel.checkpoint()
            return np.zeros((0, self.dim), dtype=np.float32)
        request = _Request(list(texts))
        self._queue.append(request)
        if not self._leading:
            await self._lead(request)
        while request.result is None and request.error is None:
            try:
                await request.event.wait()
            except BaseException:
                if request in self._queue:
                    self._queue.remove(request)
                raise
            if request.lead:
                request.lead = False
                request.event = anyio.Event()
                await self._lead(request)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    async def _lead(self, own: _Request) -> None:
        self._leading = True
        try:
            if self.window:
                await anyio.sleep(self.window)
            while self._queue:
                batch: list[_Request] = []
                count = 0
                while self._queue and (
                    not batch or count + len(self._queue[0].texts) <= self.batch_size
                ):
                    request = self._queue.popleft()
                    batch.append(request)
                    count += len(request.texts)
                await self._run(batch)
        finally:
            self._leading = False
            if own in self._queue:  # cancelled before our own batch ran: withdraw it
                self._queue.remove(own)
            if self._queue:  # cancelled with others waiting: hand the lead over
                nxt = self._queue[0]
                nxt.lead = True
                nxt.event.set()

    async def _run(self, batch: list[_Request]) -> None:
        texts = [t for r in batch for t in r.texts]
        # The thread cannot be interrupted; shield so that its result reaches every waiter.
        with anyio.CancelScope(shield=True):
            try:
                vectors: Any = await anyio.to_thread.run_sync(self.embedder.embed, texts)
            except Exception as exc:
                for r in batch:
                    r.error = exc
                    r.event.set()
                return
        self.batches += 1
        self.texts += len(texts)
        start = 0
        for r in batch:
            r.result = np.asarray(vectors[start : start + len(r.texts)], dtype=np.float32)
            start += len(r.texts)
            r.event.set()
        await anyio.lowlevel.checkpoint()


async def shared_embedder(resources: dict[str, Any], name: str, settings: Any = None) -> Any:
    """The node's embedder (created once, in a worker thread: loading a model takes seconds):
    a ``HashingEmbedder`` for ``"builtin"``, a ``BatchingEmbedder`` over MiniLM for
    ``"minilm"``. ``settings``: ``ContextSettings.embedding`` (batch size, window, threads,
    MiniLM's runtime and where its ONNX export is kept)."""
    found = resources.get(EMBEDDER_RESOURCE)
    if found is not None and found[0] == name:
        return found[1]
    lock: anyio.Lock = resources.setdefault(EMBEDDER_RESOURCE + ".lock", anyio.Lock())
    async with lock:
        found = resources.get(EMBEDDER_RESOURCE)
        if found is not None and found[0] == name:
            return found[1]
        batch_size = getattr(settings, "batch_size", 64)
        window = getattr(settings, "batch_window", 0.002)
        threads = getattr(settings, "threads", 0)
        embedder: Any
        if name == "builtin":
            embedder = HashingEmbedder()
        elif name == "minilm":
            from .minilm import load_minilm

            runtime = getattr(settings, "runtime", "auto")
            cache_dir = getattr(settings, "onnx_dir", "") or None
            # The first start may export the model to ONNX (~10 s, in a child process): the
            # thread keeps the event loop serving meanwhile.
            model = await anyio.to_thread.run_sync(
                lambda: load_minilm(
                    runtime, batch_size=batch_size, threads=threads, cache_dir=cache_dir
                )
            )
            logger.info("embedder: %r", model)
            embedder = BatchingEmbedder(model, batch_size=batch_size, window=window)
        else:
            raise ValueError(f"unknown embedder {name!r}")
        resources[EMBEDDER_RESOURCE] = (name, embedder)
        return embedder
