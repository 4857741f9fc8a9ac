"""Errors raised by the actor kernel.

The hierarchy::

    SomaError
    ├── ActorError
    │   ├── ActorStoppedError      the actor stopped before handling the message
    │   │   └── ActorKilledError   ...because it was killed (chaos, brutal shutdown)
    │   ├── AskTimeoutError        no reply within the ask timeout (also a TimeoutError)
    │   └── MailboxFullError       overflow policy "raise" and the mailbox is full (counted)
    ├── BusError
    │   ├── InvalidSubjectError    a subject or pattern breaks the NATS rules (also a ValueError)
    │   ├── NoRespondersError      a request found nobody subscribed to its subject
    │   ├── RequestTimeoutError    a request got no reply in time (also a TimeoutError)
    │   ├── MessageTooLargeError   a message is larger than the transport carries
    │   ├── BusConnectError        the transport's server could not be reached (NATS)
    │   └── BusClosedError         the bus was closed
    └── CodecError                 a message could not be encoded or decoded at a boundary

Errors carry the fields that say which case they are (path, subject, capacity...), so that
callers can react without parsing messages.
"""

from __future__ import annotations

__all__ = [
    "ActorError",
    "ActorKilledError",
    "ActorStoppedError",
    "AskTimeoutError",
    "BusClosedError",
    "BusConnectError",
    "BusError",
    "CodecError",
    "InvalidSubjectError",
    "MailboxFullError",
    "NoRespondersError",
    "RequestTimeoutError",
    "SomaError",
]


class SomaError(Exception):
    """Base of every error SomaBrain raises on purpose."""


class ActorError(SomaError):
    """Something went wrong talking to an actor."""


class ActorStoppedError(ActorError):
    """The actor stopped (or was never running) before it handled the message."""

    def __init__(self, path: str, detail: str = "stopped before handling the message") -> None:
        self.path = path
        super().__init__(f"actor {path} {detail}")


class ActorKilledError(ActorStoppedError):
    """The actor was killed while the message was queued or being handled."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "was killed before replying")


class AskTimeoutError(ActorError, TimeoutError):
    """An ask got no reply within its timeout. The message may still be handled later."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        super().__init__(f"no reply from actor {path} within {timeout:g} s")


class MailboxFullError(ActorError):
    """The mailbox is at capacity and its overflow policy is ``raise``."""

    def __init__(self, path: str, capacity: int) -> None:
        self.path = path
        self.capacity = capacity
        super().__init__(f"mailbox of {path} is full ({capacity} messages)")


class BusError(SomaError):
    """Something went wrong on the subject bus."""


class InvalidSubjectError(BusError, ValueError):
    """A subject or subscription pattern is not valid."""

    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"invalid subject {subject!r}: {reason}")


class NoRespondersError(BusError):
    """A request was published to a subject nobody subscribes to."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        super().__init__(f"no responders on subject {subject!r}")


class RequestTimeoutError(BusError, TimeoutError):
    """A request got no reply within its timeout."""

    def __init__(self, subject: str, timeout: float) -> None:
        self.subject = subject
        self.timeout = timeout
        super().__init__(f"no reply on subject {subject!r} within {timeout:g} s")


class MessageTooLargeError(BusError):
    """An encoded message is larger than the transport carries (NATS: the server's
    ``max_payload``); nothing was sent."""

    def __init__(self, subject: str, size: int, limit: int) -> None:
        self.subject = subject
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes on {subject!r} exceeds the {limit}-byte limit")


class BusConnectError(BusError):
    """The bus could not connect to its server. ``url`` is the server's address without its
    credentials; ``reason`` says what went wrong (connection refused, no answer in time, the
    server refused the credentials...)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot connect to NATS at {url}: {reason}")


class BusClosedError(BusError):
    """The bus (or the subscription) was closed by its owner."""


class CodecError(SomaError):
    """A message could not be encoded or decoded where it crosses a process boundary."""
