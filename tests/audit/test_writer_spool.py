"""The writer on the dev node's embedded tier (the spool), on both backends."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from somabrain.audit import AuditUnavailableError
from tests.audit.harness import (
    audit_config,
    check_exactly_once,
    draft,
    running_node,
    spool_records,
)

pytestmark = pytest.mark.anyio


async def test_records_are_durable_chained_and_acknowledged(tmp_path: Path) -> None:
    async with running_node(audit_config(), tmp_path) as node:
        await node.load(400, concurrency=16)
        status = await node.status()
        assert status.head_seq == 400 and node.failed == 0
        assert status.batches < 400  # group commit gathered concurrent appends
    check_exactly_once(spool_records(tmp_path), node.acked)


async def test_a_restarted_node_continues_the_chain(tmp_path: Path) -> None:
    acked: list[str] = []
    for _ in range(3):
        async with running_node(audit_config(), tmp_path) as node:
            await node.load(40, concurrency=4)
            acked += node.acked
    report = check_exactly_once(spool_records(tmp_path), acked)
    assert report.last_seq == 120


async def test_killing_the_writer_loses_nothing_acknowledged(tmp_path: Path) -> None:
    async with running_node(audit_config(), tmp_path) as node:

        async def killer() -> None:
            for _ in range(5):
                await anyio.sleep(0.02)
                node.kill_writer()

        async with anyio.create_task_group() as tg:
            tg.start_soon(node.load, 2000, 16)
            tg.start_soon(killer)
        await node.record(-1)  # the writer is back
        status = await node.status()
    assert len(node.acked) > 0
    report = check_exactly_once(spool_records(tmp_path), node.acked)
    # Events whose receipts failed may still have been stored (they were sealed and
    # journaled), but never twice and never out of the chain.
    assert report.last_seq == status.head_seq >= len(node.acked)


async def test_record_fails_fast_when_the_writer_is_gone(tmp_path: Path) -> None:
    async with running_node(audit_config(), tmp_path) as node:
        log = node.log
        await node.tree.stop()
        with pytest.raises(AuditUnavailableError):
            await log.record(draft(0))
