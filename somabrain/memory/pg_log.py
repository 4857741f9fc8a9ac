"""The memory log in PostgreSQL (``memory.postgres_url``): the same records as the file log,
one row each, so a node keeps no memory on its own disk.

Table (created on first use)::

    soma_memory_log(tenant text, seq bigint, record bytea, PRIMARY KEY (tenant, seq))

``record`` is the msgpack of one ``LogRecord`` (as in a file frame), ``seq`` its position in
the tenant's log. Opening a tenant's log reads its rows in ``seq`` order; replaying them
rebuilds the tenant exactly as the file log does.

Appends are group-committed (``_group_commit``): the records of concurrent appends go in one
transaction, and each append returns once that transaction committed, which PostgreSQL makes
durable (its WAL is flushed at commit) before it answers. ``fsync = "never"`` commits with
``synchronous_commit = off`` (the database may lose its last commits in a crash of the
database server, never in a crash of the node). Batches commit one after the other, in log
order.

One writer at a time per tenant: the ``seq`` of every row is the writer's own count, so two
nodes (or two handles) appending to one tenant collide on the primary key, and the second's
write fails rather than interleave. Its log then refuses further appends (``LogStaleError``:
its view of the tenant is behind the table), and the memory actor reopens the tenant, which
replays the other writer's records, before its next message. Each write is one atomic
statement (``executemany``, which asyncpg runs in one implicit transaction, or ``COPY``): when
the server answers with an error, nothing of it took effect and the log goes on. When it does
not answer (the connection dropped, a timeout), the write is in doubt: it may have committed.
The next flush first reads the tenant's last ``seq``; if the write is not there the log goes
on, and if it is, the log is stale, as above. Either way no acknowledged write is lost and
nothing unacknowledged is reported as written.

Compaction (``rewrite``) inserts the live records after the current last ``seq`` and deletes
the rows before them, in one transaction: a reader sees the old log or the new one, and the
numbering keeps rising so the one-writer check holds across compactions.

The same database keeps the tenants' small learned states (``PostgresStates``: a row per
tenant and kind in ``soma_tenant_state``; the planner's adaptation weights) and their journals
(``pg_journal.py``: working memory and associations, rows of ``soma_tenant_journal`` and a head
row each in ``soma_tenant_journal_head``), so that a cluster member standing in for another
finds them too.

asyncpg runs on asyncio only: a node on the trio backend refuses ``memory.postgres_url``.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import msgspec

from ._group_commit import Batch, GroupCommit
from .errors import (
    LogClosedError,
    LogCorruptError,
    LogError,
    LogStaleError,
    LogUnavailableError,
)
from .log import FsyncPolicy, LogStatistics
from .types import LogRecord

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "JOURNAL_HEAD_TABLE",
    "JOURNAL_TABLE",
    "POSTGRES_RESOURCE",
    "STATE_TABLE",
    "TABLE",
    "PostgresLogs",
    "PostgresMemoryLog",
    "PostgresStates",
    "close_postgres_logs",
    "memory_store_health",
    "redacted_url",
    "shared_postgres_logs",
]

TABLE = "soma_memory_log"
POSTGRES_RESOURCE = "memory.postgres"  # the node's PostgresLogs, in system.resources
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    tenant text NOT NULL,
    seq bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (tenant, seq)
)"""
#: Tenants' small learned states (``kind``: "adaptation", the planner's weights), one row each.
STATE_TABLE = "soma_tenant_state"
_STATE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
    tenant text NOT NULL,
    kind text NOT NULL,
    state bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, kind)
)"""
#: Tenants' journals (``pg_journal.py``; ``kind``: "working", "associations"), a row a record,
#: and each journal's head: which writer owns it, and its last ``seq``.
JOURNAL_TABLE = "soma_tenant_journal"
JOURNAL_HEAD_TABLE = "soma_tenant_journal_head"
_JOURNAL_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {JOURNAL_TABLE} (
    tenant text NOT NULL,
    kind text NOT NULL,
    seq bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (tenant, kind, seq)
)"""
_JOURNAL_HEAD_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {JOURNAL_HEAD_TABLE} (
    tenant text NOT NULL,
    kind text NOT NULL,
    writer text NOT NULL,
    last bigint NOT NULL,
    PRIMARY KEY (tenant, kind)
)"""
_COLUMNS = ("tenant", "seq", "record")
_INSERT = f"INSERT INTO {TABLE} (tenant, seq, record) VALUES ($1, $2, $3)"
_LAST_SEQ = f"SELECT coalesce(max(seq), 0) FROM {TABLE} WHERE tenant = $1"
# Above this many rows a flush uses COPY (one round trip) rather than a prepared INSERT per row.
_COPY_FROM = 64
_ENCODER = msgspec.msgpack.Encoder()
_DECODER: msgspec.msgpack.Decoder[LogRecord] = msgspec.msgpack.Decoder(LogRecord)


def redacted_url(url: str) -> str:
    """``url`` without its password, for logs, statistics and error messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=user + host))


def _unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or the connection is in doubt
    (rather than the server refusing the SQL with an answer)."""
    import asyncpg

    if isinstance(exc, asyncpg.PostgresConnectionError):
        return True
    if isinstance(exc, asyncpg.PostgresError):  # the server answered; unless it is going down
        return str(getattr(exc, "sqlstate", "")).startswith("57P")
    # A lost or timed-out connection, or the client's state machine after one; not a URL that
    # asyncpg cannot use (ValueError, TypeError): trying that again would not help.
    return not isinstance(exc, ValueError | TypeError)


def _store_error(where: str, doing: str, exc: Exception) -> LogError:
    """What the memory actor makes of a failure (a ``LogError``: the tenant answers 503, and
    tries again when the database could not be reached)."""
    if _unavailable(exc):
        return LogUnavailableError(where, exc)
    return LogError(where, f"could not {doing} the database: {exc!r}")


class PostgresLogs:
    """The node's connection pool to the memory database; opens the tenants' logs in it."""

    def __init__(self, pool: asyncpg.Pool, url: str, timeout: float = 10.0) -> None:
        self.pool = pool
        self.url = redacted_url(url)
        self.timeout = timeout

    @classmethod
    async def connect(
        cls, url: str, *, max_connections: int = 10, timeout: float = 10.0
    ) -> PostgresLogs:
        """A pool to ``url``, with the tables created if they are missing."""
        import asyncpg

        where = redacted_url(url)
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=max_connections, command_timeout=timeout, timeout=timeout
            )
        except Exception as exc:
            raise _store_error(where, "connect to", exc) from exc
        try:
            async with pool.acquire() as conn, conn.transaction():
                # Two nodes starting at once would race on CREATE TABLE's catalog rows.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", TABLE)
                await conn.execute(_SCHEMA)
                await conn.execute(_STATE_SCHEMA)
                await conn.execute(_JOURNAL_SCHEMA)
                await conn.execute(_JOURNAL_HEAD_SCHEMA)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await pool.close()
            if isinstance(exc, Exception):
                raise _store_error(where, f"create the table {TABLE} in", exc) from exc
            raise
        return cls(pool, url, timeout)

    async def open_tenant(
        self, tenant: str, *, fsync: FsyncPolicy = "group", group_window: float = 0.0
    ) -> PostgresMemoryLog:
        """The log of ``tenant``, its rows read for ``replay``."""
        where = f"{self.url}#{tenant}"
        try:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(
                    f"SELECT seq, record FROM {TABLE} WHERE tenant = $1 ORDER BY seq",
                    tenant,
                    timeout=6 * self.timeout,  # a large tenant's rows take a while to come
                )
        except Exception as exc:
            raise _store_error(where, "read the log from", exc) from exc
        return PostgresMemoryLog(self, tenant, rows, fsync=fsync, group_window=group_window)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await self.pool.close()

    async def health(self, timeout: float = 1.0) -> dict[str, Any]:
        """The pool's size and whether the database answers a ``SELECT 1`` within
        ``timeout`` seconds (for ``/health``)."""
        reachable = True
        try:
            with anyio.fail_after(timeout):
                await self.pool.fetchval("SELECT 1")
        except Exception:
            reachable = False
        return {
            "connections": self.pool.get_size(),
            "idle": self.pool.get_idle_size(),
            "max_connections": self.pool.get_max_size(),
            "reachable": reachable,
        }


class PostgresMemoryLog(GroupCommit):
    """A tenant's log in PostgreSQL, with ``MemoryLog``'s interface (module docstring)."""

    def __init__(
        self,
        logs: PostgresLogs,
        tenant: str,
        rows: Sequence[Any],
        *,
        fsync: FsyncPolicy,
        group_window: float,
    ) -> None:
        super().__init__(group_window, fsync, len(rows))
        self._logs = logs
        self._tenant = tenant
        self._where = f"{logs.url}#{tenant}"
        self._rows: Sequence[Any] | None = rows  # (seq, record) records, let go after replay
        self._last_seq = rows[-1][0] if rows else 0
        self._size = sum(len(r[1]) for r in rows)
        self._io_lock = anyio.Lock()
        self._broken: BaseException | None = None
        self._in_doubt = False  # a commit failed without an answer: did it land?
        self._appends = self._commits = self._compactions = 0

    def replay(self) -> Iterator[LogRecord]:
        """Yield the records read at open, in order (once: the rows are let go afterwards)."""
        rows, self._rows = self._rows or (), None
        for seq, payload in rows:
            try:
                yield _DECODER.decode(payload)
            except msgspec.DecodeError as exc:
                raise LogCorruptError(self._where, seq, str(exc)) from exc

    # --- introspection -------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._where

    def statistics(self) -> LogStatistics:
        return LogStatistics(
            path=self._where,
            policy=self._policy,
            records=self._records,
            size_bytes=self._size,
            appends=self._appends,
            writes=self._commits,
            fsyncs=self._commits if self._policy != "never" else 0,
            truncated_bytes=0,
            compactions=self._compactions,
        )

    # --- appending -------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise LogClosedError(self._where)
        if self._broken is not None:
            raise LogStaleError(self._where, self._broken)

    async def append_many(self, records: Sequence[LogRecord]) -> None:
        """Append records in order; returns once their transaction committed."""
        self._check_usable()
        if not records:
            await anyio.lowlevel.checkpoint()
            return
        await self._append_group([_ENCODER.encode(r) for r in records], len(records))

    async def _flush_batch(self, batch: Batch) -> None:
        try:
            async with self._io_lock:
                if self._closed:
                    batch.error = partial(LogClosedError, self._where)
                    return
                payloads = _payloads(batch)
                if payloads:
                    try:
                        await self._commit(payloads)
                    except LogError as exc:
                        batch.error = partial(_fresh_copy, exc)
        finally:
            batch.done = True

    async def _commit(self, payloads: list[bytes], *, replace: bool = False) -> None:
        """Insert ``payloads`` after the last seq (and, for ``replace``, delete the rows before
        them) in one transaction; the caller holds ``_io_lock``."""
        import asyncpg

        self._check_usable()
        if self._in_doubt:
            await self._settle_doubt()
        first = self._last_seq + 1
        rows = [(self._tenant, first + i, p) for i, p in enumerate(payloads)]
        try:
            async with self._logs.pool.acquire() as conn:
                try:
                    await self._insert(conn, rows, replace)
                except BaseException as exc:
                    if not isinstance(exc, Exception) or _unavailable(exc):
                        # The commit may have been sent: settle it before the next one. The
                        # connection is in doubt too: closed, the pool replaces it.
                        self._in_doubt = True
                        conn.terminate()
                    raise
        except asyncpg.UniqueViolationError as exc:
            # Rows this writer did not write: another writer appended to the tenant.
            self._broken = exc
            raise LogStaleError(self._where, exc) from exc
        except Exception as exc:
            if _unavailable(exc):
                raise LogUnavailableError(self._where, exc) from exc
            # The server answered with an error: the statement (and its transaction) did not
            # take effect.
            raise LogError(self._where, f"the database refused the write: {exc!r}") from exc
        self._in_doubt = False
        self._last_seq += len(rows)
        added = sum(len(p) for p in payloads)
        if replace:
            self._records, self._size = len(rows), added
            self._compactions += 1
        else:
            self._records += len(rows)
            self._size += added
            self._appends += len(rows)
        self._commits += 1

    async def _insert(self, conn: Any, rows: list[tuple[str, int, bytes]], replace: bool) -> None:
        """One atomic write: ``executemany`` (one implicit transaction since asyncpg 0.22, a
        single round trip) or ``COPY`` for many rows; an explicit transaction only where a
        second statement must join it (compaction's delete, ``synchronous_commit = off``)."""
        many = len(rows) >= _COPY_FROM
        first = self._last_seq + 1
        if not replace and self._policy != "never":
            if many:
                await conn.copy_records_to_table(TABLE, records=rows, columns=_COLUMNS)
            else:
                await conn.executemany(_INSERT, rows)
            return
        async with conn.transaction():
            if self._policy == "never":
                await conn.execute("SET LOCAL synchronous_commit TO OFF")
            if many:
                await conn.copy_records_to_table(TABLE, records=rows, columns=_COLUMNS)
            elif rows:
                await conn.executemany(_INSERT, rows)
            if replace:
                await conn.execute(
                    f"DELETE FROM {TABLE} WHERE tenant = $1 AND seq < $2", self._tenant, first
                )

    async def _settle_doubt(self) -> None:
        """After a commit that got no answer: go on if it did not land, break if it did."""
        try:
            async with self._logs.pool.acquire() as conn:
                last = await conn.fetchval(_LAST_SEQ, self._tenant)
        except Exception as exc:
            if _unavailable(exc):
                raise LogUnavailableError(self._where, exc) from exc
            raise
        self._in_doubt = False
        if last != self._last_seq:
            self._broken = RuntimeError(
                f"a commit whose answer was lost did land (last seq {last}, expected "
                f"{self._last_seq}): reopen the tenant to replay it"
            )
            raise LogStaleError(self._where, self._broken)

    # --- compaction and closing --------------------------------------------------------------

    async def rewrite(self, records: Iterable[LogRecord]) -> None:
        """Replace the tenant's rows by ``records`` (compaction), in one transaction."""
        self._check_usable()
        payloads = [_ENCODER.encode(r) for r in records]
        async with self._io_lock:
            with anyio.CancelScope(shield=True):
                await self._commit(payloads, replace=True)

    async def aclose(self) -> None:
        """Commit what cancelled leaders left behind, then let go. Idempotent; the pool is
        the node's (``PostgresLogs.aclose``)."""
        if self._closed:
            return
        with anyio.CancelScope(shield=True):
            async with self._io_lock:
                if self._closed:
                    return
                batch = self._take_open_batch()
                try:
                    payloads = _payloads(batch)
                    if payloads and self._broken is None:
                        with contextlib.suppress(LogError):
                            await self._commit(payloads)
                finally:
                    batch.done = True
                    self._closed = True


async def shared_postgres_logs(
    resources: dict[str, Any], url: str, *, max_connections: int = 10, timeout: float = 10.0
) -> PostgresLogs:
    """The node's pool to the memory database, connected on first use. A failure to connect
    (``LogUnavailableError``) is not kept: the next caller tries again."""
    found: PostgresLogs | None = resources.get(POSTGRES_RESOURCE)
    if found is not None:
        return found
    lock: anyio.Lock = resources.setdefault(POSTGRES_RESOURCE + ".lock", anyio.Lock())
    async with lock:
        found = resources.get(POSTGRES_RESOURCE)
        if found is None:
            try:
                found = await PostgresLogs.connect(
                    url, max_connections=max_connections, timeout=timeout
                )
            except LogUnavailableError as exc:
                resources[POSTGRES_RESOURCE + ".error"] = str(exc)  # for /health
                raise
            resources.pop(POSTGRES_RESOURCE + ".error", None)
            resources[POSTGRES_RESOURCE] = found
        return found


class PostgresStates:
    """A tenant's small learned state of one ``kind`` (a row of ``soma_tenant_state``), for
    ``context.adaptation.AdaptationStore``: kept in the memory database, a cluster member
    standing in for another finds the tenant's weights as their owner left them."""

    def __init__(
        self,
        resources: dict[str, Any],
        url: str,
        kind: str,
        *,
        max_connections: int = 10,
        timeout: float = 10.0,
    ) -> None:
        self._resources = resources
        self._url = url
        self.kind = kind
        self._max_connections = max_connections
        self._timeout = timeout

    async def _logs(self) -> PostgresLogs:
        return await shared_postgres_logs(
            self._resources,
            self._url,
            max_connections=self._max_connections,
            timeout=self._timeout,
        )

    async def load(self, tenant: str) -> bytes | None:
        logs = await self._logs()
        try:
            found: bytes | None = await logs.pool.fetchval(
                f"SELECT state FROM {STATE_TABLE} WHERE tenant = $1 AND kind = $2",
                tenant,
                self.kind,
            )
        except Exception as exc:
            where = f"{logs.url}#{tenant}"
            raise _store_error(where, f"read the {self.kind} state from", exc) from exc
        return found

    async def save(self, tenant: str, data: bytes) -> None:
        logs = await self._logs()
        try:
            await logs.pool.execute(
                f"INSERT INTO {STATE_TABLE} (tenant, kind, state) VALUES ($1, $2, $3)"
                " ON CONFLICT (tenant, kind) DO UPDATE SET state = excluded.state,"
                " updated_at = now()",
                tenant,
                self.kind,
                data,
            )
        except Exception as exc:
            where = f"{logs.url}#{tenant}"
            raise _store_error(where, f"write the {self.kind} state to", exc) from exc


async def close_postgres_logs(resources: dict[str, Any]) -> None:
    """Close the node's pool, if it has one (at shutdown, after every log)."""
    logs: PostgresLogs | None = resources.pop(POSTGRES_RESOURCE, None)
    if logs is not None:
        await logs.aclose()


async def memory_store_health(resources: dict[str, Any], url: str) -> dict[str, Any]:
    """Where the tenants' logs are (``/health``'s ``memory_store``): files, or a database
    (its URL without the password) and whether it answers."""
    if not url:
        return {"kind": "files", "reachable": True}
    entry: dict[str, Any] = {"kind": "postgres", "url": redacted_url(url)}
    logs: PostgresLogs | None = resources.get(POSTGRES_RESOURCE)
    if logs is None:  # no tenant opened yet, or the database was down when one tried
        error = resources.get(POSTGRES_RESOURCE + ".error")
        entry.update(connections=0, reachable=None if error is None else False)
        if error is not None:
            entry["error"] = error
        return entry
    entry.update(await logs.health())
    return entry


def _payloads(batch: Batch) -> list[bytes]:
    """The records of a batch's appends, in order (each append's item is its list)."""
    return [payload for item in batch.items for payload in item]


def _fresh_copy(exc: LogError) -> LogError:
    """A fresh error like ``exc`` for each appender of a failed batch."""
    error = type(exc).__new__(type(exc))
    error.__dict__.update(exc.__dict__)
    error.args = exc.args
    error.__cause__ = exc.__cause__
    return error
