"""A child killed while it is still starting is a failure of that child, not of its supervisor.

The case from a chaos run: a tenant's memory actor replays a long log in ``on_start`` after
its supervisor restarted; a kill then must cost that child a restart, not fail the supervisor
(which would restart every tenant and count against the parent's intensity)."""

from __future__ import annotations

import logging

import anyio
import msgspec
import pytest

from somabrain.actors import ActorSystem, ExitReason
from somabrain.supervision import (
    ActorSpec,
    DynamicSupervisor,
    Strategy,
    SupervisionTree,
    Supervisor,
    SupervisorNode,
    SupervisorSpec,
    VirtualClock,
)

from .helpers import Recorder, SlowStart, settle, until

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("strategy", "incarnations"),
    [
        (Strategy.ONE_FOR_ONE, [1, 2, 1]),
        (Strategy.REST_FOR_ONE, [1, 2, 1]),
        (Strategy.ONE_FOR_ALL, [2, 2, 1]),
    ],
)
async def test_a_child_killed_during_the_first_start_is_restarted_alone(
    strategy: Strategy, incarnations: list[int]
) -> None:
    journal: list[str] = []
    gates = {"b": anyio.Event()}
    specs = [ActorSpec(name, lambda: SlowStart(journal, gates)) for name in "abc"]
    async with ActorSystem() as system:
        spec = SupervisorSpec("sup", specs, strategy=strategy, intensity=5)
        supervisor = Supervisor(system, spec, "/sup", clock=VirtualClock())
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor.start_as_root)
            await settle()
            assert journal == ["start a", "starting b"]
            del gates["b"]  # its next incarnation starts at once
            b = supervisor.child("b")
            assert b is not None
            b.runner.kill()
        # start_as_root returned: the supervisor started, with b restarted once.
        assert supervisor.running
        refs = [system.lookup(f"/sup/{name}") for name in "abc"]
        assert [(await ref.ask("who"))[1] for ref in refs if ref is not None] == incarnations
        assert supervisor.statistics()["restarts_in_window"] == 1


async def test_a_tenant_killed_while_starting_does_not_fail_the_memory_supervisor() -> None:
    """The chaos run's case: the dynamic supervisor restarted, a tenant replays its log, and
    is killed meanwhile. Only that tenant restarts; the root sees one restart (the first
    kill), not a second one for a failed dynamic supervisor."""
    journal: list[str] = []
    gates: dict[str, anyio.Event] = {}
    root = msgspec.convert(
        {
            "intensity": 5,
            "backoff": {"initial": 0.0},
            "children": {"memory": {"kind": "dynamic", "actor": "x:T", "idle_timeout": 0}},
        },
        SupervisorNode,
    )
    async with ActorSystem() as system:
        tree = SupervisionTree(
            system, root, clock=VirtualClock(), resolve=lambda _: lambda: SlowStart(journal, gates)
        )
        await tree.start()
        memory = tree.find("/root/memory")
        assert isinstance(memory, DynamicSupervisor)
        t1, t2 = memory.ref("t1"), memory.ref("t2")
        assert await t1.ask("who") == ("t1", 1)
        assert await t2.ask("who") == ("t2", 1)
        gates["t2"] = anyio.Event()
        assert tree.kill("/root/memory")
        await until(lambda: "starting t2" in journal)
        del gates["t2"]
        memory.child("t2").runner.kill()  # type: ignore[union-attr]
        assert await t2.ask("who") == ("t2", 3)
        assert await t1.ask("who") == ("t1", 2)
        assert memory.running and memory.restarts == 1
        assert tree.root.statistics()["restarts_in_window"] == 1
        assert memory.statistics()["restarts_in_window"] == 1
        await tree.stop()


async def test_killing_a_starting_actor_through_the_tree_is_refused() -> None:
    """``/admin/actors/kill`` answers 409 ``not_running`` for an actor that is still starting
    (``tree.can_kill``), as the docs promise for an actor that restarts."""
    gates = {"slow": anyio.Event()}
    root = msgspec.convert(
        {"children": {"slow": {"kind": "actor", "actor": "x:T"}}}, SupervisorNode
    )
    async with ActorSystem() as system:
        tree = SupervisionTree(
            system, root, clock=VirtualClock(), resolve=lambda _: lambda: SlowStart([], gates)
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(tree.start)
            await settle()
            slow = tree.find("/root/slow")
            assert slow is not None and slow.running  # an incarnation exists...
            assert not tree.can_kill(slow)  # ...but it has not started
            assert not tree.kill("/root/slow")
            assert not tree.can_kill(tree.root)  # still starting its children
            gates.pop("slow").set()
        assert tree.can_kill(slow) and tree.kill("/root/slow")
        await tree.stop()


async def test_a_failed_start_is_logged_with_its_cause(caplog: pytest.LogCaptureFixture) -> None:
    def fails() -> bool:
        return True

    async with ActorSystem() as system:
        spec = SupervisorSpec("sup", [ActorSpec("w", lambda: Recorder([], fail_start=fails))])
        supervisor = Supervisor(system, spec, "/sup", clock=VirtualClock())
        with caplog.at_level(logging.ERROR, "somabrain.supervision"):
            exit_ = await supervisor.run()
    assert exit_.reason is ExitReason.FAILURE
    assert "/sup: child w failed to start: RuntimeError('w cannot start')" in caplog.messages
