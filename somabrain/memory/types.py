"""The memory data model and the records of the durable log.

Everything here is a frozen ``msgspec.Struct``: one value can be shared by the index, the log
writer thread and an actor's reply without copies or locks. ``Memory`` and ``Link`` are also
``gc=False``: a tenant holds 100k of them for hours, and untracked instances keep the cyclic
garbage collector's full passes short (they hold only JSON data, so they cannot form cycles).

New fields must get defaults so old logs keep decoding (the log stores these structs as
msgpack); existing field types never change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, NamedTuple

import msgspec

__all__ = [
    "DEFAULT_NAMESPACE",
    "ForgetRecord",
    "Link",
    "LinkRecord",
    "LogRecord",
    "Memory",
    "RecallFilter",
    "RecallHit",
    "ReinforceRecord",
    "RememberRecord",
    "Remembered",
    "UnlinkRecord",
]

DEFAULT_NAMESPACE = "default"

Weight = Annotated[float, msgspec.Meta(ge=-1e9, le=1e9)]


class Link(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A directed, typed, weighted edge between two memories of one tenant.

    ``from_key`` may be left empty in ``Memory.links``: it then means "this memory".
    An edge is identified by ``(from_key, to_key, rel)``; linking again updates the weight.
    """

    from_key: str = ""
    to_key: str
    rel: str = "related"
    weight: Weight = 1.0


class Memory(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One memory of one tenant.

    ``key`` empty means "generate one" (see ``TenantMemory.remember``). ``created_at`` 0 means
    "now". ``vector`` is an optional caller-supplied embedding (it must have the embedder's
    dimension); without it the content is embedded by the tenant's embedder. ``expires_at``
    (epoch seconds) hides the memory from recall and get once passed; the HTTP edge turns
    ``ttl_seconds`` into it. ``links`` are outgoing edges registered together with the memory.

    Treat ``meta`` and ``value`` as read-only: the struct is shared, not copied.
    """

    content: str
    key: str = ""
    tenant: str = ""
    namespace: str = DEFAULT_NAMESPACE
    value: dict[str, Any] | None = None
    meta: dict[str, Any] = {}
    tags: tuple[str, ...] = ()
    importance: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5
    occurred_at: float | None = None
    created_at: float = 0.0
    expires_at: float | None = None
    session_id: str | None = None
    links: tuple[Link, ...] = ()
    vector: list[float] | None = None


class Remembered(NamedTuple):
    """What ``remember`` answers: ``(key, deduplicated)``.

    ``deduplicated`` is true when an equal memory (same namespace and content) was already
    stored; nothing was written and ``key`` is the stored one.
    """

    key: str
    deduplicated: bool


class RecallHit(msgspec.Struct, frozen=True, kw_only=True):
    """One recall result: the memory, its combined score and each view's score in [0, 1]."""

    key: str
    score: float
    views: dict[str, float]
    memory: Memory


class RecallFilter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Restrictions applied before ranking (they never change scores, only eligibility).

    ``tags``: the memory must carry every one. ``any_tags``: at least one (if given).
    ``meta``: every key must be present with an equal value (equality of the JSON encoding
    with sorted keys, so ``1`` and ``1.0`` differ, and ``True`` is not ``1``).
    ``session_id``: only memories remembered in that session.
    ``exclude_namespaces``: none of these namespaces (set by the node, from the policies: the
    namespaces a caller may not read, not from the HTTP ``filters``).
    """

    tags: tuple[str, ...] = ()
    any_tags: tuple[str, ...] = ()
    meta: dict[str, Any] = {}
    session_id: str | None = None
    exclude_namespaces: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, filters: Mapping[str, Any]) -> RecallFilter:
        """Build a filter from the HTTP ``filters`` object.

        The reserved keys (``tags``, ``any_tags``, ``meta``, ``session_id``) keep their meaning;
        any other key is a meta equality, so a flat ``{"kind": "note"}`` (the original
        SomaBrain's form) works too. Raises ``msgspec.ValidationError`` on wrong types.
        """
        reserved = {"tags", "any_tags", "meta", "session_id"}
        body: dict[str, Any] = {k: v for k, v in filters.items() if k in reserved}
        extra = {k: v for k, v in filters.items() if k not in reserved}
        meta = body.get("meta")
        # A ``meta`` that is not an object stays as it is, for the conversion to refuse with
        # its path (merging it would fail with a bare TypeError or ValueError instead).
        if extra and (meta is None or isinstance(meta, Mapping)):
            body["meta"] = {**(meta or {}), **extra}
        if isinstance(body.get("tags"), str):
            body["tags"] = [body["tags"]]
        return msgspec.convert(body, cls)

    def is_empty(self) -> bool:
        return not (
            self.tags
            or self.any_tags
            or self.meta
            or self.session_id is not None
            or self.exclude_namespaces
        )


# --- log records -------------------------------------------------------------------------------
# Short tags keep every record a few bytes smaller; the union is decoded by one reused decoder.


class RememberRecord(msgspec.Struct, frozen=True, tag="r"):
    """Insert or replace (upsert) ``memory`` under its key."""

    memory: Memory


class ForgetRecord(msgspec.Struct, frozen=True, tag="f"):
    """Delete the memory ``key`` and every edge that touches it."""

    key: str


class LinkRecord(msgspec.Struct, frozen=True, tag="l"):
    """Insert or update an edge."""

    link: Link


class UnlinkRecord(msgspec.Struct, frozen=True, tag="u"):
    """Delete the edge ``(from_key, to_key, rel)``."""

    from_key: str
    to_key: str
    rel: str


class ReinforceRecord(msgspec.Struct, frozen=True, tag="s"):
    """Add ``amount`` to the salience strength of each of ``keys`` (feedback said they were
    useful, or not: ``amount`` may be negative). Unknown keys are ignored."""

    keys: tuple[str, ...]
    amount: float


LogRecord = RememberRecord | ForgetRecord | LinkRecord | UnlinkRecord | ReinforceRecord
