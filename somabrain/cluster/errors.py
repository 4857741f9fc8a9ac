"""Errors of the cluster layer.

The hierarchy::

    SomaError                   (somabrain.actors)
    └── ClusterError
        ├── OwnerUnavailableError  the tenant's owner did not answer: not connected, no
        │                          responders (the node is down), or no reply in time
        ├── PayloadTooLargeError   the request or the owner's reply does not fit in one NATS
        │                          message (the server's ``max_payload``, 1 MiB by default)
        ├── JoinTimeoutError       a starting member found no NATS within
        │                          ``cluster.connect_timeout`` (the node exits)
        └── RemoteError            the owner failed with an error that has no meaning here
                                   (a bug there: the edge answers 500, as the owner would)

Every other error of the owner's memory actor comes back as its own type (``wire.py``).
"""

from __future__ import annotations

from ..actors import SomaError

__all__ = [
    "ClusterError",
    "JoinTimeoutError",
    "OwnerUnavailableError",
    "PayloadTooLargeError",
    "RemoteError",
]


class ClusterError(SomaError):
    """Base of the errors of the cluster layer."""


class OwnerUnavailableError(ClusterError):
    """The member that owns the tenant cannot be reached: retry later."""

    def __init__(self, owner: str, detail: str) -> None:
        self.owner = owner
        self.detail = detail
        super().__init__(f"node {owner!r}, the tenant's owner, is unavailable: {detail}")


class PayloadTooLargeError(ClusterError):
    """A request to the owner, or its reply, is larger than one NATS message may be: sending
    it again will not help (a smaller batch, fewer results, or a larger ``max_payload`` on
    the nats-server will)."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        super().__init__(
            f"the {what} is {size} bytes on the cluster wire, more than the NATS server's"
            f" max_payload of {limit} bytes: send less (a smaller batch, a lower top_k) or"
            " raise max_payload on the nats-server"
        )


class JoinTimeoutError(ClusterError):
    """A starting member could not connect to NATS within ``cluster.connect_timeout``.
    ``url`` has no credentials; ``reason`` is why the last attempt failed."""

    def __init__(self, url: str, timeout: float, attempts: int, reason: str) -> None:
        self.url = url
        self.timeout = timeout
        self.attempts = attempts
        self.reason = reason
        super().__init__(
            f"cannot connect to NATS at {url} within {timeout:g} s (cluster.connect_timeout;"
            f" {attempts} attempts, the last: {reason or 'none finished in time'})"
        )


class RemoteError(ClusterError):
    """An error of the owner that does not cross as its own type (``error`` names it)."""

    def __init__(self, error: str, message: str) -> None:
        self.error = error
        super().__init__(f"{error} on the owner: {message}")
