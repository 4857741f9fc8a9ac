"""The edge's ``/context/*`` routes, as a mixin of ``EdgeApp``.

The work happens in the planner pool (``somabrain.context.actor``), reached over the bus
(``somabrain.context.client``: one retry when a planner dies; every failure becomes a status);
this module validates the HTTP bodies, applies the governance gate to evaluate (the decision's
checksum and policy go into the bundle, its penalties into the memories' weights) and encodes
the replies.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import Meta

from ..cluster import CLUSTER_RESOURCE
from ..context import client
from ..context.messages import (
    AdaptationQuery,
    AdaptationView,
    ContextBundle,
    ContextFailure,
    Evaluate,
    Feedback,
    FeedbackResult,
    Tokens,
)
from ..context.settings import MAX_QUERY_CHARS, query_too_long
from ..governance.http import UNSCOPED, BundleGovernance, evaluate_input
from ..memory.types import RecallFilter
from .audited import AuditHandlers
from .errors import HTTPError, from_validation
from .schemas import Key, Namespace, SessionId, Timestamp

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..cluster.router import ClusterRouter
    from ..governance.policy import PolicyInput
    from .app import Request, Response

__all__ = [
    "ContextHandlers",
    "EvaluateRequest",
    "FeedbackRequest",
    "TokensIn",
    "failure_error",
]

Session = SessionId
TenantId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
#: The schema's bound is the hard cap; ``context.limits.max_query_chars`` (at most the cap) is
#: checked by the handlers, with the same 422 ``out_of_range`` naming ``query``.
Query = Annotated[str, Meta(min_length=1, max_length=MAX_QUERY_CHARS)]


class EvaluateRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``at``: the time the query is about (recency view), epoch seconds or RFC 3339."""

    query: Query
    session_id: Session | None = None
    top_k: Annotated[int, Meta(ge=1, le=1000)] | None = None
    namespace: Namespace | None = None
    at: Timestamp | None = None
    filters: dict[str, Any] | None = None
    tenant: TenantId | None = None


class TokensIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: Annotated[str, Meta(max_length=256)] | None = None
    prompt_tokens: Annotated[int, Meta(ge=0)] | None = None
    completion_tokens: Annotated[int, Meta(ge=0)] | None = None


class FeedbackRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    session_id: Session
    query: Query
    prompt: Annotated[str, Meta(max_length=1_000_000)] = ""
    response_text: Annotated[str, Meta(max_length=1_000_000)] | None = None
    utility: Annotated[float, Meta(ge=-1e6, le=1e6)] | None = None
    reward: Annotated[float, Meta(ge=-1e6, le=1e6)] | None = None
    used_keys: Annotated[list[Key], Meta(max_length=1000)] | None = None
    tokens: TokensIn | None = None
    latency_ms: Annotated[float, Meta(ge=0)] | None = None
    metadata: dict[str, Any] | None = None
    namespace: Namespace | None = None
    tenant: TenantId | None = None


def failure_error(failure: ContextFailure) -> HTTPError:
    if failure.retry_after is not None:
        return HTTPError.retry_later(
            failure.status, failure.code, failure.message, failure.retry_after
        )
    return HTTPError(failure.status, failure.code, failure.message, field=failure.field)


def _timestamp(value: float | dt.datetime | None) -> float | None:
    if value is None or isinstance(value, float | int):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


class ContextHandlers(AuditHandlers):
    """``/context/evaluate``, ``/context/feedback``, ``/context/adaptation/*`` (audited like
    the memory routes: ``AuditHandlers``)."""

    _govern_bundle: Callable[[PolicyInput, list[list[str]], list[float]], BundleGovernance]
    _unscoped: Callable[[PolicyInput], PolicyInput]

    def json(self, value: Any, status: int = 200) -> Response:
        raise NotImplementedError

    async def _tenant(self, request: Request, body_tenant: str | None) -> str:
        raise NotImplementedError

    async def _context(self, message: Any) -> Any:
        settings = self.config.context
        # A tenant's adaptation state lives with its memories, on the member that owns it.
        cluster: ClusterRouter | None = self.system.resources.get(CLUSTER_RESOURCE)
        if cluster is not None and not cluster.owns(message.tenant):
            reply = await cluster.context(message, self.config.edge.request_timeout)
        else:
            reply = await client.request(
                self.system.bus,
                message,
                timeout=self.config.edge.request_timeout / max(1, settings.attempts),
                attempts=settings.attempts,
            )
        if isinstance(reply, ContextFailure):
            raise failure_error(reply)
        return reply

    def _check_query(self, query: str) -> None:
        """422 ``out_of_range`` naming ``query`` over ``context.limits.max_query_chars``, as
        recall's own bound is (a field over its limit; 413 is for a body over
        ``edge.max_body_bytes``). Before the governance gate, whose policies also limit the
        query's size (in bytes, 16 KiB by default) with a 403 that names no field."""
        if not query.strip():
            raise HTTPError(422, "invalid_field", "query must not be blank", field="query")
        limit = self.config.context.limits.max_query_chars
        if len(query) > limit:
            raise HTTPError(422, "out_of_range", query_too_long(limit), field="query")

    async def _h_context_evaluate(self, request: Request) -> Response:
        body: EvaluateRequest = request.body
        self._check_query(body.query)
        tenant = await self._tenant(request, body.tenant)
        assert request.principal is not None
        if body.filters:
            # Checked here, as recall does, so that a bad filter is a 422 naming its path
            # (``filters.meta``); the planner builds the filter again from the mapping.
            try:
                RecallFilter.from_mapping(body.filters)
            except msgspec.ValidationError as exc:
                raise from_validation(exc, prefix="filters") from None
        # Without a namespace, every namespace the caller may read is searched (the planner
        # leaves out the refused ones): the gate does not decide it as ``default``, which a
        # tenant's policy may close (``unscoped_reader``).
        request_input = self._unscoped(
            evaluate_input(
                tenant,
                namespace=body.namespace or UNSCOPED,
                query=body.query,
                scopes=request.principal.scopes,
            )
        )
        # Audited as ``context.evaluate`` with the session: the reward worker matches feedback
        # to the bundle by its audit_id, or by (tenant, session_id). The query is hashed.
        attributes: dict[str, object] = {
            "session_id": body.session_id,
            "namespace": body.namespace,
        }
        decision = await self._govern_audited(
            request,
            tenant,
            "context.evaluate",
            request_input,
            content=body.query,
            attributes=attributes,
        )
        bundle: ContextBundle = await self._context(
            Evaluate(
                tenant=tenant,
                query=body.query,
                session_id=body.session_id,
                top_k=body.top_k,
                namespace=body.namespace,
                at=_timestamp(body.at),
                filters=body.filters,
                trace_id=request.trace_id,
                scopes=tuple(sorted(request.principal.scopes)),
            )
        )
        # Each memory decided with its own tags: refused ones leave, sensitive ones weigh less.
        governed = self._govern_bundle(
            request_input, [m.tags for m in bundle.memories], [m.weight for m in bundle.memories]
        )
        kept = [m for m, keep in zip(bundle.memories, governed.keep, strict=True) if keep]
        bundle = msgspec.structs.replace(
            bundle,
            memories=[
                msgspec.structs.replace(m, weight=w)
                for m, w in zip(kept, governed.weights, strict=True)
            ],
            constitution_checksum=governed.constitution_checksum or decision.constitution_checksum,
            policy=governed.policy,
        )
        audit_id = await self._audit(
            request,
            tenant,
            "context.evaluate",
            decision=decision,
            content=body.query,
            attributes={**attributes, "memories": len(bundle.memories)},
        )
        return self.json(msgspec.structs.replace(bundle, audit_id=audit_id))

    async def _h_context_feedback(self, request: Request) -> Response:
        body: FeedbackRequest = request.body
        assert request.principal is not None
        self._check_query(body.query)
        tenant = await self._tenant(request, body.tenant)
        tokens = None
        if body.tokens is not None:
            tokens = Tokens(
                model=body.tokens.model,
                prompt_tokens=body.tokens.prompt_tokens,
                completion_tokens=body.tokens.completion_tokens,
            )
        result: FeedbackResult = await self._context(
            Feedback(
                tenant=tenant,
                session_id=body.session_id,
                query=body.query,
                prompt=body.prompt,
                response_text=body.response_text,
                utility=body.utility,
                reward=body.reward,
                used_keys=tuple(body.used_keys or ()),
                tokens=tokens,
                latency_ms=body.latency_ms,
                metadata=body.metadata,
                namespace=body.namespace,
                trace_id=request.trace_id,
                scopes=tuple(sorted(request.principal.scopes)),
            )
        )
        # Feedback changes state (salience of the used memories, the tenant's weights): it is
        # audited like a write, the query hashed, the bundle it rates named when given.
        bundle = (body.metadata or {}).get("audit_id")
        await self._audit(
            request,
            tenant,
            "context.feedback",
            content=body.query,
            attributes={
                "session_id": body.session_id,
                "used_keys": len(body.used_keys or ()),
                "unknown_keys": len(result.unknown_keys),
                "reward": body.reward,
                "utility": body.utility,
                "adaptation_applied": result.adaptation_applied,
                "bundle": bundle if isinstance(bundle, str) else None,
            },
        )
        return self.json(result)

    async def _h_context_adaptation_state(self, request: Request) -> Response:
        tenant = await self._tenant(request, None)
        view: AdaptationView = await self._context(AdaptationQuery(tenant=tenant))
        return self.json(view)

    async def _h_context_adaptation_reset(self, request: Request) -> Response:
        tenant = await self._tenant(request, None)  # no body: the token's tenant or X-Tenant-ID
        view: AdaptationView = await self._context(AdaptationQuery(tenant=tenant, reset=True))
        await self._audit(request, tenant, "context.adaptation_reset")
        return self.json(view)
