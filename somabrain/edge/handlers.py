"""The edge's memory route handlers (health, metrics and admin are in ``ops.py``).

Each handler gets the decoded request and returns a ``Response``; refusals are raised as
``HTTPError``. Memory handlers resolve the tenant (``X-Tenant-ID`` or the body's ``tenant``,
checked against the token), take a rate-limit token, and ask the tenant's memory actor under
the ``memory`` dynamic supervisor, which starts it on first use.

Audit (see ``audited.py``): a state change is recorded after the memory actor acknowledged
it and its event id is the response's ``audit_id``; reads only when ``audit.reads`` is on.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ..actors import ActorStoppedError, ActorSystem, MailboxFullError
from ..cluster import CLUSTER_RESOURCE, OwnerUnavailableError, PayloadTooLargeError
from ..cluster.routing import ask_tenant
from ..governance.http import remember_input
from ..governance.policy import Decision, PolicyInput
from ..governance.reads import search_readable
from ..memory.actor import TenantUnavailableError
from ..memory.errors import (
    InvalidVectorError,
    LogError,
    TenantMismatchError,
    UnknownMemoryError,
)
from ..memory.messages import (
    ContextRecall,
    Forget,
    GetMemory,
    LinkMemories,
    MemoryRequest,
    Recall,
    Remember,
)
from ..memory.types import DEFAULT_NAMESPACE, Link, Memory, RecallFilter, RecallHit
from ..supervision import MaxChildrenError
from . import schemas as s
from .audited import AuditHandlers
from .errors import HTTPError, from_validation

if TYPE_CHECKING:
    from ..config import SomaConfig
    from ..supervision import SupervisionTree
    from .app import Request, Response
    from .auth import Authenticator
    from .metrics import Metrics
    from .ratelimit import RateLimiter
    from .shared_ratelimit import SharedRateLimiter

__all__ = ["Handlers", "memory_error"]

_CONTENT_FIELDS = ("text", "content", "task")


def memory_error(exc: Exception, key_fields: Mapping[str, str] | None = None) -> HTTPError | None:
    """The HTTP answer for an error of the memory actor, or None for a bug (500).

    ``key_fields``: the request field that named each key, so that an unknown key's 404
    names it (``to_key``, ``links[0].to_key``)."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, UnknownMemoryError):
        field = key_fields.get(exc.key) if key_fields else None
        return HTTPError(404, "memory_not_found", str(exc), field=field)
    if isinstance(exc, InvalidVectorError):
        return HTTPError(422, "invalid_field", str(exc), field="vector")
    if isinstance(exc, TenantMismatchError):
        return HTTPError(403, "tenant_forbidden", str(exc))
    if isinstance(exc, msgspec.ValidationError):
        return from_validation(exc)
    if isinstance(exc, PayloadTooLargeError):
        return HTTPError(413, "payload_too_large", str(exc))
    if isinstance(exc, OwnerUnavailableError):
        return HTTPError.retry_later(503, "unavailable", f"memory actor unavailable: {exc}", 1)
    if isinstance(exc, LogError | TenantUnavailableError):
        return HTTPError.retry_later(503, "storage_unavailable", str(exc), 1)
    if isinstance(exc, MaxChildrenError):
        return HTTPError.retry_later(503, "overloaded", str(exc), 5)
    if isinstance(exc, MailboxFullError):
        return HTTPError.retry_later(503, "overloaded", "the tenant's memory actor is busy", 1)
    if isinstance(exc, ActorStoppedError):
        return HTTPError.retry_later(503, "unavailable", str(exc), 1)
    if isinstance(exc, TimeoutError):
        return HTTPError.retry_later(503, "timeout", f"no answer in time: {exc}", 1)
    if isinstance(exc, ValueError):
        return HTTPError(422, "invalid_field", str(exc))
    return None


def _timestamp(value: float | dt.datetime | None) -> float | None:
    if value is None or isinstance(value, float | int):
        return value
    if value.tzinfo is None:  # a naive date-time is read as UTC
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def _recall_attributes(body: s.RecallRequest) -> dict[str, object]:
    """What a recall asked for, besides its query (which is only hashed)."""
    return {
        "top_k": body.top_k,
        "layer": body.layer,
        "namespace": body.namespace,
        "session_id": body.session_id,
        "filtered": bool(body.filters),
    }


class Handlers(AuditHandlers):
    """Route handlers, mixed into ``EdgeApp`` (which provides the attributes below)."""

    system: ActorSystem
    config: SomaConfig
    auth: Authenticator
    metrics: Metrics
    limiter: RateLimiter | SharedRateLimiter
    edge_path: str
    closing: bool
    #: The policy gate and the namespaces closed to a reader, from ``GovernanceHandlers``
    #: (``edge/governance.py``).
    _govern: Callable[[PolicyInput], Decision]
    _refused_namespaces: Callable[[PolicyInput, Iterable[str]], frozenset[str]]

    def json(self, value: Any, status: int = 200) -> Response:
        raise NotImplementedError

    # ------------------------------------------------------------------ plumbing

    @property
    def tree(self) -> SupervisionTree:
        tree: SupervisionTree | None = self.system.resources.get("tree")
        if tree is None:
            raise HTTPError.retry_later(503, "not_ready", "the supervision tree is not up", 1)
        return tree

    def _not_joined(self) -> HTTPError | None:
        """A cluster member that has not joined yet (NATS not reached since it started)
        serves no tenant: it does not know yet who is up, nor can it reach the owners."""
        cluster = self.system.resources.get(CLUSTER_RESOURCE)
        waiting = cluster.not_joined() if cluster is not None else ""
        return HTTPError.retry_later(503, "not_ready", waiting, 1) if waiting else None

    async def _tenant(self, request: Request, body_tenant: str | None) -> str:
        header = request.tenant_header
        if header is not None and body_tenant is not None and header != body_tenant:
            raise HTTPError(
                400, "tenant_conflict", "X-Tenant-ID and the body's tenant differ", field="tenant"
            )
        assert request.principal is not None
        tenant = request.principal.resolve_tenant(header if header is not None else body_tenant)
        refusal = self._not_joined()
        if refusal is not None:
            raise refusal
        wait = await self.limiter.take(tenant)
        if wait:
            self.metrics.count_rate_limited(tenant)
            raise HTTPError.retry_later(
                429, "rate_limited", f"tenant {tenant!r} is over its request rate", wait
            )
        return tenant

    async def _ask(
        self, tenant: str, message: MemoryRequest, key_fields: Mapping[str, str] | None = None
    ) -> Any:
        """The reply of ``tenant``'s memory actor (here, or its owner's in a cluster: errors
        come back as the same types, so the answer is the one the owner's edge would give)."""
        try:
            return await ask_tenant(self.system, tenant, message, self.config.edge.request_timeout)
        except Exception as exc:
            error = memory_error(exc, key_fields)
            if error is None:
                raise
            raise error from None

    def _memory(self, item: s.RememberRequest, tenant: str, now: float, where: str = "") -> Memory:
        content = item.content
        if content is None and item.value is not None:
            for name in _CONTENT_FIELDS:
                candidate = item.value.get(name)
                if isinstance(candidate, str):
                    content = candidate
                    break
        if content is None:
            raise HTTPError(
                422,
                "missing_field",
                "a memory needs 'content' (or a 'value' with 'text', 'content' or 'task')",
                field=f"{where}content",
            )
        if not content.strip():
            raise HTTPError(
                422, "invalid_field", "content must not be blank", field=f"{where}content"
            )
        return Memory(
            content=content,
            key=item.key or "",
            tenant=tenant,
            namespace=item.namespace or DEFAULT_NAMESPACE,
            value=item.value,
            meta=item.meta or {},
            tags=tuple(item.tags or ()),
            importance=0.5 if item.importance is None else item.importance,
            occurred_at=_timestamp(item.occurred_at),
            expires_at=None if item.ttl_seconds is None else now + item.ttl_seconds,
            session_id=item.session_id,
            links=tuple(
                Link(to_key=ln.to_key, rel=ln.rel, weight=ln.weight) for ln in item.links or ()
            ),
            vector=item.vector,
        )

    async def _govern_memory(self, request: Request, memory: Memory, where: str = "") -> Decision:
        """The constitution's policies decide each memory (403 / 503 when refused; a denial
        is audited as ``memory.remember`` with decision ``deny``)."""
        assert request.principal is not None
        policy_input = remember_input(
            memory.tenant,
            namespace=memory.namespace,
            tags=memory.tags,
            scopes=request.principal.scopes,
            content=memory.content,
        )
        try:
            return await self._govern_audited(
                request,
                memory.tenant,
                "memory.remember",
                policy_input,
                content=memory.content,
                attributes={"namespace": memory.namespace, "key": memory.key, "item": where},
            )
        except HTTPError as exc:
            if where:
                exc.field = where
            raise

    def _reader(self, request: Request, tenant: str, action: str, namespace: str) -> PolicyInput:
        """The policy input of a read or change of memories in ``namespace`` (no content)."""
        assert request.principal is not None
        return remember_input(
            tenant, namespace=namespace, scopes=request.principal.scopes, action=action
        )

    async def _check_namespace(
        self, request: Request, tenant: str, action: str, namespace: str, **attributes: object
    ) -> PolicyInput:
        """403 ``policy_denied`` (audited as ``memory.<action>``) when ``namespace`` is closed
        to the caller, e.g. reserved without the ``admin`` scope; its policy input otherwise."""
        reader = self._reader(request, tenant, action, namespace)
        if namespace in self._refused_namespaces(reader, (namespace,)):
            attributes["namespace"] = namespace
            await self._govern_audited(
                request, tenant, f"memory.{action}", reader, attributes=attributes
            )  # raises: the policies refuse it
        return reader

    # ------------------------------------------------------------------ memory

    async def _h_remember(self, request: Request) -> Response:
        body: s.RememberRequest = request.body
        tenant = await self._tenant(request, body.tenant)
        memory = self._memory(body, tenant, time.time())
        decision = await self._govern_memory(request, memory)
        [(key, deduplicated)] = await self._ask(
            tenant, Remember((memory,)), _link_fields([memory], lambda _: "")
        )
        audit_id = await self._audit(
            request,
            tenant,
            "memory.remember",
            decision=decision,
            content=memory.content,
            attributes={"key": key, "namespace": memory.namespace, "deduplicated": deduplicated},
        )
        return self.json(
            s.RememberResponse(
                key=key,
                namespace=memory.namespace,
                deduplicated=deduplicated,
                trace_id=request.trace_id,
                audit_id=audit_id,
            )
        )

    async def _h_remember_batch(self, request: Request) -> Response:
        body: s.RememberBatchRequest = request.body
        limit = self.config.edge.max_batch_items
        if len(body.items) > limit:
            raise HTTPError(
                422,
                "batch_too_large",
                f"{len(body.items)} items in one batch; the limit is {limit}",
                field="items",
            )
        tenant = await self._tenant(request, body.tenant)
        now = time.time()
        memories = []
        decision: Decision | None = None
        for i, item in enumerate(body.items):
            if item.tenant is not None and item.tenant != tenant:
                raise HTTPError(
                    400,
                    "tenant_conflict",
                    "an item names another tenant than the request",
                    field=f"items[{i}].tenant",
                )
            memories.append(self._memory(item, tenant, now, f"items[{i}]."))
            decision = await self._govern_memory(request, memories[-1], f"items[{i}]")
        remembered = await self._ask(
            tenant, Remember(tuple(memories)), _link_fields(memories, lambda i: f"items[{i}].")
        )
        results = [
            s.BatchItemResult(key=key, namespace=m.namespace, deduplicated=dedup)
            for (key, dedup), m in zip(remembered, memories, strict=True)
        ]
        # One event for the batch (it is one write of the memory actor): the digest covers the
        # items' contents as a JSON list, the keys are listed (as a digest when long).
        audit_id = await self._audit(
            request,
            tenant,
            "memory.remember_batch",
            decision=decision,
            content=msgspec.json.encode([m.content for m in memories]),
            attributes={
                "count": len(results),
                "keys": ",".join(r.key for r in results),
                "deduplicated": sum(r.deduplicated for r in results),
            },
        )
        return self.json(
            s.RememberBatchResponse(
                count=len(results), results=results, trace_id=request.trace_id, audit_id=audit_id
            )
        )

    async def _h_recall(self, request: Request) -> Response:
        body: s.RecallRequest = request.body
        if not body.query.strip():  # as evaluate and feedback answer it
            raise HTTPError(422, "invalid_field", "query must not be blank", field="query")
        tenant = await self._tenant(request, body.tenant)
        flt: RecallFilter | None = None
        if body.filters:
            try:
                flt = RecallFilter.from_mapping(body.filters)
            except msgspec.ValidationError as exc:
                raise from_validation(exc, prefix="filters") from None
        session = body.session_id
        if body.layer == "wm":
            if session is None:
                raise HTTPError(
                    422, "missing_field", "layer 'wm' needs a session_id", field="session_id"
                )
            return await self._recall_wm(request, tenant, body, session)
        started = time.perf_counter()
        reader = self._reader(request, tenant, "recall", DEFAULT_NAMESPACE)
        if body.namespace is not None:  # (a search of every namespace leaves out closed ones)
            reader = await self._check_namespace(request, tenant, "recall", body.namespace)

        async def search(filters: RecallFilter | None) -> list[RecallHit]:
            found: list[RecallHit] = await self._ask(
                tenant,
                Recall(
                    query=body.query,
                    top_k=body.top_k,
                    namespace=body.namespace,
                    filters=filters,
                    at=_timestamp(body.at),
                ),
            )
            return found

        hits, refused = await search_readable(
            search,
            flt,
            lambda found: (hit.memory.namespace for hit in found),
            lambda namespaces: self._refused_namespaces(reader, namespaces),
        )
        if refused:
            hits = [hit for hit in hits if hit.memory.namespace not in refused]
        duration_ms = (time.perf_counter() - started) * 1000.0
        results = []
        wm = 0
        for hit in hits:
            m = hit.memory
            in_wm = session is not None and m.session_id == session
            wm += in_wm
            results.append(
                s.RecallResult(
                    key=hit.key,
                    content=m.content,
                    score=hit.score,
                    layer="wm" if in_wm else "ltm",
                    views=hit.views,
                    occurred_at=m.occurred_at,
                    meta=m.meta,
                    namespace=m.namespace,
                    tags=list(m.tags),
                )
            )
        audit_id = await self._audit_read(
            request, tenant, "memory.recall", [r.key for r in results],
            content=body.query, attributes=_recall_attributes(body),
        )  # fmt: skip
        return self.json(
            s.RecallResponse(
                results=results,
                wm_hits=wm,
                ltm_hits=len(results) - wm,
                duration_ms=round(duration_ms, 3),
                trace_id=request.trace_id,
                audit_id=audit_id,
            )
        )

    async def _recall_wm(
        self, request: Request, tenant: str, body: s.RecallRequest, session: str
    ) -> Response:
        """``layer = "wm"``: the session's working memory (the bounded ring buffer of what was
        remembered or used in the session), ranked by relevance to the query."""
        started = time.perf_counter()
        reader = self._reader(request, tenant, "recall", DEFAULT_NAMESPACE)
        if body.namespace is not None:  # (a search of every namespace leaves out closed ones)
            reader = await self._check_namespace(request, tenant, "recall", body.namespace)
        found = await self._ask(
            tenant,
            ContextRecall(query=body.query, top_k=0, session_id=session, wm_top_k=body.top_k),
        )
        duration_ms = (time.perf_counter() - started) * 1000.0
        refused = self._refused_namespaces(
            reader, (m.namespace for m in found.wm_memories if m is not None)
        )
        results = [
            s.RecallResult(
                key=hit.key,
                content=hit.content,
                score=hit.score,
                layer="wm",
                views=hit.views,
                occurred_at=m.occurred_at if m is not None else None,
                meta=m.meta if m is not None else {},
                namespace=m.namespace if m is not None else DEFAULT_NAMESPACE,
                tags=list(m.tags) if m is not None else [],
            )
            for hit, m in zip(found.working_memory, found.wm_memories, strict=True)
            if m is not None
            and (body.namespace is None or m.namespace == body.namespace)
            and m.namespace not in refused
        ]
        audit_id = await self._audit_read(
            request, tenant, "memory.recall", [r.key for r in results],
            content=body.query, attributes=_recall_attributes(body),
        )  # fmt: skip
        return self.json(
            s.RecallResponse(
                results=results,
                wm_hits=len(results),
                ltm_hits=0,
                duration_ms=round(duration_ms, 3),
                trace_id=request.trace_id,
                audit_id=audit_id,
            )
        )

    async def _h_link(self, request: Request) -> Response:
        body: s.LinkRequest = request.body
        tenant = await self._tenant(request, body.tenant)
        for key, field in ((body.from_key, "from_key"), (body.to_key, "to_key")):
            memory: Memory | None = await self._ask(tenant, GetMemory(key))
            if memory is not None:  # (an unknown key is the link's 404, below)
                try:
                    await self._check_namespace(request, tenant, "link", memory.namespace, key=key)
                except HTTPError as exc:
                    exc.field = field
                    raise
        link = await self._ask(
            tenant,
            LinkMemories(
                from_key=body.from_key, to_key=body.to_key, rel=body.rel, weight=body.weight
            ),
            {body.to_key: "to_key", body.from_key: "from_key"},  # a self-link: from_key
        )
        audit_id = await self._audit(
            request,
            tenant,
            "memory.link",
            attributes={"from_key": link.from_key, "to_key": link.to_key, "rel": link.rel},
        )
        return self.json(
            s.LinkResponse(
                from_key=link.from_key,
                to_key=link.to_key,
                rel=link.rel,
                weight=link.weight,
                trace_id=request.trace_id,
                audit_id=audit_id,
            )
        )

    async def _h_get(self, request: Request) -> Response:
        assert request.key is not None
        tenant = await self._tenant(request, None)
        memory: Memory | None = await self._ask(tenant, GetMemory(request.key))
        if memory is not None:
            await self._check_namespace(request, tenant, "get", memory.namespace, key=memory.key)
        found = [request.key] if memory is not None else []
        audit_id = await self._audit_read(
            request, tenant, "memory.get", found, status=200 if found else 404
        )
        if memory is None:
            raise _no_memory(request.key)
        return self.json(
            s.MemoryRecord(
                key=memory.key,
                namespace=memory.namespace,
                content=memory.content,
                value=memory.value,
                meta=memory.meta,
                tags=list(memory.tags),
                importance=memory.importance,
                occurred_at=memory.occurred_at,
                created_at=memory.created_at,
                expires_at=memory.expires_at,
                session_id=memory.session_id,
                links=[
                    s.LinkOut(to_key=ln.to_key, rel=ln.rel, weight=ln.weight) for ln in memory.links
                ],
                audit_id=audit_id,
            )
        )

    async def _h_forget(self, request: Request) -> Response:
        assert request.key is not None
        tenant = await self._tenant(request, None)
        memory: Memory | None = await self._ask(tenant, GetMemory(request.key))
        if memory is not None:
            await self._check_namespace(request, tenant, "forget", memory.namespace, key=memory.key)
        namespace = memory.namespace if memory is not None else None
        if not await self._ask(tenant, Forget(request.key, namespace)):
            raise _no_memory(request.key)
        audit_id = await self._audit(
            request, tenant, "memory.forget", attributes={"key": request.key}
        )
        return self.json(
            s.ForgetResponse(
                key=request.key, deleted=True, trace_id=request.trace_id, audit_id=audit_id
            )
        )


def _no_memory(key: str) -> HTTPError:
    """404 for ``/memory/{key}``; a key that ends with a slash says that the slash is part of
    it (everything after ``/memory/`` is the key: keys may end with one)."""
    hint = " (the trailing slash is part of the key)" if key.endswith("/") else ""
    return HTTPError(404, "memory_not_found", f"no memory with key {key!r}{hint}")


def _link_fields(memories: Sequence[Memory], prefix: Callable[[int], str]) -> dict[str, str]:
    """The request field of each link target (the first one naming it), for ``memory_error``."""
    fields: dict[str, str] = {}
    for i, memory in enumerate(memories):
        for j, link in enumerate(memory.links):
            fields.setdefault(link.to_key, f"{prefix(i)}links[{j}].to_key")
    return fields
