"""The messages a tenant's memory actor handles, and the write ticket it answers writes with.

Reads (``Recall``, ``GetMemory``, ``GetMemories``, ``MemoryStats``) are answered directly.
Writes (``Remember``, ``LinkMemories``, ``Forget``, ``Unlink``) are answered with a
:class:`WriteTicket` as soon as the write has started; the asker awaits
``ticket.result(timeout)``, which returns once the write is durable (or raises its error).
Why: durability waits for an fsync, and a memory actor that awaited each one in turn would
serialise every write of a tenant behind the disk; handing back a ticket lets concurrent
writes share one group-commit fsync while the actor goes on with the next message.
:func:`ask_memory` hides the difference from callers.
"""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
import msgspec

from ..actors import ActorRef, AskTimeoutError
from .types import Memory, RecallFilter

__all__ = [
    "ContextRecall",
    "Forget",
    "GetMemories",
    "GetMemory",
    "LinkMemories",
    "MemoryRequest",
    "MemoryStats",
    "Recall",
    "Reinforce",
    "Remember",
    "Unlink",
    "WriteTicket",
    "ask_memory",
]


class Remember(msgspec.Struct, frozen=True, tag=True):
    """Store (upsert) memories in one durable batch; the ticket's result is
    ``list[Remembered]`` in input order."""

    memories: tuple[Memory, ...]


class Recall(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """Answered with ``list[RecallHit]``, best first. ``at``: the time the query is about
    (the recency view's reference; default now)."""

    query: str
    top_k: int = 10
    namespace: str | None = None
    filters: RecallFilter | None = None
    weights: dict[str, float] | None = None
    at: float | None = None


class GetMemory(msgspec.Struct, frozen=True, tag=True):
    """Answered with the ``Memory`` (with its outgoing links) or ``None``."""

    key: str


class GetMemories(msgspec.Struct, frozen=True, tag=True):
    """Answered with ``list[Memory | None]``, one per key, in order (the integrity worker
    checks many memory events with one ask)."""

    keys: tuple[str, ...]


class Forget(msgspec.Struct, frozen=True, tag=True):
    """Delete a memory and its links; the ticket's result is ``True`` if it existed.

    ``namespace``: forget it only if it is in this namespace (else ``False``, nothing done):
    the edge decided the caller may change memories there, and a memory written again under
    the key meanwhile, into another namespace, is not the one it decided on."""

    key: str
    namespace: str | None = None


class LinkMemories(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """Create or re-weight an edge; the ticket's result is the stored ``Link``."""

    from_key: str
    to_key: str
    rel: str = "related"
    weight: float = 1.0


class Unlink(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """Delete an edge; the ticket's result is ``True`` if it existed."""

    from_key: str
    to_key: str
    rel: str = "related"


class MemoryStats(msgspec.Struct, frozen=True, tag=True):
    """Answered with ``TenantMemoryStatistics``."""


class ContextRecall(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """Recall for a context bundle: answered with a ``recall.ContextRecallResult`` (the hits
    with their embeddings, plus the session's best working-memory items). ``at``: the time
    the query is about (recency)."""

    query: str
    top_k: int = 10
    namespace: str | None = None
    filters: RecallFilter | None = None
    weights: dict[str, float] | None = None
    at: float | None = None
    session_id: str | None = None
    wm_top_k: int = 5
    #: The tenant's learned form model (the ``form`` view, ``memory.form``), from the
    #: planner's adaptation state; None: none learned (the view scores every memory alike).
    form: dict[str, float] | None = None


class Reinforce(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """Feedback: add ``amount`` to the salience of ``keys`` (durable; the ticket's result is
    ``{key: new strength}``) and put them in the session's working memory. With ``query`` and
    ``amount > 0`` the keys are also associated with the query and linked to each other
    (``associations.FeedbackLearner``)."""

    keys: tuple[str, ...]
    amount: float
    session_id: str | None = None
    query: str | None = None


MemoryRequest = (
    Remember
    | Recall
    | GetMemory
    | GetMemories
    | Forget
    | LinkMemories
    | Unlink
    | MemoryStats
    | ContextRecall
    | Reinforce
)


class WriteTicket:
    """The pending outcome of a write: resolved once it is durable, or failed."""

    __slots__ = ("_done", "_error", "_result")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def set_result(self, result: Any) -> None:
        if not self._done.is_set():
            self._result = result
            self._done.set()

    def set_exception(self, error: BaseException) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def result(self, timeout: float = math.inf) -> Any:
        """Wait for the write; raises its error, or ``TimeoutError`` after ``timeout`` s.

        A timeout says nothing about the write: it may still become durable.
        """
        with anyio.move_on_after(timeout):
            await self._done.wait()
        if not self._done.is_set():
            raise TimeoutError(f"write not acknowledged within {timeout:g} s")
        if self._error is not None:
            raise self._error
        return self._result


_NO_REPLY = object()


async def ask_memory(ref: ActorRef, message: MemoryRequest, timeout: float) -> Any:
    """Ask a memory actor and, for writes, wait for durability; one deadline for both."""
    # time.monotonic, not anyio.current_time: this runs for every request of the edge, and
    # anyio's clock (a backend lookup per call) measured as 4% of the node's time there.
    deadline = time.monotonic() + timeout
    reply: Any = _NO_REPLY
    if ref.has_room:  # the ask's own deadline bounds the reply
        reply = await ref.ask(message, timeout=timeout)
    else:  # the timeout covers waiting for room in a full mailbox too
        with anyio.move_on_after(timeout):
            reply = await ref.ask(message, timeout=timeout)
    if reply is _NO_REPLY:
        raise AskTimeoutError(ref.path, timeout)
    if isinstance(reply, WriteTicket):
        remaining = deadline - time.monotonic()
        try:
            return await reply.result(max(remaining, 0.0))
        except TimeoutError:
            if reply.done:
                raise
            raise AskTimeoutError(ref.path, timeout) from None
    return reply
