"""What crosses between members: the request envelopes, replies and errors, as msgpack.

A request is a ``MemoryCall`` (a ``MemoryRequest`` for one tenant) or a ``ContextCall`` (an
``Evaluate``, ``Feedback`` or ``AdaptationQuery`` for the owner's planner pool). The answer is
``Returned`` (the reply, encoded for the request's reply type) or ``Raised`` (an error). The
reply's type is known from the request, so ``Returned`` carries raw msgpack and the asker
decodes it with the decoder of that type (built once): the owner's reply comes back as the
same Python value the local memory actor would have answered, down to ``Remembered`` tuples
and the float32 arrays of a ``ContextRecallResult``.

Errors come back as the same exception types with the same messages and attributes, so that
the edge maps them to the same HTTP answer (``edge.handlers.memory_error``) as on the owner.
An error type not listed in ``CROSSING_ERRORS`` crosses as its nearest listed base class,
else as ``RemoteError`` (a bug on the owner: 500 here as there).
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from ..actors import (
    ActorKilledError,
    ActorStoppedError,
    AskTimeoutError,
    Codec,
    MailboxFullError,
)
from ..context.messages import (
    AdaptationQuery,
    AdaptationView,
    ContextBundle,
    ContextFailure,
    Evaluate,
    Feedback,
    FeedbackResult,
)
from ..memory.actor import TenantUnavailableError
from ..memory.errors import (
    InvalidVectorError,
    LogBrokenError,
    LogClosedError,
    LogCorruptError,
    LogError,
    LogLockedError,
    TenantMismatchError,
    UnknownMemoryError,
)
from ..memory.messages import (
    ContextRecall,
    Forget,
    GetMemories,
    GetMemory,
    LinkMemories,
    MemoryRequest,
    MemoryStats,
    Recall,
    Reinforce,
    Remember,
    Unlink,
)
from ..memory.recall import ContextRecallResult
from ..memory.tenant import TenantMemoryStatistics
from ..memory.types import Link, Memory, RecallHit, Remembered
from ..memory.working import WMHit
from ..supervision import MaxChildrenError
from .errors import OwnerUnavailableError, PayloadTooLargeError, RemoteError

__all__ = [
    "CROSSING_ERRORS",
    "ContextCall",
    "Hello",
    "MemoryCall",
    "Raised",
    "Returned",
    "decode_error",
    "decode_reply",
    "encode_error",
    "encode_reply",
    "wire_codec",
]

ContextRequest = Evaluate | Feedback | AdaptationQuery


class MemoryCall(msgspec.Struct, frozen=True, kw_only=True, tag="cluster.memory"):
    """Ask the owner's memory actor of ``tenant``; ``timeout``: seconds it may take there;
    ``members``: the asker's ``membership_digest`` (the owner refuses a call from a member
    whose list differs: they would not agree on who owns what)."""

    tenant: str
    request: MemoryRequest
    timeout: float
    members: str = ""


class ContextCall(msgspec.Struct, frozen=True, kw_only=True, tag="cluster.context"):
    """Ask the owner's planner pool (the owner keeps the tenant's adaptation state)."""

    request: ContextRequest
    timeout: float
    members: str = ""


class Hello(msgspec.Struct, frozen=True, kw_only=True, tag="cluster.hello"):
    """What every member publishes on ``soma.cluster.hello`` now and then: its name, its
    member list and its digest, and an id of its process (two processes with one name are
    a misconfiguration too)."""

    member: str
    members: list[str]
    digest: str
    instance: str


class Returned(msgspec.Struct, frozen=True, tag="cluster.returned"):
    value: msgspec.Raw


class Raised(msgspec.Struct, frozen=True, kw_only=True, tag="cluster.raised"):
    #: The class name (a key of ``CROSSING_ERRORS``, else what ``RemoteError`` reports).
    error: str
    message: str
    #: The exception's plain attributes (``key``, ``tenant``, ``path``...).
    attributes: dict[str, str | int | float | bool | None] = {}


def wire_codec() -> Codec:
    """The codec of the cluster's NATS connection."""
    return Codec([MemoryCall, ContextCall, Hello, Returned, Raised])


# --- replies -----------------------------------------------------------------------------------


class _Array(msgspec.Struct, frozen=True, array_like=True):
    """A float32 array as its little-endian bytes and shape."""

    shape: tuple[int, ...]
    data: bytes


class _ContextRecall(msgspec.Struct, frozen=True, kw_only=True):
    """``ContextRecallResult`` on the wire."""

    hits: list[RecallHit]
    vectors: _Array
    working_memory: list[WMHit]
    wm_vectors: _Array
    query_vector: _Array
    dim: int
    wm_memories: list[Memory | None]


def _array(value: Any) -> _Array:
    array = np.ascontiguousarray(value, dtype="<f4")
    return _Array(array.shape, array.tobytes())


def _from_array(wire: _Array) -> Any:
    # A copy: frombuffer's array would be read-only and keep the whole payload alive.
    flat = np.frombuffer(wire.data, dtype="<f4").astype(np.float32, copy=True)
    return flat.reshape(wire.shape)


_REPLY_TYPES: dict[type, Any] = {
    Remember: list[Remembered],
    Recall: list[RecallHit],
    GetMemory: Memory | None,
    GetMemories: list[Memory | None],
    Forget: bool,
    LinkMemories: Link,
    Unlink: bool,
    MemoryStats: TenantMemoryStatistics,
    ContextRecall: _ContextRecall,
    Reinforce: dict[str, float],
    Evaluate: ContextBundle,
    Feedback: FeedbackResult,
    AdaptationQuery: AdaptationView,
}
_DECODERS = {request: msgspec.msgpack.Decoder(reply) for request, reply in _REPLY_TYPES.items()}
_FAILURE_DECODER = msgspec.msgpack.Decoder(ContextFailure)
_ENCODER = msgspec.msgpack.Encoder()


def encode_reply(request: Any, value: Any) -> Returned:
    """The owner's answer to ``request`` (for a context request, the reply or a
    ``ContextFailure``)."""
    if isinstance(request, ContextRecall):
        value = _ContextRecall(
            hits=value.hits,
            vectors=_array(value.vectors),
            working_memory=value.working_memory,
            wm_vectors=_array(value.wm_vectors),
            query_vector=_array(value.query_vector),
            dim=value.dim,
            wm_memories=value.wm_memories,
        )
    return Returned(msgspec.Raw(_ENCODER.encode(value)))


def decode_reply(request: Any, returned: Returned) -> Any:
    """The value ``encode_reply`` encoded, as the local actor would have answered it."""
    data = bytes(returned.value)
    if isinstance(request, ContextRequest):
        # A refusal of the planner is a tagged ContextFailure, the reply an untagged struct:
        # the tag tells them apart.
        try:
            return _FAILURE_DECODER.decode(data)
        except msgspec.ValidationError:
            pass
    value = _DECODERS[type(request)].decode(data)
    if isinstance(value, _ContextRecall):
        return ContextRecallResult(
            hits=value.hits,
            vectors=_from_array(value.vectors),
            working_memory=value.working_memory,
            wm_vectors=_from_array(value.wm_vectors),
            query_vector=_from_array(value.query_vector),
            dim=value.dim,
            wm_memories=value.wm_memories,
        )
    return value


# --- errors ------------------------------------------------------------------------------------

#: The error types that cross as themselves, by name: every error the edge and the planner
#: turn into an HTTP status, and the exception bases they fall back to.
CROSSING_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        UnknownMemoryError,
        InvalidVectorError,
        TenantMismatchError,
        TenantUnavailableError,
        LogError,
        LogCorruptError,
        LogLockedError,
        LogClosedError,
        LogBrokenError,
        ActorStoppedError,
        ActorKilledError,
        AskTimeoutError,
        MailboxFullError,
        OwnerUnavailableError,
        PayloadTooLargeError,
        MaxChildrenError,
        msgspec.ValidationError,
        TimeoutError,
        ValueError,
        RuntimeError,
    )
}
_PLAIN = (str, int, float, bool, type(None))


def encode_error(exc: BaseException) -> Raised:
    crossing = next((c for c in type(exc).__mro__ if CROSSING_ERRORS.get(c.__name__) is c), None)
    attributes = {
        name: value
        for name, value in vars(exc).items()
        if isinstance(value, _PLAIN) and not name.startswith("_")
    }
    name = crossing.__name__ if crossing is not None else type(exc).__name__
    return Raised(error=name, message=str(exc), attributes=attributes)


def decode_error(raised: Raised) -> Exception:
    """The exception ``encode_error`` encoded: same type, message and plain attributes."""
    cls = CROSSING_ERRORS.get(raised.error)
    if cls is None:
        return RemoteError(raised.error, raised.message)
    # Built without the class's __init__ (whose arguments differ per class), then given the
    # owner's message as its only argument: str() and the HTTP answer are the owner's.
    exc = cls.__new__(cls)
    BaseException.__init__(exc, raised.message)
    for name, value in raised.attributes.items():
        setattr(exc, name, value)
    return exc
