"""The durable, append-only memory log: one file per tenant, group commit, compaction.

Why here and not in ``somabrain/stores/``: the records are memory records (``types.LogRecord``)
and only the memory library reads them; ``stores/`` holds adapters to outside back-ends.

File format (little endian)::

    header  b"SBMLOG\\x00\\x01"                      8 bytes: magic + format version 1
    frame*  u32 length | u32 crc32(payload) | payload (msgspec msgpack of one LogRecord)

Recovery: on open the frames are checked in order; the first frame that is short, too long or
fails its CRC marks a torn tail (a crash during a write). The file is truncated there, and the
discarded bytes are kept beside it as ``<name>.torn-<offset>`` for inspection, never silently
destroyed. Every record before the tear is intact, and every acknowledged record is before it:
an append is acknowledged only after its bytes (and, per policy, an fsync) completed.

Fsync policies (``fsync=``):

* ``group`` (default): group commit. Concurrent appends join one batch, written with one
  ``write`` and one ``fdatasync`` in a worker thread; each ``await append`` returns only after
  the fsync covering its record completed. No background task: the first appender that finds no
  flush in progress leads one batch, and while its fsync runs the next appenders gather into the
  next batch, so the fsync time itself is the batching window (``group_window`` seconds can be
  added to gather more). Throughput scales with concurrency at the latency of ~one fsync.
* ``always``: every append gets its own fsync (no batching; simplest, slowest).
* ``never``: the write goes to the OS page cache only. Survives a kill -9 of the process, not a
  power loss or kernel crash.

Cancellation: a cancelled append that was not yet handed to the writer is withdrawn; once
handed over, it is written (it may survive a crash) but its caller sees the cancellation.
The write+fsync section is shielded, because abandoning it would leave the other records of the
batch unacknowledged forever. (The batching is ``_group_commit``, shared with ``pg_log``.)

Compaction (``rewrite``): the owner passes the live records; they are written to
``<name>.compact``, fsynced, renamed over the log (atomic) and the directory is fsynced. Appends
wait meanwhile. Works on both anyio backends (asyncio and trio).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Protocol

import anyio
import anyio.lowlevel
import msgspec

from .._files import fsync_dir
from ._group_commit import Batch, FsyncPolicy, GroupCommit
from .errors import LogBrokenError, LogClosedError, LogCorruptError, LogLockedError
from .types import LogRecord

try:  # flock is POSIX; elsewhere two handles are not prevented (documented caveat)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FsyncPolicy",
    "LogStatistics",
    "MemoryLog",
    "RecordLog",
    "encode_frame",
    "tenant_log_path",
]

MAGIC = b"SBMLOG\x00\x01"
_HEADER = struct.Struct("<II")
MAX_RECORD_BYTES = 64 * 1024 * 1024
_fdatasync = getattr(os, "fdatasync", os.fsync)
_FILE_MODE = 0o600  # tenants' memories: readable by the node's user only
_ENCODER = msgspec.msgpack.Encoder()
_DECODER: msgspec.msgpack.Decoder[LogRecord] = msgspec.msgpack.Decoder(LogRecord)


def encode_frame(record: LogRecord) -> bytes:
    """One record as a frame: length, CRC32 and msgpack payload."""
    payload = _ENCODER.encode(record)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def tenant_log_path(data_dir: str | os.PathLike[str], tenant: str) -> Path:
    """The log file of ``tenant`` in ``data_dir``: a readable slug plus a hash of the name.

    The slug keeps only ``[A-Za-z0-9_-]`` (no dots, slashes or NUL: the name can never escape
    the directory or hide); the hash keeps distinct tenants apart even when their slugs agree
    (``a/b`` and ``a_b``) or on case-insensitive file systems.
    """
    if not tenant:
        raise ValueError("tenant name must not be empty")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", tenant)[:48].strip("_") or "tenant"
    digest = hashlib.blake2b(tenant.encode("utf-8"), digest_size=8).hexdigest()
    return Path(data_dir) / f"{slug}-{digest}.memlog"


class LogStatistics(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    policy: str
    records: int  # records in the file now (replayed + appended since open or compaction)
    size_bytes: int
    appends: int  # records appended since open
    writes: int  # write calls (one per group batch)
    fsyncs: int
    truncated_bytes: int  # torn tail dropped at open
    compactions: int


def _lock(fd: int, path: Path) -> None:
    if fcntl is None:  # pragma: no cover
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LogLockedError(str(path)) from None


def _scan(data: memoryview) -> tuple[int, int]:
    """(valid end offset, record count) of a file image that starts with the magic."""
    pos = len(MAGIC)
    count = 0
    end = len(data)
    while pos + _HEADER.size <= end:
        length, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        if length > MAX_RECORD_BYTES or start + length > end:
            break
        if zlib.crc32(data[start : start + length]) != crc:
            break
        pos = start + length
        count += 1
    return pos, count


def _decode_frames(view: memoryview, end: int, where: str) -> Iterator[LogRecord]:
    """The records of the frames of a file image up to ``end`` (checked by ``_scan``)."""
    pos = len(MAGIC)
    while pos < end:
        length, _crc = _HEADER.unpack_from(view, pos)
        start = pos + _HEADER.size
        try:
            yield _DECODER.decode(view[start : start + length])
        except msgspec.DecodeError as exc:
            raise LogCorruptError(where, pos, str(exc)) from exc
        pos = start + length


def read_records(path: Path) -> Iterator[LogRecord]:
    """The intact records of the log file at ``path``, read without its lock and without
    setting a torn tail aside (``somabrain memory import`` telling whose a file is). Blocking."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        return
    view = memoryview(data)
    end, _ = _scan(view)
    yield from _decode_frames(view, end, str(path))


class RecordLog(Protocol):
    """What a tenant's memory needs of its log: ``MemoryLog`` (a file) or
    ``pg_log.PostgresMemoryLog`` (rows in PostgreSQL)."""

    @property
    def record_count(self) -> int: ...

    def replay(self) -> Iterator[LogRecord]: ...

    def statistics(self) -> LogStatistics: ...

    async def append_many(self, records: Sequence[LogRecord]) -> None: ...

    async def rewrite(self, records: Iterable[LogRecord]) -> None: ...

    async def aclose(self) -> None: ...


class MemoryLog(GroupCommit):
    """A tenant's append-only record log (see the module docstring for format and policies)."""

    def __init__(
        self,
        path: Path,
        fd: int,
        *,
        fsync: FsyncPolicy,
        group_window: float,
        records: int,
        size: int,
        valid_end: int,
        truncated: int,
    ) -> None:
        super().__init__(group_window, fsync, records)
        self._path = path
        self._fd = fd
        self._size = size
        self._replay_end = valid_end
        self._truncated = truncated
        self._io_lock = anyio.Lock()
        self._broken: OSError | None = None
        self._appends = self._writes = self._fsyncs = self._compactions = 0

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncPolicy = "group",
        group_window: float = 0.0,
    ) -> MemoryLog:
        """Open (or create) the log at ``path``, truncating a torn tail. Locks the file."""
        if fsync not in ("always", "group", "never"):
            raise ValueError(f"fsync policy must be always, group or never, got {fsync!r}")
        if group_window < 0:
            raise ValueError("group_window must be >= 0")
        p = Path(path)
        fd, records, size, truncated = await anyio.to_thread.run_sync(cls._open_sync, p)
        return cls(
            p,
            fd,
            fsync=fsync,
            group_window=group_window,
            records=records,
            size=size,
            valid_end=size,
            truncated=truncated,
        )

    @classmethod
    async def open_tenant(
        cls, data_dir: str | os.PathLike[str], tenant: str, **kwargs: object
    ) -> MemoryLog:
        """Open the log of ``tenant`` in ``data_dir`` (created if missing)."""
        path = tenant_log_path(data_dir, tenant)
        await anyio.to_thread.run_sync(lambda: path.parent.mkdir(parents=True, exist_ok=True))
        return await cls.open(path, **kwargs)  # type: ignore[arg-type]

    @staticmethod
    def _open_sync(path: Path) -> tuple[int, int, int, int]:
        created = not path.exists()
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, _FILE_MODE)
        _lock(fd, path)
        try:
            with open(fd, "rb", closefd=False) as f:
                data = f.read()
            if len(data) < len(MAGIC) and MAGIC.startswith(data):
                # New file, or a crash while its header was written: start it afresh.
                os.ftruncate(fd, 0)
                os.write(fd, MAGIC)
                os.fsync(fd)
                if created or not data:
                    fsync_dir(path.parent)
                return fd, 0, len(MAGIC), 0
            if not data.startswith(MAGIC):
                raise LogCorruptError(str(path), 0, "not a memory log (bad magic)")
            end, count = _scan(memoryview(data))
            torn = len(data) - end
            if torn:
                side = path.with_name(f"{path.name}.torn-{end}")
                side_fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
                with open(side_fd, "wb") as f:
                    f.write(data[end:])
                    f.flush()
                    os.fsync(f.fileno())
                os.ftruncate(fd, end)
                os.fsync(fd)
                fsync_dir(path.parent)
            return fd, count, end, torn
        except BaseException:
            os.close(fd)
            raise

    def replay(self) -> Iterator[LogRecord]:
        """Yield the records that were in the file when it was opened, in order.

        Blocking file I/O: run it in a worker thread (``TenantMemory.open`` does).
        """
        with open(self._path, "rb") as f:
            data = f.read(self._replay_end)
        yield from _decode_frames(memoryview(data), len(data), str(self._path))

    # --- introspection -------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    def statistics(self) -> LogStatistics:
        return LogStatistics(
            path=str(self._path),
            policy=self._policy,
            records=self._records,
            size_bytes=self._size,
            appends=self._appends,
            writes=self._writes,
            fsyncs=self._fsyncs,
            truncated_bytes=self._truncated,
            compactions=self._compactions,
        )

    # --- appending -------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise LogClosedError(str(self._path))
        if self._broken is not None:
            raise LogBrokenError(str(self._path), self._broken)

    def _write_sync(self, data: bytes, sync: bool) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if sync:
            _fdatasync(self._fd)

    def _account(self, nbytes: int, count: int, synced: bool) -> None:
        self._size += nbytes
        self._records += count
        self._appends += count
        self._writes += 1
        self._fsyncs += int(synced)

    async def _write(self, data: bytes, count: int, sync: bool) -> None:
        """Write (and fsync) in a worker thread; caller holds ``_io_lock``; shielded."""
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self._write_sync, data, sync)
            except OSError as exc:
                self._broken = exc
                raise LogBrokenError(str(self._path), exc) from exc
        self._account(len(data), count, sync)

    async def append_many(self, records: Sequence[LogRecord]) -> None:
        """Append records in order as one unit of I/O (one fsync under ``always``/``group``)."""
        self._check_usable()
        if not records:
            await anyio.lowlevel.checkpoint()
            return
        data = b"".join([encode_frame(r) for r in records])
        if self._policy == "group":
            await self._append_group(data, len(records))
            return
        async with self._io_lock:
            self._check_usable()
            if self._policy == "always":
                await self._write(data, len(records), sync=True)
            else:
                try:
                    self._write_sync(data, sync=False)
                except OSError as exc:
                    self._broken = exc
                    raise LogBrokenError(str(self._path), exc) from exc
                self._account(len(data), len(records), synced=False)

    async def _flush_batch(self, batch: Batch) -> None:
        try:
            async with self._io_lock:
                path = str(self._path)
                if self._closed:
                    batch.error = partial(LogClosedError, path)
                elif self._broken is not None:
                    batch.error = partial(LogBrokenError, path, self._broken)
                elif batch.items:
                    try:
                        await self._write(b"".join(batch.items), batch.count, sync=True)
                    except LogBrokenError as exc:
                        batch.error = partial(LogBrokenError, path, exc.cause)
        finally:
            batch.done = True

    # --- compaction and closing --------------------------------------------------------------

    async def rewrite(self, records: Iterable[LogRecord]) -> None:
        """Replace the whole log by ``records`` (compaction), atomically and durably."""
        self._check_usable()
        snapshot = list(records)
        async with self._io_lock:
            self._check_usable()
            with anyio.CancelScope(shield=True):
                fd, size = await anyio.to_thread.run_sync(self._rewrite_sync, snapshot)
            old, self._fd = self._fd, fd
            os.close(old)
            self._records = len(snapshot)
            self._size = size
            self._compactions += 1

    def _rewrite_sync(self, records: list[LogRecord]) -> tuple[int, int]:
        tmp = self._path.with_name(self._path.name + ".compact")
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(tmp, flags, _FILE_MODE)
        try:
            size = 0
            chunk: list[bytes] = [MAGIC]
            pending = len(MAGIC)
            for rec in records:
                frame = encode_frame(rec)
                chunk.append(frame)
                pending += len(frame)
                if pending >= 1 << 20:
                    os.write(fd, b"".join(chunk))
                    size += pending
                    chunk, pending = [], 0
            if chunk:
                os.write(fd, b"".join(chunk))
                size += pending
            os.fsync(fd)
            _lock(fd, tmp)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        try:
            os.replace(tmp, self._path)
            fsync_dir(self._path.parent)
        except OSError as exc:
            os.close(fd)
            self._broken = exc
            raise LogBrokenError(str(self._path), exc) from exc
        return fd, size

    async def aclose(self) -> None:
        """Flush what cancelled leaders left behind, fsync and close. Idempotent."""
        if self._closed:
            return
        with anyio.CancelScope(shield=True):
            async with self._io_lock:
                if self._closed:
                    return
                batch = self._take_open_batch()
                try:
                    if batch.items and self._broken is None:
                        with contextlib.suppress(LogBrokenError):
                            await self._write(b"".join(batch.items), batch.count, sync=True)
                    elif self._policy == "never" and self._broken is None:
                        await anyio.to_thread.run_sync(_fdatasync, self._fd)
                finally:
                    batch.done = True
                    self._closed = True
                    os.close(self._fd)
