"""The actor kernel: tell, ask, failures, stop, kill, mailboxes, dead letters."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from somabrain.actors import (
    Actor,
    ActorKilledError,
    ActorStoppedError,
    ActorSystem,
    AskTimeoutError,
    MailboxFullError,
    OverflowPolicy,
)

pytestmark = pytest.mark.anyio


class Counter(Actor):
    def __init__(self) -> None:
        self.count = 0
        self.stopped = False

    async def receive(self, message: Any) -> Any:
        match message:
            case "get":
                return self.count
            case "boom":
                raise ValueError("boom")
            case ("block", anyio.Event() as event):
                await event.wait()
                return "unblocked"
            case ("wait", anyio.Event() as event):
                await event.wait()
            case ("hold", anyio.Event() as entered, anyio.Event() as event):
                entered.set()  # tells the test the actor has this message in hand
                await event.wait()
            case int(n):
                self.count += n
        return None


async def test_tell_then_ask_sees_every_message_in_order() -> None:
    async with ActorSystem() as system:
        ref = await system.spawn(Counter, "counter")
        for _ in range(1000):
            await ref.tell(1)
        assert await ref.ask("get") == 1000
        stats = ref.statistics()
        assert stats.processed == 1001
        assert stats.mailbox.enqueued_total == 1001


async def test_handler_exception_goes_back_to_the_asker_and_actor_keeps_running() -> None:
    async with ActorSystem() as system:
        ref = await system.spawn(Counter, "counter")
        with pytest.raises(ValueError, match="boom"):
            await ref.ask("boom")
        await ref.tell(2)
        assert await ref.ask("get") == 2
        assert ref.statistics().ask_errors == 1


async def test_ask_times_out_with_a_clear_error() -> None:
    async with ActorSystem() as system:
        ref = await system.spawn(Counter, "slow")
        event = anyio.Event()
        with pytest.raises(AskTimeoutError) as info:
            await ref.ask(("block", event), timeout=0.01)
        assert info.value.path == "/user/slow"
        assert isinstance(info.value, TimeoutError)
        event.set()
        assert await ref.ask("get") == 0


# The two tests below synchronise on events, not on anyio.wait_all_tasks_blocked: while an ask
# is unanswered the ask watchdog (_deadlines.py) wakes every 10 ms, and on asyncio
# wait_all_tasks_blocked counts a task whose timer has fired but which has not resumed yet as
# not blocked, then sleeps 0.1 s and probes again. On a loaded machine the loop runs late, the
# two timers fire in the same iteration at every probe, and it never returned before the asks
# timed out (AskTimeoutError after 5 s instead of the outcome under test).


async def test_queued_asks_fail_when_the_actor_stops() -> None:
    async with ActorSystem() as system:
        ref = await system.spawn(Counter, "stopping")
        entered, gate = anyio.Event(), anyio.Event()
        await ref.tell(("hold", entered, gate))
        await entered.wait()  # the actor has the message in hand
        results: list[BaseException | Any] = []

        async def ask(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            task_status.started()
            try:
                results.append(await ref.ask("get"))
            except ActorStoppedError as exc:
                results.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                # start() returns once the task first suspends: the ask is queued by then.
                await tg.start(ask)
            assert ref.statistics().mailbox.depth == 3  # queued behind the message in hand
            ref.stop()
            gate.set()
        assert len(results) == 3
        assert all(isinstance(r, ActorStoppedError) for r in results)
        assert "stopped before handling the message" in str(results[0])
        assert not ref.alive
        # Later messages are dead letters, counted and inspectable; asks fail at once.
        await ref.tell(1)
        with pytest.raises(ActorStoppedError):
            await ref.ask("get")
        assert system.dead_letters.total >= 5
        assert system.dead_letters.recent()[-1].recipient == "/user/stopping"


async def test_kill_fails_the_in_flight_ask() -> None:
    async with ActorSystem() as system:
        ref = await system.spawn(Counter, "victim")
        entered, event = anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as tg:

            async def ask() -> None:
                with pytest.raises(ActorKilledError):
                    await ref.ask(("hold", entered, event))

            tg.start_soon(ask)
            await entered.wait()  # the actor is handling the ask
            ref.kill()
        assert not ref.alive


async def test_overflow_policy_raise_counts_the_error() -> None:
    async with ActorSystem() as system:
        ref = await system.spawn(Counter, "small", mailbox_size=2, overflow="raise")
        gate = anyio.Event()
        await ref.tell(("wait", gate))
        await anyio.wait_all_tasks_blocked()  # the actor holds the first message
        assert ref.queued == 0
        await ref.tell(1)
        await ref.tell(1)
        assert ref.queued == 2
        assert ref.has_room  # full, but a RAISE mailbox never makes a sender wait
        with pytest.raises(MailboxFullError) as info:
            await ref.tell(1)
        assert info.value.capacity == 2
        with pytest.raises(MailboxFullError):
            ref.tell_nowait(1)
        assert ref.statistics().mailbox.overflow_total == 2
        gate.set()
        await anyio.wait_all_tasks_blocked()  # the actor drains its mailbox
        assert await ref.ask("get") == 2


async def test_overflow_policy_wait_applies_backpressure() -> None:
    async with ActorSystem() as system:
        ref = await system.spawn(Counter, "bp", mailbox_size=1, overflow=OverflowPolicy.WAIT)
        gate = anyio.Event()
        await ref.tell(("wait", gate))
        await anyio.wait_all_tasks_blocked()
        assert ref.has_room
        await ref.tell(1)  # fills the mailbox
        assert not ref.has_room
        sent = anyio.Event()

        async def sender() -> None:
            await ref.tell(1)  # must wait for room
            sent.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            await anyio.wait_all_tasks_blocked()
            assert not sent.is_set()
            assert ref.statistics().mailbox.waiting_senders == 1
            gate.set()
        assert await ref.ask("get") == 2
        assert ref.statistics().mailbox.overflow_total == 0


async def test_failing_on_start_raises_from_spawn() -> None:
    class Broken(Actor):
        async def on_start(self) -> None:
            raise RuntimeError("no store")

    async with ActorSystem() as system:
        with pytest.raises(RuntimeError, match="failed to start") as info:
            await system.spawn(Broken, "broken")
        assert isinstance(info.value.__cause__, RuntimeError)


async def test_hooks_run_in_order() -> None:
    calls: list[str] = []

    class Hooks(Actor):
        async def on_start(self) -> None:
            calls.append(f"start {self.context.path} {self.context.incarnation}")

        async def receive(self, message: Any) -> Any:
            raise KeyError(message)

        async def on_failure(self, exc: BaseException, message: Any) -> None:
            calls.append(f"failure {message}")

        async def on_stop(self) -> None:
            calls.append("stop")

    async with ActorSystem() as system:
        ref = await system.spawn(Hooks, "hooks")
        await ref.tell("x")  # a tell failure ends the incarnation
        with pytest.raises(ActorStoppedError):
            await ref.ask("after")
    assert calls == ["start /user/hooks 1", "failure x"]

    calls.clear()
    async with ActorSystem() as system:
        ref = await system.spawn(Hooks, "hooks")
    assert calls == ["start /user/hooks 1", "stop"]


async def test_telling_a_killed_actor_is_a_dead_letter_not_a_crash() -> None:
    async with ActorSystem() as system:
        ref = await system.spawn(Counter, "killed")
        await anyio.wait_all_tasks_blocked()  # the actor is parked on an empty mailbox
        ref.kill()
        await ref.tell(1)  # before the killed task ran: must not wake it a second time
        await anyio.wait_all_tasks_blocked()
        await ref.tell(2)
        assert not ref.alive
        assert system.dead_letters.total >= 1


async def test_an_ask_can_be_cancelled_by_an_enclosing_scope() -> None:
    async with ActorSystem() as system:
        ref = await system.spawn(Counter, "cancel")
        gate = anyio.Event()
        with anyio.move_on_after(0.01) as scope:
            await ref.ask(("block", gate), timeout=60)
        assert scope.cancelled_caught
        gate.set()
        assert await ref.ask("get") == 0  # the actor is fine, the late reply was dropped


class Shielded(Actor):
    """Does each message's work in a shielded section, as the audit writer does its fsync."""

    def __init__(self) -> None:
        self.handled = 0

    async def receive(self, message: Any) -> Any:
        if isinstance(message, anyio.Event):
            message.set()
        with anyio.CancelScope(shield=True):
            await anyio.lowlevel.checkpoint()
        self.handled += 1


async def test_a_kill_lands_between_messages_of_a_busy_actor_that_works_shielded() -> None:
    """A kill must not wait for the mailbox to run dry. On asyncio, anyio stops delivering a
    cancellation while its task waits inside a shielded scope and retries only on the next
    loop turn after the shield ends, which an actor that goes straight into the next shielded
    section never gives it; on trio, the cancellation waits for an unshielded checkpoint."""
    async with ActorSystem() as system:
        actors: list[Shielded] = []

        def factory() -> Shielded:
            actors.append(Shielded())
            return actors[-1]

        ref = await system.spawn(factory, "busy", mailbox_size=1000)
        entered = anyio.Event()
        ref.tell_nowait(entered)
        for i in range(500):
            ref.tell_nowait(i)
        await entered.wait()
        at_kill = actors[0].handled
        ref.kill()
        cell = system.cell("/user/busy")
        assert cell is not None
        with anyio.fail_after(10):
            await cell.wait_exited()
        assert actors[0].handled - at_kill <= 1  # the message in hand, at most
        assert ref.statistics().state == "failed"
