"""Durable working memory: ``WorkingMemory`` whose changes are journaled, per tenant.

What is kept: keys only. A session's buffer is a list of memory keys in order; the items
(content, embedding, tokens) are rebuilt from the tenant's memories when the journal is opened,
by the function the memory actor fills working memory with. So a forgotten or expired memory
cannot come back: its key finds nothing and is dropped, and the journal is rewritten without it.

Where: a file beside the tenant's memory log (the CRC-framed record journal of ``_journal.py``,
magic ``SBWMJ``, version 1), or, with ``memory.postgres_url``, rows of kind ``working`` in the
memory database (``pg_journal.py``), so that whichever node opens the tenant next (a cluster
member standing in for a dead one, a node on an empty data directory) finds its sessions.

Why a journal of its own and not records in the tenant's memory log (``log.py``): the memory
log holds what the tenant's state *is* and is rewritten from that state on compaction; working
memory is a view of recent activity that changes on every session write and has its own
bounds (capacity, sessions). Putting it in the memory log would tie every working-memory
change to the log's fsync and make compaction carry a second kind of state. A separate
journal costs one small write per change and can be thrown away without touching a memory.

Records: ``Added(session, keys)`` (the ``WorkingMemory.add`` of those keys), ``Discarded(key)``,
``Cleared(session)``. Replaying them through a ``WorkingMemory`` with the same bounds gives the
same sessions (least recently touched first) and the same item order, eviction included.

Durability: each change is appended at the moment it is applied in memory and without an
``await`` in between, so the journal's order is the in-memory order even though the actor's
writes run concurrently; the memory actor ``flush``es before it acknowledges a remember or a
feedback that changed a session. A file: the change is written with one ``write`` to the page
cache at once (a few microseconds, cheaper than a hop to a worker thread, so it is done on the
event loop), which survives a kill of the actor and a kill -9 of the process; a power loss may
lose the last changes (no fsync per change: working memory is short-lived context, and the
memories themselves are in the fsynced log). The database: the flush commits the changes
appended so far (concurrent ones share a transaction) with ``synchronous_commit = off``, which
survives a kill of the node; a crash of the database server may lose its last commits, as a
power loss the page cache.

Compaction, torn tails and errors: see ``_journal.py`` and ``pg_journal.py``. Snapshots written
at run time are not fsynced, to keep the event loop free (a few ms at the default bounds). A
failure of the journal's store never fails a remember (it must not fail because its context
cache could not be written): the in-memory working memory goes on, and journaling stops for
this incarnation (a file) or catches up at the next flush that reaches the database.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import msgspec
import numpy as np

from ._journal import Journal, JournalKind, Journals, open_journal
from .errors import LogError
from .log import tenant_log_path
from .working import WMItem, WorkingMemory

__all__ = ["DurableWorkingMemory", "working_journal_path"]

logger = logging.getLogger("somabrain.memory")

MAGIC = b"SBWMJ\x00\x00\x01"


class Added(msgspec.Struct, frozen=True, tag=True, array_like=True):
    session: str
    keys: list[str]


class Discarded(msgspec.Struct, frozen=True, tag=True, array_like=True):
    key: str


class Cleared(msgspec.Struct, frozen=True, tag=True, array_like=True):
    session: str


Record = Added | Discarded | Cleared
KIND: JournalKind[Record] = JournalKind("working", MAGIC, Record, what="working-memory journal")

#: Builds the items of ``keys`` (known memories only, in order): the memory actor's own path.
ItemsOf = Callable[[Sequence[str]], list[WMItem]]


def working_journal_path(data_dir: str | os.PathLike[str], tenant: str) -> Path:
    """The journal of ``tenant``'s working memory, beside its memory log."""
    return tenant_log_path(data_dir, tenant).with_suffix(".wmj")


class DurableWorkingMemory(WorkingMemory):
    """``WorkingMemory`` that journals its changes (see the module docstring). Open it with
    ``open``; close it with ``aclose`` once nothing changes it any more."""

    def __init__(
        self,
        where: str | os.PathLike[str] | Journals,
        capacity: int = 32,
        *,
        max_sessions: int = 1024,
        recency_weight: float = 0.2,
    ) -> None:
        super().__init__(capacity, max_sessions=max_sessions, recency_weight=recency_weight)
        self._journal: Journal[Record] = open_journal(where, KIND, self._snapshot)

    @classmethod
    async def open(
        cls,
        where: str | os.PathLike[str] | Journals,
        items_of: ItemsOf,
        capacity: int = 32,
        *,
        max_sessions: int = 1024,
        recency_weight: float = 0.2,
    ) -> DurableWorkingMemory:
        """Replay the journal (a file at ``where``, created if missing, or ``where``'s),
        rebuild the items with ``items_of`` and rewrite the journal as a snapshot of the
        result."""
        wm = cls(where, capacity, max_sessions=max_sessions, recency_weight=recency_weight)
        try:
            records = await wm._journal.read()
        except (OSError, LogError) as exc:
            logger.error("working memory journal %s unreadable, not durable: %r", wm.where, exc)
            return wm
        for session, keys in wm._replay(records):
            items = items_of(keys)
            if items:
                WorkingMemory.add(wm, session, items)
        try:
            await wm._journal.start()
        except (OSError, LogError) as exc:
            logger.error("working memory journal %s unwritable, not durable: %r", wm.where, exc)
        return wm

    def _replay(self, records: Iterable[Record]) -> list[tuple[str, list[str]]]:
        """The sessions the records leave (least recently touched first), keys oldest first:
        replayed through a ``WorkingMemory`` with these bounds, so eviction is the same."""
        keys_only = WorkingMemory(self.capacity, max_sessions=self.max_sessions)
        blank = np.zeros(0, dtype=np.float32)
        for record in records:
            match record:
                case Added(session=session, keys=keys):
                    keys_only.add(session, [WMItem(k, "", blank, frozenset(), 0.0) for k in keys])
                case Discarded(key=key):
                    keys_only.discard(key)
                case Cleared(session=session):
                    keys_only.clear(session)
        return [(s, [it.key for it in keys_only.items(s)]) for s in keys_only.sessions()]

    # --- changes ---------------------------------------------------------------------------

    def add(self, session: str, items: Iterable[WMItem]) -> None:
        items = list(items)
        super().add(session, items)
        self._journal.append(Added(session, [it.key for it in items]))

    def discard(self, key: str) -> None:
        super().discard(key)
        self._journal.append(Discarded(key))

    def clear(self, session: str) -> bool:
        cleared = super().clear(session)
        if cleared:
            self._journal.append(Cleared(session))
        return cleared

    # --- the journal -----------------------------------------------------------------------

    @property
    def where(self) -> str:
        """Where the journal is (a path, or the database and tenant), for logs."""
        return self._journal.where

    @property
    def durable(self) -> bool:
        """False once journaling stopped (closed, or after a failure of its store)."""
        return self._journal.durable

    def _snapshot(self) -> list[Record]:
        return [Added(s, [it.key for it in self.items(s)]) for s in self.sessions()]

    async def flush(self) -> None:
        """The changes made so far survive a kill of the process (module docstring)."""
        await self._journal.flush()

    async def aclose(self) -> None:
        """Flush the journal and stop journaling (later changes stay in memory)."""
        await self._journal.aclose()
