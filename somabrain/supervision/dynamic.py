"""The dynamic supervisor: one child per key (a tenant, a session), started on first use and
passivated when idle.

Children share one template and the one_for_one strategy. :meth:`DynamicSupervisor.ref` hands
out a child's ref at once, creating and starting the child if needed: messages sent before the
actor finished ``on_start`` wait in its mailbox. Passivation is a graceful stop after
``idle_timeout`` seconds without traffic; if a message slipped in while the child was stopping,
the child is started again instead of being dropped, so passivation never loses a message.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import anyio.abc

from ..actors import ActorRef, ActorStoppedError, ActorSystem, Exit, SomaError
from ._children import Child, _CellRunner, _unregister_tree
from .clock import Clock
from .spec import ActorSpec, DynamicSpec
from .supervisor import Supervisor

__all__ = ["DynamicSupervisor", "MaxChildrenError"]


class MaxChildrenError(SomaError, RuntimeError):
    """A new child was asked of a dynamic supervisor that holds ``max_children`` already:
    the node is overloaded (a 503 at the edge), not broken."""


class DynamicSupervisor(Supervisor):
    kind = "dynamic"

    def __init__(
        self,
        system: ActorSystem,
        spec: DynamicSpec,
        path: str,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.dynamic_spec = spec
        self._by_name: dict[str, Child] = {}
        self._activity: dict[str, tuple[tuple[int, int, int], float]] = {}
        self._sweep_wakeup: anyio.Event | None = None
        self.passivations = 0
        super().__init__(system, spec.as_supervisor_spec(), path, clock=clock, rng=rng)

    # ------------------------------------------------------------------ children on demand

    def ref(self, name: str) -> ActorRef:
        """The ref of child ``name``, started now if it is not running."""
        child = self._by_name.get(name)
        if child is None:
            if not self.running:
                raise ActorStoppedError(f"{self.path}/{name}", "is not running (supervisor down)")
            if len(self._by_name) >= self.dynamic_spec.max_children:
                raise MaxChildrenError(
                    f"{self.path} has reached max_children={self.dynamic_spec.max_children}"
                )
            child = self._add_child(self._member(name))
            self._by_name[name] = child
            self._post_start(child)
        return self._cell_runner(child).cell.ref

    def names(self) -> list[str]:
        return list(self._by_name)

    def _member(self, name: str) -> ActorSpec:
        template = self.dynamic_spec.template
        return ActorSpec(
            name=name,
            factory=template.factory,
            restart=template.restart,
            shutdown=template.shutdown,
            mailbox_size=template.mailbox_size,
            overflow=template.overflow,
        )

    @staticmethod
    def _cell_runner(child: Child) -> _CellRunner:
        runner = child.runner
        assert isinstance(runner, _CellRunner)
        return runner

    def _post_start(self, child: Child) -> None:
        async def start() -> None:
            if child.running or child.pending is not None or child not in self.children:
                return
            self._start_soon(child, 0.0)

        # Fire and forget: the caller already holds the ref, and messages wait in the mailbox.
        # The start itself runs beside the loop (a tenant's log replay can take seconds); a
        # failed start comes back as an exit of the child and is restarted like any failure.
        self._post_command(start)

    def _post_command(self, fn: Any) -> None:
        from .supervisor import _Command

        self._post(_Command(fn, self.system.backend.new_reply()))

    def _initial_children(self) -> list[Child]:
        # Children known from an earlier incarnation (tenants in use) are started on the side
        # by _supervise, not one after the other before this supervisor counts as started: a
        # failed or killed start is then a failure of that child only, and new children do not
        # wait for all the old ones.
        return []

    async def _supervise(self) -> Exit:
        self._activity.clear()
        for child in list(self.children):
            self._post_start(child)
        assert self._task_group is not None
        self._task_group.start_soon(self._sweep)
        return await super()._supervise()

    # ------------------------------------------------------------------ exits

    def _restart_group(self, failed: Child) -> list[Child]:
        return [failed]

    def _retire(self, child: Child) -> None:
        self._forget(child)

    def _forget(self, child: Child) -> None:
        if child in self.children:
            self.children.remove(child)
        self._by_name.pop(child.spec.name, None)
        self._activity.pop(child.spec.name, None)
        child.runner.finish()
        _unregister_tree(self.system, child.runner)

    # ------------------------------------------------------------------ passivation

    def set_idle_timeout(self, seconds: float) -> None:
        self.dynamic_spec.idle_timeout = seconds
        if self._sweep_wakeup is not None:
            self._sweep_wakeup.set()

    async def _sweep(self) -> None:
        while True:
            timeout = self.dynamic_spec.idle_timeout
            if timeout <= 0:
                self._sweep_wakeup = anyio.Event()
                await self._sweep_wakeup.wait()
                continue
            await self.clock.sleep(max(0.001, timeout / 2))
            now = self.clock.now()
            for child in list(self.children):
                cell = self._cell_runner(child).cell
                name = child.spec.name
                marker = (cell.incarnation, cell.processed, len(cell.mailbox))
                seen = self._activity.get(name)
                if seen is None or seen[0] != marker:
                    self._activity[name] = (marker, now)
                elif child.running and not child.passivating and now - seen[1] >= timeout:
                    child.passivating = True
                    self._post_command(lambda child=child: self._passivate(child))

    def passivate(self, name: str) -> bool:
        """Stop the child ``name`` gracefully, as when it is idle (a message that arrives
        meanwhile starts it again). False when no such child is running."""
        child = self._by_name.get(name)
        if child is None or not child.running or child.passivating:
            return False
        child.passivating = True
        self._post_command(lambda: self._passivate(child))
        return True

    async def _passivate(self, child: Child) -> None:
        if child not in self.children or not child.running:
            return
        await self._stop_child(child)
        child.passivating = False
        if len(self._cell_runner(child).cell.mailbox):
            self._start_soon(child, 0.0)  # a message arrived while it stopped
            return
        self.passivations += 1
        self._forget(child)

    def inspect(self) -> dict[str, Any]:
        info = super().inspect()
        info["strategy"] = "one_for_one"
        info["idle_timeout"] = self.dynamic_spec.idle_timeout
        info["passivations"] = self.passivations
        return info
