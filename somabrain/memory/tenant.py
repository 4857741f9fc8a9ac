"""``TenantMemory``: one tenant's memories, index and link graph, made durable by its log.

No actors and no HTTP: the memory actor owns one ``TenantMemory`` and calls it.

Write path: validate and prepare (key, dedupe, embedding), append the record(s) to the log
(``await``: durable per the fsync policy), then apply to the in-memory state, in log order (see
``_sequencer``). So the state only ever holds acknowledged writes, and a restart (``open``)
replays exactly that state from the log. Reads (``recall``, ``get``) are synchronous: they are
pure CPU work on the in-memory state and never wait.

Keys: a memory remembered without a key gets ``content_key(namespace, content)`` (``"m-"`` + a
128-bit BLAKE2b, hex). Content-derived keys make a retried remember (after a timeout, say) land
on the same key instead of creating a twin. Should that key already hold other content (only
possible when a caller chose it explicitly), a random ``"m-" + uuid4`` key is used instead.

Dedupe: a keyless remember whose namespace and content equal a stored memory's returns that
memory's key with ``deduplicated=True`` and writes nothing (other fields of the new memory are
ignored). A remember with an explicit key is an upsert of that key; it is ``deduplicated`` only
when the stored memory is already equal (nothing to write). An explicit key is never redirected
to another key holding the same content: the caller will ``get`` it by the key it chose.

Compaction: the log holds every record ever appended; when dead records (superseded, forgotten,
expired) exceed ``compact_ratio`` of at least ``compact_min_records``, the live state is written
as a fresh log (``MemoryLog.rewrite``). It runs at the end of the mutation that crossed the
threshold, and only when no other mutation is in flight, so the snapshot is exactly the log.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import numpy as np
import numpy.typing as npt

from ._sequencer import Sequencer
from ._state import MemoryState, Prepared, content_key, expired, links_of
from ._steps import dropping, finish
from .embedder import Embedder, HashingEmbedder
from .errors import TenantMismatchError, UnknownMemoryError
from .hybrid import HybridIndex, IndexHit, ScoreView
from .log import FsyncPolicy, LogStatistics, MemoryLog, RecordLog
from .text import tokenize
from .types import (
    ForgetRecord,
    Link,
    LinkRecord,
    LogRecord,
    Memory,
    RecallFilter,
    RecallHit,
    ReinforceRecord,
    Remembered,
    RememberRecord,
    UnlinkRecord,
)

__all__ = ["MAX_TOP_K", "TenantMemory", "TenantMemoryStatistics", "content_key"]

logger = logging.getLogger("somabrain.memory")

MAX_TOP_K = 1000
#: Vector matrices of at least this many slots grow in a worker thread (``_room_for``);
#: below, the copy costs less than the hop to the thread.
GROW_IN_THREAD = 16384
#: Items of what a compaction replaced let go of per bytecode (``_steps.dropping``).
DROP_PER_SLICE = 4096


class TenantMemoryStatistics(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    memories: int
    links: int
    namespaces: int
    index_slots: int
    index_dead_slots: int
    log_records: int
    log_dead_records: int
    compactions: int
    log: LogStatistics | None


class TenantMemory:
    """The memory state of one tenant (see the module docstring)."""

    def __init__(
        self,
        tenant: str,
        *,
        embedder: Embedder | None = None,
        log: RecordLog | None = None,
        clock: Callable[[], float] = time.time,
        views: Sequence[ScoreView] = (),
        compact_ratio: float = 0.5,
        compact_min_records: int = 4096,
        embed_async: Callable[[Sequence[str]], Awaitable[npt.NDArray[Any]]] | None = None,
    ) -> None:
        """Prefer ``open`` (durable) or ``in_memory``; this does not replay ``log``.

        ``embed_async``: embeds for writes off the event loop (``embedding.BatchingEmbedder``);
        without it ``embedder`` runs inline (right for the fast built-in one)."""
        if not tenant:
            raise ValueError("tenant must not be empty")
        if not 0.0 < compact_ratio < 1.0:
            raise ValueError(f"compact_ratio must be in (0, 1), got {compact_ratio}")
        self.tenant = tenant
        self.embedder: Embedder = embedder if embedder is not None else HashingEmbedder()
        self.embed_async = embed_async
        self.index = HybridIndex(self.embedder.dim, views=views)
        self.index.auto_compact = False  # ``_compact_index``, off the event loop
        self.log = log
        self._clock = clock
        self._compact_ratio = compact_ratio
        self._compact_min = compact_min_records
        self._state = MemoryState()
        self.index.graph = self._state.graph
        self._seq = Sequencer()
        self._compactions = 0
        self._growing: anyio.Lock | None = None  # made on first use, in the event loop
        self._incoming = 0  # memories of the batches between ``_room_for`` and the index
        self._compacting_index = False
        self._compact_index_from = 0  # dead slots before the next try, after a failed one

    # --- opening and closing ---------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        data_dir: str | os.PathLike[str],
        tenant: str,
        *,
        fsync: FsyncPolicy = "group",
        group_window: float = 0.0,
        **kwargs: Any,
    ) -> TenantMemory:
        """Open the tenant's log in ``data_dir`` and rebuild the state from it.

        ``kwargs`` go to the constructor (embedder, clock, views, compaction thresholds).
        Replay and indexing run in a worker thread (~10 s per 100k memories on 2 cores).
        """
        log = await MemoryLog.open_tenant(data_dir, tenant, fsync=fsync, group_window=group_window)
        return await cls.from_log(log, tenant, **kwargs)

    @classmethod
    async def from_log(cls, log: RecordLog, tenant: str, **kwargs: Any) -> TenantMemory:
        """Rebuild the state from ``log`` (just opened: ``MemoryLog`` or a PostgreSQL log),
        which the memory then owns (closed with it, or here if the rebuild fails)."""
        try:
            tm = cls(tenant, log=log, **kwargs)
            await anyio.to_thread.run_sync(tm._rebuild)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await log.aclose()
            raise
        return tm

    @classmethod
    def in_memory(cls, tenant: str, **kwargs: Any) -> TenantMemory:
        """A store without a log: nothing survives the process (tests, benchmarks, caches)."""
        return cls(tenant, **kwargs)

    async def aclose(self) -> None:
        if self.log is not None:
            await self.log.aclose()

    async def __aenter__(self) -> TenantMemory:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _rebuild(self) -> None:
        """Replay the log into the state, then index every live memory in one batch."""
        assert self.log is not None
        vectors: dict[str, npt.NDArray[np.float32]] = {}
        for record in self.log.replay():
            self._state.replay(record, self.embedder.dim, vectors)
        now = self._clock()
        for key in [k for k, m in self._state.memories.items() if expired(m, now)]:
            self._state.drop(key)
        memories = list(self._state.memories.values())
        tokens = [tokenize(m.content) for m in memories]
        given = [vectors.get(m.key) for m in memories]
        self.index.add_batch(memories, self._vectors_for(memories, given, tokens), tokens)
        for key, strength in self._state.salience.items():
            self.index.set_salience(key, strength)

    def _embed(self, texts: Sequence[str], tokens: Sequence[Sequence[str]]) -> npt.NDArray[Any]:
        if isinstance(self.embedder, HashingEmbedder):  # reuse the lexical view's tokens
            return self.embedder.embed_tokens(tokens)
        return self.embedder.embed(texts)

    def _vectors_for(
        self,
        memories: Sequence[Memory],
        given: Sequence[npt.NDArray[np.float32] | None],
        tokens: Sequence[Sequence[str]],
    ) -> npt.NDArray[np.float32]:
        """Caller vectors where given; the rest embedded in one batch."""
        out = np.zeros((len(memories), self.embedder.dim), dtype=np.float32)
        todo = [i for i, v in enumerate(given) if v is None]
        if todo:
            out[todo] = self._embed([memories[i].content for i in todo], [tokens[i] for i in todo])
        for i, v in enumerate(given):
            if v is not None:
                out[i] = v
        return out

    # --- reads -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._state.memories)

    def __contains__(self, key: object) -> bool:
        return key in self._state.memories

    @property
    def memory_count(self) -> int:
        return len(self._state.memories)

    @property
    def link_count(self) -> int:
        return len(self._state.graph)

    def keys(self) -> Iterator[str]:
        """Every key held, in insertion order (expired ones until they are compacted away)."""
        return iter(list(self._state.memories))

    def links(self) -> Iterator[Link]:
        """Every edge held."""
        return iter(list(self._state.graph))

    def get(self, key: str) -> Memory | None:
        """The memory ``key`` with its current outgoing links; None if unknown or expired."""
        m = self._state.memories.get(key)
        if m is None or expired(m, self._clock()):
            return None
        links = self._state.graph.outgoing(key)
        return msgspec.structs.replace(m, links=tuple(links)) if links else m

    def links_from(self, key: str) -> list[Link]:
        return self._state.graph.outgoing(key)

    def links_to(self, key: str) -> list[Link]:
        return self._state.graph.incoming(key)

    def recall(
        self,
        query: str,
        top_k: int = 10,
        namespace: str | None = None,
        filters: RecallFilter | Mapping[str, Any] | None = None,
        *,
        weights: Mapping[str, float] | None = None,
        vector: npt.ArrayLike | None = None,
        at: float | None = None,
        form: Mapping[str, float] | None = None,
    ) -> list[RecallHit]:
        """The ``top_k`` best memories for ``query`` (all namespaces when ``namespace`` is None).

        ``weights`` maps view names to weights (default ``hybrid.DEFAULT_WEIGHTS``); ``vector``
        replaces the query embedding; ``at`` is the time the query is about (the recency
        view's reference, default now); ``form`` the tenant's learned form model (the form
        view, ``form.py``). Raises ValueError on a bad ``top_k`` or weights, and
        ``msgspec.ValidationError`` on malformed ``filters``.
        """
        if not 0 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be between 0 and {MAX_TOP_K}, got {top_k}")
        flt = (
            filters
            if filters is None or isinstance(filters, RecallFilter)
            else RecallFilter.from_mapping(filters)
        )
        tokens = tokenize(query)
        qvec = self._embed([query], [tokens])[0] if vector is None else vector
        hits = self.index.search(
            qvec,
            tokens,
            top_k,
            text=query,
            namespace=namespace,
            filter=flt,
            weights=weights,
            now=self._clock(),
            at=at,
            unit=vector is None and isinstance(self.embedder, HashingEmbedder),
            form=form,
        )
        return self.recall_hits(hits)

    def now(self) -> float:
        """The tenant's clock (expiry is decided against it)."""
        return self._clock()

    def recall_hits(self, hits: Iterable[IndexHit]) -> list[RecallHit]:
        """The ``RecallHit`` of each index hit whose memory is still held (a replica's hits
        may name a memory forgotten since: it is left out)."""
        memories = self._state.memories
        return [
            RecallHit(key=h.key, score=h.score, views=h.views, memory=m)
            for h in hits
            if (m := memories.get(h.key)) is not None
        ]

    def replica_snapshot(
        self,
    ) -> tuple[list[Memory], npt.NDArray[np.float32], list[Link], dict[str, float]]:
        """What a replica of the index starts from (``replica``): the indexed memories with
        their unit vectors, the links and the salience strengths, as copies of their own.

        ``vectors`` is an (n, dim) view of a copy in the index's own layout, dimension-major:
        a third of the cost of a row-major copy (~30 against ~85 ms at 100k memories of 256
        dimensions), on the event loop, where this must run; the packer makes it row-major
        (``search_offload``, in a thread)."""
        index = self.index
        alive = index.vectors.alive
        slots = np.flatnonzero(alive)
        memories = [self._state.memories[key] for key in index.keys_of(slots)]
        columns = index.vectors.matrix.T  # (dim, size): a row per dimension, as stored
        if len(slots) == len(alive):
            copy = columns.copy()
        else:  # row by row: one allocation, where ``compress`` on the whole makes two
            copy = np.empty((columns.shape[0], len(slots)), dtype=np.float32)
            for row, out in zip(columns, copy, strict=True):
                np.compress(alive, row, out=out)
        return memories, copy.T, list(self._state.graph), dict(self._state.salience)

    def salience(self, key: str) -> float:
        """The salience strength feedback gave ``key`` (0 when never reinforced)."""
        return self._state.salience.get(key, 0.0)

    def _live_records(self) -> int:
        state = self._state
        return len(state.memories) + len(state.graph) + len(state.salience)

    def statistics(self) -> TenantMemoryStatistics:
        records = self.log.record_count if self.log is not None else 0
        memories = self._state.memories
        return TenantMemoryStatistics(
            tenant=self.tenant,
            memories=len(memories),
            links=len(self._state.graph),
            namespaces=len({m.namespace for m in memories.values()}),
            index_slots=self.index.size,
            index_dead_slots=self.index.vectors.dead,
            log_records=records,
            log_dead_records=max(0, records - self._live_records()),
            compactions=self._compactions,
            log=self.log.statistics() if self.log is not None else None,
        )

    # --- writes ----------------------------------------------------------------------------

    async def _commit(self, records: Sequence[LogRecord], change: Callable[[], None]) -> None:
        """Append ``records``, then run ``change`` in log order (see ``_sequencer``)."""
        ticket = self._seq.ticket()
        try:
            if self.log is not None:
                await self.log.append_many(records)
            else:
                await anyio.lowlevel.checkpoint()
        except BaseException:
            self._seq.skip(ticket)
            raise
        await self._seq.apply(ticket, change)
        await self._maybe_compact()

    def _prepare(self, memory: Memory, now: float, batch: dict[str, Prepared]) -> Prepared | str:
        """Validate and complete ``memory``; a ``str`` answer is the key it deduplicates to."""
        if memory.tenant and memory.tenant != self.tenant:
            raise TenantMismatchError(self.tenant, memory.tenant)
        if not memory.content.strip():
            raise ValueError("memory content must not be empty")
        # Before deduplication: a malformed vector is refused even where it would be ignored.
        vec = None if memory.vector is None else self.index.vectors.normalise(memory.vector)[0]
        state = self._state
        ns, content = memory.namespace, memory.content
        key = memory.key
        if not key:
            for k in state.keys_with(ns, content):
                if not expired(state.memories[k], now):
                    return k
            key = content_key(ns, content)
            if key in batch:
                return key
            held = state.memories.get(key)
            if held is not None and (held.namespace, held.content) != (ns, content):
                key = "m-" + uuid.uuid4().hex
        old = batch[key].memory if key in batch else state.memories.get(key)
        created = memory.created_at or (old.created_at if old is not None else now)
        stored = msgspec.structs.replace(
            memory, key=key, tenant=self.tenant, created_at=created, links=(), vector=None
        )
        links = links_of(memory, key)
        if (
            old is not None
            and old == stored
            and vec is None
            and key not in state.user_vectors
            and all(state.graph.get(ln.from_key, ln.to_key, ln.rel) == ln for ln in links)
        ):
            return key
        record = stored
        if links or vec is not None:
            vector = None if vec is None else vec.tolist()
            record = msgspec.structs.replace(stored, links=links, vector=vector)
        return Prepared(memory=stored, links=links, vector=vec, record=record)

    async def _room_for(self, extra: int) -> None:
        """Grow the vector matrix in a worker thread when ``extra`` more memories would not
        fit and it is large (``GROW_IN_THREAD``): the copy paused the event loop 0.2 s at 32k
        slots and 0.4 s at 65k here. Smaller ones, and a matrix replaced while the copy was
        made, grow in ``add`` as before."""
        vectors = self.index.vectors
        if vectors.size + self._incoming + extra <= vectors.capacity:
            return  # the common case: no await, no lock
        if vectors.capacity < GROW_IN_THREAD:
            return
        if self._growing is None:
            self._growing = anyio.Lock()
        async with self._growing:  # one copy at a time; the others find the room made
            # The batches on their way to the index (between here and ``change``) count too.
            extra += self._incoming
            if vectors.size + extra > vectors.capacity >= GROW_IN_THREAD:
                vectors.adopt(await anyio.to_thread.run_sync(vectors.grown, extra))

    async def remember(self, memory: Memory) -> Remembered:
        """Store (upsert) one memory durably; returns ``(key, deduplicated)``."""
        return (await self.remember_batch([memory]))[0]

    async def remember_batch(self, memories: Sequence[Memory]) -> list[Remembered]:
        """Store many memories: one embedding batch, one log append (one fsync), in order.

        Validation happens for the whole batch before anything is written: one invalid
        memory fails the batch and writes nothing.
        """
        now = self._clock()
        batch: dict[str, Prepared] = {}
        results: list[Remembered] = []
        for memory in memories:
            p = self._prepare(memory, now, batch)
            if isinstance(p, str):
                results.append(Remembered(p, True))
                continue
            batch.pop(p.memory.key, None)  # re-insert: a later upsert in the batch wins
            batch[p.memory.key] = p
            results.append(Remembered(p.memory.key, False))
        for p in batch.values():  # after the loop: links may point forward in the batch
            for link in p.links:
                if link.to_key not in batch and link.to_key not in self._state.memories:
                    raise UnknownMemoryError(self.tenant, link.to_key)
        if not batch:
            await anyio.lowlevel.checkpoint()
            return results
        items = list(batch.values())
        mems = [p.memory for p in items]
        tokens = [tokenize(m.content) for m in mems]
        given = [p.vector for p in items]
        if self.embed_async is None:
            vectors = self._vectors_for(mems, given, tokens)
        else:
            vectors = np.zeros((len(mems), self.embedder.dim), dtype=np.float32)
            todo = [i for i, v in enumerate(given) if v is None]
            if todo:
                vectors[todo] = await self.embed_async([mems[i].content for i in todo])
            for i, v in enumerate(given):
                if v is not None:
                    vectors[i] = v

        await self._room_for(len(mems))

        def change() -> None:
            for p in items:
                self._state.store(p)
            self.index.add_batch(mems, vectors, tokens)
            salience = self._state.salience
            for m in mems:  # an upsert keeps the key's salience
                if m.key in salience:
                    self.index.set_salience(m.key, salience[m.key])

        self._incoming += len(mems)
        try:
            await self._commit([RememberRecord(p.record) for p in items], change)
        finally:
            self._incoming -= len(mems)
        return results

    async def forget(self, key: str) -> bool:
        """Delete ``key`` and its links durably; False (nothing written) if it is unknown."""
        if key not in self._state.memories:
            await anyio.lowlevel.checkpoint()
            return False
        found = False

        def change() -> None:
            nonlocal found
            found = self._state.drop(key)
            self.index.remove(key)

        await self._commit([ForgetRecord(key)], change)
        return found

    async def link(
        self, from_key: str, to_key: str, rel: str = "related", weight: float = 1.0
    ) -> Link:
        """Create or re-weight the edge ``from_key -[rel]-> to_key``; both must exist."""
        for k in (from_key, to_key):
            if k not in self._state.memories:
                raise UnknownMemoryError(self.tenant, k)
        if not rel:
            raise ValueError("rel must not be empty")
        link = Link(from_key=from_key, to_key=to_key, rel=rel, weight=float(weight))
        if not math.isfinite(link.weight):
            raise ValueError("link weight must be finite")
        await self._commit([LinkRecord(link)], lambda: self._state.graph.put(link))
        return link

    async def unlink(self, from_key: str, to_key: str, rel: str = "related") -> bool:
        """Delete an edge; False (nothing written) if there is none."""
        if self._state.graph.get(from_key, to_key, rel) is None:
            await anyio.lowlevel.checkpoint()
            return False
        removed = False

        def change() -> None:
            nonlocal removed
            removed = self._state.graph.remove(from_key, to_key, rel)

        await self._commit([UnlinkRecord(from_key, to_key, rel)], change)
        return removed

    async def reinforce(self, keys: Sequence[str], amount: float) -> dict[str, float]:
        """Add ``amount`` to the salience strength of ``keys`` durably (feedback: the memories
        were used, ``amount > 0``, or misled, ``amount < 0``); unknown keys are ignored.
        Returns the new strength of each reinforced key (clipped to +-``MAX_STRENGTH``)."""
        amount = float(amount)
        if not math.isfinite(amount):
            raise ValueError("reinforcement amount must be finite")
        known = tuple(k for k in dict.fromkeys(keys) if k in self._state.memories)
        if not known or amount == 0.0:
            await anyio.lowlevel.checkpoint()
            return {}
        result: dict[str, float] = {}

        def change() -> None:
            result.update(self._state.reinforce(known, amount))
            for key, strength in result.items():
                self.index.set_salience(key, strength)

        await self._commit([ReinforceRecord(known, amount)], change)
        return result

    # --- compaction ------------------------------------------------------------------------

    @property
    def needs_compaction(self) -> bool:
        if self.log is None:
            return False
        records = self.log.record_count
        dead = records - self._live_records()
        return records >= self._compact_min and dead > self._compact_ratio * records

    async def _maybe_compact(self) -> None:
        index = self.index
        if (
            index.compaction_due
            and not self._compacting_index
            and index.vectors.dead >= self._compact_index_from
        ):
            await self._compact_index()
        if self._seq.pending == 0 and self.needs_compaction:
            await self.compact()

    async def _compact_index(self) -> None:
        """Squeeze the index's tombstones out in a worker thread: done on the event loop,
        forgetting a third of 50k memories (384 dimensions) paused every tenant ~1 s here,
        and ~1.8 s at 100k. Searches go on meanwhile (the thread only reads the index);
        changes wait for it in log order, as behind any change (``Sequencer.exclusive``).
        A compaction that fails leaves the index as it was (correct, with its tombstones):
        the write that made it due was applied and acknowledged, and must not fail for it."""
        self._compacting_index = True
        replaced: list[Any] | None = None

        async def squeeze() -> None:
            nonlocal replaced
            if self.index.compaction_due:
                compaction = await anyio.to_thread.run_sync(self.index.compacted)
                replaced = self.index.install(compaction)

        try:
            await self._seq.exclusive(squeeze)
        except Exception:
            # Not at every write from now on: once as many slots again have died.
            self._compact_index_from = 2 * self.index.vectors.dead
            logger.exception("tenant %r: index compaction failed (tried again later)", self.tenant)
        finally:
            self._compacting_index = False
        if replaced:  # freed in the thread too: ~50 ms at 100k memories, in slices
            await anyio.to_thread.run_sync(finish, dropping(replaced, DROP_PER_SLICE))

    async def compact(self) -> bool:
        """Rewrite the log as the live state; False if mutations are in flight (try later).

        The snapshot is taken synchronously while nothing is in flight, so the log holds no
        record that the snapshot misses; appends that start meanwhile wait for the rewrite
        and land in the new file.
        """
        if self.log is None or self._seq.pending:
            await anyio.lowlevel.checkpoint()
            return False
        snapshot = self._state.snapshot(self._clock(), self.index.vector_of)
        await self.log.rewrite(snapshot)
        self._compactions += 1
        return True
