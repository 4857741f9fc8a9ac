"""Apply state changes in log order, whatever order their acknowledgements wake up in.

Two concurrent upserts of one key can share a group-commit batch; the log says B wins (B was
appended after A), but the event loop may resume B's task before A's. Applying in wake-up order
would leave the live state at A while a restart replays B. So every mutation takes a ticket
before it appends, and registers its state change when its append returns; changes run strictly
in ticket order, and a caller returns only once its own change ran (read-your-writes).
A mutation whose append failed or was cancelled registers nothing (its ticket is skipped).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

__all__ = ["Sequencer"]


class Sequencer:
    """Runs registered callbacks in ticket order; see the module docstring."""

    def __init__(self) -> None:
        self._next_ticket = 0
        self._next_apply = 0
        self._ready: dict[int, Callable[[], None] | None] = {}
        self._waiters: dict[int, anyio.Event] = {}
        self._errors: dict[int, BaseException] = {}
        self._abandoned: set[int] = set()
        self._turns: dict[int, anyio.Event] = {}

    @property
    def pending(self) -> int:
        """Tickets handed out and not yet applied or skipped."""
        return self._next_ticket - self._next_apply

    def ticket(self) -> int:
        t = self._next_ticket
        self._next_ticket += 1
        return t

    def skip(self, ticket: int) -> None:
        """The mutation of ``ticket`` did not happen; let later ones proceed."""
        self._ready[ticket] = None
        self._drain()

    async def apply(self, ticket: int, change: Callable[[], None]) -> None:
        """Run ``change`` once every earlier ticket is applied or skipped; wait for it."""
        self._ready[ticket] = change
        self._drain()
        if ticket >= self._next_apply:
            event = self._waiters.setdefault(ticket, anyio.Event())
            try:
                await event.wait()
            except BaseException:
                self._abandoned.add(ticket)  # the change still runs; nobody hears its error
                raise
        error = self._errors.pop(ticket, None)
        if error is not None:
            raise error

    async def exclusive(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` in ticket order as a change that takes time: it starts once every
        earlier ticket is applied or skipped, and later changes wait until it returns (their
        appends go on meanwhile). For work that reads the state elsewhere, in a thread, and
        then replaces it (``TenantMemory`` compacting its index)."""
        ticket = self.ticket()
        try:
            if ticket > self._next_apply:
                await self._turns.setdefault(ticket, anyio.Event()).wait()
            await work()
        finally:
            self.skip(ticket)  # done, or cancelled: the changes behind it run

    def _drain(self) -> None:
        while self._next_apply in self._ready:
            t = self._next_apply
            change = self._ready.pop(t)
            if change is not None:
                try:
                    change()
                except Exception as exc:  # reported to the mutation's own caller
                    if t not in self._abandoned:
                        self._errors[t] = exc
            self._abandoned.discard(t)
            self._next_apply += 1
            turn = self._turns.pop(self._next_apply, None)
            if turn is not None:
                turn.set()
            event = self._waiters.pop(t, None)
            if event is not None:
                event.set()
