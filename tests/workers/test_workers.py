"""Integrity and reward workers on a node with the real audit writer (spool tier)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from somabrain.actors import ActorRef, ActorSystem
from somabrain.audit import AuditDraft, decode_event, request_meta
from somabrain.audit.writer import AuditWriter
from somabrain.workers.integrity import GetIntegrityStats, IntegrityWorker, MemoryEvent
from somabrain.workers.reward import Feedback, GetLedger, RewardWorker, TokenUsage
from tests.audit.harness import spool_records

pytestmark = pytest.mark.anyio


class DictStore:
    """A fake replica (logic test): checksums in a dict."""

    def __init__(self, name: str, source: bool = False) -> None:
        self.name = name
        self.source_of_truth = source
        self.data: dict[tuple[str, str, str], str] = {}

    async def checksum(self, tenant: str, namespace: str, key: str) -> str | None:
        return self.data.get((tenant, namespace, key))

    async def copy_from(self, source: Any, tenant: str, namespace: str, key: str) -> None:
        value = await source.checksum(tenant, namespace, key)
        if value is None:
            self.data.pop((tenant, namespace, key), None)
        else:
            self.data[(tenant, namespace, key)] = value


class BrokenStore(DictStore):
    async def copy_from(self, source: Any, tenant: str, namespace: str, key: str) -> None:
        raise OSError("read-only replica")


@contextlib.asynccontextmanager
async def node(tmp_path: Path) -> AsyncIterator[ActorSystem]:
    async with ActorSystem("w1") as system:
        system.resources["data_dir"] = tmp_path
        await system.spawn(AuditWriter, "audit")
        yield system


async def settle(ref: ActorRef) -> None:
    await anyio.sleep(0.05)
    await ref.ask(GetIntegrityStats() if "integrity" in ref.path else GetLedger())


async def test_integrity_repairs_what_it_can_and_audits_the_rest(tmp_path: Path) -> None:
    source, good, stale, broken = (
        DictStore("embedded", source=True),
        DictStore("redis"),
        DictStore("postgres"),
        BrokenStore("qdrant"),
    )
    ident = ("acme", "default", "k1")
    source.data[ident] = good.data[ident] = "c1"
    stale.data[ident] = "c0"
    broken.data[ident] = "c0"
    async with node(tmp_path) as system:
        system.resources["memory_stores"] = [source, good, stale, broken]
        ref = await system.spawn(IntegrityWorker, "integrity")
        event = MemoryEvent(op="put", tenant="acme", namespace="default", key="k1", checksum="c1")
        await system.bus.publish("soma.memory.events.acme", msgspec.to_builtins(event))
        await settle(ref)
        stats = await ref.ask(GetIntegrityStats())
    assert (stats.checked, stats.repaired, stats.unrepaired) == (1, 1, 1)
    assert stale.data[ident] == "c1"
    events = [decode_event(p) for _, p in spool_records(tmp_path)]
    assert [(e.action, e.decision) for e in events] == [("integrity.mismatch", "error")]
    assert "postgres" in events[0].reason and "qdrant" in events[0].reason


async def test_reward_ledger_correlates_feedback_with_the_audit_trail(tmp_path: Path) -> None:
    async with node(tmp_path) as system:
        ref = await system.spawn(RewardWorker, "reward")
        audit = system.resources["audit"]
        bundle = await audit.record(
            AuditDraft(
                tenant="acme",
                actor="agent",
                action="context.evaluate",
                decision="allow",
                request=request_meta(attributes={"session_id": "s1"}),
            )
        )
        await anyio.sleep(0.05)
        usage = TokenUsage(model="m1", prompt_tokens=100, completion_tokens=20)
        await system.bus.publish(
            "soma.feedback", Feedback(tenant="acme", session_id="s1", reward=1.0, tokens=usage)
        )
        await system.bus.publish(
            "soma.feedback", Feedback(tenant="acme", audit_id=bundle, reward=0.5, tokens=usage)
        )
        await system.bus.publish(
            "soma.feedback", Feedback(tenant="acme", session_id="nope", reward=0.0, tokens=usage)
        )
        await system.bus.publish(
            "soma.feedback", {"tenant": "other", "audit_id": bundle, "reward": 1.0}
        )
        await settle(ref)
        rows = {(r.tenant, r.model): r for r in await ref.ask(GetLedger())}
    acme = rows[("acme", "m1")]
    assert (acme.feedback, acme.correlated, acme.reward) == (3, 2, 1.5)
    assert (acme.prompt_tokens, acme.completion_tokens) == (300, 60)
    assert rows[("other", "")].correlated == 0  # another tenant cannot claim the bundle
    # The ledger is rebuilt from its file after a restart.
    async with node(tmp_path) as system:
        ref = await system.spawn(RewardWorker, "reward")
        again = {(r.tenant, r.model): r for r in await ref.ask(GetLedger(tenant="acme"))}
    assert again[("acme", "m1")] == acme
