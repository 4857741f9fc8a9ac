"""MemoryActor under a dynamic supervisor: one actor per tenant, rebuilt from its log after a
kill or a passivation, concurrent writes acknowledged only once durable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import msgspec
import pytest

from somabrain.actors import Actor, ActorSystem, AskTimeoutError
from somabrain.config import SomaConfig
from somabrain.memory import Link, Memory, Remembered, UnknownMemoryError
from somabrain.memory.actor import STORES_RESOURCE, MemoryActor
from somabrain.memory.messages import (
    ContextRecall,
    Forget,
    GetMemory,
    LinkMemories,
    MemoryStats,
    Recall,
    Reinforce,
    Remember,
    Unlink,
    WriteTicket,
    ask_memory,
)
from somabrain.supervision import DynamicSupervisor, SupervisionTree, SupervisorNode, VirtualClock

pytestmark = pytest.mark.anyio


def tree_config(idle_timeout: float = 0.0, backoff: float = 0.0) -> SupervisorNode:
    return msgspec.convert(
        {
            "intensity": 10,
            "children": {
                "memory": {
                    "kind": "dynamic",
                    "actor": "somabrain.memory.actor:MemoryActor",
                    "idle_timeout": idle_timeout,
                    "backoff": {"initial": backoff},
                }
            },
        },
        SupervisorNode,
    )


@asynccontextmanager
async def memory_tree(
    data_dir: Path,
    *,
    idle_timeout: float = 0.0,
    clock: VirtualClock | None = None,
    config: SomaConfig | None = None,
) -> AsyncIterator[tuple[SupervisionTree, DynamicSupervisor]]:
    async with ActorSystem() as system:
        system.resources["data_dir"] = data_dir
        system.resources["config"] = config or SomaConfig()
        tree = SupervisionTree(system, tree_config(idle_timeout), clock=clock)
        await tree.start()
        supervisor = tree.find("/root/memory")
        assert isinstance(supervisor, DynamicSupervisor)
        try:
            yield tree, supervisor
        finally:
            await tree.stop()


async def ask(supervisor: DynamicSupervisor, tenant: str, message: object) -> object:
    return await ask_memory(supervisor.ref(tenant), message, timeout=10)  # type: ignore[arg-type]


async def test_remember_recall_link_get_forget(tmp_path: Path) -> None:
    async with memory_tree(tmp_path) as (_, sup):
        results = await ask(
            sup,
            "acme",
            Remember(
                (
                    Memory(key="a", content="the cat sat on the mat"),
                    Memory(key="b", content="dogs chase cats in the park"),
                )
            ),
        )
        assert results == [Remembered("a", False), Remembered("b", False)]
        hits = await ask(sup, "acme", Recall(query="cat on a mat", top_k=2))
        assert hits[0].key == "a"  # type: ignore[index]
        assert set(hits[0].views) >= {"semantic", "lexical"}  # type: ignore[index]
        link = await ask(sup, "acme", LinkMemories(from_key="a", to_key="b", rel="near"))
        assert link == Link(from_key="a", to_key="b", rel="near", weight=1.0)
        got = await ask(sup, "acme", GetMemory("a"))
        assert isinstance(got, Memory) and got.links == (link,)
        assert await ask(sup, "acme", Unlink(from_key="a", to_key="b", rel="near")) is True
        assert await ask(sup, "acme", Forget("b", namespace="system")) is False  # not there
        assert await ask(sup, "acme", GetMemory("b")) is not None
        assert await ask(sup, "acme", Forget("b", namespace="default")) is True
        assert await ask(sup, "acme", Forget("b")) is False
        assert await ask(sup, "acme", GetMemory("b")) is None
        stats = await ask(sup, "acme", MemoryStats())
        assert stats.memories == 1  # type: ignore[attr-defined]


async def test_write_errors_reach_the_asker_and_the_actor_keeps_going(tmp_path: Path) -> None:
    async with memory_tree(tmp_path) as (_, sup):
        with pytest.raises(UnknownMemoryError):
            await ask(sup, "acme", LinkMemories(from_key="x", to_key="y"))
        with pytest.raises(ValueError):
            await ask(sup, "acme", Remember((Memory(content="   "),)))
        ticket = await sup.ref("acme").ask(Remember((Memory(content="fine"),)))
        assert isinstance(ticket, WriteTicket)
        [(key, _)] = await ticket.result(10)
        assert (await ask(sup, "acme", GetMemory(key))).content == "fine"  # type: ignore[attr-defined]


async def test_tenants_are_isolated(tmp_path: Path) -> None:
    async with memory_tree(tmp_path) as (_, sup):
        await ask(sup, "a", Remember((Memory(key="k", content="alpha secret"),)))
        assert await ask(sup, "b", GetMemory("k")) is None
        assert await ask(sup, "b", Recall(query="alpha secret")) == []
        assert sorted(sup.names()) == ["a", "b"]


async def test_a_killed_actor_is_rebuilt_from_its_log(tmp_path: Path) -> None:
    async with memory_tree(tmp_path) as (tree, sup):
        memories = tuple(Memory(key=f"k{i}", content=f"memory number {i}") for i in range(50))
        await ask(sup, "acme", Remember(memories))
        await ask(sup, "acme", LinkMemories(from_key="k1", to_key="k2"))
        assert tree.kill("/root/memory/acme")
        got = await ask(sup, "acme", GetMemory("k1"))  # waits in the mailbox for the restart
        assert got.links[0].to_key == "k2"  # type: ignore[attr-defined]
        stats = await ask(sup, "acme", MemoryStats())
        assert stats.memories == 50  # type: ignore[attr-defined]
        cell = tree.system.cell("/root/memory/acme")
        assert cell is not None and cell.incarnation == 2


async def test_shutdown_before_the_restart_closes_the_killed_actors_log(tmp_path: Path) -> None:
    config = tree_config(backoff=60.0)
    async with ActorSystem() as system:
        system.resources["data_dir"] = tmp_path
        system.resources["config"] = SomaConfig()
        tree = SupervisionTree(system, config)
        await tree.start()
        supervisor = tree.find("/root/memory")
        assert isinstance(supervisor, DynamicSupervisor)
        await ask(supervisor, "acme", Remember((Memory(key="k", content="kept"),)))
        assert tree.kill("/root/memory/acme")  # its log waits for an incarnation that never comes
        await tree.stop()
    # The same process opens the tenant again: the orphaned log was closed (and unlocked).
    async with memory_tree(tmp_path) as (_, sup):
        assert await ask(sup, "acme", GetMemory("k")) is not None


async def test_kill_with_writes_in_flight_loses_nothing_acknowledged(tmp_path: Path) -> None:
    acknowledged: list[str] = []
    async with memory_tree(tmp_path) as (tree, sup):

        async def writer(w: int) -> None:
            for i in range(40):
                key = f"w{w}-{i}"
                try:
                    await ask(sup, "acme", Remember((Memory(key=key, content=f"w {w} i {i}"),)))
                except Exception:
                    continue  # not acknowledged: may or may not be stored
                acknowledged.append(key)

        async with anyio.create_task_group() as tg:
            for w in range(8):
                tg.start_soon(writer, w)
            for _ in range(3):
                for _ in range(20):
                    await anyio.lowlevel.checkpoint()
                tree.kill("/root/memory/acme")
        assert len(acknowledged) > 0
        for key in acknowledged:
            assert await ask(sup, "acme", GetMemory(key)) is not None, key
    # and after a full stop and a fresh start of everything
    async with memory_tree(tmp_path) as (_, sup):
        stats = await ask(sup, "acme", MemoryStats())
        assert stats.memories >= len(acknowledged)  # type: ignore[attr-defined]
        for key in acknowledged:
            assert await ask(sup, "acme", GetMemory(key)) is not None, key


async def test_passivated_actor_comes_back_with_its_memories(tmp_path: Path) -> None:
    clock = VirtualClock()
    async with memory_tree(tmp_path, idle_timeout=60, clock=clock) as (tree, sup):
        await ask(sup, "acme", Remember((Memory(key="k", content="kept across passivation"),)))
        with anyio.fail_after(10):
            while sup.names():
                await anyio.lowlevel.checkpoint()
        assert sup.passivations == 1
        assert "acme" not in tree.system.resources[STORES_RESOURCE]  # log closed
        got = await ask(sup, "acme", GetMemory("k"))
        assert got.content == "kept across passivation"  # type: ignore[attr-defined]


async def test_invalid_tenant_names_do_not_start(tmp_path: Path) -> None:
    async with ActorSystem() as system:
        system.resources["data_dir"] = tmp_path
        actor = MemoryActor()
        cell = system.new_cell("/x/.hidden tenant", lambda: actor)
        exit_ = await system.start(cell.run)
        assert exit_ is not None and isinstance(exit_.error, ValueError)


class Stuck(Actor):
    gate: anyio.Event

    async def receive(self, message: object) -> object:
        await Stuck.gate.wait()
        return message


async def test_ask_memory_times_out_on_a_full_mailbox_too() -> None:
    Stuck.gate = anyio.Event()
    async with ActorSystem() as system:
        ref = await system.spawn(Stuck, "stuck", mailbox_size=1)
        await ref.tell("busy")  # being handled: blocks the actor
        await ref.tell("queued")  # fills the mailbox
        with pytest.raises(AskTimeoutError):
            await ask_memory(ref, GetMemory("k"), timeout=0.05)
        Stuck.gate.set()


async def test_an_unreadable_log_refuses_that_tenant_only(tmp_path: Path) -> None:
    from somabrain.memory import tenant_log_path
    from somabrain.memory.actor import TenantUnavailableError

    bad = tenant_log_path(tmp_path / "memory", "bad")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not a memory log")
    async with memory_tree(tmp_path) as (tree, sup):
        for _ in range(3):  # refused every time, without restarts piling up
            with pytest.raises(TenantUnavailableError, match="bad magic"):
                await ask(sup, "bad", GetMemory("k"))
        await ask(sup, "good", Remember((Memory(key="k", content="fine"),)))
        assert (await ask(sup, "good", GetMemory("k"))).content == "fine"  # type: ignore[attr-defined]
        assert tree.ready and sup.restarts == 0
        bad.unlink()  # repaired: the next incarnation opens it
        assert tree.kill("/root/memory/bad")
        assert await ask(sup, "bad", GetMemory("k")) is None


async def working_memory(sup: DynamicSupervisor, session: str) -> list[str]:
    """The session's working-memory keys, oldest first (each hit's recency is its position)."""
    found = await ask(sup, "acme", ContextRecall(query="note", top_k=0, session_id=session,
                                                 wm_top_k=100))  # fmt: skip
    hits = sorted(found.working_memory, key=lambda h: h.views["recency"])  # type: ignore[attr-defined]
    return [h.key for h in hits]


async def test_working_memory_survives_kill_passivation_and_restart(tmp_path: Path) -> None:
    def note(key: str, session: str) -> Memory:
        return Memory(key=key, content=f"note {key}", session_id=session)

    clock = VirtualClock()
    async with memory_tree(tmp_path, idle_timeout=60, clock=clock) as (tree, sup):
        await ask(sup, "acme", Remember(tuple(note(f"a{i}", "s1") for i in range(5))))
        await ask(sup, "acme", Remember((note("b0", "s2"), note("a1", "s1"))))  # a1 moves last
        await ask(sup, "acme", Reinforce(keys=("b0", "a3"), amount=1.0, session_id="s1"))
        await ask(sup, "acme", Forget("a2"))
        s1 = ["a0", "a4", "a1", "b0", "a3"]
        assert await working_memory(sup, "s1") == s1
        assert tree.kill("/root/memory/acme")
        assert await working_memory(sup, "s1") == s1  # a new incarnation
        assert await working_memory(sup, "s2") == ["b0"]
        with anyio.fail_after(10):  # passivated: the actor stops and closes its journal
            while sup.names():
                await anyio.lowlevel.checkpoint()
        assert await working_memory(sup, "s1") == s1
        await ask(sup, "acme", Forget("b0"))
        # killed with a write in flight: its working-memory change is handed over too
        ticket = await sup.ref("acme").ask(Remember((note("a9", "s1"),)), timeout=10)
        assert tree.kill("/root/memory/acme")
        assert isinstance(ticket, WriteTicket)
        await ticket.result(10)
        s1 = ["a0", "a4", "a1", "a3", "a9"]
        assert await working_memory(sup, "s1") == s1  # the next incarnation read it
    async with memory_tree(tmp_path) as (_, sup):  # a fresh process
        assert await working_memory(sup, "s1") == s1
        assert await working_memory(sup, "s2") == []  # b0 was forgotten
        await ask(sup, "acme", Remember((Memory(key="b0", content="note b0 is back"),)))
    async with memory_tree(tmp_path) as (_, sup):  # remembered again, not in a session
        assert await working_memory(sup, "s2") == []
