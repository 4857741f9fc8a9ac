"""A node with only the audit writer in its tree (plus helpers to drive and check it)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec

from somabrain.actors import ActorSystem
from somabrain.audit import AuditDraft, AuditLog, AuditUnavailableError, request_meta, verify
from somabrain.audit.spool import read_spool
from somabrain.audit.writer import GetStatus, Sync, WriterStatus
from somabrain.config import SomaConfig
from somabrain.supervision import SupervisionTree

__all__ = [
    "AuditNode",
    "audit_config",
    "check_exactly_once",
    "draft",
    "running_node",
    "spool_records",
]

WRITER = "/root/audit"


def audit_config(node: str = "n1", **sections: Any) -> SomaConfig:
    data: dict[str, Any] = {
        "node": {"name": node},
        "tree": {
            "strategy": "one_for_one",
            "intensity": 100,
            "period": 1.0,
            "backoff": {"initial": 0.001, "max": 0.01},
            "children": {
                "audit": {
                    "kind": "actor",
                    "actor": "somabrain.audit.writer:AuditWriter",
                    "mailbox_size": 65536,
                }
            },
        },
    }
    data.update(sections)
    return msgspec.convert(data, SomaConfig)


def draft(i: int, tenant: str = "acme") -> AuditDraft:
    return AuditDraft(
        tenant=tenant,
        actor="agent-7",
        action="memory.remember",
        decision="allow",
        trace_id=f"trace-{i}",
        request=request_meta(method="POST", path="/memory/remember", status=200, content=f"m{i}"),
    )


class AuditNode:
    def __init__(self, system: ActorSystem, tree: SupervisionTree) -> None:
        self.system = system
        self.tree = tree
        self.acked: list[str] = []
        self.failed = 0

    @property
    def log(self) -> AuditLog:
        log: AuditLog = self.system.resources["audit"]
        return log

    async def status(self) -> WriterStatus:
        ref = self.system.lookup(WRITER)
        assert ref is not None
        status: WriterStatus = await ref.ask(GetStatus(), timeout=30)
        return status

    async def sync(self) -> WriterStatus:
        ref = self.system.lookup(WRITER)
        assert ref is not None
        status: WriterStatus = await ref.ask(Sync(), timeout=60)
        return status

    async def kill_writer(self) -> None:
        """Kill the writer; when a kill finds it restarting from the last one (a busy machine
        makes restarts slow), wait for it to be back and kill that incarnation."""
        with anyio.fail_after(10):
            while not self.tree.kill(WRITER):  # noqa: ASYNC110 (polls the tree)
                await anyio.sleep(0.01)

    async def record(self, i: int) -> None:
        try:
            self.acked.append(await self.log.record(draft(i)))
        except AuditUnavailableError:
            self.failed += 1

    async def load(self, count: int, concurrency: int = 8, pause: float = 0.0) -> None:
        """``count`` records from ``concurrency`` tasks (each one at a time, like requests)."""
        per = count // concurrency

        async def worker(w: int) -> None:
            for i in range(per):
                await self.record(w * per + i)
                if pause:
                    await anyio.sleep(pause)

        async with anyio.create_task_group() as tg:
            for w in range(concurrency):
                tg.start_soon(worker, w)


@contextlib.asynccontextmanager
async def running_node(cfg: SomaConfig, data_dir: Path) -> AsyncIterator[AuditNode]:
    async with ActorSystem(cfg.node.name) as system:
        system.resources["config"] = cfg
        system.resources["data_dir"] = data_dir
        tree = SupervisionTree(system, cfg.tree, cfg.node)
        await tree.start()
        try:
            yield AuditNode(system, tree)
        finally:
            await tree.stop()


def spool_records(data_dir: Path) -> list[tuple[str, bytes]]:
    return list(read_spool(data_dir / "audit" / "spool"))


def check_exactly_once(records: list[tuple[str, bytes]], acked: list[str], node: str = "n1") -> Any:
    """The chain verifies from seq 1 without duplicates, and holds every acked id once."""
    report = verify(records)[node]
    assert report.ok, report.summary()
    assert report.duplicates == 0, report.summary()
    ids = [msgspec.json.decode(payload)["event_id"] for _, payload in records]
    counts: dict[str, int] = {}
    for event_id in ids:
        counts[event_id] = counts.get(event_id, 0) + 1
    missing = [a for a in acked if counts.get(a, 0) != 1]
    assert not missing, f"{len(missing)} acknowledged events not found exactly once"
    return report
