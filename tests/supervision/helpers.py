"""A recording actor and helpers shared by the supervision tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
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
