"""The actor kernel: actors, refs, mailboxes, the subject bus and the actor system."""

from typing import TYPE_CHECKING, Any

from ._cell import ActorState, ActorStatistics, Exit, ExitReason
from ._exceptions import (
    ActorError,
    ActorKilledError,
    ActorStoppedError,
    AskTimeoutError,
    BusClosedError,
    BusConnectError,
    BusError,
    CodecError,
    InvalidSubjectError,
    MailboxFullError,
    MessageTooLargeError,
    NoRespondersError,
    RequestTimeoutError,
    SomaError,
)
from .actor import Actor, ActorContext
from .bus import (
    Bus,
    BusStatistics,
    InProcessBus,
    Msg,
    Subscription,
    SubscriptionStatistics,
)
from .codec import Codec
from .deadletters import DeadLetter, DeadLetters
from .mailbox import Mailbox, MailboxStatistics, OverflowPolicy
from .ref import DEFAULT_ASK_TIMEOUT, ActorRef
from .subjects import matches, validate_pattern, validate_subject
from .system import ActorSystem

if TYPE_CHECKING:
    from .nats_transport import NatsBus

__all__ = [
    "DEFAULT_ASK_TIMEOUT",
    "Actor",
    "ActorContext",
    "ActorError",
    "ActorKilledError",
    "ActorRef",
    "ActorState",
    "ActorStatistics",
    "ActorStoppedError",
    "ActorSystem",
    "AskTimeoutError",
    "Bus",
    "BusClosedError",
    "BusConnectError",
    "BusError",
    "BusStatistics",
    "Codec",
    "CodecError",
    "DeadLetter",
    "DeadLetters",
    "Exit",
    "ExitReason",
    "InProcessBus",
    "InvalidSubjectError",
    "Mailbox",
    "MailboxFullError",
    "MailboxStatistics",
    "MessageTooLargeError",
    "Msg",
    "NatsBus",
    "NoRespondersError",
    "OverflowPolicy",
    "RequestTimeoutError",
    "SomaError",
    "Subscription",
    "SubscriptionStatistics",
    "matches",
    "validate_pattern",
    "validate_subject",
]


def __getattr__(name: str) -> Any:
    # NatsBus is imported on first use: nats-py is only needed by nodes that talk to NATS.
    if name == "NatsBus":
        from .nats_transport import NatsBus

        return NatsBus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
