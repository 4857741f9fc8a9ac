"""The spool: append, torn-tail recovery, corruption, draining and segment clean-up."""

# ruff: noqa: ASYNC230, ASYNC240  (small files in a temporary directory, read by the test)

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from somabrain.audit import AuditDraft, Chain, SpoolCorruptError, encode_event, verify
from somabrain.audit.spool import Spool, read_spool


def payloads(chain: Chain, n: int) -> list[bytes]:
    draft = AuditDraft(tenant="t", actor="a", action="x")
    return [encode_event(chain.seal(draft)) for _ in range(n)]


async def fill(spool: Spool, chain: Chain, batches: int, size: int) -> None:
    for _ in range(batches):
        batch = payloads(chain, size)
        await spool.append(batch, chain.seq - size + 1)


@pytest.mark.anyio
async def test_append_read_back_and_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=4096)
    spool.open()
    chain = Chain("n")
    await fill(spool, chain, 10, 7)
    spool.close()
    assert len(list(tmp_path.glob("*.spool"))) > 1  # rolled
    assert verify(read_spool(tmp_path))["n"].events == 70
    again = Spool(tmp_path)
    again.open()
    assert again.last_seq == 70 and not again.empty


@pytest.mark.anyio
@pytest.mark.parametrize("tail", [b'0badc0de {"seq":', b"garbage without newline", b"\x00" * 50])
async def test_torn_tail_is_cut_and_kept_aside(tmp_path: Path, tail: bytes) -> None:
    spool = Spool(tmp_path)
    spool.open()
    chain = Chain("n")
    await fill(spool, chain, 2, 5)
    spool.close()
    segment = next(tmp_path.glob("*.spool"))
    with open(segment, "ab") as fh:
        fh.write(tail)
    assert verify(read_spool(tmp_path))["n"].events == 10  # readers skip a torn tail
    reopened = Spool(tmp_path)
    reopened.open()
    assert reopened.last_seq == 10
    aside = list(tmp_path.glob("*.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == tail
    # The chain continues where the intact part ends.
    await reopened.append(payloads(Chain("n", 10, chain.hash), 1), 11)
    reopened.close()
    report = verify(read_spool(tmp_path))["n"]
    assert report.ok and report.last_seq == 11


@pytest.mark.anyio
async def test_bad_line_before_the_end_is_corruption(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=1)  # one segment per batch
    spool.open()
    await fill(spool, Chain("n"), 3, 2)
    spool.close()
    first = sorted(tmp_path.glob("*.spool"))[0]
    data = bytearray(first.read_bytes())
    data[20] ^= 0x01  # flip a bit inside the JSON: the CRC no longer matches
    first.write_bytes(bytes(data))
    with pytest.raises(SpoolCorruptError):
        Spool(tmp_path).open()
    with pytest.raises(SpoolCorruptError):
        list(read_spool(tmp_path))


@pytest.mark.anyio
async def test_drain_forwards_in_order_and_deletes_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=2000)
    spool.open()
    chain = Chain("n")
    await fill(spool, chain, 8, 5)
    forwarded: list[int] = []
    while True:
        batch = await spool.read_batch(forwarded[-1] if forwarded else 0, 7)
        if not batch:
            break
        forwarded += [r.seq for r in batch]
        spool.discard_through(batch[-1])
    assert forwarded == list(range(1, 41))
    assert spool.empty
    assert list(tmp_path.glob("*.spool")) == []
    # Appending after a full drain starts a new segment.
    await spool.append(payloads(chain, 1), 41)
    assert not spool.empty and [r.seq for r in await spool.read_batch(40, 10)] == [41]


@pytest.mark.anyio
async def test_drain_skips_what_upstream_already_holds(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    await fill(spool, Chain("n"), 2, 10)
    batch = await spool.read_batch(after_seq=15, limit=100)
    assert [r.seq for r in batch] == [16, 17, 18, 19, 20]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_spool_works_on_trio(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool(tmp_path)
        spool.open()
        await fill(spool, Chain("n"), 3, 3)
        spool.close()

    anyio.run(main, backend="trio")
    assert verify(read_spool(tmp_path))["n"].events == 9
