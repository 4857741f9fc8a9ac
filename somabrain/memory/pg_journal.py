"""Per-tenant journals in PostgreSQL (``memory.postgres_url``): working memory
(``working_journal.py``) and the feedback associations (``associations.py``) as rows of the
memory database instead of files beside the log, so that whichever node opens the tenant next
(a cluster member taking over a dead member's tenants, a node on an empty data directory)
finds them as their last writer left them.

Table (created with the memory log's, ``pg_log.PostgresLogs.connect``)::

    soma_tenant_journal(tenant text, kind text, seq bigint, record bytea,
                        PRIMARY KEY (tenant, kind, seq))

``kind`` is the owner's (``working``, ``associations``), ``record`` the msgpack of one record
(as in a file frame), or empty: the marker each snapshot starts with. ``read`` gives the
records in ``seq`` order.

Writing. ``append`` encodes the record into a buffer, without an ``await``, so the buffer's
order is the owner's in-memory order. ``flush`` commits what was appended so far, together with
whatever else was appended until it began, in one statement (one round trip): while a flush is
in progress the next callers wait, then go as one (group commit, as the memory log's appenders
do). There is no background task: each owner flushes where it promises durability.
``sync`` is ``flush``; the kind says how durable a commit is: the associations' commits wait
for the database's WAL flush (``JournalKind.synchronous``), working memory's run with
``synchronous_commit = off`` (they survive a kill of the node; a crash of the database server
may lose the last ones, as a power loss may lose a file journal's page cache).

The promise, as the memory actor keeps it: a remember or a feedback that changed a session's
working memory is acknowledged after that change committed; a feedback's association is
committed (synchronously) before the feedback is acknowledged; a forget's removal of the key
from working memory and associations is committed before the forget is acknowledged. The file
journals give the same promise at their own cost (a ``write`` to the page cache; an fsync for
associations).

Snapshots. ``start`` writes the owner's snapshot after the highest ``seq`` of the tenant's rows
of that kind and deletes the rows before it, in one transaction; a flush does the same
(compaction) when the rows written since the last snapshot grow past four times its size (and
1 MiB).

One writer at a time. Each incarnation's ``start`` takes the journal over: its snapshot goes
after whatever rows are there, whoever wrote them, and starts with a marker row, so it always
takes the next ``seq``. Every later write of an incarnation reads the highest ``seq`` in its
transaction first and writes only if that is the incarnation's own last one. So a writer whose
journal another took over (a cluster member that has not heard yet that it lost the tenant)
writes nothing more: its journaling stops (``durable`` turns False, logged) instead of
interleaving with the new owner's rows, and the memory actor's reopen of the tenant (its memory
log is stale too) starts a fresh journal. Two writes racing for one ``seq`` collide on the
primary key: the loser's transaction does nothing; a takeover tries again, a stale writer stops.

Failures. When the database cannot be reached or refuses a write, the owner's in-memory state
goes on (``append``, ``flush`` and ``start`` never raise), the failure is logged once, and the
next write is a snapshot of the whole state in place of the records whose write failed: the
journal catches up at the first flush that reaches the database (``durable`` is False
meanwhile). A write whose answer was lost may have committed; the catch-up accepts either
outcome (its snapshot supersedes both), and any other rows found there mean another writer.
``read`` failing is the one error an owner sees (``LogError``): it then keeps its state in
memory only, for that incarnation, rather than overwrite rows it could not read.
"""

from __future__ import annotations

import logging
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
import msgspec

from ._journal import COMPACT_FACTOR, COMPACT_MIN_BYTES, JournalKind, Snapshot
from .pg_log import JOURNAL_TABLE, PostgresLogs, _store_error, _unavailable

__all__ = ["PostgresJournal", "PostgresJournals"]

logger = logging.getLogger("somabrain.memory")

R = TypeVar("R")

_MARKER = b""  # the first row of every snapshot
_ENCODER = msgspec.msgpack.Encoder()
_WHERE = "tenant = $1 AND kind = $2"
_READ = f"SELECT seq, record FROM {JOURNAL_TABLE} WHERE {_WHERE} ORDER BY seq"
_LAST_SEQ = f"SELECT coalesce(max(seq), 0) FROM {JOURNAL_TABLE} WHERE {_WHERE}"
_RECORDS = "unnest($4::bytea[]) WITH ORDINALITY AS r(record, n)"
# A snapshot's rows, numbered from $3 (in the snapshot's transaction).
_INSERT = (
    f"INSERT INTO {JOURNAL_TABLE} (tenant, kind, seq, record)"
    f" SELECT $1, $2, $3 + r.n - 1, r.record FROM {_RECORDS}"
)
# A flush's records after the writer's last seq ($3), only if that is still the highest: one
# statement (its own transaction), so one round trip. Working memory's runs with
# ``synchronous_commit = off``: ``set_config(..., true)`` lasts until the end of the statement's
# implicit transaction, whose commit is what it changes.
_APPEND = (
    f"{{prefix}}INSERT INTO {JOURNAL_TABLE} (tenant, kind, seq, record)"
    f" SELECT $1, $2, $3 + r.n, r.record FROM {{source}}{_RECORDS}"
    f" WHERE ({_LAST_SEQ}) = $3"
)
_APPEND_SYNC = _APPEND.format(prefix="", source="")
_APPEND_ASYNC = _APPEND.format(
    prefix="WITH c AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)) ",
    source="c, ",
)
_DELETE_BEFORE = f"DELETE FROM {JOURNAL_TABLE} WHERE {_WHERE} AND seq < $3"
# A takeover that lost a race for its seq reads the new highest one and tries again.
_TAKEOVER_TRIES = 5


class _Fenced(Exception):
    """Another writer's rows are ahead of this journal's own last one."""


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
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(kind.record_type)
        self._snapshot = snapshot
        self._lock = anyio.Lock()  # one write at a time, in append order
        self._pending: list[bytes] = []
        self._appended = 0  # records appended since start
        self._attempted = 0  # of those, the ones a write (done or failed) took
        self._last: int | None = None  # the highest seq this incarnation read or wrote
        self._doubt: int | None = None  # the highest seq a write whose answer was lost left
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
        self._last = rows[-1][0] if rows else 0
        records: list[R] = []
        for seq, payload in rows:
            if payload == _MARKER:
                continue
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
        payloads = [_MARKER, *map(_ENCODER.encode, self._snapshot())] if snapshot else pending
        if not payloads:
            return
        try:
            await self._commit(payloads, snapshot)
        except _Fenced as exc:
            logger.warning(
                "%s %s: another writer took the journal over (%s); journaling stops until "
                "the tenant's memory actor reopens the tenant",
                self.what,
                self._where,
                exc,
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
        import asyncpg

        tries = _TAKEOVER_TRIES if self._takeover else 1
        for attempt in range(tries):
            try:
                self._last = await self._transaction(payloads, snapshot)
            except asyncpg.UniqueViolationError as exc:
                if not self._takeover:  # a takeover's rows came first
                    raise _Fenced(f"seq taken: {exc}") from exc
                if attempt == tries - 1:
                    raise
                continue
            self._doubt = None
            return

    async def _transaction(self, payloads: list[bytes], snapshot: bool) -> int:
        """Write ``payloads`` after the highest seq (for a ``snapshot``, and delete the rows
        before them, in one transaction); the highest seq it wrote."""
        sent: int | None = None
        async with self._logs.pool.acquire(timeout=self._logs.timeout) as conn:
            try:
                if snapshot:
                    sent = await self._replace(conn, payloads)
                else:
                    assert self._last is not None and self._doubt is None
                    sent = self._last + len(payloads)
                    append = _APPEND_SYNC if self._kind.synchronous else _APPEND_ASYNC
                    status: str = await conn.execute(
                        append, self._tenant, self._kind.name, self._last, payloads
                    )
                    if status != f"INSERT 0 {len(payloads)}":  # the highest seq is not ours
                        raise _Fenced(f"rows past seq {self._last}, this writer's last")
            except _Fenced:
                raise
            except BaseException as exc:
                if not isinstance(exc, Exception) or _unavailable(exc):
                    if sent is not None:  # the commit may have landed: the catch-up accepts it
                        self._doubt = sent
                    conn.terminate()  # in doubt too: the pool replaces it
                raise
        return sent

    async def _replace(self, conn: Any, payloads: list[bytes]) -> int:
        """A snapshot's transaction (``start``'s, compaction's, a catch-up's): ``payloads``
        after the highest seq, the rows before them deleted; a takeover writes after any rows,
        the others only after their own (or a write in doubt's)."""
        tenant, kind = self._tenant, self._kind.name
        async with conn.transaction():
            if not self._kind.synchronous:
                await conn.execute("SET LOCAL synchronous_commit TO OFF")
            last: int = await conn.fetchval(_LAST_SEQ, tenant, kind)
            if not self._takeover and last not in (self._last, self._doubt):
                raise _Fenced(f"rows up to seq {last}, this writer's last is {self._last}")
            await conn.execute(_INSERT, tenant, kind, last + 1, payloads)
            await conn.execute(_DELETE_BEFORE, tenant, kind, last + 1)
        return last + len(payloads)
