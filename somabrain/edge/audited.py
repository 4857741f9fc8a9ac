"""Auditing of edge requests, mixed into the handlers (``handlers.py``, ``context.py``).

A state change is recorded in the node's audit chain (``resources["audit"]``) after the
memory actor acknowledged it, and its event id is the response's ``audit_id``: one event per
request (``memory.remember``, ``memory.remember_batch`` with the item count and keys,
``memory.link``, ``memory.forget``), and a ``deny`` event when the policies refuse a request.
Content is never copied into the audit, only its SHA-256 and size (``request_meta``). When the
event cannot be made durable the request answers 503 ``audit_unavailable``: the change may
have happened but is not acknowledged. Without an audit log (some test trees) nothing is
recorded and ``audit_id`` is null.

Reads are audited only when ``audit.reads`` is on (``_audit_read``): ``memory.recall`` (the
query's SHA-256, never the query; the number of results and their keys, as a digest when the
list is long) and ``memory.get`` (the key, found or not). Off by default because an audited
read waits for a durable write like a remember does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..actors import ActorSystem
from ..audit.errors import AuditUnavailableError
from ..audit.event import AuditDraft, new_event_id, request_meta, utc_now
from ..cluster import CLUSTER_RESOURCE
from ..governance.http import governance_of
from ..governance.policy import Decision, PolicyInput
from .errors import HTTPError

if TYPE_CHECKING:
    from ..config import SomaConfig
    from .app import Request

__all__ = ["AuditHandlers"]


class AuditHandlers:
    """``_audit`` (one event per request), ``_audit_read`` and ``_govern_audited``."""

    system: ActorSystem
    config: SomaConfig
    #: The policy gate, from ``GovernanceHandlers`` (``edge/governance.py``).
    _govern: Callable[[PolicyInput], Decision]

    async def _audit(
        self,
        request: Request,
        tenant: str,
        action: str,
        *,
        decision: Decision | None = None,
        status: int = 200,
        content: str | bytes | None = None,
        attributes: dict[str, object] | None = None,
    ) -> str | None:
        """Record one audit event and wait until it is durable; its id, or None when the node
        has no audit log. 503 ``audit_unavailable`` when it cannot be made durable.

        ``decision``: the policy decision (its ``audit_fields()``); without one the event's
        decision is ``none`` (an action no policy gates)."""
        audit = self.system.resources.get("audit")
        if audit is None or not hasattr(audit, "record"):
            return None
        fields: dict[str, Any] = (
            decision.audit_fields()
            if decision is not None
            else {"decision": "none", "reason": "", "constitution_checksum": "", "attributes": {}}
        )
        attrs = {**fields["attributes"], **(attributes or {})}
        cluster = self.system.resources.get(CLUSTER_RESOURCE)
        if cluster is not None and tenant:
            # Recorded by the member the agent called; the owner holds the tenant's data.
            attrs["owner"] = cluster.owner_of(tenant)
        principal = request.principal
        draft = AuditDraft(
            tenant=tenant,
            actor=principal.subject if principal is not None else "",
            action=action,
            decision=fields["decision"],
            reason=str(fields["reason"])[:1024],
            trace_id=request.trace_id,
            constitution_checksum=fields["constitution_checksum"],
            event_id=new_event_id(),
            time=utc_now(),
            request=request_meta(
                method=request.route.method,
                path=request.route.path,
                status=status,
                content=content,
                attributes=attrs,
            ),
        )
        try:
            event_id: str = await audit.record(draft)
        except AuditUnavailableError as exc:
            raise HTTPError.retry_later(
                503, "audit_unavailable", f"the audit trail cannot record this request: {exc}", 1
            ) from None
        return event_id

    async def _audit_read(
        self,
        request: Request,
        tenant: str,
        action: str,
        keys: list[str],
        *,
        status: int = 200,
        content: str | None = None,
        attributes: dict[str, object] | None = None,
    ) -> str | None:
        """A read-access event when ``audit.reads`` is on (else None: nothing recorded).

        The result keys go in as one comma-separated attribute, which ``request_meta``
        replaces by its SHA-256 when it is longer than 256 characters: enough to tell which
        memories a read returned (recompute the digest from the keys) without bloating the
        chain at top_k 100."""
        if not self.config.audit.reads:
            return None
        return await self._audit(
            request,
            tenant,
            action,
            status=status,
            content=content,
            attributes={"results": len(keys), "keys": ",".join(keys), **(attributes or {})},
        )

    async def _govern_audited(
        self,
        request: Request,
        tenant: str,
        action: str,
        policy_input: PolicyInput,
        *,
        content: str | bytes | None = None,
        attributes: dict[str, object] | None = None,
    ) -> Decision:
        """``_govern``, and when the policies deny (403 ``policy_denied``) a ``deny`` event
        with the decision's audit fields before the refusal is answered."""
        try:
            return self._govern(policy_input)
        except HTTPError as exc:
            if exc.code == "policy_denied":
                try:  # the decision is cached: deciding again only fetches it
                    denied = governance_of(self.system.resources).decide(policy_input)
                except Exception:
                    denied = None
                await self._audit(
                    request,
                    tenant,
                    action,
                    decision=denied,
                    status=exc.status,
                    content=content,
                    attributes=attributes,
                )
            raise
