"""The two wake-up primitives the kernel needs, built on each backend's own lowest layer.

Every message hand-off in the kernel reduces to one of two things: a consumer parks until a
producer wakes it (``Parker``), or an asker waits for exactly one reply (``Reply``). anyio's
``Event`` and ``fail_after`` are correct for both but cost several microseconds each on the hot
path, so here each backend gets its cheapest native equivalent: an ``asyncio.Future`` plus
``call_later`` for the timeout, or trio's ``wait_task_rescheduled``/``reschedule`` plus a
cancel scope. Both honour cancellation from enclosing anyio cancel scopes.

Everything in this module is single-threaded: it must be used from the event loop that created
it (the actor system's loop).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, Protocol

import sniffio

__all__ = ["Backend", "Parker", "Reply", "current_backend"]


class Parker(Protocol):
    """One waiter parks until somebody unparks it. Unparking an idle parker is a no-op.

    ``parked`` is a plain attribute, not a property: producers read it on every message.
    """

    parked: bool

    async def park(self) -> None: ...

    def unpark(self) -> None: ...


class Reply(Protocol):
    """A one-shot slot: the first result or exception wins, later ones are ignored."""

    @property
    def done(self) -> bool: ...

    def set_result(self, value: Any) -> None: ...

    def set_exception(self, exc: BaseException) -> None: ...

    async def wait(self, timeout: float, on_timeout: Callable[[], BaseException]) -> Any: ...

    async def wait_untimed(self) -> Any:
        """Wait with no timer of its own (a ``Deadlines`` watchdog enforces the timeout)."""
        ...


class Backend(Protocol):
    name: str

    def now(self) -> float: ...

    def new_parker(self) -> Parker: ...

    def new_reply(self) -> Reply: ...


# --------------------------------------------------------------------------------- asyncio


class _AsyncioParker:
    __slots__ = ("_future", "_loop", "parked")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] | None = None
        self.parked = False

    async def park(self) -> None:
        future = self._loop.create_future()
        self._future = future
        self.parked = True
        try:
            await future
        finally:
            self._future = None
            self.parked = False

    def unpark(self) -> None:
        future = self._future
        if future is not None:
            # Cleared now, not when the parked task resumes: a burst of producers then sees
            # ``parked`` False after the first wake-up and skips this call.
            self._future = None
            self.parked = False
            if not future.done():
                future.set_result(None)


class _AsyncioReply:
    __slots__ = ("_future", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[Any] = loop.create_future()

    @property
    def done(self) -> bool:
        return self._future.done()

    def set_result(self, value: Any) -> None:
        if not self._future.done():
            self._future.set_result(value)

    def set_exception(self, exc: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(exc)

    async def wait(self, timeout: float, on_timeout: Callable[[], BaseException]) -> Any:
        future = self._future
        if future.done():
            return future.result()
        # A timer handle is far cheaper than asyncio.wait_for or an anyio cancel scope.
        handle = self._loop.call_later(timeout, self._expire, on_timeout)
        try:
            return await future
        finally:
            handle.cancel()

    def _expire(self, on_timeout: Callable[[], BaseException]) -> None:
        if not self._future.done():
            self._future.set_exception(on_timeout())

    async def wait_untimed(self) -> Any:
        return await self._future


class _AsyncioBackend:
    name = "asyncio"

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.now = self._loop.time

    def new_parker(self) -> Parker:
        return _AsyncioParker(self._loop)

    def new_reply(self) -> Reply:
        return _AsyncioReply(self._loop)


# ------------------------------------------------------------------------------------ trio


@functools.cache
def _make_trio_backend() -> Backend:
    import outcome
    import trio
    from trio.lowlevel import Abort, current_task, reschedule, wait_task_rescheduled

    class _TrioParker:
        __slots__ = ("_task", "parked")

        def __init__(self) -> None:
            self._task: Any = None
            self.parked = False

        async def park(self) -> None:
            self._task = current_task()
            self.parked = True
            try:
                await wait_task_rescheduled(self._abort)
            finally:
                self._task = None
                self.parked = False

        def _abort(self, _raise_cancel: Any) -> Abort:
            # Cancelled while parked: forget the task now, or an unpark() arriving before it
            # resumes would reschedule it a second time.
            self._task = None
            self.parked = False
            return Abort.SUCCEEDED

        def unpark(self) -> None:
            task = self._task
            if task is not None:
                self._task = None
                self.parked = False
                reschedule(task)

    class _TrioReply:
        __slots__ = ("_outcome", "_task")

        def __init__(self) -> None:
            self._task: Any = None
            self._outcome: Any = None

        @property
        def done(self) -> bool:
            return self._outcome is not None

        def _settle(self, result: Any) -> None:
            if self._outcome is not None:
                return
            self._outcome = result
            task = self._task
            if task is not None:
                self._task = None
                reschedule(task, result)

        def set_result(self, value: Any) -> None:
            self._settle(outcome.Value(value))

        def set_exception(self, exc: BaseException) -> None:
            self._settle(outcome.Error(exc))

        async def wait(self, timeout: float, on_timeout: Callable[[], BaseException]) -> Any:
            if self._outcome is not None:
                return self._outcome.unwrap()

            def abort(_raise_cancel: Any) -> Abort:
                self._task = None
                return Abort.SUCCEEDED

            with trio.move_on_after(timeout):
                self._task = current_task()
                return await wait_task_rescheduled(abort)
            # Timed out: settle so that a late reply is dropped, then raise.
            exc = on_timeout()
            self._outcome = outcome.Error(exc)
            raise exc

        async def wait_untimed(self) -> Any:
            if self._outcome is not None:
                return self._outcome.unwrap()

            def abort(_raise_cancel: Any) -> Abort:
                # Cancelled: count as done, so the deadline watchdog drops it.
                self._task = None
                self._outcome = outcome.Value(None)
                return Abort.SUCCEEDED

            self._task = current_task()
            return await wait_task_rescheduled(abort)

    class _TrioBackend:
        name = "trio"
        now = staticmethod(trio.current_time)

        def new_parker(self) -> Parker:
            return _TrioParker()

        def new_reply(self) -> Reply:
            return _TrioReply()

    return _TrioBackend()


def current_backend() -> Backend:
    """The primitives for the async library running the current task."""
    library = sniffio.current_async_library()
    if library == "asyncio":
        return _AsyncioBackend()
    if library == "trio":
        return _make_trio_backend()
    raise RuntimeError(f"unsupported async library {library!r}: use asyncio or trio")
