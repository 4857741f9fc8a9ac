"""Durable working memory: ``WorkingMemory`` whose changes are journaled to a per-tenant file.

What is kept: keys only. A session's buffer is a list of memory keys in order; the items
(content, embedding, tokens) are rebuilt from the tenant's memories when the journal is opened,
by the function the memory actor fills working memory with. So a forgotten or expired memory
cannot come back: its key finds nothing and is dropped, and the journal is rewritten without it.

Why a file of its own and not records in the tenant's memory log (``log.py``): the memory log
holds what the tenant's state *is* and is rewritten from that state on compaction; working
memory is a view of recent activity that changes on every session write and has its own
bounds (capacity, sessions). Putting it in the memory log would tie every working-memory
change to the log's fsync and make compaction carry a second kind of state. A separate
journal costs one small ``write`` per change and can be thrown away without touching a memory.

Format (little endian)::

    header  b"SBWMJ\\x00\\x00\\x01"            8 bytes: magic + format version 1
    frame*  u32 length | u32 crc32(payload) | payload (msgspec msgpack of one record)

Records: ``Added(session, keys)`` (the ``WorkingMemory.add`` of those keys), ``Discarded(key)``,
``Cleared(session)``. Replaying them through a ``WorkingMemory`` with the same bounds gives the
same sessions (least recently touched first) and the same item order, eviction included.

Durability: each change is appended with one ``write`` to the page cache, at the moment it is
applied in memory and without an ``await`` in between, so the journal's order is the
in-memory order even though the actor's writes run concurrently; a remember is acknowledged
after its working-memory change is written. That survives a kill of the actor and a kill -9 of
the process; a power loss may lose the last changes (no fsync per change: working memory is
short-lived context, and the memories themselves are in the fsynced log). A write is a few
microseconds, cheaper than a hop to a worker thread, so it is done on the event loop.

Compaction: on open, and when the file grows past four times its last snapshot (at least
1 MiB), the current state is written as a fresh journal (``<name>.compact``, renamed over the
file). On open it is fsynced (in a worker thread); at run time it is not, to keep the event
loop free (a few ms at the default bounds).

Failures: a torn or corrupt tail (a crash mid-write) is ignored from the first bad frame on.
An I/O error while journaling is logged once and journaling stops for this incarnation; the
in-memory working memory goes on (a remember must not fail because its context cache could not
be written). The next incarnation reopens the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import anyio
import msgspec
import numpy as np

from .log import tenant_log_path
from .working import WMItem, WorkingMemory

__all__ = ["DurableWorkingMemory", "working_journal_path"]

logger = logging.getLogger("somabrain.memory")

MAGIC = b"SBWMJ\x00\x00\x01"
_HEADER = struct.Struct("<II")
_MAX_RECORD_BYTES = 16 * 1024 * 1024
_COMPACT_MIN_BYTES = 1024 * 1024
_COMPACT_FACTOR = 4
_FILE_MODE = 0o600


class Added(msgspec.Struct, frozen=True, tag=True, array_like=True):
    session: str
    keys: list[str]


class Discarded(msgspec.Struct, frozen=True, tag=True, array_like=True):
    key: str


class Cleared(msgspec.Struct, frozen=True, tag=True, array_like=True):
    session: str


Record = Added | Discarded | Cleared
_ENCODER = msgspec.msgpack.Encoder()
_DECODER: msgspec.msgpack.Decoder[Record] = msgspec.msgpack.Decoder(Record)

#: Builds the items of ``keys`` (known memories only, in order): the memory actor's own path.
ItemsOf = Callable[[Sequence[str]], list[WMItem]]


def working_journal_path(data_dir: str | os.PathLike[str], tenant: str) -> Path:
    """The journal of ``tenant``'s working memory, beside its memory log."""
    return tenant_log_path(data_dir, tenant).with_suffix(".wmj")


def _frame(record: Record) -> bytes:
    payload = _ENCODER.encode(record)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _read(path: Path) -> list[Record]:
    """The intact records of the journal at ``path`` (none if missing or not a journal)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    if not data.startswith(MAGIC):
        if data:
            logger.warning("working-memory journal %s has a bad header; starting empty", path)
        return []
    records: list[Record] = []
    pos, end = len(MAGIC), len(data)
    while pos + _HEADER.size <= end:
        length, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        if length > _MAX_RECORD_BYTES or start + length > end:
            break
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            break
        try:
            records.append(_DECODER.decode(payload))
        except msgspec.DecodeError:
            break
        pos = start + length
    if pos < end:
        logger.warning("working-memory journal %s: ignoring %d bytes of torn tail", path, end - pos)
    return records


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DurableWorkingMemory(WorkingMemory):
    """``WorkingMemory`` that journals its changes (see the module docstring). Open it with
    ``open``; close it with ``aclose`` once nothing changes it any more."""

    def __init__(
        self,
        path: Path,
        capacity: int = 32,
        *,
        max_sessions: int = 1024,
        recency_weight: float = 0.2,
    ) -> None:
        super().__init__(capacity, max_sessions=max_sessions, recency_weight=recency_weight)
        self.path = path
        self._file: io.FileIO | None = None
        self._size = 0
        self._compact_at = _COMPACT_MIN_BYTES

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        items_of: ItemsOf,
        capacity: int = 32,
        *,
        max_sessions: int = 1024,
        recency_weight: float = 0.2,
    ) -> DurableWorkingMemory:
        """Replay the journal at ``path`` (created if missing), rebuild the items with
        ``items_of`` and rewrite the journal as a snapshot of the result."""
        wm = cls(Path(path), capacity, max_sessions=max_sessions, recency_weight=recency_weight)
        try:
            records = await anyio.to_thread.run_sync(_read, wm.path)
        except OSError as exc:
            logger.error("working memory journal %s unreadable, not durable: %r", wm.path, exc)
            return wm
        for session, keys in wm._replay(records):
            items = items_of(keys)
            if items:
                WorkingMemory.add(wm, session, items)
        data = wm._snapshot()
        try:
            wm._file = await anyio.to_thread.run_sync(wm._rewrite, data, True)
        except OSError as exc:
            logger.error("working memory journal %s unwritable, not durable: %r", wm.path, exc)
            return wm
        wm._snapshot_written(len(data))
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
        self._append(Added(session, [it.key for it in items]))

    def discard(self, key: str) -> None:
        super().discard(key)
        self._append(Discarded(key))

    def clear(self, session: str) -> bool:
        cleared = super().clear(session)
        if cleared:
            self._append(Cleared(session))
        return cleared

    # --- the file --------------------------------------------------------------------------

    @property
    def durable(self) -> bool:
        """False once journaling stopped (closed, or after an I/O error)."""
        return self._file is not None

    def _snapshot(self) -> bytes:
        return b"".join(_frame(Added(s, [it.key for it in self.items(s)])) for s in self.sessions())

    def _snapshot_written(self, size: int) -> None:
        self._size = len(MAGIC) + size
        self._compact_at = max(_COMPACT_MIN_BYTES, _COMPACT_FACTOR * self._size)

    def _rewrite(self, data: bytes, sync: bool) -> io.FileIO:
        """Write ``MAGIC + data`` as the new journal (atomic rename); the open append handle."""
        tmp = self.path.with_name(self.path.name + ".compact")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
        with io.FileIO(fd, "w") as out:
            _write_all(out, MAGIC + data)
            if sync:
                os.fsync(fd)
        os.replace(tmp, self.path)
        if sync:
            _fsync_dir(self.path.parent)
        fresh = io.FileIO(self.path, "a")
        if self._file is not None:
            self._file.close()
        return fresh

    def _append(self, record: Record) -> None:
        if self._file is None:
            return
        frame = _frame(record)
        try:
            _write_all(self._file, frame)
            self._size += len(frame)
            if self._size > self._compact_at:
                data = self._snapshot()
                self._file = self._rewrite(data, False)
                self._snapshot_written(len(data))
        except OSError as exc:
            logger.error(
                "working memory journal %s: write failed, journaling stops until the tenant's "
                "memory actor restarts: %r",
                self.path,
                exc,
            )
            self._close_file()

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    async def aclose(self) -> None:
        """Flush the journal to disk and stop journaling (later changes stay in memory)."""
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
            logger.warning("working memory journal %s: fsync on close failed: %r", self.path, exc)


def _write_all(file: io.FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = file.write(view)
        if not written:
            raise OSError(f"short write to {file.name}")
        view = view[written:]
