"""Memory events: what a tenant's memory actor publishes after each acknowledged change.

After a remember, link, unlink or forget is durable, the memory actor publishes one
:class:`MemoryEvent` per changed memory or edge on ``soma.memory.events.<tenant>`` (subscribe
to ``soma.memory.events.>`` for every tenant). The Kafka bridge forwards them to the topic
``soma.memory.events`` when Kafka is configured (the subject is the record key, so a tenant's
events stay in order in one partition); the integrity worker checks them against the stores
(``somabrain.workers.integrity``).

An event carries the checksum of what the store holds now (:func:`memory_checksum`,
:func:`link_checksum`): SHA-256 of the canonical JSON (sorted keys) of the memory record as
stored, without its links (edges are their own events, and feedback adds ``co_used`` edges
that would otherwise change a memory's checksum behind its events) and without a
caller-supplied vector (kept apart from the record).

Publishing never delays nor fails the write it reports: events go into a bounded outbox per
node (:class:`EventOutbox`), drained by one task that takes the bus's backpressure; when the
outbox is full an event is dropped and counted (``soma_memory_events_dropped_total``), and a
publish that fails is counted and logged. A dropped event loses one check, not a memory.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Literal

import anyio
import msgspec

from ..actors import BusClosedError
from .types import Link, Memory

__all__ = [
    "EVENTS_SUBJECT",
    "Announcer",
    "EventOutbox",
    "MemoryEvent",
    "event_subject",
    "link_checksum",
    "memory_checksum",
    "outbox_of",
]

logger = logging.getLogger("somabrain.memory.events")

#: Events of tenant ``t`` are published on ``soma.memory.events.t``.
EVENTS_SUBJECT = "soma.memory.events"
#: Events waiting for the bus, per node, before new ones are dropped (and counted).
OUTBOX_CAPACITY = 10_000
_RESOURCE = "memory.events"


class MemoryEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One acknowledged change of one memory (``put``, ``delete``) or edge (``link``,
    ``unlink``: ``key`` is the edge's source, ``to_key`` and ``rel`` the rest of its id).

    ``checksum`` is what the store holds after the change ("" when it holds nothing). New
    fields get defaults, so events from older nodes still decode.
    """

    op: Literal["put", "delete", "link", "unlink"]
    tenant: str
    namespace: str
    key: str
    checksum: str
    event_id: str = ""
    to_key: str = ""
    rel: str = ""
    #: A ``put`` memory's expiry (epoch seconds): past it, the store may rightly hold nothing.
    expires_at: float | None = None
    node: str = ""
    time: float = 0.0


_encoder = msgspec.json.Encoder(order="sorted")


def memory_checksum(memory: Memory) -> str:
    """SHA-256 of the memory record as stored (see the module doc: links and vector left out)."""
    if memory.links or memory.vector is not None:
        memory = msgspec.structs.replace(memory, links=(), vector=None)
    return hashlib.sha256(_encoder.encode(memory)).hexdigest()


def link_checksum(link: Link) -> str:
    return hashlib.sha256(_encoder.encode(link)).hexdigest()


def event_subject(tenant: str) -> str:
    return f"{EVENTS_SUBJECT}.{tenant}"


class EventOutbox:
    """The node's bounded queue of events for the bus, drained by one task (module doc)."""

    def __init__(self, system: Any, capacity: int = OUTBOX_CAPACITY) -> None:
        self.system = system
        self.capacity = capacity
        self.queue: deque[tuple[str, Any]] = deque()
        self.published = self.dropped = self.failed = 0
        self._wake = anyio.Event()
        self._draining = False

    def offer(self, subject: str, event: Any) -> bool:
        """Queue ``event`` for ``subject`` without waiting; False (counted) when full."""
        if len(self.queue) >= self.capacity:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("memory events outbox full: %d events dropped", self.dropped)
            return False
        self.queue.append((subject, event))
        if not self._draining:
            try:
                self.system.start_soon(self._drain, name="memory-events")
            except (AssertionError, RuntimeError):  # the system is stopping: nobody to tell
                self.queue.clear()
                self.failed += 1
                return False
            self._draining = True
        self._wake.set()
        return True

    async def _drain(self) -> None:
        bus = self.system.bus
        try:
            while True:
                self._wake = anyio.Event()  # before looking: an offer from now on wakes us
                while self.queue:
                    subject, event = self.queue.popleft()
                    try:
                        await bus.publish(subject, event)
                        self.published += 1
                    except BusClosedError:  # the node is stopping: the rest goes nowhere
                        self.failed += 1 + len(self.queue)
                        self.queue.clear()
                    except Exception as exc:
                        self.failed += 1
                        logger.warning("memory event on %s not published: %r", subject, exc)
                await self._wake.wait()
        finally:
            self._draining = False

    def metrics(self) -> list[tuple[str, str, str, list[tuple[dict[str, str], float]]]]:
        """Prometheus families for ``/metrics`` (see ``somabrain.edge.metrics``)."""
        return [
            ("soma_memory_events_published_total", "counter",
             "Memory events published on the bus.", [({}, self.published)]),
            ("soma_memory_events_dropped_total", "counter",
             "Memory events dropped because the outbox was full.", [({}, self.dropped)]),
            ("soma_memory_events_failed_total", "counter",
             "Memory events the bus refused.", [({}, self.failed)]),
            ("soma_memory_events_queued", "gauge",
             "Memory events waiting for the bus.", [({}, len(self.queue))]),
        ]  # fmt: skip


class Announcer:
    """A memory actor's side: builds the events of one tenant's changes from the state after
    them and offers them to the node's outbox (never waits, never raises)."""

    def __init__(self, system: Any, memory: Any) -> None:
        self.outbox = outbox_of(system)
        self.memory = memory
        self.tenant: str = memory.tenant
        self.node = str(system.name)
        self.subject = event_subject(self.tenant)

    def _offer(self, **fields: Any) -> None:
        event = MemoryEvent(
            tenant=self.tenant, event_id=_next_id(), node=self.node, time=time.time(), **fields
        )
        self.outbox.offer(self.subject, event)

    def memories(self, keys: Iterable[str]) -> None:
        """``put`` (or ``delete``, when the key holds nothing now) for each of ``keys``."""
        for key in keys:
            m = self.memory.get(key)
            if m is None:
                self._offer(op="delete", namespace="", key=key, checksum="")
            else:
                self._offer(op="put", namespace=m.namespace, key=key,
                            checksum=memory_checksum(m), expires_at=m.expires_at)  # fmt: skip

    def forgotten(self, key: str, namespace: str) -> None:
        self._offer(op="delete", namespace=namespace, key=key, checksum="")

    def linked(self, link: Link) -> None:
        self._offer(op="link", namespace="", key=link.from_key, to_key=link.to_key,
                    rel=link.rel, checksum=link_checksum(link))  # fmt: skip

    def unlinked(self, from_key: str, to_key: str, rel: str) -> None:
        self._offer(op="unlink", namespace="", key=from_key, to_key=to_key, rel=rel, checksum="")


#: Event ids: a random prefix per process and a counter (unique without a syscall per id).
_ID_PREFIX = os.urandom(8).hex()
_ids = itertools.count(1)


def _next_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):016x}"


def outbox_of(system: Any) -> EventOutbox:
    """The node's outbox (created on first use, registered as a metrics source)."""
    outbox: EventOutbox | None = system.resources.get(_RESOURCE)
    if outbox is None:
        outbox = system.resources[_RESOURCE] = EventOutbox(system)
        system.resources.setdefault("metrics.sources", {})[_RESOURCE] = outbox.metrics
    return outbox
