"""The actor system: one per process (a node). It owns the task group every actor runs in,
the registry of actors by path, the dead letters and the subject bus.

    async with ActorSystem("node-1") as system:
        ref = await system.spawn(Greeter, "greeter")
        print(await ref.ask("hello"))

Actors spawned here directly are unsupervised: when one fails it stays down (its mailbox
closes, later messages become dead letters). Supervision (``somabrain.supervision``) starts its
trees through :meth:`ActorSystem.start` and registers its roots for orderly shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc

from ._backend import Backend, current_backend
from ._cell import ActorCell, Exit
from ._deadlines import Deadlines
from .actor import Actor
from .deadletters import DeadLetters
from .mailbox import OverflowPolicy
from .ref import ActorRef

if TYPE_CHECKING:
    from .bus import Bus

__all__ = ["ActorSystem", "Stoppable"]

logger = logging.getLogger("somabrain.actors")


class Stoppable(Protocol):
    """Something the system stops, in reverse start order, when it shuts down."""

    async def stop(self) -> None: ...


class ActorSystem:
    def __init__(
        self,
        name: str = "soma",
        *,
        bus: Bus | None = None,
        mailbox_size: int = 1024,
        overflow: OverflowPolicy | str = OverflowPolicy.WAIT,
        dead_letters_kept: int = 1000,
    ) -> None:
        self.name = name
        self.default_mailbox_size = mailbox_size
        self.default_overflow = OverflowPolicy(overflow)
        self.dead_letters = DeadLetters(dead_letters_kept)
        self._bus = bus
        self._cells: dict[str, ActorCell] = {}
        self._roots: list[Stoppable] = []
        self._task_group: anyio.abc.TaskGroup | None = None
        self._backend: Backend | None = None
        self._failure: BaseException | None = None
        #: Shared services for actors (stores, config...), set up by the node before the
        #: tree starts. Actor factories take no arguments; actors look their dependencies up
        #: here through ``self.context.system.resources``.
        self.resources: dict[str, Any] = {}
        self._finalizers: list[Callable[[], Awaitable[None]]] = []

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ActorSystem:
        self._backend = current_backend()
        self.deadlines = Deadlines(self._backend)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self.deadlines.run, name="ask deadlines")
        if self._bus is None:
            from .bus import InProcessBus

            self._bus = InProcessBus()
        await self._bus.start(self._task_group)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        try:
            with anyio.CancelScope(shield=True):
                await self.shutdown()
        finally:
            self._task_group.cancel_scope.cancel()
            suppress = await self._task_group.__aexit__(exc_type, exc, tb)
        if self._failure is not None:
            raise self._failure
        return suppress

    async def shutdown(self) -> None:
        """Stop supervised trees in reverse start order, then the unsupervised actors."""
        while self._roots:
            root = self._roots.pop()
            try:
                await root.stop()
            except Exception:
                logger.exception("error while stopping %r", root)
        for cell in list(self._cells.values()):
            if cell.running:
                cell.request_stop()
                with anyio.move_on_after(5):
                    await cell.wait_exited()
                cell.kill()
        while self._finalizers:
            finalizer = self._finalizers.pop()
            try:
                await finalizer()
            except Exception:
                logger.exception("error in shutdown finalizer %r", finalizer)
        if self._bus is not None:
            await self._bus.close()

    def add_finalizer(self, finalizer: Callable[[], Awaitable[None]]) -> None:
        """Run ``finalizer`` at shutdown, once every actor has stopped (last added, first run):
        for resources an actor hands over to its next incarnation, which may never come."""
        self._finalizers.append(finalizer)

    def fail(self, error: BaseException) -> None:
        """A root supervisor gave up: shut the node down and re-raise ``error`` on exit."""
        logger.error("root of the supervision tree failed: %r", error)
        if self._failure is None:
            self._failure = error
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    # ------------------------------------------------------------------ tasks

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("the actor system is not running: use 'async with ActorSystem()'")
        return self._backend

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("the actor system is not running: use 'async with ActorSystem()'")
        return self._bus

    def start_soon(
        self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str = ""
    ) -> None:
        assert self._task_group is not None, "system not running"
        self._task_group.start_soon(fn, *args, name=name or None)

    async def start(
        self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str = ""
    ) -> Any:
        """Run ``fn`` in the system's task group; returns what it passes to ``started()``."""
        assert self._task_group is not None, "system not running"
        return await self._task_group.start(fn, *args, name=name or None)

    def add_root(self, root: Stoppable) -> None:
        self._roots.append(root)

    def remove_root(self, root: Stoppable) -> None:
        if root in self._roots:
            self._roots.remove(root)

    # ------------------------------------------------------------------ actors

    def new_cell(
        self,
        path: str,
        factory: Callable[[], Actor],
        *,
        mailbox_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> ActorCell:
        """Create and register the cell for ``path`` (not started)."""
        if path in self._cells:
            raise ValueError(f"an actor is already registered at {path}")
        cell = ActorCell(
            self,
            path,
            factory,
            mailbox_size=mailbox_size or self.default_mailbox_size,
            overflow=overflow or self.default_overflow,
        )
        self._cells[path] = cell
        return cell

    def unregister(self, path: str) -> None:
        self._cells.pop(path, None)

    async def spawn(
        self,
        factory: Callable[[], Actor],
        name: str,
        *,
        mailbox_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> ActorRef:
        """Start an unsupervised actor at ``/user/<name>``; raises if ``on_start`` fails."""
        cell = self.new_cell(f"/user/{name}", factory, mailbox_size=mailbox_size, overflow=overflow)
        failed: Exit | None = await self.start(self._run_unsupervised, cell, name=cell.path)
        if failed is not None:
            raise RuntimeError(f"actor {cell.path} failed to start") from failed.error
        return cell.ref

    async def _run_unsupervised(
        self, cell: ActorCell, *, task_status: anyio.abc.TaskStatus[Exit | None]
    ) -> None:
        try:
            await cell.run(task_status=task_status)
        finally:
            cell.finish()
            self.unregister(cell.path)

    def lookup(self, path: str) -> ActorRef | None:
        cell = self._cells.get(path)
        return cell.ref if cell is not None else None

    def cell(self, path: str) -> ActorCell | None:
        return self._cells.get(path)

    def cells(self) -> Iterator[ActorCell]:
        return iter(list(self._cells.values()))
