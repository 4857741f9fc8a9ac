"""The integrity worker: every store holding a memory must agree with its memory events.

Memory actors publish a :class:`MemoryEvent` after each acknowledged change, with the checksum
of what they now hold (``somabrain.memory.events``): ``put`` / ``delete`` for a memory,
``link`` / ``unlink`` for an edge. The worker subscribes to them (``soma.memory.events.>``
on a node; in a cluster, the subject a bridge consume route feeds from Kafka) and checks:

1. the source of truth: the node's embedded store, asked through the tenant's memory actor
   (``GetMemory``), else a registered store marked ``source_of_truth``;
2. every other registered store (``system.resources["memory_stores"]``: Redis, Postgres, a
   vector store, when configured) against it, rewriting one that disagrees from the source
   when ``repair`` is on (``copy_from``).

Events waiting in the worker's mailbox are checked together, with one ``GetMemories`` ask per
tenant: a check costs the node a few microseconds per write instead of a round trip.

A store that disagrees with an event may simply be ahead of it: a later write of the same
memory, whose event is still on its way. So a first disagreement is only noted, and checked
again ``recheck_delay`` seconds later against the newest event seen for that memory (or edge)
by then; a ``delete`` settles the pending checks of its memory and of the edges touching it.
Only a disagreement that persists counts. The embedded store is then repaired from *its*
source of truth, the tenant's durable log: the worker kills the tenant's memory actor, whose
supervisor restarts it, and the new incarnation rebuilds its state from the log (at most once
per tenant per ``rebuild_interval``, so that a broken log cannot make the worker exhaust the
memory supervisor's restart intensity). What agrees afterwards is ``repaired``; what does not
is ``unrepaired``: the log itself lacks an acknowledged change, or a replica refused its copy.

Both are reported: counted (:meth:`IntegrityWorker.statistics`, ``/metrics``:
``soma_integrity_*``) and recorded as audit events (``integrity.repaired``, decision ``allow``;
``integrity.mismatch``, decision ``error``) naming the stores, so they are as durable and
verifiable as any other decision.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import anyio
import msgspec

from ..actors import Actor, ActorStoppedError, MailboxFullError, Msg
from ..audit import AuditDraft, AuditUnavailableError, request_meta
from ..memory.events import MemoryEvent, link_checksum, memory_checksum
from ..memory.messages import GetMemories, GetMemory, ask_memory
from ..memory.types import Link, Memory
from .settings import IntegritySettings

__all__ = [
    "EmbeddedStore",
    "GetIntegrityStats",
    "IntegrityStats",
    "IntegrityWorker",
    "MemoryEvent",
    "MemoryStore",
]

logger = logging.getLogger("somabrain.workers.integrity")

Entity = tuple[str, ...]


class MemoryStore(Protocol):
    name: str
    #: True for the store the others are repaired from.
    source_of_truth: bool

    async def checksum(self, tenant: str, namespace: str, key: str) -> str | None:
        """The checksum of the stored memory, or None when absent."""

    async def copy_from(self, source: Any, tenant: str, namespace: str, key: str) -> None:
        """Make this store's copy equal to ``source``'s (delete when the source has none)."""


class EmbeddedStore:
    """The node's memory actors, seen as a store: the source of truth of the other stores,
    and repaired itself from the tenants' durable logs (see the module doc)."""

    name = "embedded"
    source_of_truth = True

    def __init__(self, system: Any, path: str, timeout: float) -> None:
        self.system = system
        self.path = path
        self.timeout = timeout

    def available(self) -> bool:
        tree = self.system.resources.get("tree")
        return tree is not None and hasattr(tree.find(self.path), "ref")

    async def memory(self, tenant: str, key: str) -> Memory | None:
        runner = self.system.resources["tree"].find(self.path)
        memory: Memory | None = await ask_memory(runner.ref(tenant), GetMemory(key), self.timeout)
        return memory

    async def memories(self, tenant: str, keys: list[str]) -> list[Memory | None]:
        runner = self.system.resources["tree"].find(self.path)
        found: list[Memory | None] = await ask_memory(
            runner.ref(tenant), GetMemories(tuple(keys)), self.timeout
        )
        return found

    async def checksum(self, tenant: str, namespace: str, key: str) -> str | None:
        memory = await self.memory(tenant, key)
        return None if memory is None else memory_checksum(memory)

    async def copy_from(self, source: Any, tenant: str, namespace: str, key: str) -> None:
        raise NotImplementedError("the embedded store is repaired from its log (rebuild)")

    def rebuild(self, tenant: str) -> bool:
        """Restart the tenant's memory actor: its next incarnation replays the log."""
        tree = self.system.resources["tree"]
        return bool(tree.kill(f"{self.path}/{tenant}"))


class GetIntegrityStats(msgspec.Struct, frozen=True):
    pass


class IntegrityStats(msgspec.Struct, frozen=True):
    checked: int
    agreed: int
    repaired: int
    unrepaired: int
    #: Disagreements that a later event of the same memory explained.
    superseded: int = 0
    #: Checks waiting for their second look.
    pending: int = 0


class _Recheck(msgspec.Struct, frozen=True):
    entity: Entity


class _Flush(msgspec.Struct, frozen=True):
    """Check the events gathered so far (told to itself behind the events in the mailbox)."""


def _entity(event: MemoryEvent) -> Entity:
    if event.op in ("link", "unlink"):
        return (event.tenant, "link", event.key, event.to_key, event.rel)
    return (event.tenant, "memory", event.key)


class IntegrityWorker(Actor):
    async def on_start(self) -> None:
        system = self.context.system
        config = system.resources.get("config")
        workers = getattr(config, "workers", None)
        self.settings: IntegritySettings = (
            workers.integrity if workers is not None else IntegritySettings()
        )
        self.embedded = EmbeddedStore(
            system, self.settings.memory_path, self.settings.check_timeout
        )
        self.checked = self.agreed = self.repaired = self.unrepaired = self.superseded = 0
        #: entity -> (the event that disagreed, the newest event seen since)
        self.pending: dict[Entity, tuple[MemoryEvent, MemoryEvent]] = {}
        self.rebuilt_at: dict[str, float] = {}
        self.queue: list[MemoryEvent] = []
        self.flush_told = False
        system.resources.setdefault("metrics.sources", {})[self.context.path] = self.metrics
        key = f"integrity:{self.context.path}"
        if key not in system.resources:  # subscribe once: the ref outlives incarnations
            system.resources[key] = await system.bus.subscribe_actor(
                self.settings.subject, self.context.ref, queue=self.settings.queue
            )

    def statistics(self) -> IntegrityStats:
        return IntegrityStats(
            self.checked, self.agreed, self.repaired, self.unrepaired,
            self.superseded, len(self.pending) + len(self.queue),
        )  # fmt: skip

    def metrics(self) -> list[tuple[str, str, str, list[tuple[dict[str, str], float]]]]:
        """Prometheus families for ``/metrics`` (see ``somabrain.edge.metrics``)."""
        return [
            (f"soma_integrity_{name}_total", "counter", text, [({}, getattr(self, name))])
            for name, text in (
                ("checked", "Memory events checked against the stores."),
                ("agreed", "Checks where every store agreed."),
                ("superseded", "Disagreements explained by a later event of the memory."),
                ("repaired", "Stores repaired from their source of truth."),
                ("unrepaired", "Disagreements that could not be repaired (see the audit)."),
            )
        ]

    async def receive(self, message: Any) -> Any:
        if isinstance(message, GetIntegrityStats):
            return self.statistics()
        if isinstance(message, _Recheck):
            await self._recheck(message.entity)
            return None
        if isinstance(message, _Flush):
            self.flush_told = False
            await self._flush()
            return None
        if isinstance(message, Msg):
            message = message.data
        if isinstance(message, dict):  # from Kafka, through a bridge consume route
            message = msgspec.convert(message, MemoryEvent)
        if not isinstance(message, MemoryEvent):
            raise TypeError(f"integrity worker does not handle {type(message).__name__}")
        # Events are gathered and checked together: the _Flush told now queues behind the
        # events already in the mailbox, so one ask per tenant answers all of them.
        self.queue.append(message)
        if not self.flush_told:
            try:
                self.context.ref.tell_nowait(_Flush())
                self.flush_told = True
            except (MailboxFullError, ActorStoppedError):
                await self._flush()
        return None

    # ------------------------------------------------------------------ checking

    async def check(self, event: MemoryEvent) -> None:
        """Check one event now (what the gathered checks do for each)."""
        self.queue.append(event)
        await self._flush()

    async def _flush(self) -> None:
        events, self.queue = self.queue, []
        if not events:
            return
        problems = await self._source_problems(events)
        for event, problem in zip(events, problems, strict=True):
            self.checked += 1
            entity = _entity(event)
            if event.op == "delete":
                self._settle_edges_of(event.tenant, event.key)
            if entity in self.pending:  # a second look is due anyway: against this event
                first, _ = self.pending[entity]
                self.pending[entity] = (first, event)
                continue
            if problem is not None:
                self.pending[entity] = (event, event)
                self.context.system.start_soon(self._later, entity)
                continue
            fixed, bad = await self._replicas(event)
            if fixed or bad:
                await self._report(event, fixed, bad)
            else:
                self.agreed += 1

    def _settle_edges_of(self, tenant: str, key: str) -> None:
        """A forgotten memory takes its edges along: their pending checks are moot."""
        for entity in [e for e in self.pending if e[0] == tenant and e[1] == "link"]:
            if key in (entity[2], entity[3]):
                del self.pending[entity]
                self.superseded += 1

    async def _later(self, entity: Entity) -> None:
        await anyio.sleep(self.settings.recheck_delay)
        if self.context.ref.alive:
            await self.context.ref.tell(_Recheck(entity))

    async def _recheck(self, entity: Entity) -> None:
        found = self.pending.pop(entity, None)
        if found is None:  # settled meanwhile (or a previous incarnation's)
            return
        first, latest = found
        problem = await self._source_problem(latest)
        fixed: list[str] = []
        bad: list[str] = []
        if problem is not None:
            if await self._rebuild(latest.tenant):
                problem = await self._source_problem(latest)
                if problem is None:
                    fixed.append(f"{self.embedded.name} (rebuilt from its log)")
            if problem is not None:
                bad.append(problem)
        elif latest is not first:
            self.superseded += 1
        more_fixed, more_bad = await self._replicas(latest) if not bad else ([], [])
        fixed += more_fixed
        bad += more_bad
        if fixed or bad:
            await self._report(latest, fixed, bad)
        elif latest is first:
            self.agreed += 1  # it was only late

    async def _source_problems(self, events: list[MemoryEvent]) -> list[str | None]:
        """:meth:`_source_problem` of each event, with one ask per tenant to the embedded
        store (``GetMemories``)."""
        if not self.embedded.available():
            return [await self._source_problem(event) for event in events]
        by_tenant: dict[str, list[str]] = {}
        for event in events:
            keys = by_tenant.setdefault(event.tenant, [])
            if event.key not in keys:
                keys.append(event.key)
        held: dict[str, dict[str, Memory | None] | str] = {}
        for tenant, keys in by_tenant.items():
            try:
                found = await self.embedded.memories(tenant, keys)
                held[tenant] = dict(zip(keys, found, strict=True))
            except Exception as exc:  # the tenant's actor cannot answer: that is a finding
                held[tenant] = f"{self.embedded.name}: {exc!r}"
        problems: list[str | None] = []
        for event in events:
            memories = held[event.tenant]
            if isinstance(memories, str):
                problems.append(memories)
                continue
            memory = memories[event.key]
            agrees = _agrees(event, memory)
            problems.append(
                None if agrees else f"{self.embedded.name}: holds {_describe(event, memory)}"
            )
        return problems

    async def _source_problem(self, event: MemoryEvent) -> str | None:
        """Why the source of truth disagrees with ``event`` (None: it agrees, or there is no
        source to ask)."""
        if self.embedded.available():
            try:
                memory = await self.embedded.memory(event.tenant, event.key)
            except Exception as exc:  # the tenant's actor cannot answer: that is a finding
                return f"{self.embedded.name}: {exc!r}"
            if _agrees(event, memory):
                return None
            return f"{self.embedded.name}: holds {_describe(event, memory)}"
        source = next((s for s in _registered(self) if s.source_of_truth), None)
        if source is None or event.op not in ("put", "delete"):
            return None
        try:
            found = await source.checksum(event.tenant, event.namespace, event.key)
        except Exception as exc:
            return f"{source.name}: {exc!r}"
        return None if found == (event.checksum or None) else f"{source.name}: holds {found}"

    async def _rebuild(self, tenant: str) -> bool:
        if not (self.settings.repair and self.embedded.available()):
            return False
        now = time.monotonic()
        if now - self.rebuilt_at.get(tenant, -float("inf")) < self.settings.rebuild_interval:
            return False
        self.rebuilt_at[tenant] = now
        logger.warning("integrity: rebuilding the memory of tenant %r from its log", tenant)
        return self.embedded.rebuild(tenant)

    async def _replicas(self, event: MemoryEvent) -> tuple[list[str], list[str]]:
        """The registered stores other than the source, against the event (memories only:
        edges live in the embedded store alone)."""
        stores: list[MemoryStore] = _registered(self)
        if not stores or event.op not in ("put", "delete"):
            return [], []
        source: Any = next((s for s in stores if s.source_of_truth), None)
        if source is None and self.embedded.available():
            source = self.embedded
        expected = event.checksum or None
        fixed: list[str] = []
        bad: list[str] = []
        for store in stores:
            if store is source:
                continue
            try:
                found = await store.checksum(event.tenant, event.namespace, event.key)
                if found == expected:
                    continue
                if self.settings.repair and source is not None:
                    await store.copy_from(source, event.tenant, event.namespace, event.key)
                    if await store.checksum(event.tenant, event.namespace, event.key) == expected:
                        fixed.append(store.name)
                        continue
                bad.append(store.name)
            except Exception as exc:  # an unreachable replica is reported, not fatal
                logger.warning("integrity: store %s failed: %r", store.name, exc)
                bad.append(store.name)
        return fixed, bad

    async def _report(self, event: MemoryEvent, fixed: list[str], bad: list[str]) -> None:
        self.repaired += len(fixed)
        self.unrepaired += len(bad)
        if bad:
            logger.error("integrity: %s %s of tenant %r: %s", event.op, event.key,
                         event.tenant, "; ".join(bad))  # fmt: skip
        audit = self.context.system.resources.get("audit")
        if audit is None:
            return
        attributes: dict[str, object] = {"key": event.key, "namespace": event.namespace,
                                         "op": event.op, "event_id": event.event_id}  # fmt: skip
        if event.op in ("link", "unlink"):
            attributes |= {"to_key": event.to_key, "rel": event.rel}
        draft = AuditDraft(
            tenant=event.tenant,
            actor="integrity-worker",
            action="integrity.mismatch" if bad else "integrity.repaired",
            decision="error" if bad else "allow",
            reason=f"repaired: {', '.join(fixed) or '-'}; unrepaired: {', '.join(bad) or '-'}"[
                :1024
            ],
            request=request_meta(attributes=attributes),
        )
        try:
            await audit.record(draft)
        except AuditUnavailableError as exc:
            logger.error("integrity: could not audit a finding on %s: %r", event.key, exc)


def _registered(worker: IntegrityWorker) -> list[Any]:
    return list(worker.context.system.resources.get("memory_stores", []))


def _agrees(event: MemoryEvent, memory: Memory | None) -> bool:
    if event.op == "delete":
        return memory is None
    if event.op == "put":
        if memory is None:  # expired since (and perhaps compacted away): rightly gone
            return event.expires_at is not None and event.expires_at <= time.time()
        return memory_checksum(memory) == event.checksum
    link = _edge(event, memory)
    if event.op == "unlink":
        return link is None
    return link is not None and link_checksum(link) == event.checksum


def _edge(event: MemoryEvent, memory: Memory | None) -> Link | None:
    for ln in memory.links if memory is not None else ():
        if (ln.to_key, ln.rel) == (event.to_key, event.rel):
            return Link(from_key=event.key, to_key=ln.to_key, rel=ln.rel, weight=ln.weight)
    return None


def _describe(event: MemoryEvent, memory: Memory | None) -> str:
    if event.op in ("link", "unlink"):
        link = _edge(event, memory)
        return "no such edge" if link is None else f"an edge with weight {link.weight}"
    return "nothing" if memory is None else f"checksum {memory_checksum(memory)[:16]}..."
