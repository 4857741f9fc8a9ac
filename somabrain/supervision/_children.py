"""A supervisor's children: the runner interface, the slot each child has, and the
adapter that runs an actor cell as a child.

A *runner* is what a supervisor starts, stops and watches: an ``ActorCell`` (through
``_CellRunner``) or another supervisor, so supervisors nest. A ``Child`` is the supervisor's
slot for one: its spec, its runner and the bookkeeping of its incarnations (generation,
pending start, restart times). The supervisor's logic (strategies, intensity, backoff) is in
``supervisor.py``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import anyio.abc

from ..actors import ActorState, ActorSystem, Exit
from ..actors._cell import ActorCell
from .spec import ActorSpec, ChildSpec

__all__ = ["Child", "Runner"]


class Runner(Protocol):
    path: str
    restarts: int
    state: ActorState

    async def run(self, *, task_status: Any = ...) -> Exit: ...

    def request_stop(self) -> None: ...

    def kill(self) -> None: ...

    async def wait_exited(self) -> None: ...

    def finish(self, reason: BaseException | None = None) -> None: ...

    @property
    def running(self) -> bool: ...

    def inspect(self) -> dict[str, Any]: ...


class _StartStatus:
    """Forwards ``started()`` and remembers whether the child started cleanly."""

    __slots__ = ("_inner", "_on_started", "ok")

    def __init__(
        self,
        inner: anyio.abc.TaskStatus[Any],
        on_started: Callable[[], None] | None = None,
    ) -> None:
        self._inner = inner
        self._on_started = on_started
        self.ok = False

    def started(self, value: Any = None) -> None:
        self.ok = value is None
        if self.ok and self._on_started is not None:
            self._on_started()
        self._inner.started(value)


class _PendingStart:
    """A child's start running in a task of its own (a one_for_one restart or a dynamic start).

    Until the child has started, stopping it means cancelling ``scope`` (its backoff or its
    ``on_start``) and waiting for ``done``: that incarnation has acknowledged nothing yet, so
    there is nothing to stop gracefully."""

    __slots__ = ("done", "scope")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()


class Child:
    """A slot in a supervisor: the spec (read live, for reload) and the runner."""

    __slots__ = (
        "expected_exit",
        "generation",
        "passivating",
        "pending",
        "restart_times",
        "runner",
        "running",
        "spec",
    )

    def __init__(self, spec: ChildSpec, runner: Runner) -> None:
        self.spec = spec
        self.runner = runner
        self.running = False
        self.expected_exit = False
        self.passivating = False
        self.generation = 0
        #: A start in a task of its own, not finished yet (see ``Supervisor._start_soon``).
        self.pending: _PendingStart | None = None
        #: This child's restarts within the period: they size its backoff (one_for_one).
        self.restart_times: deque[float] = deque()


def _actor_runner(system: ActorSystem, spec: ActorSpec, path: str) -> Runner:
    cell = system.new_cell(
        path, spec.factory, mailbox_size=spec.mailbox_size, overflow=spec.overflow
    )
    return _CellRunner(cell)


class _CellRunner:
    """Adapts an ``ActorCell`` to the runner interface (adds ``inspect``)."""

    def __init__(self, cell: ActorCell) -> None:
        self.cell = cell
        self.path = cell.path

    @property
    def restarts(self) -> int:
        return self.cell.restarts

    @restarts.setter
    def restarts(self, value: int) -> None:
        self.cell.restarts = value

    @property
    def state(self) -> ActorState:
        return self.cell.state

    @state.setter
    def state(self, value: ActorState) -> None:
        self.cell.state = value

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> Exit:
        return await self.cell.run(task_status=task_status)

    def request_stop(self) -> None:
        self.cell.request_stop()

    def kill(self) -> None:
        self.cell.kill()

    async def wait_exited(self) -> None:
        await self.cell.wait_exited()

    def finish(self, reason: BaseException | None = None) -> None:
        self.cell.finish(reason)

    @property
    def running(self) -> bool:
        return self.cell.running

    def inspect(self) -> dict[str, Any]:
        stats = self.cell.statistics()
        return {
            "path": self.path,
            "kind": "actor",
            "state": stats.state,
            "restarts": stats.restarts,
            "incarnation": stats.incarnation,
            "processed": stats.processed,
            "failures": stats.failures,
            "mailbox_depth": stats.mailbox.depth,
            "mailbox_capacity": stats.mailbox.capacity,
        }


def _slide(times: deque[float], now: float, period: float) -> None:
    """Drop the times older than ``period`` and add ``now``: a restart-intensity window."""
    while times and times[0] <= now - period:
        times.popleft()
    times.append(now)


def _unregister_tree(system: ActorSystem, runner: Runner) -> None:
    """Forget the cells of ``runner`` and of everything under it."""
    if isinstance(runner, _CellRunner):
        system.unregister(runner.path)
        return
    for child in getattr(runner, "children", []):
        _unregister_tree(system, child.runner)
