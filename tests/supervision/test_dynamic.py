"""The dynamic supervisor: children on demand, restarts, passivation without loss."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from somabrain.actors import Actor, ActorSystem
from somabrain.supervision import (
    ActorSpec,
    Backoff,
    DynamicSpec,
    DynamicSupervisor,
    MaxChildrenError,
    VirtualClock,
)

from .helpers import Recorder, settle

pytestmark = pytest.mark.anyio


async def start_dynamic(
    system: ActorSystem, spec: DynamicSpec, clock: VirtualClock | None = None
) -> DynamicSupervisor:
    supervisor = DynamicSupervisor(system, spec, f"/{spec.name}", clock=clock or VirtualClock())
    await supervisor.start_as_root()
    return supervisor


async def test_children_start_on_first_use_and_keep_their_ref() -> None:
    journal: list[str] = []
    async with ActorSystem() as system:
        spec = DynamicSpec("mem", ActorSpec("tenant", lambda: Recorder(journal)), idle_timeout=0)
        supervisor = await start_dynamic(system, spec)
        assert supervisor.names() == []
        a = supervisor.ref("tenant-a")
        assert await a.ask("who") == ("tenant-a", 1)
        assert supervisor.ref("tenant-a") is a
        assert await supervisor.ref("tenant-b").ask("who") == ("tenant-b", 1)
        assert sorted(supervisor.names()) == ["tenant-a", "tenant-b"]
        assert journal == ["start tenant-a", "start tenant-b"]
        tree = supervisor.inspect()
        assert [c["path"] for c in tree["children"]] == ["/mem/tenant-a", "/mem/tenant-b"]


async def test_a_child_beyond_max_children_is_refused_with_its_own_error() -> None:
    # Its own type, so that the edge (here or over a cluster) answers 503 "overloaded" while a
    # RuntimeError of a bug stays a 500.
    journal: list[str] = []
    async with ActorSystem() as system:
        spec = DynamicSpec(
            "mem", ActorSpec("t", lambda: Recorder(journal)), idle_timeout=0, max_children=1
        )
        supervisor = await start_dynamic(system, spec)
        assert await supervisor.ref("a").ask("who") == ("a", 1)
        with pytest.raises(MaxChildrenError, match="max_children=1"):
            supervisor.ref("b")
        assert supervisor.names() == ["a"]


async def test_a_failed_child_is_restarted_alone() -> None:
    journal: list[str] = []
    async with ActorSystem() as system:
        spec = DynamicSpec(
            "mem",
            ActorSpec("t", lambda: Recorder(journal)),
            idle_timeout=0,
            backoff=Backoff(initial=0),
        )
        supervisor = await start_dynamic(system, spec)
        a, b = supervisor.ref("a"), supervisor.ref("b")
        await a.ask("who")
        await b.ask("who")
        await a.tell("crash")
        assert await a.ask("who") == ("a", 2)
        assert await b.ask("who") == ("b", 1)


async def test_transient_children_that_stop_normally_are_forgotten() -> None:
    journal: list[str] = []
    async with ActorSystem() as system:
        from somabrain.supervision import Restart

        template = ActorSpec("t", lambda: Recorder(journal), restart=Restart.TRANSIENT)
        supervisor = await start_dynamic(system, DynamicSpec("mem", template, idle_timeout=0))
        ref = supervisor.ref("a")
        await ref.ask("stop")
        await settle()
        assert supervisor.names() == []
        assert not ref.alive
        fresh = supervisor.ref("a")  # used again: a new child
        assert await fresh.ask("who") == ("a", 1)


async def test_idle_children_are_passivated_and_come_back_on_demand() -> None:
    journal: list[str] = []
    clock = VirtualClock()
    async with ActorSystem() as system:
        spec = DynamicSpec("mem", ActorSpec("t", lambda: Recorder(journal)), idle_timeout=60)
        supervisor = await start_dynamic(system, spec, clock)
        await supervisor.ref("a").ask("who")
        with anyio.fail_after(5):
            while supervisor.names():
                await anyio.lowlevel.checkpoint()
        assert journal == ["start a", "stop a"]
        assert supervisor.passivations == 1
        assert clock.now() >= 60
        assert await supervisor.ref("a").ask("who") == ("a", 1)
        assert journal[-1] == "start a"


class SlowStop(Actor):
    gate: anyio.Event

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def on_stop(self) -> None:
        await SlowStop.gate.wait()

    async def receive(self, message: Any) -> Any:
        self.log.append(message)
        return message


async def test_a_message_arriving_during_passivation_is_not_lost() -> None:
    handled: list[Any] = []
    SlowStop.gate = anyio.Event()
    async with ActorSystem() as system:
        spec = DynamicSpec("mem", ActorSpec("t", lambda: SlowStop(handled)), idle_timeout=0)
        supervisor = await start_dynamic(system, spec)
        ref = supervisor.ref("a")
        await ref.ask("first")
        child = supervisor.child("a")
        assert child is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor.call, lambda: supervisor._passivate(child))
            await settle()  # the child is now stuck in on_stop
            await ref.tell("during")
            SlowStop.gate.set()
        assert await ref.ask("after") == "after"
        assert handled == ["first", "during", "after"]
        assert supervisor.passivations == 0
