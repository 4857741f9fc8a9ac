"""Frames between the node and its search worker (``search_worker``, ``search_offload``).

Each frame is a 4-byte little-endian length and a msgpack ``Request`` (node to worker) or
``Response`` (worker to node). Vectors travel as raw float32 bytes (row-major, ``dim`` wide).
Every change names the replica it applies to: a replica is one incarnation of one tenant's
index, so a change meant for an older incarnation can never land in a newer one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from .ranking import IndexHit
from .types import Link, Memory, RecallFilter

__all__ = [
    "Add",
    "Associate",
    "AssociationParams",
    "Call",
    "ChangeFeed",
    "Close",
    "Dissociate",
    "Failed",
    "Hits",
    "Link_",
    "Open",
    "Opened",
    "Remove",
    "Request",
    "Response",
    "Returned",
    "Search",
    "SetSalience",
    "Unlink_",
    "ViewParams",
    "frames",
    "pack",
    "read_responses",
]

_LENGTH = struct.Struct("<I")


class ChangeFeed(Protocol):
    """What ``HybridIndex``, ``LinkGraph`` and ``AssociationStore`` tell of each change they
    apply, when a replica of them is kept (their ``feed``; ``search_offload.ReplicaFeed``)."""

    def add(self, memories: Sequence[Memory], vectors: npt.NDArray[np.float32]) -> None: ...

    def remove(self, key: str) -> None: ...

    def set_salience(self, key: str, strength: float) -> None: ...

    def link(self, link: Link) -> None: ...

    def unlink(self, from_key: str, to_key: str, rel: str) -> None: ...

    def associate(
        self, query: str, vector: npt.NDArray[np.float32], keys: tuple[str, ...], at: float
    ) -> None: ...

    def dissociate(self, key: str) -> None: ...


class AssociationParams(msgspec.Struct, frozen=True, array_like=True):
    capacity: int
    neighbours: int
    min_similarity: float
    sharpness: float


class ViewParams(msgspec.Struct, frozen=True, array_like=True):
    """The extra views of a replica, as the memory actor builds them (``views.multiview``)."""

    enabled: tuple[str, ...]
    graph_seeds: int
    graph_damping: float
    graph_steps: int
    recency_half_life: float
    salience_gain: float
    association: AssociationParams | None


class Associate(msgspec.Struct, frozen=True, array_like=True, tag="as"):
    replica: int
    query: str
    vector: bytes
    keys: tuple[str, ...]
    at: float


class Open(msgspec.Struct, frozen=True, array_like=True, tag="o"):
    """A new replica, from a snapshot; answered by ``Opened`` once it is built. ``hashing``:
    the ``HashingEmbedder.settings`` the worker embeds queries with (None: searches carry
    their vector). ``parts``: the frames of the replica's that follow and still belong to the
    snapshot (``Add`` and ``SetSalience``: a large snapshot comes in pieces, other replicas'
    frames between them); the replica is not ``Opened`` before they are in."""

    replica: int
    dim: int
    views: ViewParams
    hashing: dict[str, Any] | None
    memories: list[Memory]
    vectors: bytes
    links: list[Link]
    salience: dict[str, float]
    associations: list[Associate]
    parts: int = 0
    #: Memories in the whole snapshot, the parts' included: the replica makes room for them
    #: at once (growing a 65k-slot matrix of 384 dimensions took ~0.5 s here).
    size: int = 0


class Close(msgspec.Struct, frozen=True, array_like=True, tag="c"):
    replica: int


class Add(msgspec.Struct, frozen=True, array_like=True, tag="a"):
    replica: int
    memories: list[Memory]
    vectors: bytes


class Remove(msgspec.Struct, frozen=True, array_like=True, tag="r"):
    replica: int
    key: str


class SetSalience(msgspec.Struct, frozen=True, array_like=True, tag="sa"):
    replica: int
    key: str
    strength: float


class Link_(msgspec.Struct, frozen=True, array_like=True, tag="l"):
    replica: int
    link: Link


class Unlink_(msgspec.Struct, frozen=True, array_like=True, tag="u"):
    replica: int
    from_key: str
    to_key: str
    rel: str


class Dissociate(msgspec.Struct, frozen=True, array_like=True, tag="d"):
    replica: int
    key: str


class Search(msgspec.Struct, frozen=True, array_like=True, tag="s"):
    """A ``HybridIndex.search``; ``vector`` empty: the worker embeds ``text``."""

    id: int
    replica: int
    text: str
    vector: bytes
    top_k: int
    namespace: str | None
    filter: RecallFilter | None
    weights: dict[str, float]
    now: float
    at: float | None
    #: The tenant's learned form model (``form.FormView``); empty: none.
    form: dict[str, float] = {}


class Call(msgspec.Struct, frozen=True, array_like=True, tag="x"):
    """A pure function the worker offers (``search_worker.FUNCTIONS``) applied to ``payload``
    (its own encoding): CPU work the node hands to the worker's core that needs no replica,
    such as a context bundle's planning. Answered by ``Returned``, or ``Failed``."""

    id: int
    function: str
    payload: bytes


class Hits(msgspec.Struct, frozen=True, array_like=True, tag="h"):
    id: int
    hits: list[IndexHit]


class Failed(msgspec.Struct, frozen=True, array_like=True, tag="f"):
    """A search the worker could not answer (``id``), or a replica it dropped (``replica``)."""

    id: int
    error: str
    replica: int = 0


class Opened(msgspec.Struct, frozen=True, array_like=True, tag="op"):
    replica: int


class Returned(msgspec.Struct, frozen=True, array_like=True, tag="xr"):
    """What a ``Call``'s function returned."""

    id: int
    payload: bytes


Request = (
    Open
    | Close
    | Add
    | Remove
    | SetSalience
    | Link_
    | Unlink_
    | Associate
    | Dissociate
    | Search
    | Call
)
Response = Hits | Failed | Opened | Returned

_encoder = msgspec.msgpack.Encoder()
_requests = msgspec.msgpack.Decoder(Request)
_responses = msgspec.msgpack.Decoder(Response)


def pack(frame: Any) -> bytearray:
    """One frame: its length, then its msgpack (encoded in place: a snapshot of 100 MB is not
    copied once more to put its length in front)."""
    data = bytearray(_LENGTH.size)
    _encoder.encode_into(frame, data, _LENGTH.size)
    _LENGTH.pack_into(data, 0, len(data) - _LENGTH.size)
    return data


def _split(buffer: bytearray, decode: Any) -> Iterator[Any]:
    """Decode and remove every complete frame at the head of ``buffer``."""
    offset, end = 0, len(buffer)
    view = memoryview(buffer)
    try:
        while end - offset >= 4:
            (size,) = _LENGTH.unpack_from(buffer, offset)
            if end - offset - 4 < size:
                break
            yield decode(view[offset + 4 : offset + 4 + size])
            offset += 4 + size
    finally:
        view.release()
        del buffer[:offset]


def frames(buffer: bytearray) -> Iterator[Request]:
    """The worker's side: complete requests at the head of ``buffer`` (consumed)."""
    return _split(buffer, _requests.decode)


def read_responses(buffer: bytearray) -> Iterator[Response]:
    """The node's side: complete responses at the head of ``buffer`` (consumed)."""
    return _split(buffer, _responses.decode)
