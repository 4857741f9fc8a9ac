"""OTP semantics: strategies, restart types, intensity and escalation, ordering, backoff."""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest

from somabrain.actors import Actor, ActorSystem
from somabrain.supervision import (
    BRUTAL_KILL,
    ActorSpec,
    Backoff,
    Restart,
    Strategy,
    SupervisorGaveUpError,
    SupervisorSpec,
    VirtualClock,
)

from .helpers import Recorder, settle, start_supervisor, workers

pytestmark = pytest.mark.anyio

NO_BACKOFF = Backoff(initial=0)


async def incarnations(system: ActorSystem, *paths: str) -> list[int]:
    return [(await system.lookup(p).ask("who"))[1] for p in paths]  # type: ignore[union-attr]


async def test_children_start_in_order_and_stop_in_reverse() -> None:
    journal: list[str] = []
    async with ActorSystem() as system:
        spec = SupervisorSpec("sup", workers(journal, "a", "b", "c"))
        await start_supervisor(system, spec)
        assert journal == ["start a", "start b", "start c"]
    assert journal[3:] == ["stop c", "stop b", "stop a"]


@pytest.mark.parametrize(
    ("strategy", "restarted", "expected_journal"),
    [
        (Strategy.ONE_FOR_ONE, [1, 2, 1], ["start b"]),
        (Strategy.ONE_FOR_ALL, [2, 2, 2], ["stop c", "stop a", "start a", "start b", "start c"]),
        (Strategy.REST_FOR_ONE, [1, 2, 2], ["stop c", "start b", "start c"]),
    ],
)
async def test_strategies_restart_the_right_children(
    strategy: Strategy, restarted: list[int], expected_journal: list[str]
) -> None:
    journal: list[str] = []
    async with ActorSystem() as system:
        spec = SupervisorSpec(
            "sup",
            workers(journal, "a", "b", "c"),
            strategy=strategy,
            intensity=5,
            backoff=NO_BACKOFF,
        )
        supervisor = await start_supervisor(system, spec)
        journal.clear()
        await system.lookup("/sup/b").tell("crash")  # type: ignore[union-attr]
        await settle()
        assert journal == expected_journal
        assert await incarnations(system, "/sup/a", "/sup/b", "/sup/c") == restarted
        restarts = {c.runner.path: c.runner.restarts for c in supervisor.children}
        assert restarts["/sup/b"] == 1


@pytest.mark.parametrize(
    ("restart", "crash_restarts", "normal_restarts"),
    [
        (Restart.PERMANENT, True, True),
        (Restart.TRANSIENT, True, False),
        (Restart.TEMPORARY, False, False),
    ],
)
async def test_restart_types(restart: Restart, crash_restarts: bool, normal_restarts: bool) -> None:
    for message, expect_restart in (("crash", crash_restarts), ("stop", normal_restarts)):
        journal: list[str] = []
        async with ActorSystem() as system:
            spec = SupervisorSpec(
                "sup", workers(journal, "w", restart=restart), intensity=5, backoff=NO_BACKOFF
            )
            await start_supervisor(system, spec)
            ref = system.lookup("/sup/w")
            assert ref is not None
            await ref.tell(message)
            await settle()
            assert ref.alive is expect_restart, (restart, message)
            if expect_restart:
                assert (await ref.ask("who"))[1] == 2
            else:
                assert journal.count("start w") == 1


async def test_intensity_exceeded_stops_children_and_escalates_to_the_parent() -> None:
    journal: list[str] = []
    clock = VirtualClock()
    async with ActorSystem() as system:
        inner = SupervisorSpec(
            "inner", workers(journal, "x", "y"), intensity=2, period=5.0, backoff=NO_BACKOFF
        )
        outer = SupervisorSpec(
            "outer", [inner, *workers(journal, "z")], intensity=3, backoff=NO_BACKOFF
        )
        supervisor = await start_supervisor(system, outer, clock)
        y = system.lookup("/outer/inner/y")
        assert y is not None
        for _ in range(2):  # two restarts are within the limit
            await y.tell("crash")
            await settle()
        inner_runner = supervisor.child("inner").runner  # type: ignore[union-attr]
        assert inner_runner.restarts == 0
        journal.clear()
        await y.tell("crash")  # the third within 5 s: inner gives up
        await settle()
        # inner stopped its other child, failed to outer, which restarted inner (one_for_one).
        assert journal == ["stop x", "start x", "start y"]
        assert inner_runner.restarts == 1
        assert await incarnations(system, "/outer/z") == [1]


async def test_restarts_outside_the_period_do_not_count() -> None:
    journal: list[str] = []
    clock = VirtualClock()
    async with ActorSystem() as system:
        spec = SupervisorSpec(
            "sup", workers(journal, "w"), intensity=1, period=5.0, backoff=NO_BACKOFF
        )
        await start_supervisor(system, spec, clock)
        ref = system.lookup("/sup/w")
        assert ref is not None
        for _ in range(4):
            await ref.tell("crash")
            await settle()
            clock.advance(5.1)
        assert (await ref.ask("who"))[1] == 5


async def test_root_giving_up_fails_the_system() -> None:
    journal: list[str] = []
    with pytest.raises(SupervisorGaveUpError) as info:
        async with ActorSystem() as system:
            spec = SupervisorSpec("root", workers(journal, "w"), intensity=0)
            await start_supervisor(system, spec)
            await system.lookup("/root/w").tell("crash")  # type: ignore[union-attr]
            await anyio.sleep_forever()
    assert info.value.path == "/root"
    assert "more than 0 restarts" in str(info.value)


async def test_backoff_grows_exponentially_on_the_mock_clock() -> None:
    journal: list[str] = []
    clock = VirtualClock()
    backoff = Backoff(initial=0.1, max=0.5, multiplier=2.0, jitter=0.0)
    async with ActorSystem() as system:
        spec = SupervisorSpec(
            "sup", workers(journal, "w"), intensity=10, period=60.0, backoff=backoff
        )
        await start_supervisor(system, spec, clock)
        ref = system.lookup("/sup/w")
        assert ref is not None
        for _ in range(5):
            await ref.tell("crash")
            await settle()
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


def test_backoff_jitter_stays_within_its_bounds() -> None:
    backoff = Backoff(initial=1.0, max=100.0, multiplier=3.0, jitter=0.25)
    rng = random.Random(7)
    for attempt in range(1, 6):
        base = 3.0 ** (attempt - 1)
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(0.75 * base <= d <= 1.25 * base for d in delays)
        assert len(set(delays)) > 100  # it does jitter
    assert backoff.delay(0, rng) == 0.0


async def test_a_failed_restart_counts_and_is_retried_with_backoff() -> None:
    journal: list[str] = []
    attempts = iter([False, True, True, False])  # start ok, then two failed restarts, then ok
    clock = VirtualClock()
    async with ActorSystem() as system:
        spec = SupervisorSpec(
            "sup",
            [ActorSpec("w", lambda: Recorder(journal, fail_start=lambda: next(attempts)))],
            intensity=5,
            backoff=Backoff(initial=1.0, multiplier=2.0, jitter=0.0),
        )
        await start_supervisor(system, spec, clock)
        await system.lookup("/sup/w").tell("crash")  # type: ignore[union-attr]
        await settle()
        assert journal == ["start w", "start-failed w", "start-failed w", "start w"]
        assert clock.sleeps == [1.0, 2.0, 4.0]


class Stubborn(Actor):
    """Never finishes stopping on its own."""

    async def on_stop(self) -> None:
        await anyio.sleep_forever()

    async def receive(self, message: Any) -> Any:
        return message


@pytest.mark.parametrize("shutdown", [0.01, BRUTAL_KILL])
async def test_shutdown_timeout_kills_a_child_that_will_not_stop(shutdown: Any) -> None:
    async with ActorSystem() as system:
        spec = SupervisorSpec("sup", [ActorSpec("s", Stubborn, shutdown=shutdown)])
        supervisor = await start_supervisor(system, spec)
        with anyio.fail_after(5):
            await supervisor.stop()
        assert not supervisor.running
        assert not system.lookup("/sup/s").alive  # type: ignore[union-attr]


async def test_messages_sent_during_a_restart_are_kept() -> None:
    journal: list[str] = []
    clock = VirtualClock()
    async with ActorSystem() as system:
        spec = SupervisorSpec("sup", workers(journal, "w"), intensity=5)
        await start_supervisor(system, spec, clock)
        ref = system.lookup("/sup/w")
        assert ref is not None
        await ref.tell("crash")
        # Sent right behind the crash, before the supervisor restarted the actor.
        assert await ref.ask("who") == ("w", 2)
        assert system.dead_letters.total == 0
