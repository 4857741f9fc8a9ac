"""The ``Actor`` base class: state plus a handler that sees one message at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ref import ActorRef
    from .system import ActorSystem

__all__ = ["Actor", "ActorContext"]


class ActorContext:
    """What an actor knows about where it runs: its own ref, its path and its system."""

    __slots__ = ("incarnation", "name", "path", "ref", "system")

    def __init__(self, ref: ActorRef, system: ActorSystem, incarnation: int) -> None:
        self.ref = ref
        self.path = ref.path
        #: The last segment of the path: a dynamic supervisor's child key (e.g. the tenant).
        self.name = ref.path.rsplit("/", 1)[-1]
        self.system = system
        self.incarnation = incarnation


class Actor:
    """Subclass and override :meth:`receive`.

    Messages are handled one at a time, in arrival order, so the actor's own state needs no
    locks. ``receive`` returns the reply to an ``ask`` (ignored for a ``tell``).

    Failure rules (pykka's, which keep a bad request from costing a restart): an exception
    raised while handling an ``ask`` goes back to the asker and the actor keeps running; an
    exception while handling a ``tell`` has nobody to go to, so :meth:`on_failure` runs and
    the actor's incarnation ends as a failure, for its supervisor to restart. State that must
    survive a restart belongs in a store that :meth:`on_start` rebuilds from.
    """

    context: ActorContext

    async def on_start(self) -> None:
        """Called before the first message of each incarnation (after every restart too)."""

    async def receive(self, message: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not handle {type(message).__name__}")

    async def on_stop(self) -> None:
        """Called when the incarnation ends normally (stop or supervisor shutdown)."""

    async def on_failure(self, exc: BaseException, message: Any) -> None:
        """Called when handling a ``tell`` raised; the incarnation then ends as a failure."""
