"""Memory events end to end: the memory actors publish them after acknowledged writes, the
integrity worker checks them against the embedded store, rebuilds a store that disagrees from
its log, and reports what it cannot repair (metrics and audit). In process on both backends;
through a real Kafka-protocol broker (noida-db) and the bridge at the end."""

# ruff: noqa: ASYNC110  (the tests poll the worker's counters)

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from somabrain import config as soma_config
from somabrain.actors import ActorRef, ActorSystem
from somabrain.audit import decode_event
from somabrain.edge.metrics import render_sources
from somabrain.memory import Memory
from somabrain.memory.actor import STORES_RESOURCE
from somabrain.memory.events import MemoryEvent, link_checksum, memory_checksum, outbox_of
from somabrain.memory.messages import Forget, GetMemory, LinkMemories, Remember, Unlink, ask_memory
from somabrain.supervision import SupervisionTree
from somabrain.workers.integrity import GetIntegrityStats, IntegrityStats
from tests.audit.harness import spool_records

pytestmark = pytest.mark.anyio

WORKER = "/root/workers/integrity"


def node_config(*, bridge: bool = False, **sections: Any) -> soma_config.SomaConfig:
    workers_tree: dict[str, Any] = {
        "integrity": {"kind": "actor", "actor": "somabrain.workers.integrity:IntegrityWorker"}
    }
    if bridge:
        workers_tree["bridge"] = {
            "kind": "actor",
            "actor": "somabrain.actors.kafka_bridge:KafkaBridge",
        }
    tree = {
        "intensity": 20,
        "children": {
            "audit": {"kind": "actor", "actor": "somabrain.audit.writer:AuditWriter"},
            "memory": {
                "kind": "dynamic",
                "actor": "somabrain.memory.actor:MemoryActor",
                "idle_timeout": 0,
                "backoff": {"initial": 0.0},
            },
            "workers": {"kind": "supervisor", "children": workers_tree},
        },
    }
    workers = {"integrity": {"recheck_delay": 0.05, **sections.pop("integrity", {})}}
    if "bridge_routes" in sections:
        sections["bridge"] = sections.pop("bridge_routes")
    return msgspec.convert({"tree": tree, "workers": workers, **sections}, soma_config.SomaConfig)


class Node:
    def __init__(self, system: ActorSystem, tree: SupervisionTree) -> None:
        self.system = system
        self.tree = tree

    def memory(self, tenant: str) -> ActorRef:
        runner: Any = self.tree.find("/root/memory")
        ref: ActorRef = runner.ref(tenant)
        return ref

    async def ask(self, tenant: str, message: Any) -> Any:
        return await ask_memory(self.memory(tenant), message, 10.0)

    async def stats(self) -> IntegrityStats:
        ref = self.system.lookup(WORKER)
        assert ref is not None
        stats: IntegrityStats = await ref.ask(GetIntegrityStats())
        return stats

    async def settled(self, checked: int) -> IntegrityStats:
        """Wait until ``checked`` events were checked and no second look is pending."""
        with anyio.fail_after(20):
            while True:
                stats = await self.stats()
                if stats.checked >= checked and stats.pending == 0:
                    return stats
                await anyio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, cfg: soma_config.SomaConfig | None = None) -> AsyncIterator[Node]:
    cfg = cfg or node_config()
    async with ActorSystem("n1") as system:
        system.resources.update(config=cfg, data_dir=tmp_path)
        tree = SupervisionTree(system, cfg.tree, cfg.node)
        system.resources["tree"] = tree
        await tree.start()
        try:
            yield Node(system, tree)
        finally:
            await tree.stop()


def findings(tmp_path: Path) -> list[tuple[str, str, str]]:
    events = [decode_event(p) for _, p in spool_records(tmp_path)]
    return [(e.action, e.decision, e.reason) for e in events if e.action.startswith("integrity.")]


async def test_acknowledged_writes_publish_events_with_checksums(tmp_path: Path) -> None:
    async with running(tmp_path) as node:
        events = await node.system.bus.subscribe("soma.memory.events.>")
        [(a, _), (b, _), (_, dedup)] = await node.ask(
            "acme",
            Remember((Memory(content="Paris is in France", namespace="geo"),
                      Memory(content="Rome is in Italy"), Memory(content="Rome is in Italy"))),
        )  # fmt: skip
        assert dedup  # nothing written, nothing announced
        link = await node.ask("acme", LinkMemories(from_key=a, to_key=b, rel="near", weight=2.0))
        assert await node.ask("acme", Unlink(from_key=a, to_key=b, rel="near"))
        stored = await node.ask("acme", GetMemory(a))
        assert await node.ask("acme", Forget(b))
        got: list[MemoryEvent] = []
        with anyio.fail_after(5):
            while len(got) < 5:
                msg = await events.next_msg()
                assert msg.subject == "soma.memory.events.acme"
                got.append(msg.data)
        stats = await node.settled(5)
    assert [(e.op, e.key) for e in got] == [
        ("put", a), ("put", b), ("link", a), ("unlink", a), ("delete", b),
    ]  # fmt: skip
    assert got[0].namespace == "geo" and got[0].checksum == memory_checksum(stored)
    assert got[2].to_key == b and got[2].rel == "near" and got[2].checksum == link_checksum(link)
    assert got[3].checksum == got[4].checksum == "" and got[4].namespace == "default"
    assert all(e.tenant == "acme" and e.node == "n1" and len(e.event_id) == 32 for e in got)
    assert (stats.checked, stats.agreed, stats.repaired, stats.unrepaired) == (5, 5, 0, 0)
    assert findings(tmp_path) == []


async def test_a_store_that_drifted_from_its_log_is_rebuilt_and_audited(tmp_path: Path) -> None:
    async with running(tmp_path) as node:
        events = await node.system.bus.subscribe("soma.memory.events.>")
        [(key, _)] = await node.ask("acme", Remember((Memory(content="the original"),)))
        announced: MemoryEvent = (await events.next_msg(timeout=5)).data
        await node.settled(1)
        # The in-memory state changes behind the log's back (a bug, a stray write)...
        state = node.system.resources[STORES_RESOURCE]["acme"].memory._state
        state.memories[key] = msgspec.structs.replace(state.memories[key], content="tampered")
        # ...and the event is delivered again (Kafka's at-least-once redelivery would).
        await node.system.bus.publish("soma.memory.events.acme", announced)
        stats = await node.settled(2)
        restored = await node.ask("acme", GetMemory(key))
        metrics = "\n".join(render_sources(node.system.resources["metrics.sources"]))
    assert (stats.repaired, stats.unrepaired) == (1, 0)
    assert restored.content == "the original"
    [(action, decision, reason)] = findings(tmp_path)
    assert (action, decision) == ("integrity.repaired", "allow") and "rebuilt" in reason
    assert "soma_integrity_repaired_total 1" in metrics
    assert "soma_memory_events_published_total 1" in metrics


async def test_what_the_log_does_not_hold_is_reported_not_repaired(tmp_path: Path) -> None:
    async with running(tmp_path) as node:
        [(key, _)] = await node.ask("acme", Remember((Memory(content="kept"),)))
        await node.settled(1)
        lost = MemoryEvent(op="put", tenant="acme", namespace="default", key=key,
                           checksum="0" * 64, event_id="e" * 32)  # fmt: skip
        await node.system.bus.publish("soma.memory.events.acme", lost)
        stats = await node.settled(2)
        metrics = "\n".join(render_sources(node.system.resources["metrics.sources"]))
    assert (stats.repaired, stats.unrepaired) == (0, 1)
    [(action, decision, reason)] = findings(tmp_path)
    assert (action, decision) == ("integrity.mismatch", "error")
    assert "embedded: holds checksum" in reason
    assert "soma_integrity_unrepaired_total 1" in metrics


async def test_a_later_write_explains_a_disagreement(tmp_path: Path) -> None:
    """Events delivered late (a stale one first): the store is ahead, not wrong; and a
    forgotten memory settles the pending checks of its edges."""
    async with running(tmp_path, node_config(integrity={"recheck_delay": 0.5})) as node:
        events = await node.system.bus.subscribe("soma.memory.events.>")
        await node.ask("acme", Remember((Memory(content="version one", key="k"),)))
        first: MemoryEvent = (await events.next_msg(timeout=5)).data
        await node.ask("acme", Remember((Memory(content="version two", key="k"),)))
        second: MemoryEvent = (await events.next_msg(timeout=5)).data
        await node.settled(2)
        for event in (first, second):  # the stale one, then the one that explains it
            await node.system.bus.publish("soma.memory.events.acme", event)
        stats = await node.settled(4)
        await node.ask("acme", Remember((Memory(content="a third", key="k2"),)))
        linked = await node.ask("acme", LinkMemories(from_key="k", to_key="k2"))
        await node.settled(6)
        heavier = msgspec.structs.replace(linked, weight=5.0)  # not what the store holds
        stale = MemoryEvent(op="link", tenant="acme", namespace="", key="k", to_key="k2",
                            rel="related", checksum=link_checksum(heavier))  # fmt: skip
        await node.system.bus.publish("soma.memory.events.acme", stale)
        with anyio.fail_after(5):
            while (await node.stats()).pending == 0:
                await anyio.sleep(0.01)
        await node.ask("acme", Forget("k2"))  # takes the edge along: nothing left to check
        after = await node.settled(8)
    assert (stats.superseded, stats.repaired, stats.unrepaired) == (1, 0, 0)
    assert (after.superseded, after.repaired, after.unrepaired) == (2, 0, 0)
    assert findings(tmp_path) == []


async def test_a_full_outbox_drops_events_not_writes(tmp_path: Path) -> None:
    async with running(tmp_path) as node:
        outbox = outbox_of(node.system)
        outbox.capacity = 0
        [(key, deduplicated)] = await node.ask("acme", Remember((Memory(content="still kept"),)))
        assert not deduplicated and outbox.dropped == 1
        assert (await node.ask("acme", GetMemory(key))).content == "still kept"


@pytest.mark.integration
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_memory_events_reach_the_worker_through_kafka(
    tmp_path: Path, kafka_server: Any
) -> None:
    """memory actor -> bus -> bridge -> Kafka topic -> bridge -> worker: the worker listens
    only to the subject the consume route feeds, so every check went through the broker."""
    cfg = node_config(
        bridge=True,
        kafka={"bootstrap": kafka_server.bootstrap, "request_timeout": 2.0},
        bridge_routes={
            "forward": [{"subjects": "soma.memory.events.>", "topic": "soma.memory.events"}],
            "consume": [
                {
                    "topic": "soma.memory.events",
                    "subject": "soma.in.memory.events",
                    "group": "soma-integrity",
                }
            ],
        },
        integrity={"subject": "soma.in.memory.events"},
    )
    async with running(tmp_path, cfg) as node:
        memories = tuple(Memory(content=f"fact number {i}") for i in range(20))
        keys = [k for k, _ in await node.ask("acme", Remember(memories))]
        await node.ask("acme", LinkMemories(from_key=keys[0], to_key=keys[1]))
        stats = await node.settled(21)
    assert (stats.checked, stats.agreed, stats.unrepaired) == (21, 21, 0)


def test_the_default_config_bridges_the_event_streams_to_kafka() -> None:
    from somabrain.actors.kafka_bridge import check_routes
    from somabrain.actors.subjects import matches

    cfg = soma_config.load(environ={})
    check_routes(cfg.bridge)
    routes = {route.topic: route.subjects for route in cfg.bridge.forward}
    assert matches(routes["soma.memory.events"], "soma.memory.events.acme")
    assert {"soma.constitution.revisions", "soma.feedback"} <= set(routes)
    assert matches(cfg.workers.integrity.subject, "soma.memory.events.acme")


@pytest.mark.integration
def test_the_dev_node_checks_its_memory_events(tmp_path: Path) -> None:
    """The default tree wires it: over HTTP, every acknowledged change is announced and
    checked, and /metrics shows it."""
    import re
    import time

    from tests.edge.devnode import DevNode

    def counter(text: str, name: str) -> int:
        match = re.search(rf"^{name} (\d+)$", text, re.MULTILINE)
        return int(match.group(1)) if match else -1

    with DevNode.running(tmp_path / "data") as node, node.client() as client:
        node.wait_ready(client)
        a = client.post("/memory/remember", json={"content": "Oslo is in Norway"}).json()["key"]
        b = client.post("/memory/remember", json={"content": "Bergen is in Norway"}).json()["key"]
        assert client.post("/memory/link", json={"from_key": a, "to_key": b}).status_code == 200
        assert client.delete(f"/memory/{b}").status_code == 200
        deadline = time.monotonic() + 20
        while True:
            text = client.get("/metrics").text
            if counter(text, "soma_integrity_checked_total") >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert counter(text, "soma_memory_events_published_total") == 4
    assert counter(text, "soma_integrity_checked_total") == 4
    assert counter(text, "soma_integrity_agreed_total") == 4
    assert counter(text, "soma_integrity_unrepaired_total") == 0
