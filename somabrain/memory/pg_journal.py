"""Per-tenant journals in PostgreSQL (``memory.postgres_url``): working memory
(``working_journal.py``) and the feedback associations (``associations.py``) as rows of the
memory database instead of files beside the log, so that whichever node opens the tenant next
(a cluster member taking over a dead member's tenants, a node on an empty data directory)
finds them as their last writer left them.

Tables (created with the memory log's, ``pg_log.PostgresLogs.connect``)::

    soma_tenant_journal(tenant text, kind text, seq bigint, record bytea,
                        PRIMARY KEY (tenant, kind, seq))
    soma_tenant_journal_head(tenant text, kind text, writer text, last bigint,
                             PRIMARY KEY (tenant, kind))

``kind`` is the owner's (``working``, ``associations``), ``record`` the msgpack of one record
(as in a file frame); ``read`` gives the records in ``seq`` order. The head row says which
writer (one incarnation of the journal: a random id) owns the journal and the last ``seq``
given out; every write advances it, and its row lock orders the writes of one journal.

Writing. ``append`` encodes the record into a buffer, without an ``await``, so the buffer's
order is the owner's in-memory order. ``flush`` commits what was appended so far, together with
whatever else was appended until it began, in one statement (one round trip): while a flush is
in progress the next callers wait, then go as one (group commit, as the memory log's appenders
do). There is no background task: each owner flushes where it promises durability. ``sync`` is
``flush``; the kind says how durable a commit is: the associations' commits wait for the
database's WAL flush (``JournalKind.synchronous``), working memory's run with
``synchronous_commit = off`` (they survive a kill of the node; a crash of the database server
may lose the last ones, as a power loss may lose a file journal's page cache).

The promise, as the memory actor keeps it: a remember or a feedback that changed a session's
working memory is acknowledged after that change committed; a feedback's association is
committed (synchronously) before the feedback is acknowledged; a forget's removal of the key
from working memory and associations is committed before the forget is acknowledged. The file
journals give the same promise at their own cost (a ``write`` to the page cache; an fsync for
associations).

Snapshots. ``start`` writes the owner's snapshot after the last ``seq`` and deletes the rows
before it, in one transaction; a flush does the same (compaction) when the rows written since
the last snapshot grow past four times its size (and 1 MiB).

One writer at a time. Each incarnation's ``start`` takes the journal over: it makes itself the
head's writer, whoever was, and replaces the rows by its snapshot. Every later write of an
incarnation advances the head only while the head still names it (a compare-and-swap: the row
lock makes a concurrent write wait, and the condition is checked again on the row as that
write left it), and numbers its rows from there. So a writer whose journal another took over
(a cluster member that has not heard yet that it lost the tenant) writes nothing more: its
journaling stops (``durable`` turns False, logged) instead of interleaving with the new
owner's rows, and the memory actor's reopen of the tenant (its memory log is stale too) starts
a fresh journal. Changes the old writer made after the new one read the rows are superseded by
the new one's snapshot, as a takeover implies.

Failures. When the database cannot be reached or refuses a write, the owner's in-memory state
goes on (``append``, ``flush`` and ``start`` never raise), the failure is logged once, and the
next write is a snapshot of the whole state in place of the records whose write failed: the
journal catches up at the first flush that reaches the database (``durable`` is False
meanwhile). A write whose answer was lost may have committed; the catch-up's snapshot
supersedes it either way. ``read`` failing is the one error an owner sees (``LogError``): it
then keeps its state in memory only, for that incarnation, rather than overwrite rows it could
not read.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
import msgspec

from ._journal import COMPACT_FACTOR, COMPACT_MIN_BYTES, JournalKind, Snapshot
from .pg_log import JOURNAL_HEAD_TABLE, JOURNAL_TABLE, PostgresLogs, _store_error, _unavailable

__all__ = ["PostgresJournal", "PostgresJournals"]

logger = logging.getLogger("somabrain.memory")

R = TypeVar("R")

_ENCODER = msgspec.msgpack.Encoder()
_WHERE = "tenant = $1 AND kind = $2"
_READ = f"SELECT seq, record FROM {JOURNAL_TABLE} WHERE {_WHERE} ORDER BY seq"
# The head, for $4 more rows: made this writer's ($3) whoever's it was (a takeover), or
# advanced only while it is this writer's (none returned: another writer took it over).
_TAKE_OVER = (
    f"INSERT INTO {JOURNAL_HEAD_TABLE} AS h (tenant, kind, writer, last) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (tenant, kind) DO UPDATE SET writer = $3, last = h.last + $4 RETURNING last"
)
_ADVANCE = (
    f"UPDATE {JOURNAL_HEAD_TABLE} SET last = last + $4 WHERE {_WHERE} AND writer = $3"
    " RETURNING last"
)
_RECORDS = "unnest($4::bytea[]) WITH ORDINALITY AS r(record, n)"
# A snapshot's rows, numbered from $3, and the rows before them (in the snapshot's transaction).
_INSERT = (
    f"INSERT INTO {JOURNAL_TABLE} (tenant, kind, seq, record)"
    f" SELECT $1, $2, $3 + r.n - 1, r.record FROM {_RECORDS}"
)
_DELETE_BEFORE = f"DELETE FROM {JOURNAL_TABLE} WHERE {_WHERE} AND seq < $3"
# A flush: the head advanced by the records' count while it is this writer's ($3), and the
# records numbered up to its new last; nothing when another writer has the head. One statement
# (its own transaction), so one round trip. Working memory's runs with ``synchronous_commit =
# off``: ``set_config(..., true)`` lasts until the end of the statement's implicit
# transaction, whose commit is what it changes.
_APPEND = (
    f"WITH h AS (UPDATE {JOURNAL_HEAD_TABLE} SET last = last + cardinality($4::bytea[])"
    f" WHERE {_WHERE} AND writer = $3 RETURNING last){{settings}}"
    f" INSERT INTO {JOURNAL_TABLE} (tenant, kind, seq, record)"
    f" SELECT $1, $2, h.last - cardinality($4::bytea[]) + r.n, r.record"
    f" FROM h, {{source}}{_RECORDS}"
)
_APPEND_SYNC = _APPEND.format(settings="", source="")
_APPEND_ASYNC = _APPEND.format(
    settings=", c AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true))",
    source="c, ",
)


class _Fenced(Exception):
    """Another writer took the journal over."""


class PostgresJournals:
    """A tenant's journals in the memory database (the owners' ``Journals``)."""

    def __init__(self, logs: PostgresLogs, tenant: str) -> None:
        self.logs = logs
        self.tenant = tenant

    def journal(self, kind: JournalKind[R], snapshot: Snapshot[R]) -> PostgresJournal[R]:
        return PostgresJournal(self.logs, self.tenant, kind, snapshot)


class PostgresJournal(Generic[R]):
    """The rows of one tenant and kind, with ``Journal``'s interface (module docstring)."""

    def __init__(
        self, logs: PostgresLogs, tenant: str, kind: JournalKind[R], snapshot: Snapshot[R]
    ) -> None:
        self._logs = logs
        self._tenant = tenant
        self._kind = kind
        self.what = kind.what
        self._where = f"{logs.url}#{tenant}/{kind.name}"
        self._writer = uuid.uuid4().hex  # this incarnation, in the head row
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(kind.record_type)
        self._snapshot = snapshot
        self._lock = anyio.Lock()  # one write at a time, in append order
        self._pending: list[bytes] = []
        self._appended = 0  # records appended since start
        self._attempted = 0  # of those, the ones a write (done or failed) took
        self._started = False
        self._takeover = True  # the next write takes the journal over (``start``'s)
        self._catch_up = True  # the next write is a snapshot (``start``'s, or after a failure)
        self._failing = False
        self._stopped = False  # closed, or another writer took the journal over
        self._size = 0  # bytes of the rows since the last snapshot, that one included
        self._compact_at = COMPACT_MIN_BYTES
        self.writes = self.snapshots = 0

    @property
    def where(self) -> str:
        return self._where

    @property
    def durable(self) -> bool:
        return self._started and not self._failing and not self._stopped

    async def read(self) -> list[R]:
        """The tenant's records of this kind, in order. Raises ``LogError``."""
        try:
            rows = await self._logs.pool.fetch(
                _READ, self._tenant, self._kind.name, timeout=6 * self._logs.timeout
            )
        except Exception as exc:
            raise _store_error(self._where, f"read the {self.what} from", exc) from exc
        records: list[R] = []
        for seq, payload in rows:
            try:
                records.append(self._decoder.decode(payload))
            except msgspec.DecodeError as exc:  # a version skew: as a file's corrupt tail
                logger.warning(
                    "%s %s: row %d does not decode, ignoring it and the rest: %r",
                    self.what,
                    self._where,
                    seq,
                    exc,
                )
                break
        return records

    async def start(self) -> None:
        """Take the journal over: the owner's snapshot replaces the rows, whoever wrote them,
        and journaling begins. A failure is logged; the next flush tries again."""
        self._started = True
        await self._flush(force=True)

    def append(self, record: R) -> None:
        """Buffer one record, in the caller's order (no await); ``flush`` commits it."""
        if not self._started or self._stopped:
            return
        self._pending.append(_ENCODER.encode(record))
        self._appended += 1

    async def flush(self) -> None:
        """Commit what was appended so far (never raises: a failure is logged)."""
        await self._flush(force=False)

    async def sync(self) -> None:
        """``flush``: the kind says whether the commit waits for the WAL flush."""
        await self._flush(force=False)

    async def aclose(self) -> None:
        """Commit what is left (a snapshot if a write failed meanwhile) and stop journaling."""
        if self._stopped:
            return
        with anyio.CancelScope(shield=True):
            if self._started:
                await self._flush(force=self._catch_up)
            self._stopped = True
            self._pending = []

    # --- writing -----------------------------------------------------------------------------

    async def _flush(self, *, force: bool) -> None:
        target = self._appended
        if not self._started or self._stopped or (not force and self._attempted >= target):
            await anyio.lowlevel.checkpoint()
            return
        async with self._lock:
            # The write that held the lock took our records (done, or failed and logged).
            if self._stopped or (not force and self._attempted >= target):
                return
            # Bounded by the pool's timeouts; abandoning it would leave the waiters' records
            # to a write nobody finishes.
            with anyio.CancelScope(shield=True):
                await self._write()

    async def _write(self) -> None:
        # No await until the snapshot is taken: it must be the state the pending records led to.
        self._attempted = self._appended
        pending, self._pending = self._pending, []
        added = sum(map(len, pending))
        snapshot = self._catch_up or self._size + added > self._compact_at
        payloads = list(map(_ENCODER.encode, self._snapshot())) if snapshot else pending
        if not snapshot and not payloads:
            return
        try:
            await self._commit(payloads, snapshot)
        except _Fenced:
            logger.warning(
                "%s %s: another writer took the journal over; journaling stops until the "
                "tenant's memory actor reopens the tenant",
                self.what,
                self._where,
            )
            self._stopped = True
            self._pending = []
            return
        except Exception as exc:
            self._catch_up = True
            if not self._failing:
                self._failing = True
                logger.error(
                    "%s %s: write failed, the in-memory state goes on and the journal catches "
                    "up with a snapshot at the next flush that reaches the database: %r",
                    self.what,
                    self._where,
                    exc,
                )
            return
        if self._failing:
            self._failing = False
            logger.warning("%s %s: caught up with the database", self.what, self._where)
        self.writes += 1
        if snapshot:
            self.snapshots += 1
            self._catch_up = self._takeover = False
            self._size = sum(map(len, payloads))
            self._compact_at = max(COMPACT_MIN_BYTES, COMPACT_FACTOR * self._size)
        else:
            self._size += added

    async def _commit(self, payloads: list[bytes], snapshot: bool) -> None:
        """Write ``payloads`` after the head's last seq (a ``snapshot`` also deletes the rows
        before them, in the same transaction). Raises ``_Fenced`` when another writer has the
        head."""
        tenant, kind, count = self._tenant, self._kind.name, len(payloads)
        async with self._logs.pool.acquire(timeout=self._logs.timeout) as conn:
            try:
                if not snapshot:
                    append = _APPEND_SYNC if self._kind.synchronous else _APPEND_ASYNC
                    status: str = await conn.execute(append, tenant, kind, self._writer, payloads)
                    if status != f"INSERT 0 {count}":
                        raise _Fenced
                    return
                async with conn.transaction():
                    if not self._kind.synchronous:
                        await conn.execute("SET LOCAL synchronous_commit TO OFF")
                    head = _TAKE_OVER if self._takeover else _ADVANCE
                    last: int | None = await conn.fetchval(head, tenant, kind, self._writer, count)
                    if last is None:
                        raise _Fenced
                    first = last - count + 1
                    if payloads:
                        await conn.execute(_INSERT, tenant, kind, first, payloads)
                    await conn.execute(_DELETE_BEFORE, tenant, kind, first)
            except _Fenced:
                raise
            except BaseException as exc:
                if not isinstance(exc, Exception) or _unavailable(exc):
                    conn.terminate()  # in doubt: the pool replaces it (the catch-up settles it)
                raise
