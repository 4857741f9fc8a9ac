"""The actor cell: runs incarnations of one actor against its (long-lived) mailbox.

A cell owns the mailbox and the counters; each call to :meth:`ActorCell.run` is one
incarnation: a fresh ``Actor`` from the factory, ``on_start``, the message loop, and an
:class:`Exit` that tells the supervisor how it ended. The supervisor decides whether another
incarnation follows; when none will, it calls :meth:`ActorCell.finish`, which closes the
mailbox and fails whatever is still queued.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import anyio.abc
import msgspec
from anyio.lowlevel import checkpoint

from ._exceptions import ActorKilledError, ActorStoppedError
from .actor import Actor, ActorContext
from .mailbox import Mailbox, MailboxStatistics, OverflowPolicy
from .ref import ActorRef

if TYPE_CHECKING:
    from .system import ActorSystem

__all__ = ["ActorCell", "ActorState", "ActorStatistics", "Exit", "ExitReason"]

logger = logging.getLogger("somabrain.actors")

# Handlers that never suspend would otherwise starve every other task on the loop.
_CHECKPOINT_EVERY = 128


class ExitReason(StrEnum):
    NORMAL = "normal"
    FAILURE = "failure"
    KILLED = "killed"


class Exit(NamedTuple):
    reason: ExitReason
    error: BaseException | None = None

    @property
    def abnormal(self) -> bool:
        return self.reason is not ExitReason.NORMAL


class ActorState(StrEnum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    RESTARTING = "restarting"
    STOPPED = "stopped"
    FAILED = "failed"


class ActorStatistics(msgspec.Struct, frozen=True):
    path: str
    state: str
    incarnation: int
    restarts: int
    processed: int
    failures: int
    ask_errors: int
    mailbox: MailboxStatistics


class ActorCell:
    def __init__(
        self,
        system: ActorSystem,
        path: str,
        factory: Callable[[], Actor],
        *,
        mailbox_size: int = 1024,
        overflow: OverflowPolicy | str = OverflowPolicy.WAIT,
    ) -> None:
        self.system = system
        self.backend = system.backend
        self.path = path
        self.factory = factory
        self.mailbox = Mailbox(self.backend, path, mailbox_size, overflow)
        self.ref = ActorRef(self)
        self.state = ActorState.NEW
        self.incarnation = 0
        self.restarts = 0
        self.processed = 0
        self.failures = 0
        self.ask_errors = 0
        self._stop_requested = False
        self._killed = False
        self._scope: anyio.CancelScope | None = None
        self._exited: anyio.Event | None = None
        self._current_reply: Any = None

    # ------------------------------------------------------------------ one incarnation

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[Exit | None] = anyio.TASK_STATUS_IGNORED
    ) -> Exit:
        """Run one incarnation. Reports ``None`` when started, or the :class:`Exit` of a failed
        start, through ``task_status``; returns how the incarnation ended."""
        self.incarnation += 1
        self._stop_requested = False
        self._killed = False
        self._exited = anyio.Event()
        self.mailbox.reopen()
        started = False
        exit_ = Exit(ExitReason.KILLED, ActorKilledError(self.path))
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                self.state = ActorState.STARTING
                try:
                    actor = self.factory()
                    actor.context = ActorContext(self.ref, self.system, self.incarnation)
                    await actor.on_start()
                except Exception as exc:
                    logger.warning("actor %s failed to start: %r", self.path, exc)
                    exit_ = Exit(ExitReason.FAILURE, exc)
                else:
                    self.state = ActorState.RUNNING
                    started = True
                    task_status.started(None)
                    exit_ = await self._loop(actor)
        finally:
            self._scope = None
            reply, self._current_reply = self._current_reply, None
            if reply is not None:
                reply.set_exception(
                    ActorKilledError(self.path) if self._killed else ActorStoppedError(self.path)
                )
            if exit_.abnormal:
                self.failures += exit_.reason is ExitReason.KILLED
                self.state = ActorState.FAILED
            else:
                self.state = ActorState.STOPPED
            self._exited.set()
            if not started:
                task_status.started(exit_)
        return exit_

    async def _loop(self, actor: Actor) -> Exit:
        mailbox = self.mailbox
        queue = mailbox._queue
        senders = mailbox._senders
        receive = actor.receive
        budget = _CHECKPOINT_EVERY
        while True:
            if self._stop_requested:
                if self._killed:
                    # The cancellation has not landed yet (see ``kill``): end here, between
                    # two messages, rather than after the rest of the mailbox.
                    return Exit(ExitReason.KILLED, ActorKilledError(self.path))
                self.state = ActorState.STOPPING
                try:
                    await actor.on_stop()
                except Exception as exc:
                    logger.warning("actor %s failed in on_stop: %r", self.path, exc)
                    return Exit(ExitReason.FAILURE, exc)
                return Exit(ExitReason.NORMAL)
            if not queue:
                await mailbox.wait()
                continue
            message, reply = queue.popleft()
            if senders:
                senders.popleft().unpark()
            if reply is None:
                try:
                    await receive(message)
                except Exception as exc:
                    self.failures += 1
                    logger.warning("actor %s failed on %s: %r", self.path, type(message), exc)
                    try:
                        await actor.on_failure(exc, message)
                    except Exception as hook_exc:
                        logger.warning("actor %s failed in on_failure: %r", self.path, hook_exc)
                    return Exit(ExitReason.FAILURE, exc)
            else:
                self._current_reply = reply
                try:
                    result = await receive(message)
                except Exception as exc:
                    self.ask_errors += 1
                    reply.set_exception(exc)
                else:
                    reply.set_result(result)
                self._current_reply = None
            self.processed += 1
            budget -= 1
            if not budget:
                budget = _CHECKPOINT_EVERY
                await checkpoint()

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Stop the incarnation after the message in hand (graceful)."""
        self._stop_requested = True
        self.mailbox.wake_reader()

    def kill(self) -> None:
        """Cancel the incarnation now; it ends with reason ``killed``.

        The cancellation lands at the handler's next unshielded wait. A handler that does its
        work in shielded sections (an fsync) may have none: on asyncio, anyio stops delivering
        a cancellation while the task waits inside a shielded scope and retries a loop turn
        after the shield ends, by when a busy actor is inside the next one; on trio it waits
        for an unshielded checkpoint. So the message loop also checks the kill between two
        messages (through ``_stop_requested``, the flag it already reads for every one), and
        a killed incarnation no longer counts as running: a second kill is not taken for a
        second restart, and readiness reflects the kill at once."""
        if self._scope is not None and not self._killed:
            self._killed = True
            self._stop_requested = True
            self._scope.cancel()
            self.mailbox.wake_reader()

    async def wait_exited(self) -> None:
        if self._exited is not None:
            await self._exited.wait()

    @property
    def running(self) -> bool:
        """An incarnation is running and was not killed (a killed one is ending)."""
        return self._scope is not None and not self._killed

    def finish(self, reason: BaseException | None = None) -> None:
        """No incarnation will follow: close the mailbox and fail everything still queued."""
        error = reason or ActorStoppedError(self.path)
        self.mailbox.close(error)
        for message, reply in self.mailbox.drain():
            self.dead_letter(message, reply, "stopped with the message queued")
        if self.state is not ActorState.FAILED:
            self.state = ActorState.STOPPED

    def dead_letter(self, message: Any, reply: Any, reason: str = "actor not running") -> None:
        self.system.dead_letters.record(self.path, message, reason)
        if reply is not None:
            reply.set_exception(ActorStoppedError(self.path))

    def statistics(self) -> ActorStatistics:
        return ActorStatistics(
            path=self.path,
            state=self.state.value,
            incarnation=self.incarnation,
            restarts=self.restarts,
            processed=self.processed,
            failures=self.failures,
            ask_errors=self.ask_errors,
            mailbox=self.mailbox.statistics(),
        )
