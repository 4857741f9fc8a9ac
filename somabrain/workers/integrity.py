"""The integrity worker: every store holding a memory must agree with the source of truth.

Memory actors publish a :class:`MemoryEvent` on ``soma.memory.events`` for every write and
delete, with the checksum of what they stored (the embedded store is the source of truth). The
worker asks every registered replica (Redis, Postgres, the vector store, when configured) for
its checksum of that memory; a replica that disagrees is rewritten from the source of truth
when ``repair`` is on, and whatever cannot be repaired is reported: counted in
:meth:`IntegrityWorker.statistics`, and recorded as an audit event (``integrity.repaired`` or
``integrity.mismatch``) so that it is as durable and verifiable as any other decision.

Stores register themselves in ``system.resources["memory_stores"]`` (a list of objects
following :class:`MemoryStore`); with none registered beyond the source, every event checks
trivially (the dev node).
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Protocol

import msgspec

from ..actors import Actor, Msg
from ..audit import AuditDraft, AuditUnavailableError, request_meta
from .settings import IntegritySettings

__all__ = ["GetIntegrityStats", "IntegrityStats", "IntegrityWorker", "MemoryEvent", "MemoryStore"]

logger = logging.getLogger("somabrain.workers.integrity")


class MemoryEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Published by the memory actors after a durable write (``soma.memory.events``)."""

    op: Literal["put", "delete"]
    tenant: str
    namespace: str
    key: str
    #: SHA-256 of the stored memory's canonical form ("" for a delete).
    checksum: str
    event_id: str = ""


class MemoryStore(Protocol):
    name: str
    #: True for the store the others are repaired from.
    source_of_truth: bool

    async def checksum(self, tenant: str, namespace: str, key: str) -> str | None:
        """The checksum of the stored memory, or None when absent."""

    async def copy_from(self, source: MemoryStore, tenant: str, namespace: str, key: str) -> None:
        """Make this store's copy equal to ``source``'s (delete when the source has none)."""


class GetIntegrityStats(msgspec.Struct, frozen=True):
    pass


class IntegrityStats(msgspec.Struct, frozen=True):
    checked: int
    agreed: int
    repaired: int
    unrepaired: int


class IntegrityWorker(Actor):
    async def on_start(self) -> None:
        system = self.context.system
        config = system.resources.get("config")
        workers = getattr(config, "workers", None)
        self.settings: IntegritySettings = (
            workers.integrity if workers is not None else IntegritySettings()
        )
        self.checked = self.agreed = self.repaired = self.unrepaired = 0
        key = f"integrity:{self.context.path}"
        if key not in system.resources:  # subscribe once: the ref outlives incarnations
            system.resources[key] = await system.bus.subscribe_actor(
                self.settings.subject, self.context.ref, queue=self.settings.queue
            )

    async def receive(self, message: Any) -> Any:
        if isinstance(message, GetIntegrityStats):
            return IntegrityStats(self.checked, self.agreed, self.repaired, self.unrepaired)
        if isinstance(message, Msg):
            message = message.data
        if isinstance(message, dict):
            message = msgspec.convert(message, MemoryEvent)
        if not isinstance(message, MemoryEvent):
            raise TypeError(f"integrity worker does not handle {type(message).__name__}")
        await self.check(message)
        return None

    async def check(self, event: MemoryEvent) -> None:
        stores: list[MemoryStore] = list(self.context.system.resources.get("memory_stores", []))
        source = next((s for s in stores if s.source_of_truth), None)
        self.checked += 1
        expected: str | None = event.checksum or None
        if source is not None:
            expected = await source.checksum(event.tenant, event.namespace, event.key)
        bad: list[str] = []
        fixed: list[str] = []
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
        if not bad and not fixed:
            self.agreed += 1
            return
        self.repaired += len(fixed)
        self.unrepaired += len(bad)
        await self._report(event, fixed, bad)

    async def _report(self, event: MemoryEvent, fixed: list[str], bad: list[str]) -> None:
        audit = self.context.system.resources.get("audit")
        if audit is None:
            return
        draft = AuditDraft(
            tenant=event.tenant,
            actor="integrity-worker",
            action="integrity.mismatch" if bad else "integrity.repaired",
            decision="error" if bad else "allow",
            reason=f"repaired: {','.join(fixed) or '-'}; unrepaired: {','.join(bad) or '-'}",
            request=request_meta(
                attributes={"key": event.key, "namespace": event.namespace, "op": event.op}
            ),
        )
        try:
            await audit.record(draft)
        except AuditUnavailableError as exc:
            logger.error("integrity: could not audit a mismatch of %s: %r", event.key, exc)
