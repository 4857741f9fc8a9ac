"""The durable log: replay, torn tails, policies, group commit, compaction, errors."""

from __future__ import annotations

import errno
import os
import re
import struct
import zlib
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import somabrain.memory.log as log_module
from somabrain.memory import (
    ForgetRecord,
    Link,
    LinkRecord,
    LogBrokenError,
    LogClosedError,
    LogCorruptError,
    LogLockedError,
    Memory,
    MemoryLog,
    RememberRecord,
    UnlinkRecord,
    tenant_log_path,
)
from somabrain.memory.log import MAGIC

pytestmark = pytest.mark.anyio


def remember(i: int) -> RememberRecord:
    return RememberRecord(Memory(key=f"k{i}", content=f"memory number {i}", meta={"i": i}))


async def replayed(path: Path) -> list:
    log = await MemoryLog.open(path)
    try:
        return list(log.replay())
    finally:
        await log.aclose()


@pytest.mark.parametrize("policy", ["always", "group", "never"])
async def test_replay_in_order(tmp_path: Path, policy) -> None:
    path = tmp_path / "t.memlog"
    records = [
        remember(1),
        remember(2),
        LinkRecord(Link(from_key="k1", to_key="k2", rel="next", weight=0.5)),
        ForgetRecord("k1"),
        UnlinkRecord("k1", "k2", "next"),
    ]
    async with await MemoryLog.open(path, fsync=policy) as log:
        assert log.policy == policy
        await log.append(records[0])
        await log.append_many(records[1:])
        await log.append_many([])
        stats = log.statistics()
        assert stats.records == stats.appends == 5
        assert stats.fsyncs == (0 if policy == "never" else 2)
    assert await replayed(path) == records


async def test_new_log_has_only_a_header(tmp_path: Path) -> None:
    path = tmp_path / "t.memlog"
    assert await replayed(path) == []
    assert path.read_bytes() == MAGIC


def _glob(directory: Path, pattern: str) -> list[Path]:
    return list(directory.glob(pattern))


def _frame_offsets(data: bytes) -> list[int]:
    pos, out = len(MAGIC), []
    while pos < len(data):
        out.append(pos)
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 8 + length
    return out


async def _write(path: Path, n: int) -> None:
    async with await MemoryLog.open(path) as log:
        for i in range(n):
            await log.append(remember(i))


@pytest.mark.parametrize("damage", ["garbage", "partial_frame", "partial_header", "bad_crc"])
async def test_torn_tail_is_truncated_and_earlier_records_survive(tmp_path: Path, damage) -> None:
    path = tmp_path / "t.memlog"
    await _write(path, 5)
    data = path.read_bytes()
    last = _frame_offsets(data)[-1]
    if damage == "garbage":
        torn = data + os.urandom(3) + b"\xff\xff\xff\x7f" + b"junk"
        keep = 5
    elif damage == "partial_frame":
        torn = data[: len(data) - 3]
        keep = 4
    elif damage == "partial_header":
        torn = data + data[last : last + 5]
        keep = 5
    else:
        flipped = bytearray(data)
        flipped[-1] ^= 0xFF
        torn = bytes(flipped)
        keep = 4
    path.write_bytes(torn)

    log = await MemoryLog.open(path)
    assert list(log.replay()) == [remember(i) for i in range(keep)]
    stats = log.statistics()
    assert stats.truncated_bytes == len(torn) - stats.size_bytes > 0
    assert stats.records == keep
    # The discarded bytes are kept aside, not destroyed.
    (side,) = _glob(tmp_path, "t.memlog.torn-*")
    assert torn.endswith(side.read_bytes())
    # The log is usable again, and the new record follows the intact ones.
    await log.append(remember(99))
    await log.aclose()
    assert await replayed(path) == [*(remember(i) for i in range(keep)), remember(99)]


async def test_torn_header_restarts_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.memlog"
    path.write_bytes(MAGIC[:3])
    assert await replayed(path) == []
    assert path.read_bytes() == MAGIC


async def test_foreign_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "t.memlog"
    path.write_bytes(b"not a memory log at all")
    with pytest.raises(LogCorruptError) as info:
        await MemoryLog.open(path)
    assert info.value.offset == 0
    assert path.read_bytes() == b"not a memory log at all"


async def test_checksummed_but_undecodable_record_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "t.memlog"
    await _write(path, 2)
    payload = b"\x92\xa1z\x01"  # msgpack ["z", 1]: no such record tag
    with path.open("ab") as f:
        f.write(struct.pack("<II", len(payload), zlib.crc32(payload)) + payload)
    log = await MemoryLog.open(path)
    with pytest.raises(LogCorruptError):
        list(log.replay())
    await log.aclose()


async def test_second_handle_is_locked_out(tmp_path: Path) -> None:
    path = tmp_path / "t.memlog"
    log = await MemoryLog.open(path)
    with pytest.raises(LogLockedError):
        await MemoryLog.open(path)
    await log.aclose()
    await log.aclose()  # idempotent
    assert log.closed
    with pytest.raises(LogClosedError):
        await log.append(remember(1))
    async with await MemoryLog.open(path):
        pass


async def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    path = tmp_path / "t.memlog"
    n = 32
    async with await MemoryLog.open(path, fsync="group") as log:
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(log.append, remember(i))
        stats = log.statistics()
        assert stats.appends == n
        assert stats.fsyncs == stats.writes < n
    got = await replayed(path)
    assert sorted(r.memory.key for r in got) == sorted(f"k{i}" for i in range(n))


async def test_group_window_gathers_more(tmp_path: Path) -> None:
    async with await MemoryLog.open(tmp_path / "t.memlog", group_window=0.001) as log:
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(log.append, remember(i))
        assert log.statistics().appends == 8


async def test_cancelled_append_before_flush_is_withdrawn(tmp_path: Path) -> None:
    path = tmp_path / "t.memlog"
    async with await MemoryLog.open(path, fsync="group") as log:
        await log.append(remember(1))
        with anyio.CancelScope() as scope:
            scope.cancel()
            await log.append(remember(2))
        await log.append(remember(3))
    assert await replayed(path) == [remember(1), remember(3)]


async def test_failed_fsync_breaks_the_log(tmp_path: Path, monkeypatch) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "simulated I/O error")

    async with await MemoryLog.open(tmp_path / "t.memlog", fsync="group") as log:
        await log.append(remember(1))
        monkeypatch.setattr(log_module, "_fdatasync", failing)
        with pytest.raises(LogBrokenError) as info:
            await log.append(remember(2))
        assert isinstance(info.value.cause, OSError)
        monkeypatch.undo()
        with pytest.raises(LogBrokenError):
            await log.append(remember(3))


async def test_rewrite_compacts_atomically(tmp_path: Path) -> None:
    path = tmp_path / "t.memlog"
    async with await MemoryLog.open(path) as log:
        for i in range(20):
            await log.append(remember(i))
        before = path.stat().st_size
        live = [remember(3), remember(7)]
        async with anyio.create_task_group() as tg:
            tg.start_soon(log.rewrite, live)
            tg.start_soon(log.append, remember(100))  # waits for, or precedes, the rewrite
        stats = log.statistics()
        assert stats.compactions == 1
        await log.append(remember(101))
    got = await replayed(path)
    assert path.stat().st_size < before
    assert not _glob(tmp_path, "*.compact")
    # Whichever ran first, the appended records are there after the live ones they follow.
    assert got[-1] == remember(101)
    assert remember(3) in got and remember(7) in got
    assert len(got) in (3, 4)  # remember(100) is kept only if it came after the rewrite


async def test_open_tenant_creates_the_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "data" / "nested"
    async with await MemoryLog.open_tenant(data_dir, "acme/../x") as log:
        assert log.path.parent == data_dir
        assert log.path == tenant_log_path(data_dir, "acme/../x")
        assert _mode(log.path) & 0o077 == 0  # tenants' data: owner only


def _mode(path: Path) -> int:
    return path.stat().st_mode


async def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        await MemoryLog.open(tmp_path / "a", fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await MemoryLog.open(tmp_path / "a", group_window=-1)
    with pytest.raises(ValueError):
        tenant_log_path(tmp_path, "")


@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=300))
def test_tenant_file_names_are_safe_and_distinct(a: str, b: str) -> None:
    pa = tenant_log_path("/data", a)
    assert pa.parent == Path("/data")
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,48}-[0-9a-f]{16}\.memlog", pa.name)
    if a != b:
        assert pa != tenant_log_path("/data", b)
