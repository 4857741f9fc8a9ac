"""A small append-only journal of msgspec records, for per-tenant state kept beside the log.

Working memory (``working_journal.py``) and the feedback associations (``associations.py``)
both keep learned state that changes often, has its own bounds and can be rebuilt from a
snapshot of itself; this module holds what they share: the interface of a journal
(``Journal``), what each owner tells it (``JournalKind``), and the file journal
(``RecordJournal``). With ``memory.postgres_url`` set, the memory actor gives the owners rows in
the memory database instead (``pg_journal.py``), behind the same interface.

The interface. ``read`` gives the records (in order), the owner replays them, then ``start``
rewrites the journal as the owner's snapshot and journaling begins. ``append`` takes one record
without an ``await``, at the moment the owner applies the change in memory, so the journal's
order is the in-memory order even when the owner's callers run concurrently. ``flush`` makes
what was appended survive a kill of the process (a no-op for a file: ``append`` wrote it
already), ``sync`` survive a crash of the machine too. A journal whose store fails does not
raise from ``append``, ``flush`` or ``sync``: it logs once, and the owner's in-memory state goes
on (``durable`` says whether journaling is in effect).

The file's format (little endian)::

    header  8 bytes of magic (the owner's, which ends with its format version)
    frame*  u32 length | u32 crc32(payload) | payload (msgspec msgpack of one record)

Reading stops at the first frame that is torn (a crash mid-write), fails its CRC or does not
decode: what follows is ignored, with a warning. ``start`` rewrites the file as a snapshot
(``<name>.compact`` renamed over it, fsynced) and opens it for appending; ``append`` writes one
frame with a plain ``write`` (page cache: survives a kill of the process, not a power loss,
until ``sync``) and compacts into a fresh snapshot when the file grows past four times its last
snapshot (at least 1 MiB). An I/O error while appending is logged once and journaling stops
(``durable`` turns False): the owner's in-memory state goes on, and its next incarnation
reopens the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import anyio
import anyio.lowlevel
import msgspec

from .._files import fsync_dir

__all__ = ["Journal", "JournalKind", "Journals", "RecordJournal", "open_journal"]

logger = logging.getLogger("somabrain.memory")

R = TypeVar("R")
Snapshot = Callable[[], Iterable[R]]

_HEADER = struct.Struct("<II")
_MAX_RECORD_BYTES = 16 * 1024 * 1024
COMPACT_MIN_BYTES = 1024 * 1024
COMPACT_FACTOR = 4
_FILE_MODE = 0o600
_ENCODER = msgspec.msgpack.Encoder()


@dataclass(frozen=True)
class JournalKind(Generic[R]):
    """What an owner tells its journal: ``name`` (the ``kind`` of its rows in the memory
    database), ``magic`` (its file header), the record type (a msgspec union), ``what`` (for
    logs) and ``synchronous``: whether ``sync`` is what the owner promises (the file's
    snapshots are fsynced too, the database's commits wait for its WAL flush) or only
    ``flush`` (snapshots in the page cache, commits with ``synchronous_commit = off``)."""

    name: str
    magic: bytes
    record_type: Any
    what: str
    synchronous: bool = False


class Journal(Protocol[R]):
    """The journal an owner writes its changes to (module docstring)."""

    @property
    def where(self) -> str:
        """Where it is, for logs (a path, or the database's URL and the tenant)."""
        ...

    @property
    def durable(self) -> bool:
        """Whether journaling is in effect (False before ``start``, once closed, after a
        failure of its store until it caught up, if ever)."""
        ...

    async def read(self) -> list[R]:
        """The records, in order. Raises ``OSError`` (a file) or ``LogError`` (a database)."""
        ...

    async def start(self) -> None:
        """Rewrite the journal as the owner's snapshot and journal from then on. A file raises
        ``OSError``; a database logs its failure and catches up at the next flush."""
        ...

    def append(self, record: R) -> None:
        """One record, in the caller's order (no await)."""
        ...

    async def flush(self) -> None:
        """What was appended so far survives a kill of this process."""
        ...

    async def sync(self) -> None:
        """What was appended so far survives a crash of the machine too."""
        ...

    async def aclose(self) -> None:
        """Flush what was appended and stop journaling."""
        ...


class Journals(Protocol):
    """Where a tenant's journals are kept, other than files (``pg_journal.PostgresJournals``)."""

    def journal(self, kind: JournalKind[R], snapshot: Snapshot[R]) -> Journal[R]:
        """The tenant's journal of ``kind``; ``snapshot`` gives the records that rebuild the
        owner's current state (for ``start`` and compaction)."""
        ...


def open_journal(
    where: str | os.PathLike[str] | Journals, kind: JournalKind[R], snapshot: Snapshot[R]
) -> Journal[R]:
    """The owner's journal: a file at ``where``, or ``where``'s journal of ``kind``."""
    if isinstance(where, str | os.PathLike):
        return RecordJournal(
            Path(where),
            kind.magic,
            kind.record_type,
            what=kind.what,
            snapshot=snapshot,
            sync_compaction=kind.synchronous,
        )
    return where.journal(kind, snapshot)


def frame(record: Any) -> bytes:
    """One record as a frame of the journal."""
    payload = _ENCODER.encode(record)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


class RecordJournal(Generic[R]):
    """The journal at ``path``. ``what`` names it in logs; ``snapshot`` gives the records
    that rebuild the owner's current state (for compaction); ``sync_compaction``: fsync the
    snapshots written while appending (they run on the caller's thread)."""

    def __init__(
        self,
        path: Path,
        magic: bytes,
        record_type: Any,
        *,
        what: str,
        snapshot: Callable[[], Iterable[R]],
        sync_compaction: bool = False,
    ) -> None:
        self.path = path
        self.magic = magic
        self.what = what
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(record_type)
        self._snapshot = snapshot
        self._sync_compaction = sync_compaction
        self._file: io.FileIO | None = None
        self._size = 0
        self._compact_at = COMPACT_MIN_BYTES

    @property
    def where(self) -> str:
        return str(self.path)

    @property
    def durable(self) -> bool:
        """False before ``start``, and once journaling stopped (closed or after an error)."""
        return self._file is not None

    async def read(self) -> list[R]:
        """The intact records (none if the file is missing), read in a worker thread."""
        return await anyio.to_thread.run_sync(self.read_blocking)

    def read_blocking(self) -> list[R]:
        """The intact records (none if the file is missing); creates the directory."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        if not data.startswith(self.magic):
            if data:
                logger.warning("%s %s has a bad header; starting empty", self.what, self.path)
            return []
        records: list[R] = []
        pos, end = len(self.magic), len(data)
        while pos + _HEADER.size <= end:
            length, crc = _HEADER.unpack_from(data, pos)
            start = pos + _HEADER.size
            if length > _MAX_RECORD_BYTES or start + length > end:
                break
            payload = data[start : start + length]
            if zlib.crc32(payload) != crc:
                break
            try:
                records.append(self._decoder.decode(payload))
            except msgspec.DecodeError:
                break
            pos = start + length
        if pos < end:
            logger.warning("%s %s: ignoring %d bytes of torn tail", self.what, self.path, end - pos)
        return records

    async def start(self) -> None:
        """Write the owner's snapshot as the whole file (fsynced, in a worker thread) and
        journal from then on. Raises OSError."""
        with anyio.CancelScope(shield=True):  # the open handle must not be lost
            await anyio.to_thread.run_sync(partial(self._compact, sync=True))

    def append(self, record: R) -> None:
        """One frame to the page cache, in the caller's order (no await); may compact."""
        if self._file is None:
            return
        data = frame(record)
        try:
            _write_all(self._file, data)
            self._size += len(data)
            if self._size > self._compact_at:
                self._compact(sync=self._sync_compaction)
        except OSError as exc:
            logger.error(
                "%s %s: write failed, journaling stops until the tenant's memory actor "
                "restarts: %r",
                self.what,
                self.path,
                exc,
            )
            self._close_file()

    def _compact(self, *, sync: bool) -> None:
        data = self.magic + b"".join(frame(r) for r in self._snapshot())
        tmp = self.path.with_name(self.path.name + ".compact")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
        with io.FileIO(fd, "w") as out:
            _write_all(out, data)
            if sync:
                os.fsync(fd)
        os.replace(tmp, self.path)
        if sync:
            fsync_dir(self.path.parent)
        fresh = io.FileIO(self.path, "a")
        self._close_file()
        self._file = fresh
        self._size = len(data)
        self._compact_at = max(COMPACT_MIN_BYTES, COMPACT_FACTOR * self._size)

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    async def flush(self) -> None:
        """Nothing to do: ``append`` wrote to the page cache, which outlives the process."""
        await anyio.lowlevel.checkpoint()

    async def sync(self) -> None:
        """fsync what was appended so far (in a worker thread)."""
        file = self._file
        if file is None:
            await anyio.lowlevel.checkpoint()
            return
        try:
            await anyio.to_thread.run_sync(os.fsync, file.fileno())
        except (OSError, ValueError) as exc:  # ValueError: closed meanwhile
            logger.warning("%s %s: fsync failed: %r", self.what, self.path, exc)

    async def aclose(self) -> None:
        """Flush the journal to disk and stop journaling."""
        file, self._file = self._file, None
        if file is None:
            return

        def sync_and_close() -> None:
            try:
                os.fsync(file.fileno())
            finally:
                file.close()

        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(sync_and_close)
        except OSError as exc:
            logger.warning("%s %s: fsync on close failed: %r", self.what, self.path, exc)


def _write_all(file: io.FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = file.write(view)
        if not written:
            raise OSError(f"short write to {file.name}")
        view = view[written:]
