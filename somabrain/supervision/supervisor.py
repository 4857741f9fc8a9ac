"""Supervisors: restart what fails, give up (and escalate) when it fails too often.

OTP semantics (see the Erlang/OTP "Supervisor Behaviour" guide):

- children start in order and stop in reverse order;
- when a child exits, its restart type (permanent/transient/temporary) says whether it is
  restarted, and the strategy (one_for_one/one_for_all/rest_for_one) says which siblings
  restart with it;
- more than ``intensity`` restarts within ``period`` seconds and the supervisor stops all its
  children and exits with :class:`SupervisorGaveUpError`: its own supervisor then treats that
  as a child failure. Limits multiply across levels: a subtree two levels down may restart
  ``intensity`` times for every restart its parent allows.
- a restart waits an exponential backoff with jitter (not in OTP, which restarts at once: a
  crash loop against a down database should not spin);
- under ``one_for_one`` a restart (backoff, then the child's ``on_start``) runs in a task of its
  own, beside the supervisor's loop, so that it never holds up the start or restart of another
  child; ``one_for_all`` and ``rest_for_one`` restart their group inside the loop, in order;
- a child killed while it is still starting has failed, like any child: it is restarted (and
  counted) by its supervisor, which does not fail for it.

A supervisor is itself a *runner*, the interface shared with ``ActorCell``: ``run`` one
incarnation, ``request_stop``, ``kill``, ``wait_exited``, ``finish``. So supervisors nest.
Child cells (and so their mailboxes and refs) are created once and outlive incarnations.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from ..actors import ActorState, ActorSystem, Exit, ExitReason, SomaError
from ..actors._backend import Parker, Reply
from ._children import (
    Child,
    Runner,
    _actor_runner,
    _PendingStart,
    _slide,
    _StartStatus,
    _unregister_tree,
)
from .clock import Clock, SystemClock
from .spec import BRUTAL_KILL, ActorSpec, ChildSpec, Restart, Strategy, SupervisorSpec

__all__ = ["Runner", "Supervisor", "SupervisorGaveUpError"]

logger = logging.getLogger("somabrain.supervision")


class SupervisorGaveUpError(SomaError):
    """More than ``intensity`` restarts happened within ``period`` seconds."""

    def __init__(self, path: str, intensity: int, period: float, last: BaseException | None):
        self.path = path
        self.intensity = intensity
        self.period = period
        self.last_error = last
        super().__init__(
            f"supervisor {path} gave up: more than {intensity} restarts in {period:g} s"
            + (f" (last failure: {last!r})" if last is not None else "")
        )


class _Command:
    __slots__ = ("fn", "reply")

    def __init__(self, fn: Callable[[], Awaitable[Any]], reply: Reply) -> None:
        self.fn = fn
        self.reply = reply

    async def execute(self) -> None:
        try:
            result = await self.fn()
        except Exception as exc:
            self.reply.set_exception(exc)
        else:
            self.reply.set_result(result)


def make_runner(
    system: ActorSystem, spec: ChildSpec, parent_path: str, clock: Clock, rng: random.Random
) -> Runner:
    """Build the runner for ``spec`` under ``parent_path`` (cells are registered now)."""
    from .dynamic import DynamicSupervisor
    from .spec import DynamicSpec

    path = f"{parent_path}/{spec.name}"
    if isinstance(spec, ActorSpec):
        return _actor_runner(system, spec, path)
    if isinstance(spec, DynamicSpec):
        return DynamicSupervisor(system, spec, path, clock=clock, rng=rng)
    return Supervisor(system, spec, path, clock=clock, rng=rng)


class Supervisor:
    """Supervises an ordered list of children (see the module docstring for semantics)."""

    kind = "supervisor"

    def __init__(
        self,
        system: ActorSystem,
        spec: SupervisorSpec,
        path: str,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.system = system
        self.spec = spec
        self.path = path
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.state = ActorState.NEW
        self.restarts = 0
        self.incarnation = 0
        self.children: list[Child] = []
        self._events: deque[tuple[Child, int, Exit] | _Command] = deque()
        self._parker: Parker | None = None
        self._restart_times: deque[float] = deque()
        self._scope: anyio.CancelScope | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._exited: anyio.Event | None = None
        self._stop_requested = False
        self._build_children()

    # ------------------------------------------------------------------ structure

    def _build_children(self) -> None:
        for child_spec in self._static_specs():
            self._add_child(child_spec)

    def _static_specs(self) -> list[ChildSpec]:
        spec = self.spec
        if spec.pool_template is None:
            return list(spec.children)
        return [self._pool_member(i) for i in range(spec.pool_size)]

    def _pool_member(self, index: int) -> ActorSpec:
        template = self.spec.pool_template
        assert template is not None
        return ActorSpec(
            name=f"{template.name}-{index}",
            factory=template.factory,
            restart=template.restart,
            shutdown=template.shutdown,
            mailbox_size=template.mailbox_size,
            overflow=template.overflow,
        )

    def _add_child(self, spec: ChildSpec) -> Child:
        runner = make_runner(self.system, spec, self.path, self.clock, self.rng)
        child = Child(spec, runner)
        self.children.append(child)
        return child

    def child(self, name: str) -> Child | None:
        for child in self.children:
            if child.spec.name == name:
                return child
        return None

    # ------------------------------------------------------------------ one incarnation

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> Exit:
        self.incarnation += 1
        self._stop_requested = False
        self._exited = anyio.Event()
        self._parker = self.system.backend.new_parker()
        self._events.clear()
        self._restart_times.clear()
        for child in self.children:
            child.restart_times.clear()
        exit_ = Exit(ExitReason.KILLED)
        started = False
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                async with anyio.create_task_group() as task_group:
                    self._task_group = task_group
                    self.state = ActorState.STARTING
                    failure = await self._start_children()
                    if failure is not None:
                        child, error = failure
                        logger.error(
                            "%s: child %s failed to start: %r", self.path, child.spec.name, error
                        )
                        await self._stop_group(self.children)
                        exit_ = Exit(ExitReason.FAILURE, error)
                    else:
                        self.state = ActorState.RUNNING
                        started = True
                        task_status.started(None)
                        exit_ = await self._supervise()
                    task_group.cancel_scope.cancel()
        finally:
            self._scope = None
            self._task_group = None
            # The task group has exited, so no child runs any more, even those whose exits
            # were never handled (this incarnation was killed): the next incarnation must
            # start them again, not skip them as "running".
            for child in self.children:
                child.running = False
            self.state = ActorState.FAILED if exit_.abnormal else ActorState.STOPPED
            self._exited.set()
            if not started:
                task_status.started(exit_)
        return exit_

    async def _start_children(self) -> tuple[Child, BaseException | None] | None:
        """Start the children in order, for a new incarnation.

        As in OTP, a child whose ``on_start`` fails fails this start (the supervisor cannot
        provide what it is for). A child *killed* while starting is different: the kill came
        from outside (an operator, a chaos run), so it is a failure of that child, restarted
        and counted like any other, and the start goes on with its siblings."""
        for child in self._initial_children():
            if child.running or child.pending is not None:
                continue  # a restart above (one_for_all, rest_for_one) already started it
            exit_ = await self._start_child(child)
            if exit_ is None:
                continue
            if exit_.reason is not ExitReason.KILLED:
                return child, exit_.error
            logger.warning("%s: child %s was killed while starting", self.path, child.spec.name)
            gave_up = await self._handle_exit(child, exit_)
            if gave_up is not None:
                return child, gave_up
        return None

    def _initial_children(self) -> list[Child]:
        return list(self.children)

    async def _supervise(self) -> Exit:
        assert self._parker is not None
        while True:
            if self._stop_requested:
                self.state = ActorState.STOPPING
                await self._stop_group(self.children)
                return Exit(ExitReason.NORMAL)
            if not self._events:
                await self._parker.park()
                continue
            event = self._events.popleft()
            if isinstance(event, _Command):
                await event.execute()
                continue
            child, generation, exit_ = event
            if generation != child.generation or child.expected_exit:
                continue  # we stopped it ourselves
            child.running = False
            gave_up = await self._handle_exit(child, exit_)
            if gave_up is not None:
                return Exit(ExitReason.FAILURE, gave_up)

    def _post(self, event: tuple[Child, int, Exit] | _Command) -> None:
        self._events.append(event)
        if self._parker is not None:
            self._parker.unpark()

    async def call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``fn`` inside the supervisor's loop, between two exits, and return its result.

        Changes to the set of children (reload, pool resize, dynamic starts) go through here so
        that they never interleave with the handling of an exit. A one_for_one restart that is
        still waiting or starting in its own task is no obstacle: stopping that child cancels it.
        """
        if not self.running:
            raise RuntimeError(f"supervisor {self.path} is not running")
        command = _Command(fn, self.system.backend.new_reply())
        self._post(command)
        return await command.reply.wait(60.0, lambda: TimeoutError(f"{self.path} is busy"))

    # ------------------------------------------------------------------ exits and restarts

    def _wants_restart(self, child: Child, exit_: Exit) -> bool:
        restart = child.spec.restart
        if restart is Restart.TEMPORARY:
            return False
        if restart is Restart.TRANSIENT:
            return exit_.abnormal
        return True

    async def _handle_exit(self, child: Child, exit_: Exit) -> SupervisorGaveUpError | None:
        if exit_.abnormal:
            logger.warning("%s: child %s exited: %r", self.path, child.spec.name, exit_.error)
        if not self._wants_restart(child, exit_):
            self._retire(child)
            return None
        return await self._restart(child, exit_.error)

    def _retire(self, child: Child) -> None:
        """The child will not run again: fail what is queued for it."""
        child.runner.finish()

    def _restart_group(self, failed: Child) -> list[Child]:
        strategy = self.spec.strategy
        if strategy is Strategy.ONE_FOR_ONE:
            return [failed]
        if strategy is Strategy.ONE_FOR_ALL:
            return list(self.children)
        index = self.children.index(failed)
        return self.children[index:]

    async def _restart(
        self, failed: Child, error: BaseException | None
    ) -> SupervisorGaveUpError | None:
        while True:
            if self._count_restart():
                gave_up = SupervisorGaveUpError(
                    self.path, self.spec.intensity, self.spec.period, error
                )
                logger.error("%s", gave_up)
                await self._stop_group(self.children)
                return gave_up
            if self.spec.strategy is Strategy.ONE_FOR_ONE:
                failed.runner.restarts += 1
                # The start's outcome comes back to the loop as an exit of the child, so a
                # failed start is counted and retried like any failure.
                self._start_soon(failed, self._child_backoff(failed))
                return None
            group = self._restart_group(failed)
            await self._stop_group([c for c in group if c is not failed])
            delay = self.spec.backoff.delay(len(self._restart_times), self.rng)
            if delay > 0:
                await self.clock.sleep(delay)
            for child in group:
                child.runner.restarts += 1
            failure = await self._start_group(group)
            if failure is None:
                return None
            failed, error = failure

    def _count_restart(self) -> bool:
        """Count a restart in the supervisor-wide window; True when over the intensity."""
        times = self._restart_times
        _slide(times, self.clock.now(), self.spec.period)
        return len(times) > self.spec.intensity

    def _child_backoff(self, child: Child) -> float:
        """The backoff before restarting ``child`` alone (one_for_one).

        Sized by that child's own restarts within the period, not by the supervisor's: under
        one_for_one the children are independent (a dynamic supervisor's are tenants), and a
        child that keeps crashing must not slow down the restart of a sibling that failed once.
        The intensity, which decides when the supervisor gives up, stays supervisor-wide."""
        times = child.restart_times
        _slide(times, self.clock.now(), self.spec.period)
        return self.spec.backoff.delay(len(times), self.rng)

    # ------------------------------------------------------------------ starting and stopping

    async def _start_group(self, group: list[Child]) -> tuple[Child, BaseException | None] | None:
        """Start ``group`` in order; on the first failure return it (others stay stopped)."""
        for child in group:
            if child.running:
                continue
            error = await self._start_child(child)
            if error is not None:
                return child, error.error
        return None

    async def _start_child(self, child: Child) -> Exit | None:
        assert self._task_group is not None
        assert child.pending is None, child.runner.path
        child.generation += 1
        child.expected_exit = False
        child.passivating = False
        failed: Exit | None = await self._task_group.start(
            self._run_child, child, child.generation, name=child.runner.path
        )
        child.running = failed is None
        return failed

    async def _run_child(
        self, child: Child, generation: int, *, task_status: anyio.abc.TaskStatus[Any]
    ) -> None:
        status = _StartStatus(task_status)
        exit_ = await child.runner.run(task_status=status)
        if status.ok:
            self._post((child, generation, exit_))

    def _start_soon(self, child: Child, delay: float) -> None:
        """Start ``child`` after ``delay`` seconds in a task of its own, so that the loop goes
        on with other children meanwhile. How the start ends comes back as an exit event."""
        assert self._task_group is not None
        assert child.pending is None and not child.running, child.runner.path
        pending = child.pending = _PendingStart()
        child.generation += 1
        child.expected_exit = False
        child.passivating = False
        self._task_group.start_soon(
            self._run_child_soon, child, child.generation, delay, pending, name=child.runner.path
        )

    async def _run_child_soon(
        self, child: Child, generation: int, delay: float, pending: _PendingStart
    ) -> None:
        def started() -> None:
            # From here on the child is stopped the usual way (gracefully, see _stop_child).
            child.running = True
            child.pending = None

        status = _StartStatus(anyio.TASK_STATUS_IGNORED, started)
        exit_: Exit | None = None
        try:
            with pending.scope:
                if delay > 0:
                    await self.clock.sleep(delay)
                exit_ = await child.runner.run(task_status=status)
        finally:
            if child.pending is pending:
                child.pending = None
            pending.done.set()
        if exit_ is not None:  # None: cancelled by _stop_child, which expects no exit
            if not status.ok:
                logger.warning(
                    "%s: child %s failed to start: %r", self.path, child.spec.name, exit_.error
                )
            self._post((child, generation, exit_))

    async def _stop_group(self, group: list[Child]) -> None:
        for child in reversed(group):
            await self._stop_child(child)

    async def _stop_child(self, child: Child) -> None:
        pending = child.pending
        if pending is not None:
            child.expected_exit = True
            pending.scope.cancel()
            await pending.done.wait()
            child.running = False
            return
        if not child.running:
            return
        child.expected_exit = True
        runner = child.runner
        shutdown = child.spec.shutdown
        if shutdown == BRUTAL_KILL:
            runner.kill()
        else:
            runner.request_stop()
            with anyio.move_on_after(float(shutdown)):
                await runner.wait_exited()
            runner.kill()  # no-op when it already exited
        await runner.wait_exited()
        child.running = False

    # ------------------------------------------------------------------ live changes

    async def add_child(self, spec: ChildSpec) -> None:
        """Add a child at the end and start it (inside the supervisor loop)."""

        async def add() -> None:
            if self.child(spec.name) is not None:
                raise ValueError(f"{self.path} already has a child named {spec.name!r}")
            child = self._add_child(spec)
            failed = await self._start_child(child)
            if failed is not None:
                self._remove(child)
                raise RuntimeError(f"{child.runner.path} failed to start") from failed.error

        await self.call(add)

    async def remove_child(self, name: str) -> None:
        """Stop a child (graceful, within its shutdown timeout) and forget it."""

        async def remove() -> None:
            child = self.child(name)
            if child is None:
                raise KeyError(name)
            await self._stop_child(child)
            self._remove(child)

        await self.call(remove)

    def _remove(self, child: Child) -> None:
        self.children.remove(child)
        child.runner.finish()
        _unregister_tree(self.system, child.runner)

    async def resize_pool(self, size: int) -> None:
        """Grow or shrink a pool to ``size`` members; members that stay are untouched."""
        if self.spec.pool_template is None:
            raise ValueError(f"{self.path} is not a pool")
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")

        async def resize() -> None:
            self.spec.pool_size = size
            while len(self.children) > size:
                child = self.children[-1]
                await self._stop_child(child)
                self._remove(child)
            while len(self.children) < size:
                child = self._add_child(self._pool_member(len(self.children)))
                failed = await self._start_child(child)
                if failed is not None:
                    self._remove(child)
                    raise RuntimeError(f"{child.runner.path} failed to start") from failed.error

        await self.call(resize)

    # ------------------------------------------------------------------ runner interface

    def request_stop(self) -> None:
        self._stop_requested = True
        if self._parker is not None:
            self._parker.unpark()

    def kill(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def wait_exited(self) -> None:
        if self._exited is not None:
            await self._exited.wait()

    async def start_as_root(self) -> None:
        """Start under the actor system itself: if this supervisor gives up, the node fails
        (``ActorSystem.fail``) and its ``async with`` block raises the error."""
        failed = await self.system.start(self._run_as_root, name=self.path)
        if failed is not None:
            raise RuntimeError(f"supervisor {self.path} failed to start") from failed.error
        self.system.add_root(self)

    async def _run_as_root(self, *, task_status: anyio.abc.TaskStatus[Any]) -> None:
        exit_ = await self.run(task_status=task_status)
        if exit_.abnormal and exit_.error is not None and self.state is not ActorState.NEW:
            self.system.fail(exit_.error)

    async def stop(self) -> None:
        """Stop gracefully (children in reverse order) and wait for it."""
        self.request_stop()
        await self.wait_exited()
        self.finish()

    @property
    def running(self) -> bool:
        """An incarnation is running and was not killed: as for actors, a killed supervisor
        that is still stopping its children no longer counts (readiness shows the kill at
        once, and a second kill is not taken for a second restart)."""
        return self._scope is not None and not self._scope.cancel_called

    def finish(self, reason: BaseException | None = None) -> None:
        for child in self.children:
            child.runner.finish(reason)

    # ------------------------------------------------------------------ inspection

    def inspect(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "state": self.state.value,
            "restarts": self.restarts,
            "strategy": self.spec.strategy.value,
            "intensity": self.spec.intensity,
            "period": self.spec.period,
            "children": [child.runner.inspect() for child in self.children],
        }

    def statistics(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "state": self.state.value,
            "children": len(self.children),
            "running_children": sum(1 for c in self.children if c.running),
            # Children waiting for their backoff or starting in a task of their own.
            "pending_starts": sum(1 for c in self.children if c.pending is not None),
            "restarts_in_window": len(self._restart_times),
            "restarts": self.restarts,
        }
