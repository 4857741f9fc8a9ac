"""The local spool: append-only segment files, fsynced by group commit, safe against torn tails.

The spool is the last tier of the writer's cascade (and the only one of the dev node): an event
written here is acknowledged only after ``fdatasync`` returned, so it survives a kill -9 and a
power loss. One writer (the audit writer actor) appends whole batches; every batch is one
``write`` and one ``fdatasync`` in a worker thread, so the fsync time is the batching window
(the actor gathers what arrives meanwhile into the next batch).

Format: ``<dir>/<first seq, 20 digits>.spool`` segments of text lines::

    <crc32 of the JSON, 8 hex digits> <event JSON>\\n

Lines are greppable (``cut -c10- *.spool | jq``) and the JSON is exactly the wire form used
in Kafka and Redis. Recovery on open: in the *last* segment, the first line that has no
newline, a bad CRC or unreadable JSON marks a torn tail (a crash during a write); it is cut off
and the discarded bytes are kept as ``<segment>.torn-<offset>``. Nothing acknowledged is ever
there, because an append is acknowledged after its fsync. A bad line anywhere else is
corruption, not a crash: :class:`SpoolCorruptError`, loudly.

Draining: the writer reads batches from a cursor, forwards them to a higher tier, then calls
:meth:`Spool.discard_through`, which deletes segments whose every event is forwarded. The
cursor is not persisted: after a restart the writer re-reads the oldest segment and skips the
events the higher tier already holds (it knows that tier's last sequence number).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import anyio
import msgspec

from .._files import fsync_dir
from .errors import SpoolCorruptError

__all__ = ["Spool", "SpoolRecord", "read_spool"]

_SUFFIX = ".spool"
#: Bytes read at a time while draining (an event is far smaller).
_READ_CHUNK = 4 << 20


class _Seq(msgspec.Struct):
    seq: int
    hash: str = ""


_seq_decoder = msgspec.json.Decoder(_Seq)


class SpoolRecord(NamedTuple):
    seq: int
    payload: bytes
    #: Where the line is: (segment file name, byte offset just past the line).
    segment: str
    end: int


def _frame(payload: bytes) -> bytes:
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def _parse_lines(data: bytes, segment: str) -> Iterator[SpoolRecord | int]:
    """Yield the records of ``data``; on the first bad line yield its offset and stop."""
    pos = 0
    size = len(data)
    while pos < size:
        newline = data.find(b"\n", pos)
        if newline < 0 or newline - pos < 10 or data[pos + 8 : pos + 9] != b" ":
            yield pos
            return
        payload = data[pos + 9 : newline]
        try:
            crc = int(data[pos : pos + 8], 16)
        except ValueError:
            yield pos
            return
        if zlib.crc32(payload) != crc:
            yield pos
            return
        try:
            seq = _seq_decoder.decode(payload).seq
        except (msgspec.ValidationError, msgspec.DecodeError):
            yield pos
            return
        pos = newline + 1
        yield SpoolRecord(seq, payload, segment, pos)


def _segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*" + _SUFFIX) if p.is_file())


def read_spool(directory: str | Path) -> Iterator[tuple[str, bytes]]:
    """Every intact record, oldest first, as ``(position, payload)``; read-only (verify, tail).

    A torn tail of the last segment is skipped (it was never acknowledged); a bad line
    elsewhere raises :class:`SpoolCorruptError`.
    """
    paths = _segments(Path(directory))
    for index, path in enumerate(paths):
        data = path.read_bytes()
        for line, item in enumerate(_parse_lines(data, path.name), 1):
            if isinstance(item, int):
                if index != len(paths) - 1:
                    raise SpoolCorruptError(path, item)
                return
            yield f"{path.name}:{line}", item.payload


class Spool:
    """One writer's spool directory (see the module doc)."""

    def __init__(
        self, directory: str | Path, *, fsync: bool = True, segment_bytes: int = 16 << 20
    ) -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.last_seq = 0
        self.last_payload: bytes | None = None
        self._fd: int | None = None
        self._active: Path | None = None
        self._active_size = 0
        # Drain cursor: (segment name, offset) of the first record not yet forwarded.
        self._cursor: tuple[str, int] | None = None
        self.forwarded_seq = 0
        self.appended = 0

    # ------------------------------------------------------------------ open / close

    def open(self) -> None:
        """Recover (cut a torn tail) and find the last event. Blocking: run in a thread."""
        self.directory.mkdir(parents=True, exist_ok=True)
        paths = _segments(self.directory)
        for index, path in enumerate(paths):
            data = path.read_bytes()
            last: SpoolRecord | None = None
            for item in _parse_lines(data, path.name):
                if isinstance(item, int):
                    if index != len(paths) - 1:
                        raise SpoolCorruptError(path, item)
                    _cut_torn_tail(path, data, item)
                    break
                last = item
            if last is not None:
                self.last_seq = last.seq
                self.last_payload = last.payload
        if paths:
            self._cursor = (paths[0].name, 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._active = None

    @property
    def empty(self) -> bool:
        """Nothing left to forward."""
        return self.last_seq <= self.forwarded_seq or self._cursor is None

    # ------------------------------------------------------------------ append

    async def append(self, payloads: list[bytes], first_seq: int) -> None:
        """Append a batch and return once it is durable (per ``fsync``)."""
        data = b"".join(_frame(p) for p in payloads)
        # Shielded: abandoning a write midway would leave a batch that is half on disk and
        # unacknowledged; the recovery would cope, but there is no reason to provoke it.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._write, data, first_seq)
        self.last_seq = _seq_decoder.decode(payloads[-1]).seq
        self.last_payload = payloads[-1]
        self.appended += len(payloads)

    def _write(self, data: bytes, first_seq: int) -> None:
        if self._fd is None or self._active_size >= self.segment_bytes:
            self._roll(first_seq)
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._active_size += len(data)
        if self.fsync:
            os.fdatasync(self._fd)

    def _roll(self, first_seq: int) -> None:
        self.close()
        path = self.directory / f"{first_seq:020d}{_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._active = path
        self._active_size = os.fstat(self._fd).st_size
        if self.fsync:
            fsync_dir(self.directory)
        if self._cursor is None:
            self._cursor = (path.name, 0)

    # ------------------------------------------------------------------ drain

    async def read_batch(self, after_seq: int, limit: int) -> list[SpoolRecord]:
        """Up to ``limit`` records from the cursor on, skipping those with seq <= after_seq."""
        return await anyio.to_thread.run_sync(self._read_batch, after_seq, limit)

    def _read_batch(self, after_seq: int, limit: int) -> list[SpoolRecord]:
        if self._cursor is None:
            return []
        first_name, first_offset = self._cursor
        out: list[SpoolRecord] = []
        for path in _segments(self.directory):
            if path.name < first_name:
                continue
            position = first_offset if path.name == first_name else 0
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                while position < size and len(out) < limit:
                    fh.seek(position)
                    data = fh.read(_READ_CHUNK)
                    base, position = position, -1
                    for item in _parse_lines(data, path.name):
                        if isinstance(item, int):
                            break  # end of the chunk mid-line, or the tail being written
                        end = base + item.end
                        position = end
                        if item.seq > after_seq:
                            out.append(SpoolRecord(item.seq, item.payload, path.name, end))
                            if len(out) >= limit:
                                break
                        elif not out:
                            # Already held upstream: step over it without forwarding it.
                            self._cursor = (path.name, end)
                            self.forwarded_seq = max(self.forwarded_seq, item.seq)
                    if position < 0:
                        break
            if len(out) >= limit:
                break
        if not out:
            self._discard_forwarded()
        return out

    def discard_through(self, record: SpoolRecord) -> None:
        """Everything up to and including ``record`` is held upstream: forget it."""
        self._cursor = (record.segment, record.end)
        self.forwarded_seq = max(self.forwarded_seq, record.seq)
        self._discard_forwarded()

    def _discard_forwarded(self) -> None:
        """Delete segments that hold only forwarded events (the active one too, once done)."""
        if self._cursor is None:
            return
        name, offset = self._cursor
        for path in _segments(self.directory):
            if path.name > name:
                break
            if path.name < name or offset >= path.stat().st_size:
                if path == self._active:
                    if self.last_seq > self.forwarded_seq:
                        break
                    self.close()
                path.unlink()
        remaining = _segments(self.directory)
        if not remaining:
            self._cursor = None
        elif remaining[0].name != name:
            self._cursor = (remaining[0].name, 0)

    def records(self) -> list[SpoolRecord]:
        """Every record (tests and the writer's start-up checks)."""
        out: list[SpoolRecord] = []
        for path in _segments(self.directory):
            for item in _parse_lines(path.read_bytes(), path.name):
                if isinstance(item, int):
                    break
                out.append(item)
        return out


def _cut_torn_tail(path: Path, data: bytes, offset: int) -> None:
    aside = path.with_name(f"{path.name}.torn-{offset}")
    aside.write_bytes(data[offset:])
    with open(path, "r+b") as fh:
        fh.truncate(offset)
        fh.flush()
        os.fsync(fh.fileno())
