"""The writer on the dev node's embedded tier (the spool), on both backends."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import pytest

from somabrain.actors import Actor, ActorSystem
from somabrain.audit import AuditEvent, AuditLog, AuditUnavailableError
from somabrain.audit.tiers import Journal
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
                await node.kill_writer()

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


def test_the_journal_holds_exactly_the_batch_in_flight(tmp_path: Path) -> None:
    """Rewritten in place: a shorter batch leaves nothing of a longer one behind, and a torn
    write keeps the intact prefix (events sealed but never sent)."""
    journal = Journal(tmp_path / "inflight")
    journal.write([b'{"seq":%d}' % i for i in range(1, 11)])
    journal.write([b'{"seq":11}', b'{"seq":12}'])
    assert Journal(tmp_path / "inflight").read() == [b'{"seq":11}', b'{"seq":12}']
    journal.close()
    data = (tmp_path / "inflight").read_bytes()
    (tmp_path / "inflight").write_bytes(data[:-5])  # a kill in the middle of the write
    assert Journal(tmp_path / "inflight").read() == [b'{"seq":11}']


async def test_a_record_the_writer_never_completes_times_out(tmp_path: Path) -> None:
    """The log's reaper fails a receipt after ``timeout`` even though the writer, stuck or
    gone, never answers it (no per-call timer on the hot path)."""

    class BlackHole(Actor):
        async def receive(self, message: object) -> None:
            return None

    async with ActorSystem("t") as system:
        ref = await system.spawn(BlackHole, "audit")
        log = AuditLog(ref, timeout=0.2, system=system)
        started = anyio.current_time()
        with pytest.raises(AuditUnavailableError, match=r"not durable after 0\.2 s"):
            await log.record(draft(0))
        assert 0.2 <= anyio.current_time() - started < 1.0
        plain = AuditLog(ref, timeout=0.05)  # without a system: each wait bounds itself
        with pytest.raises(AuditUnavailableError, match="not durable"):
            await plain.record(draft(1))


async def test_durable_events_are_published_per_action(tmp_path: Path) -> None:
    async with running_node(audit_config(), tmp_path) as node:
        seen: list[AuditEvent] = []
        evaluate: list[AuditEvent] = []
        everything = await node.system.bus.subscribe("soma.audit.>")
        only = await node.system.bus.subscribe("soma.audit.context.evaluate")
        await node.log.record(draft(0))  # memory.remember
        await node.log.record(msgspec.structs.replace(draft(1), action="context.evaluate"))
        with anyio.fail_after(5):
            while len(seen) < 2:
                seen.append((await everything.next_msg()).data)
            evaluate.append((await only.next_msg()).data)
    assert [e.action for e in seen] == ["memory.remember", "context.evaluate"]
    assert [e.seq for e in evaluate] == [2]


async def test_the_writer_reports_its_batches_as_metrics(tmp_path: Path) -> None:
    from somabrain.edge.metrics import render_sources

    async with running_node(audit_config(), tmp_path) as node:
        await node.load(64, concurrency=16)
        text = "\n".join(render_sources(node.system.resources["metrics.sources"]))
    assert 'soma_audit_events_total{node="n1"} 64' in text
    assert 'soma_audit_tier_up{node="n1",tier="spool"} 1' in text
    batches = int(text.split('soma_audit_batches_total{node="n1"} ')[1].split()[0])
    assert 1 <= batches <= 64
