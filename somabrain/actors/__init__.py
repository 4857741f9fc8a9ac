"""The actor kernel: actors, refs, mailboxes, the subject bus and the actor system."""

from ._cell import ActorState, ActorStatistics, Exit, ExitReason
from ._exceptions import (
    ActorError,
    ActorKilledError,
    ActorStoppedError,
    AskTimeoutError,
    BusClosedError,
    BusError,
    CodecError,
    InvalidSubjectError,
    MailboxFullError,
    NoRespondersError,
    RequestTimeoutError,
    SomaError,
)
from .actor import Actor, ActorContext
from .deadletters import DeadLetter, DeadLetters
from .mailbox import Mailbox, MailboxStatistics, OverflowPolicy
from .ref import DEFAULT_ASK_TIMEOUT, ActorRef
from .system import ActorSystem

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
    "BusClosedError",
    "BusError",
    "CodecError",
    "DeadLetter",
    "DeadLetters",
    "Exit",
    "ExitReason",
    "InvalidSubjectError",
    "Mailbox",
    "MailboxFullError",
    "MailboxStatistics",
    "NoRespondersError",
    "OverflowPolicy",
    "RequestTimeoutError",
    "SomaError",
]
