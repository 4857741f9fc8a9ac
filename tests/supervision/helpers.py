"""A recording actor and helpers shared by the supervision tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import msgspec

from somabrain.actors import Actor, ActorSystem
from somabrain.supervision import (
    ActorSpec,
    NodeSettings,
    Restart,
    Supervisor,
    SupervisorNode,
    SupervisorSpec,
    VirtualClock,
)


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The tree part of SomaBrain's config, on its own."""

    node: NodeSettings = msgspec.field(default_factory=NodeSettings)
    tree: SupervisorNode = msgspec.field(default_factory=SupervisorNode)


class Recorder(Actor):
    """Logs its lifecycle into a shared journal; ``"crash"`` fails it, ``"stop"`` stops it."""

    def __init__(self, journal: list[str], fail_start: Callable[[], bool] = lambda: False):
        self.journal = journal
        self.fail_start = fail_start

    async def on_start(self) -> None:
        if self.fail_start():
            self.journal.append(f"start-failed {self.context.name}")
            raise RuntimeError(f"{self.context.name} cannot start")
        self.journal.append(f"start {self.context.name}")

    async def on_stop(self) -> None:
        self.journal.append(f"stop {self.context.name}")

    async def receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash")
        if message == "stop":
            self.context.ref.stop()
            return None
        return (self.context.name, self.context.incarnation)


def workers(
    journal: list[str], *names: str, restart: Restart = Restart.PERMANENT
) -> list[ActorSpec]:
    return [
        ActorSpec(name, lambda: Recorder(journal), restart=restart, shutdown=1.0) for name in names
    ]


async def start_supervisor(
    system: ActorSystem, spec: SupervisorSpec, clock: VirtualClock | None = None
) -> Supervisor:
    supervisor = Supervisor(system, spec, f"/{spec.name}", clock=clock or VirtualClock())
    await supervisor.start_as_root()
    return supervisor


async def settle() -> None:
    """Let every task run until all are blocked (the supervisor finished reacting)."""
    await anyio.wait_all_tasks_blocked()


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds, for what ``settle`` cannot see through (a killed
    supervisor winding down on asyncio). The deadline only guards against a hang."""
    with anyio.fail_after(5):
        while not condition():
            await anyio.lowlevel.checkpoint()


class SlowStart(Actor):
    """An actor whose ``on_start`` waits while ``gates`` holds an event under its name, as a
    memory actor replaying a long log does. The journal shows when a start begins and ends."""

    def __init__(self, journal: list[str], gates: dict[str, anyio.Event]) -> None:
        self.journal = journal
        self.gates = gates

    async def on_start(self) -> None:
        name = self.context.name
        gate = self.gates.get(name)
        if gate is not None:
            self.journal.append(f"starting {name}")
            await gate.wait()
        self.journal.append(f"start {name}")

    async def receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash")
        return (self.context.name, self.context.incarnation)


class HeldClock(VirtualClock):
    """A virtual clock whose sleeps last until the test calls :meth:`release`: it holds a
    supervisor in a restart backoff for as long as a test needs."""

    def __init__(self) -> None:
        super().__init__()
        self._release = anyio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await self._release.wait()
        self._now += max(0.0, seconds)

    def release(self) -> None:
        """Let every sleep, present and future, end at once."""
        self._release.set()


@contextlib.contextmanager
def releasing(gates: dict[str, anyio.Event], clock: HeldClock | None = None) -> Iterator[None]:
    """Open every gate (and the clock) when the block ends, passed or failed: a failed
    assertion must not leave a supervisor blocked, or the actor system's shutdown would hang
    instead of reporting it."""
    try:
        yield
    finally:
        for gate in list(gates.values()):
            gate.set()
        if clock is not None:
            clock.release()
