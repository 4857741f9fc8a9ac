"""Request and response bodies of the HTTP edge, as msgspec Structs.

Requests forbid unknown fields (a typo is a 422 naming the field, not a silently ignored
option) and carry their limits as ``Meta`` constraints, so validation and the OpenAPI document
come from the same place. Besides SomaBrain's own fields, remember accepts the original
SomaBrain API's ``tenant``, ``namespace``, ``key`` and ``value`` (an object whose ``text``,
``content`` or ``task`` field is the content when ``content`` is absent), and recall accepts
``top_k`` and ``layer``. New fields get defaults; existing field types never change.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "MAX_TOP_K",
    "NOT_BLANK",
    "BatchItemResult",
    "ForgetResponse",
    "HealthResponse",
    "KillRequest",
    "KillResponse",
    "LinkIn",
    "LinkOut",
    "LinkRequest",
    "LinkResponse",
    "MemoryRecord",
    "RecallRequest",
    "RecallResponse",
    "RecallResult",
    "ReloadRequest",
    "ReloadResponse",
    "RememberBatchRequest",
    "RememberBatchResponse",
    "RememberRequest",
    "RememberResponse",
    "SessionId",
    "StatusResponse",
]

MAX_TOP_K = 100

#: Keys, namespaces, tags, link relations and session ids are not blank (``"  "`` is a
#: mistake, as a blank content is): 422 ``invalid_field`` "... that is not blank"
#: (``errors.from_validation``).
NOT_BLANK = r"\S"
Key = Annotated[
    str, Meta(min_length=1, max_length=512, pattern=NOT_BLANK, description="memory key")
]
Namespace = Annotated[str, Meta(min_length=1, max_length=128, pattern=NOT_BLANK)]
Tag = Annotated[str, Meta(min_length=1, max_length=128, pattern=NOT_BLANK)]
TenantId = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
        description="tenant id (must be one of the token's tenants)",
    ),
]
Weight = Annotated[float, Meta(ge=-1e9, le=1e9)]
Rel = Annotated[str, Meta(min_length=1, max_length=128, pattern=NOT_BLANK)]
SessionId = Annotated[str, Meta(min_length=1, max_length=256, pattern=NOT_BLANK)]
#: Epoch seconds or an RFC 3339 date-time (msgspec's schema leaves out the string's format).
#: Epoch seconds are bounded to what an RFC 3339 date-time can say (years 1 to 9999): a time
#: beyond them (``1e300``) is a mistake, and one no consumer of the memory could format.
EpochSeconds = Annotated[float, Meta(ge=-62135596800.0, le=253402300799.0)]
Timestamp = EpochSeconds | Annotated[dt.datetime, Meta(extra_json_schema={"format": "date-time"})]


class _Request(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class _Response(msgspec.Struct, kw_only=True):
    pass


# ----------------------------------------------------------------------------- remember


class LinkIn(_Request, kw_only=True):
    """An edge from the memory being remembered to another memory of the tenant."""

    to_key: Key
    rel: Rel = "related"
    weight: Weight = 1.0


class RememberRequest(_Request, kw_only=True):
    """One memory. ``content`` may be left out when ``value`` has ``text``/``content``/``task``."""

    content: Annotated[str, Meta(max_length=1_000_000)] | None = None
    key: Key | None = None
    namespace: Namespace | None = None
    value: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    tags: Annotated[list[Tag], Meta(max_length=64)] | None = None
    links: Annotated[list[LinkIn], Meta(max_length=256)] | None = None
    importance: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    ttl_seconds: Annotated[float, Meta(gt=0)] | None = None
    occurred_at: (
        Annotated[Timestamp, Meta(description="epoch seconds or an RFC 3339 date-time")] | None
    ) = None
    session_id: SessionId | None = None
    vector: Annotated[list[float], Meta(max_length=8192)] | None = None
    tenant: TenantId | None = None


class RememberResponse(_Response, kw_only=True):
    ok: bool = True
    key: str
    namespace: str
    deduplicated: bool
    trace_id: str
    audit_id: str | None = None


class RememberBatchRequest(_Request, kw_only=True):
    items: Annotated[list[RememberRequest], Meta(min_length=1)]
    tenant: TenantId | None = None


class BatchItemResult(_Response, kw_only=True):
    key: str
    namespace: str
    deduplicated: bool


class RememberBatchResponse(_Response, kw_only=True):
    ok: bool = True
    count: int
    results: list[BatchItemResult]
    trace_id: str
    audit_id: str | None = None


# ----------------------------------------------------------------------------- recall


class RecallRequest(_Request, kw_only=True):
    """``layer``: ``ltm`` searches every memory; ``wm`` the session's working memory (a
    bounded ring buffer of what was remembered or used in ``session_id``, ranked by relevance);
    ``both`` searches every memory and labels the session's own hits ``wm``. ``at``: the time
    the query is about, the reference of the recency view (default now), as in
    ``/context/evaluate``; working memory ranks by its own order, so ``layer = "wm"``
    ignores it."""

    query: Annotated[str, Meta(min_length=1, max_length=10_000)]
    top_k: Annotated[int, Meta(ge=1, le=MAX_TOP_K)] = 10
    namespace: Namespace | None = None
    layer: Literal["wm", "ltm", "both"] = "both"
    session_id: SessionId | None = None
    filters: dict[str, Any] | None = None
    at: (
        Annotated[
            Timestamp,
            Meta(description="the time the query is about (recency): epoch seconds or RFC 3339"),
        ]
        | None
    ) = None
    tenant: TenantId | None = None


class RecallResult(_Response, kw_only=True):
    key: str
    content: str
    score: float
    layer: Literal["wm", "ltm"]
    views: dict[str, float]
    occurred_at: float | None
    meta: dict[str, Any]
    namespace: str
    tags: list[str]


class RecallResponse(_Response, kw_only=True):
    results: list[RecallResult]
    wm_hits: int
    ltm_hits: int
    duration_ms: float
    degraded: bool = False
    degraded_reasons: list[str] = []
    trace_id: str
    #: The read's audit event when ``audit.reads`` is on, else null.
    audit_id: str | None = None


# ----------------------------------------------------------------------------- links, get, forget


class LinkRequest(_Request, kw_only=True):
    from_key: Key
    to_key: Key
    rel: Rel = "related"
    weight: Weight = 1.0
    tenant: TenantId | None = None


class LinkResponse(_Response, kw_only=True):
    ok: bool = True
    from_key: str
    to_key: str
    rel: str
    weight: float
    trace_id: str
    audit_id: str | None = None


class LinkOut(_Response, kw_only=True):
    to_key: str
    rel: str
    weight: float


class MemoryRecord(_Response, kw_only=True):
    key: str
    namespace: str
    content: str
    value: dict[str, Any] | None
    meta: dict[str, Any]
    tags: list[str]
    importance: float
    occurred_at: float | None
    created_at: float
    expires_at: float | None
    session_id: str | None
    links: list[LinkOut]
    #: The read's audit event when ``audit.reads`` is on, else null.
    audit_id: str | None = None


class ForgetResponse(_Response, kw_only=True):
    ok: bool = True
    key: str
    deleted: bool
    trace_id: str
    audit_id: str | None = None


# ----------------------------------------------------------------------------- health and admin


class StatusResponse(_Response, kw_only=True):
    status: Literal["ok", "ready", "not_ready", "degraded"]


class HealthResponse(_Response, kw_only=True):
    status: Literal["ok", "degraded"]
    components: dict[str, dict[str, Any]]


class KillRequest(_Request, kw_only=True):
    path: Annotated[str, Meta(min_length=1, max_length=1024, examples=["/root/memory/acme"])]


class KillResponse(_Response, kw_only=True):
    ok: bool = True
    path: str
    killed: bool


class ReloadRequest(_Request, kw_only=True):
    """Re-read the node's config file (and ``SOMA_*`` variables) and apply what changed."""


class ReloadResponse(_Response, kw_only=True):
    ok: bool = True
    changes: list[str]
