"""Under one_for_one, a child's restart (backoff, then its ``on_start``) runs beside the
supervisor's loop: starts and restarts of other children do not queue behind it.

The case from a chaos run: after repeated kills of one tenant, the first request of a new
tenant waited for the victim's backoff and log replay (seconds instead of milliseconds)."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest

from somabrain.actors import ActorRef, ActorSystem, Exit, ExitReason
from somabrain.supervision import (
    ActorSpec,
    Backoff,
    DynamicSpec,
    DynamicSupervisor,
    Supervisor,
    SupervisorGaveUpError,
    SupervisorSpec,
    VirtualClock,
)

from .helpers import HeldClock, SlowStart, releasing, settle

pytestmark = pytest.mark.anyio


def dynamic_spec(journal: list[str], gates: dict[str, anyio.Event], **settings: Any) -> DynamicSpec:
    template = ActorSpec("t", lambda: SlowStart(journal, gates), shutdown=1.0)
    return DynamicSpec("mem", template, idle_timeout=0, **settings)


async def start_dynamic(
    system: ActorSystem, spec: DynamicSpec, clock: VirtualClock
) -> DynamicSupervisor:
    supervisor = DynamicSupervisor(system, spec, f"/{spec.name}", clock=clock)
    await supervisor.start_as_root()
    return supervisor


async def ask_later(tg: anyio.abc.TaskGroup, ref: ActorRef, answers: list[Any]) -> None:
    """Ask ``ref`` in the background; the answer lands in ``answers``."""

    async def ask() -> None:
        answers.append(await ref.ask("who"))

    tg.start_soon(ask)


async def test_a_child_in_its_backoff_does_not_hold_up_a_new_child() -> None:
    journal: list[str] = []
    clock = HeldClock()
    async with ActorSystem() as system:
        with releasing({}, clock):
            supervisor = await start_dynamic(system, dynamic_spec(journal, {}), clock)
            victim = supervisor.ref("victim")
            assert await victim.ask("who") == ("victim", 1)
            await victim.tell("crash")
            await settle()
            assert len(clock.sleeps) == 1  # the victim waits for its backoff
            fresh: list[Any] = []
            waiting: list[Any] = []
            async with anyio.create_task_group() as tg:
                await ask_later(tg, supervisor.ref("fresh"), fresh)
                await ask_later(tg, victim, waiting)
                await settle()
                assert fresh == [("fresh", 1)]
                assert waiting == []  # kept in the mailbox for the next incarnation
                clock.release()
            assert waiting == [("victim", 2)]


async def test_a_child_in_its_on_start_does_not_hold_up_others() -> None:
    journal: list[str] = []
    gates: dict[str, anyio.Event] = {}
    async with ActorSystem() as system:
        with releasing(gates):
            spec = dynamic_spec(journal, gates, backoff=Backoff(initial=0))
            supervisor = await start_dynamic(system, spec, VirtualClock())
            victim, other = supervisor.ref("victim"), supervisor.ref("other")
            assert await victim.ask("who") == ("victim", 1)
            assert await other.ask("who") == ("other", 1)
            gates["victim"] = anyio.Event()
            await victim.tell("crash")
            await settle()
            assert journal[-1] == "starting victim"
            # Meanwhile a new child starts, and another one fails and is restarted.
            assert await supervisor.ref("fresh").ask("who") == ("fresh", 1)
            await other.tell("crash")
            assert await other.ask("who") == ("other", 2)
            gates.pop("victim").set()
            assert await victim.ask("who") == ("victim", 2)


async def test_one_for_one_children_of_a_static_supervisor_restart_independently() -> None:
    journal: list[str] = []
    gates: dict[str, anyio.Event] = {}
    specs = [ActorSpec(name, lambda: SlowStart(journal, gates)) for name in ("a", "b")]
    async with ActorSystem() as system:
        with releasing(gates):
            supervisor = Supervisor(
                system, SupervisorSpec("sup", specs, intensity=5), "/sup", clock=VirtualClock()
            )
            await supervisor.start_as_root()
            a, b = system.lookup("/sup/a"), system.lookup("/sup/b")
            assert a is not None and b is not None
            gates["a"] = anyio.Event()
            await a.tell("crash")
            await settle()
            assert journal[-1] == "starting a"
            await b.tell("crash")
            assert await b.ask("who") == ("b", 2)
            gates.pop("a").set()
            assert await a.ask("who") == ("a", 2)


async def test_the_backoff_grows_with_the_restarts_of_the_same_child_only() -> None:
    clock = VirtualClock()
    async with ActorSystem() as system:
        backoff = Backoff(initial=1.0, multiplier=2.0, jitter=0.0)
        spec = dynamic_spec([], {}, backoff=backoff, intensity=10, period=100.0)
        supervisor = await start_dynamic(system, spec, clock)
        for name in ("a", "b", "a", "c", "a"):
            ref = supervisor.ref(name)
            await ref.ask("who")
            await ref.tell("crash")
            await ref.ask("who")  # restarted
        assert clock.sleeps == [1.0, 1.0, 2.0, 1.0, 4.0]
        # The intensity window is the supervisor's: five restarts, whichever child.
        assert supervisor.statistics()["restarts_in_window"] == 5


async def test_the_restart_intensity_stays_supervisor_wide() -> None:
    """Three different children fail once each: over an intensity of 2, the supervisor
    gives up, as OTP's would."""
    exits: list[Exit] = []
    async with ActorSystem() as system:
        spec = dynamic_spec([], {}, intensity=2, backoff=Backoff(initial=0))
        supervisor = DynamicSupervisor(system, spec, "/mem", clock=VirtualClock())

        async def run(*, task_status: anyio.abc.TaskStatus[Any]) -> None:
            exits.append(await supervisor.run(task_status=task_status))

        async with anyio.create_task_group() as tg:
            await tg.start(run)
            for name in ("a", "b"):
                ref = supervisor.ref(name)
                await ref.tell("crash")
                assert await ref.ask("who") == (name, 2)
            await supervisor.ref("c").tell("crash")
    [exit_] = exits
    assert exit_.reason is ExitReason.FAILURE
    assert isinstance(exit_.error, SupervisorGaveUpError)


@pytest.mark.parametrize("held_in", ["backoff", "on_start"])
async def test_stopping_the_supervisor_cancels_a_pending_restart(held_in: str) -> None:
    journal: list[str] = []
    gates: dict[str, anyio.Event] = {}
    clock = HeldClock() if held_in == "backoff" else VirtualClock()
    async with ActorSystem() as system:
        with releasing(gates, clock if isinstance(clock, HeldClock) else None):
            supervisor = await start_dynamic(system, dynamic_spec(journal, gates), clock)
            victim = supervisor.ref("victim")
            await victim.ask("who")
            gates["victim"] = anyio.Event()  # used when held in on_start
            await victim.tell("crash")
            await settle()
            assert supervisor.statistics()["pending_starts"] == 1
            with anyio.fail_after(5):  # a guard against a hang, not a timing assertion
                await supervisor.stop()
            assert not supervisor.running
            assert not victim.alive
            assert "start victim" not in journal[1:]  # the pending restart never completed


async def test_a_child_killed_again_during_its_restart_is_restarted_once_more() -> None:
    journal: list[str] = []
    gates: dict[str, anyio.Event] = {}
    async with ActorSystem() as system:
        with releasing(gates):
            spec = dynamic_spec(journal, gates, backoff=Backoff(initial=0))
            supervisor = await start_dynamic(system, spec, VirtualClock())
            victim = supervisor.ref("victim")
            await victim.ask("who")
            gates["victim"] = anyio.Event()
            await victim.tell("crash")
            await settle()
            assert journal[-1] == "starting victim"
            del gates["victim"]
            child = supervisor.child("victim")
            assert child is not None
            child.runner.kill()
            assert await victim.ask("who") == ("victim", 3)
            assert supervisor.statistics()["restarts_in_window"] == 2


async def test_a_child_removed_during_its_backoff_does_not_come_back() -> None:
    journal: list[str] = []
    clock = HeldClock()
    specs = [ActorSpec(name, lambda: SlowStart(journal, {})) for name in ("a", "b")]
    async with ActorSystem() as system:
        with releasing({}, clock):
            spec = SupervisorSpec("sup", specs, intensity=5)
            supervisor = Supervisor(system, spec, "/sup", clock=clock)
            await supervisor.start_as_root()
            a = system.lookup("/sup/a")
            assert a is not None
            await a.tell("crash")
            await settle()
            assert clock.sleeps != []
            with anyio.fail_after(5):  # a guard against a hang
                await supervisor.remove_child("a")
            clock.release()
            await settle()
            assert supervisor.child("a") is None
            assert not a.alive
            assert journal == ["start a", "start b"]
