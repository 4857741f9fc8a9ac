"""``MemoryActor``: one tenant's memory, as an actor under the ``memory`` dynamic supervisor.

The dynamic supervisor starts one actor per tenant on first use (the child's name is the
tenant id) and passivates it when idle. Every incarnation rebuilds the tenant's state from its
durable log (``TenantMemory.open`` replays it) and closes the log when it stops, after its
in-flight writes are durable. So a restart, a passivation and a crash of the whole process all
come back to the same state: every acknowledged write, nothing else.

Shared services come from ``system.resources``: ``data_dir`` (the tenant logs live in
``<data_dir>/memory``), ``config`` (``SomaConfig.memory``: fsync policy, drain timeout,
which views recall scores and their default weights; ``SomaConfig.context``: the embedder, the
views' parameters, working memory) and the node's shared embedder (``embedding``).

Working memory (per session) is filled with the memories remembered with a ``session_id`` and
those reinforced by feedback in a session. It is durable (``working_journal``): its keys are
journaled beside the tenant's log (a file, or rows in the memory database with
``memory.postgres_url``: ``pg_journal``), and a new incarnation rebuilds each session's items,
in order, from the memories it replayed (forgotten ones stay out). A remember or feedback that
changed a session is acknowledged after its change is flushed, and a forget after the key's
removal from working memory and associations is; the journals are handed over with the log, so
a killed incarnation's last changes are in them before the next one reads them.

Writes run in tasks of the actor system and answer with a ``WriteTicket`` (see ``messages``).
If an incarnation is killed while writes are in flight they still complete (and are
acknowledged) on the old handle; the next incarnation waits for them, closes that handle and
only then reopens the log, so it replays them too. The open handles are kept in
``system.resources["memory.stores"]`` for this hand-over.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from ..actors import Actor, ActorStoppedError, ActorSystem
from ..tenancy import valid_tenant
from .associations import AssociationStore, FeedbackLearner, association_journal_path
from .embedding import BatchingEmbedder, shared_embedder
from .errors import LogStaleError, LogUnavailableError, MemoryStoreError
from .events import Announcer
from .messages import (
    ContextRecall,
    Forget,
    GetMemories,
    GetMemory,
    LinkMemories,
    MemoryStats,
    Recall,
    Reinforce,
    Remember,
    Unlink,
    WriteTicket,
)
from .pg_journal import PostgresJournals
from .pg_log import close_postgres_logs, shared_postgres_logs
from .recall import ContextRecallResult, context_recall, query_embedding, with_working_memory
from .replica import TenantReplica
from .tenant import TenantMemory
from .text import tokenize
from .types import Link, Memory, RecallHit, Remembered
from .views import build_views, view_params
from .working import WMItem
from .working_journal import DurableWorkingMemory, working_journal_path

__all__ = ["STORES_RESOURCE", "MemoryActor", "TenantUnavailableError", "tenant_data_dir"]

logger = logging.getLogger("somabrain.memory")

STORES_RESOURCE = "memory.stores"
# Seconds between a broken tenant's tries at a database that could not be reached.
REOPEN_AFTER = 1.0


def tenant_data_dir(system: ActorSystem) -> Path:
    data_dir = system.resources.get("data_dir")
    if data_dir is None:
        raise RuntimeError("system.resources['data_dir'] is not set: the node sets it")
    return Path(data_dir) / "memory"


class TenantUnavailableError(MemoryStoreError):
    """The tenant's log could not be opened; its memory actor refuses every message."""

    def __init__(self, tenant: str, cause: BaseException) -> None:
        self.tenant = tenant
        self.cause = cause
        super().__init__(f"the memory of tenant {tenant!r} is unavailable: {cause}")


class _OpenStore:
    """A ``TenantMemory`` plus the writes in flight on it."""

    __slots__ = (
        "_idle",
        "associations",
        "inflight",
        "memory",
        "replica",
        "stale",
        "system",
        "working",
    )

    def __init__(self, system: ActorSystem, memory: TenantMemory) -> None:
        self.system = system
        self.memory = memory
        self.working: DurableWorkingMemory | None = None
        self.associations: AssociationStore | None = None
        self.replica: TenantReplica | None = None
        self.inflight = 0
        self._idle: anyio.Event | None = None
        # Set when a write found the log ahead of this memory (``LogStaleError``): the actor
        # reopens the tenant before its next message.
        self.stale: LogStaleError | None = None

    def write(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> WriteTicket:
        ticket = WriteTicket()
        self.inflight += 1
        self.system.start_soon(self._run, ticket, fn, args)
        return ticket

    async def _run(
        self, ticket: WriteTicket, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> None:
        try:
            ticket.set_result(await fn(*args))
        except Exception as exc:  # the asker's error (bad link, broken log...), not ours
            if isinstance(exc, LogStaleError):
                self.stale = exc
            ticket.set_exception(exc)
        finally:
            if not ticket.done:  # cancelled: the system is shutting down
                ticket.set_exception(
                    ActorStoppedError(f"memory/{self.memory.tenant}", "stopped mid-write")
                )
            self.inflight -= 1
            if not self.inflight and self._idle is not None:
                self._idle.set()

    async def close(self, drain_timeout: float) -> None:
        """Wait (bounded) for in-flight writes, then flush and close the log."""
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(drain_timeout):
                while self.inflight:
                    self._idle = anyio.Event()
                    await self._idle.wait()
            if self.inflight:
                logger.warning(
                    "memory of %s: closing with %d writes in flight",
                    self.memory.tenant,
                    self.inflight,
                )
            if self.replica is not None:
                self.replica.close()
            await self.memory.aclose()
            if self.working is not None:
                await self.working.aclose()
            if self.associations is not None:
                await self.associations.aclose()


class MemoryActor(Actor):
    """Handles ``somabrain.memory.messages`` for the tenant named by ``context.name``."""

    store: _OpenStore
    memory: TenantMemory
    #: Recall weights when a request gives none (``memory.weights`` or the tuned defaults).
    weights: dict[str, float]

    async def on_start(self) -> None:
        system = self.context.system
        tenant = self.context.name
        if not valid_tenant(tenant):
            raise ValueError(f"invalid tenant id {tenant!r}")
        settings = _memory_settings(system)
        stores: dict[str, _OpenStore] | None = system.resources.get(STORES_RESOURCE)
        if stores is None:
            stores = system.resources[STORES_RESOURCE] = {}
            system.add_finalizer(
                partial(_close_orphans, system.resources, stores, settings.drain_timeout)
            )
        previous = stores.pop(tenant, None)
        if previous is not None:  # the last incarnation was killed: hand its log over
            await previous.close(settings.drain_timeout)
        ctx = _context_settings(system)
        params = view_params(settings.extra_views, ctx.views, ctx.associations)
        embedder = await shared_embedder(system.resources, ctx.embedder, ctx.embedding)
        self.batcher = embedder if isinstance(embedder, BatchingEmbedder) else None
        self.embedder = embedder.embedder if self.batcher is not None else embedder
        self.broken: BaseException | None = None
        self.broken_at = 0.0
        self._reopen = partial(self._open, system, tenant, settings, ctx, params, embedder)
        await self._reopen()

    async def _open(
        self,
        system: ActorSystem,
        tenant: str,
        settings: Any,
        ctx: Any,
        params: Any,
        embedder: Any,
    ) -> None:
        """Open the tenant's log and rebuild its memory (``broken`` instead when the log is
        unavailable: see ``receive`` for when it is tried again)."""
        associations: AssociationStore | None = None
        if params.association is not None:  # filled from its journal below
            associations = AssociationStore(embedder.dim, capacity=params.association.capacity)
        views = build_views(params, associations)
        try:
            memory, journals = await _open_memory(
                system,
                settings,
                tenant,
                views=views,
                embedder=embedder.embedder if self.batcher is not None else embedder,
                embed_async=self.batcher.embed if self.batcher is not None else None,
            )
        except (MemoryStoreError, OSError) as exc:
            # One tenant's unreadable log (corrupt, locked by another process, disk error,
            # database down) must not take the other tenants down: failing to start would
            # make the dynamic supervisor retry until it gives up, with every tenant under
            # it. Start anyway and refuse this tenant's messages; the next incarnation (after
            # passivation or a kill) tries the log again, and an unreachable database is tried
            # again by this one (``receive``).
            logger.error("memory of tenant %r is unavailable: %r", tenant, exc)
            self.broken = exc
            self.broken_at = time.monotonic()
            return
        self.broken = None
        self.memory = memory
        from ..context.settings import default_weights_for  # the context section's defaults

        self.weights = default_weights_for(settings.weights, settings.extra_views, ctx)
        self.associations = associations
        self.learner = FeedbackLearner(memory, associations, ctx.associations)
        stores = system.resources[STORES_RESOURCE]
        self.store = stores[tenant] = _OpenStore(system, memory)
        self.events = Announcer(system, memory)  # after each acknowledged change (events.py)
        self.store.associations = associations
        self.replica: TenantReplica | None = None
        if settings.offload_min_memories:
            self.replica = self.store.replica = TenantReplica(
                system,
                memory,
                associations,
                params,
                settings.offload_min_memories,
            )
        wm = ctx.working_memory
        data_dir = tenant_data_dir(system)
        self.working = self.store.working = await DurableWorkingMemory.open(
            journals or working_journal_path(data_dir, tenant),
            self._items,
            wm.capacity,
            max_sessions=wm.max_sessions,
            recency_weight=wm.recency_weight,
        )
        if associations is not None:  # registered first: a kill meanwhile still closes it
            await associations.load(
                journals or association_journal_path(data_dir, tenant), self._embed
            )

    async def _close_stale(self) -> None:
        """The log is ahead of this memory (another writer appended to the tenant): close
        the store, once its writes in flight are done, so that the reopen replays it all."""
        stale = self.store.stale
        logger.warning(
            "memory of tenant %r is behind its log, reopening: %s", self.context.name, stale
        )
        stores = self.context.system.resources.get(STORES_RESOURCE, {})
        if stores.get(self.context.name) is self.store:
            del stores[self.context.name]
        await self.store.close(_memory_settings(self.context.system).drain_timeout)
        self.broken, self.broken_at = stale, -math.inf

    async def on_stop(self) -> None:
        if self.broken is not None:
            return
        stores = self.context.system.resources.get(STORES_RESOURCE, {})
        if stores.get(self.context.name) is self.store:
            del stores[self.context.name]
        await self.store.close(_memory_settings(self.context.system).drain_timeout)

    async def receive(self, message: Any) -> Any:
        if self.broken is None and self.store.stale is not None:
            await self._close_stale()
        if self.broken is not None:
            if (
                isinstance(self.broken, LogUnavailableError | LogStaleError)
                and time.monotonic() - self.broken_at >= REOPEN_AFTER
            ):
                await self._reopen()  # the database may be back; a stale log is replayed
            if self.broken is not None:
                raise TenantUnavailableError(self.context.name, self.broken)
        memory = self.memory
        match message:
            case Recall(query=query, top_k=top_k, namespace=ns, filters=flt, weights=w, at=at):
                if self.batcher is not None:  # embed the query off the event loop
                    return self.store.write(self._recall, message)
                if self.replica is not None:
                    ticket = self.replica.recall(message, w or self.weights)
                    if ticket is not None:
                        return ticket
                return memory.recall(query, top_k, ns, flt, weights=w or self.weights, at=at)
            case ContextRecall():
                if self.batcher is not None:
                    return self.store.write(self._context_recall, message)
                ticket = self._context_recall_remote(message, None)
                if ticket is not None:
                    return ticket
                return self._context_recall_now(message, None)
            case GetMemory(key=key):
                return memory.get(key)
            case GetMemories(keys=keys):
                return [memory.get(key) for key in keys]
            case Remember(memories=memories):
                return self.store.write(self._remember, memories)
            case Reinforce(keys=keys, amount=amount, session_id=session, query=query):
                return self.store.write(self._reinforce, keys, amount, session, query)
            case LinkMemories(from_key=f, to_key=t, rel=rel, weight=weight):
                return self.store.write(self._link, f, t, rel, weight)
            case Forget(key=key, namespace=ns):
                held = memory.get(key)
                if ns is not None and held is not None and held.namespace != ns:
                    return False  # not the memory the caller was allowed to forget
                self.working.discard(key)
                if self.associations is not None:
                    self.associations.discard(key)
                return self.store.write(self._forget, key)
            case Unlink(from_key=f, to_key=t, rel=rel):
                return self.store.write(self._unlink, f, t, rel)
            case MemoryStats():
                return memory.statistics()
        raise TypeError(f"memory actor cannot handle {type(message).__name__}")

    # --- context and working memory --------------------------------------------------------

    async def _recall(self, message: Recall) -> Any:
        assert self.batcher is not None
        [vector] = await self.batcher.embed([message.query])
        if self.replica is not None:
            ticket = self.replica.recall(message, message.weights or self.weights, vector)
            if ticket is not None:
                return await ticket.result()
        return self.memory.recall(message.query, message.top_k, message.namespace,
                                  message.filters, weights=message.weights or self.weights,
                                  vector=vector, at=message.at)  # fmt: skip

    async def _context_recall(self, message: ContextRecall) -> ContextRecallResult:
        assert self.batcher is not None
        [vector] = await self.batcher.embed([message.query])
        ticket = self._context_recall_remote(message, vector)
        if ticket is not None:
            result: ContextRecallResult = await ticket.result()
            return result
        return self._context_recall_now(message, vector)

    def _context_recall_remote(self, message: ContextRecall, vector: Any) -> WriteTicket | None:
        """The context recall with its long-term part in the search worker (None: not now)."""
        if self.replica is None or message.top_k == 0 or not self.replica.available:
            return None  # (top_k 0: working memory only, nothing to search)
        qvec = query_embedding(self.memory, message.query, vector)

        def then(hits: list[RecallHit]) -> ContextRecallResult:
            return with_working_memory(self.memory, self.working, hits, message.query, qvec,
                                       message.session_id, message.wm_top_k)  # fmt: skip

        return self.replica.recall(message, message.weights or self.weights, qvec, then)

    def _context_recall_now(self, message: ContextRecall, vector: Any) -> ContextRecallResult:
        return context_recall(
            self.memory,
            self.working,
            message.query,
            message.top_k,
            namespace=message.namespace,
            filters=message.filters,
            weights=message.weights or self.weights,
            at=message.at,
            session_id=message.session_id,
            wm_top_k=message.wm_top_k,
            query_vector=vector,
            form=message.form,
        )

    def _items(self, keys: Any) -> list[WMItem]:
        """Working-memory items of ``keys``, in order; unknown (forgotten) keys are left out."""
        items = []
        for key in keys:
            m = self.memory.get(key)
            if m is not None:
                vector = self.memory.index.vector_of(key)
                items.append(WMItem(key, m.content, vector, frozenset(tokenize(m.content)),
                                    m.occurred_at or m.created_at))  # fmt: skip
        return items

    def _track(self, session: str, keys: Any) -> None:
        """Put ``keys`` (known memories) into the session's working memory, newest last."""
        items = self._items(keys)
        if items:
            self.working.add(session, items)

    async def _remember(self, memories: tuple[Memory, ...]) -> list[Remembered]:
        result = await self.memory.remember_batch(memories)
        sessions: dict[str, list[str]] = {}
        for m, (key, _) in zip(memories, result, strict=True):
            if m.session_id is not None:
                sessions.setdefault(m.session_id, []).append(key)
        for session, keys in sessions.items():
            self._track(session, keys)
        if sessions:
            await self.working.flush()
        self.events.memories(key for key, deduplicated in result if not deduplicated)
        return result

    # --- writes that announce themselves (memory events, see events.py) --------------------

    async def _link(self, from_key: str, to_key: str, rel: str, weight: float) -> Link:
        link = await self.memory.link(from_key, to_key, rel, weight)
        self.events.linked(link)
        return link

    async def _unlink(self, from_key: str, to_key: str, rel: str) -> bool:
        removed = await self.memory.unlink(from_key, to_key, rel)
        if removed:
            self.events.unlinked(from_key, to_key, rel)
        return removed

    async def _forget(self, key: str) -> bool:
        held = self.memory.get(key)
        found = await self.memory.forget(key)
        await self.working.flush()  # the key's removal (``receive``) outlives a kill
        if self.associations is not None:
            await self.associations.flush()
        if found:
            self.events.forgotten(key, held.namespace if held is not None else "")
        return found

    async def _embed(self, texts: Any) -> Any:
        """Embeddings of ``texts``, off the event loop when the embedder is a model."""
        if self.batcher is not None:
            return await self.batcher.embed(texts)
        return self.embedder.embed(texts)

    async def _reinforce(
        self, keys: tuple[str, ...], amount: float, session: str | None, query: str | None
    ) -> dict[str, float]:
        vector = None
        if query is not None and amount > 0 and self.associations is not None:
            [vector] = await self._embed([query])
        result = await self.learner.learn(keys, amount, query=query, vector=vector)
        if session is not None and amount > 0:
            self._track(session, [k for k in keys if k in result])
            await self.working.flush()
        return result


async def _close_orphans(
    resources: dict[str, Any], stores: dict[str, _OpenStore], drain_timeout: float
) -> None:
    """At shutdown: close the stores of killed actors that no next incarnation took over
    (their logs would stay open and locked for as long as the process lives), then the
    connections to the memory database, which the logs needed until then."""
    while stores:
        _, store = stores.popitem()
        await store.close(drain_timeout)
    await close_postgres_logs(resources)


async def _open_memory(
    system: ActorSystem, settings: Any, tenant: str, **kwargs: Any
) -> tuple[TenantMemory, PostgresJournals | None]:
    """The tenant's memory, rebuilt from its log: a file, or rows in PostgreSQL; and where its
    journals are when they are not files beside the log (rows in the same database, so that
    whichever node opens the tenant next finds them)."""
    if not settings.postgres_url:
        memory = await TenantMemory.open(
            tenant_data_dir(system),
            tenant,
            fsync=settings.fsync,
            group_window=settings.group_window,
            **kwargs,
        )
        return memory, None
    logs = await shared_postgres_logs(
        system.resources,
        settings.postgres_url,
        max_connections=settings.postgres_max_connections,
        timeout=settings.postgres_timeout,
    )
    log = await logs.open_tenant(tenant, fsync=settings.fsync, group_window=settings.group_window)
    return await TenantMemory.from_log(log, tenant, **kwargs), PostgresJournals(logs, tenant)


def _context_settings(system: ActorSystem) -> Any:
    from ..context.settings import ContextSettings  # the [context] section: embedder, views

    settings = getattr(system.resources.get("config"), "context", None)
    return settings if isinstance(settings, ContextSettings) else ContextSettings()


def _memory_settings(system: ActorSystem) -> Any:
    config = system.resources.get("config")
    if config is not None:
        return config.memory
    from ..config import MemorySettings

    return MemorySettings()
