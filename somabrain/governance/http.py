"""The governance side of the HTTP edge, independent of the edge's plumbing.

Request and response bodies of ``/constitution/*`` (msgspec Structs, also used for the
OpenAPI document), the policy inputs built from requests, and the handlers as functions
that take decoded requests and return response Structs or raise :class:`GovernanceRefusal`
(status, code, message), which the edge turns into its error model.

Routes:

``GET /constitution/version``    any valid token; the active version (or why there is none)
``POST /constitution/validate``  any valid token; ``{input}`` -> ``{allowed, explain, decision}``
``POST /constitution/load``      ``admin`` scope; a signed constitution -> ``{accepted, ...}``
                                 or 422 with the reason (which signatures failed and why)

And the gate of ``/memory/remember`` and ``/context/evaluate``: :func:`govern` answers 503
(``not_governed``, with the reason) when no valid constitution is active and 403
(``policy_denied``, with the policy's explanation) when the policies refuse.

``/context/evaluate`` in two steps: before any work,
``govern(resources, evaluate_input(tenant, namespace=..., query=..., scopes=...))``; then,
with the candidate memories' tags and weights, :func:`govern_bundle` drops memories whose tags
the policies now refuse, penalizes sensitive ones, and gives the bundle's ``policy`` field
and ``constitution_checksum``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from ..actors import ActorRef, ActorStoppedError, AskTimeoutError
from ._exceptions import GovernanceUnavailableError, PolicyError
from .constitution import SignedConstitution
from .messages import Load, LoadResult
from .policy import Decision, PolicyInput
from .service import Governance

__all__ = [
    "GUARDIAN_PATH",
    "UNSCOPED",
    "BundleGovernance",
    "GovernanceRefusal",
    "LoadResponse",
    "PolicyField",
    "ValidateInput",
    "ValidateRequest",
    "ValidateResponse",
    "VersionResponse",
    "constitution_load",
    "constitution_validate",
    "constitution_version",
    "evaluate_input",
    "govern",
    "govern_bundle",
    "governance_health",
    "governance_of",
    "keep_memories",
    "penalize",
    "readiness",
    "refused_namespaces",
    "remember_input",
    "unscoped_reader",
]

#: The ``namespace`` of a read that names none (e.g. an unscoped evaluate): the policies leave
#: out their namespace rules, and each namespace the read finds is decided on its own
#: (``refused_namespaces``). Not a namespace anything can be remembered in (they are 1-128
#: characters).
UNSCOPED = ""
#: Where a remember that names no namespace goes (``memory.types.DEFAULT_NAMESPACE``).
_DEFAULT_NAMESPACE = "default"

#: Where the default tree runs the guardian (``[tree.children.guardian]``).
GUARDIAN_PATH = "/root/guardian"


class GovernanceRefusal(Exception):
    """An HTTP refusal: ``status`` (403, 422, 503), a stable ``code``, a message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.field = field


# ------------------------------------------------------------------------------ bodies


class ValidateRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A policy input, as the node would build it: ``action``, ``tenant``, ``namespace``,
    ``tags``, ``scopes``, ``content_size`` (any other field is passed to the policies too)."""

    input: dict[str, Any]


class ValidateInput(msgspec.Struct, kw_only=True):
    """The fields of a validate ``input`` that the node itself always sends, with their types.
    Checked before the policies see the input: a missing tenant or a wrong type would leave
    the decision undefined or meaningless ("content of  bytes exceeds ..."), where the caller
    needs a 422 naming the field. Other fields pass to the policies unchecked."""

    action: Annotated[str, Meta(min_length=1)] = "validate"
    tenant: Annotated[str, Meta(min_length=1)]
    #: ``""``: a read that names no namespace (an unscoped evaluate; see ``UNSCOPED``).
    namespace: str = "default"
    tags: list[str] = []
    scopes: list[str] = []
    content_size: Annotated[int, Meta(ge=0)] = 0


class PolicyField(msgspec.Struct, kw_only=True):
    """A decision as bundles carry it (``policy``), plus the reasons for a refusal."""

    allowed: bool
    reasons: list[str]
    penalties: dict[str, float]
    tags: list[str]
    directives: list[str]
    constitution_version: int
    constitution_checksum: str


class ValidateResponse(msgspec.Struct, kw_only=True):
    allowed: bool
    explain: str
    decision: PolicyField


class VersionResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    ready: bool
    reason: str = ""
    version: int | None = None
    checksum: str | None = None
    previous: str | None = None
    issued_at: str | None = None
    threshold: int | None = None
    signers: list[str] = []
    signed_by: list[str] = []
    policies: list[str] = []
    activated_at: float | None = None
    history: list[dict[str, Any]] = []


class LoadResponse(msgspec.Struct, kw_only=True):
    accepted: bool
    version: int | None = None
    checksum: str | None = None
    unchanged: bool = False
    audit_id: str | None = None


#: ``POST /constitution/load`` takes a signed constitution as it is stored on disk.
LoadRequest = SignedConstitution

ContentSize = Annotated[int, Meta(ge=0)]


def policy_field(decision: Decision) -> PolicyField:
    return PolicyField(
        allowed=decision.allowed,
        reasons=list(decision.reasons),
        penalties=dict(decision.penalties),
        tags=list(decision.tags),
        directives=list(decision.directives),
        constitution_version=decision.constitution_version,
        constitution_checksum=decision.constitution_checksum,
    )


# ------------------------------------------------------------------------------ gate


def governance_of(resources: Mapping[str, Any]) -> Governance:
    """The node's Governance; 503 when the tree runs no guardian (fail closed)."""
    governance = resources.get("governance")
    if not isinstance(governance, Governance):
        raise GovernanceRefusal(
            503,
            "not_governed",
            "no constitution guardian runs on this node: every bundle needs a constitution",
            retry_after=5,
        )
    return governance


def readiness(resources: Mapping[str, Any]) -> str:
    """Why the node is not ready on the governance side, or ``""`` when it is."""
    governance = resources.get("governance")
    if not isinstance(governance, Governance):
        return "no constitution guardian runs on this node"
    return "" if governance.ready else f"no valid constitution: {governance.reason}"


def governance_health(resources: Mapping[str, Any]) -> dict[str, Any]:
    """The ``governance`` component of ``GET /health``."""
    governance = resources.get("governance")
    if not isinstance(governance, Governance):
        return {"ready": False, "reason": "no constitution guardian runs on this node"}
    active = governance.active
    if active is None:
        return {"ready": False, "reason": governance.reason}
    stats = active.engine.statistics()
    return {
        "ready": True,
        "version": active.constitution.version,
        "checksum": active.constitution.checksum,
        "decisions": stats.evaluations + stats.cache_hits,
        "cache_hits": stats.cache_hits,
    }


def remember_input(
    tenant: str,
    *,
    namespace: str,
    tags: Iterable[str] = (),
    scopes: Iterable[str] = (),
    content: str = "",
    action: str = "remember",
) -> PolicyInput:
    """The policy input of one memory (or, with ``action="evaluate"``, of one query)."""
    return PolicyInput(
        action=action,
        tenant=tenant,
        namespace=namespace,
        tags=tuple(tags),
        scopes=tuple(sorted(scopes)),
        content_size=len(content.encode("utf-8", "surrogatepass")),
    )


def evaluate_input(
    tenant: str,
    *,
    namespace: str,
    query: str,
    scopes: Iterable[str] = (),
    tags: Iterable[str] = (),
) -> PolicyInput:
    """The policy input of ``/context/evaluate``: the query's size, and (for the penalties)
    the tags of the memories a bundle would carry."""
    return remember_input(
        tenant, namespace=namespace, tags=tags, scopes=scopes, content=query, action="evaluate"
    )


def unscoped_reader(resources: Mapping[str, Any], request: PolicyInput) -> PolicyInput:
    """The policy input of a read over every namespace (``request.namespace`` is
    ``UNSCOPED``): as the read made in ``default`` when the policies open that namespace to the
    caller (what the node always sent), else without a namespace. Why not simply ``default``:
    a tenant whose policy closes ``default`` could not evaluate over the namespaces it may read.
    Why not always ``UNSCOPED``: a constitution signed before its policies knew it decides
    ``""`` as a namespace, which an explicit allowlist refuses; trying ``default`` first keeps
    what such a constitution allowed. Any other request is returned as it is."""
    if request.namespace != UNSCOPED:
        return request
    default = msgspec.structs.replace(request, namespace=_DEFAULT_NAMESPACE)
    try:
        refused = refused_namespaces(resources, default, (_DEFAULT_NAMESPACE,))
    except GovernanceRefusal:  # not governed: the gate answers it (503)
        return default
    return request if refused else default


def penalize(
    weights: Sequence[float], tags: Sequence[Iterable[str]], penalties: Mapping[str, float]
) -> list[float]:
    """Memory weights after the policy's penalties: each memory's weight is multiplied by
    ``1 - p`` for the largest penalty ``p`` among its tags, then all are rescaled to the
    original total (a bundle's weights keep summing to 1). Pure."""
    if not penalties:
        return list(weights)
    scaled = [
        w * (1.0 - max((penalties.get(t, 0.0) for t in memory_tags), default=0.0))
        for w, memory_tags in zip(weights, tags, strict=True)
    ]
    total, new_total = sum(weights), sum(scaled)
    if new_total <= 0.0:
        return scaled
    return [w * total / new_total for w in scaled]


def _memory_decisions(
    governance: Governance, request: PolicyInput, memory_tags: Sequence[Iterable[str]]
) -> tuple[Decision, list[Decision], list[bool]]:
    base = governance.decide(request)
    decisions = [
        governance.decide(msgspec.structs.replace(request, tags=tuple(sorted(set(tags)))))
        for tags in memory_tags
    ]
    # A memory is refused for its tags only: when the request itself is refused without them
    # (e.g. the scopes are not known here), its verdict belongs to the request's gate.
    keep = [d.allowed or not base.allowed for d in decisions]
    return base, decisions, keep


def keep_memories(
    resources: Mapping[str, Any], request: PolicyInput, memory_tags: Sequence[Iterable[str]]
) -> list[bool]:
    """Which candidate memories a bundle may carry: False for a memory whose tags the
    policies refuse (e.g. blocked since it was remembered). For the planner, before it builds
    the prompt; all True when the node has no Governance (the edge's gate answers 503). The
    namespaces a caller may not read are ``refused_namespaces``' (``governance.reads``)."""
    governance = resources.get("governance")
    if not isinstance(governance, Governance) or not governance.ready:
        return [True] * len(memory_tags)
    return _memory_decisions(governance, request, memory_tags)[2]


def refused_namespaces(
    resources: Mapping[str, Any], request: PolicyInput, namespaces: Iterable[str]
) -> frozenset[str]:
    """The namespaces among ``namespaces`` whose memories may not be given to ``request``'s
    caller: each decided as ``request`` made in it, without tags (so the namespace rules, the
    tenant lists and the scopes speak; e.g. a reserved namespace without the admin scope).
    None on a node without a guardian (nothing is governed there); 503 when no constitution is
    active or the policy fails (closed)."""
    governance = resources.get("governance")
    if not isinstance(governance, Governance):
        return frozenset()
    refused = set()
    for namespace in set(namespaces):
        try:
            decision = governance.decide(
                msgspec.structs.replace(request, namespace=namespace, tags=())
            )
        except GovernanceUnavailableError as exc:
            raise GovernanceRefusal(503, "not_governed", str(exc), retry_after=5) from None
        except PolicyError as exc:
            raise GovernanceRefusal(503, "policy_error", str(exc), retry_after=5) from None
        if not decision.allowed:
            refused.add(namespace)
    return frozenset(refused)


class BundleGovernance(msgspec.Struct, frozen=True, kw_only=True):
    """What governance does to a context bundle (:func:`govern_bundle`)."""

    #: Per candidate memory: False when its tags are refused (e.g. blocked since it was
    #: remembered); such memories are left out of the bundle.
    keep: list[bool]
    #: The weights of the kept memories after penalties, rescaled to the original total.
    weights: list[float]
    #: The bundle's ``policy`` field: ``{allowed, penalties, tags, directives}``.
    policy: dict[str, Any]
    constitution_checksum: str


def govern_bundle(
    resources: Mapping[str, Any],
    request: PolicyInput,
    memory_tags: Sequence[Iterable[str]],
    weights: Sequence[float],
) -> BundleGovernance:
    """Govern a bundle: ``request`` is the evaluate's input (already allowed by
    :func:`govern`); each candidate memory is decided with its own tags (cached: tags
    repeat), refused ones are dropped, and the kept ones' weights are penalized
    (:func:`penalize`). The policy field merges the decisions of the kept memories."""
    governance = governance_of(resources)
    try:
        base, decisions, keep = _memory_decisions(governance, request, memory_tags)
    except GovernanceUnavailableError as exc:
        raise GovernanceRefusal(503, "not_governed", str(exc), retry_after=5) from None
    except PolicyError as exc:
        raise GovernanceRefusal(503, "policy_error", str(exc), retry_after=5) from None
    penalties: dict[str, float] = dict(base.penalties)
    labels: set[str] = set(base.tags)
    directives: list[str] = list(base.directives)
    kept_tags: list[tuple[str, ...]] = []
    kept_weights: list[float] = []
    for decision, kept, tags, weight in zip(decisions, keep, memory_tags, weights, strict=True):
        if not kept:
            continue
        kept_tags.append(tuple(tags))
        kept_weights.append(weight)
        for tag, penalty in decision.penalties.items():
            penalties[tag] = max(penalty, penalties.get(tag, 0.0))
        labels.update(decision.tags)
        directives.extend(d for d in decision.directives if d not in directives)
    total = sum(kept_weights)
    if kept_weights and total > 0:  # the dropped memories' share goes to the kept ones
        kept_weights = [w * sum(weights) / total for w in kept_weights]
    return BundleGovernance(
        keep=keep,
        weights=penalize(kept_weights, kept_tags, penalties),
        policy={
            "allowed": True,
            "penalties": penalties,
            "tags": sorted(labels),
            "directives": directives,
        },
        constitution_checksum=base.constitution_checksum,
    )


def govern(resources: Mapping[str, Any], request: PolicyInput) -> Decision:
    """Decide ``request``: the decision when allowed; 503 when not governed, 403 when denied."""
    governance = governance_of(resources)
    try:
        decision = governance.decide(request)
    except GovernanceUnavailableError as exc:
        raise GovernanceRefusal(503, "not_governed", str(exc), retry_after=5) from None
    except PolicyError as exc:  # fail closed, but say so: a broken policy is not a bad request
        raise GovernanceRefusal(503, "policy_error", str(exc), retry_after=5) from None
    if not decision.allowed:
        raise GovernanceRefusal(403, "policy_denied", decision.explain)
    return decision


# ------------------------------------------------------------------------------ handlers


def constitution_version(resources: Mapping[str, Any]) -> VersionResponse:
    return msgspec.convert(governance_of(resources).version_info(), VersionResponse)


def constitution_validate(resources: Mapping[str, Any], body: ValidateRequest) -> ValidateResponse:
    """The decision on ``body.input``. Raises ``msgspec.ValidationError`` (its path is within
    ``input``) when a field the node always sends is missing or of the wrong type
    (:class:`ValidateInput`), after the 503 of a node without a constitution."""
    governance = governance_of(resources)
    try:
        governance.require()
        msgspec.convert(body.input, ValidateInput)
        decision = governance.validate(body.input)
    except GovernanceUnavailableError as exc:
        raise GovernanceRefusal(503, "not_governed", str(exc), retry_after=5) from None
    except PolicyError as exc:
        raise GovernanceRefusal(422, "policy_error", str(exc)) from None
    return ValidateResponse(
        allowed=decision.allowed, explain=decision.explain, decision=policy_field(decision)
    )


#: The field of a ``LoadRequest`` a refusal is about, by refusal code.
_LOAD_REFUSAL_FIELDS = {
    "version_conflict": "document.version",
    "version_not_newer": "document.version",
    "wrong_previous": "document.previous",
    "insufficient_signatures": "signatures",
    "rotation_not_approved": "signatures",
}
#: How a document check names its field (msgspec's path style): "... - at `$.signers`".
_DOCUMENT_PATH = re.compile(r"at `\$\.([^`]+)`")


def load_refusal_field(code: str | None, reason: str) -> str | None:
    """The request field a refused load is about (``None``: the document as a whole)."""
    if code in _LOAD_REFUSAL_FIELDS:
        return _LOAD_REFUSAL_FIELDS[code]
    path = _DOCUMENT_PATH.search(reason)
    return f"document.{path[1]}" if path else None


async def constitution_load(
    guardian: ActorRef | None, body: SignedConstitution, *, timeout: float = 10.0
) -> LoadResponse:
    """Hand the document to the guardian; 422 with its reason when refused."""
    if guardian is None:
        raise GovernanceRefusal(
            503, "not_governed", "no constitution guardian runs on this node", retry_after=5
        )
    document = msgspec.to_builtins(body)
    try:
        result: LoadResult = await guardian.ask(Load(document, source="api"), timeout=timeout)
    except (AskTimeoutError, ActorStoppedError) as exc:
        raise GovernanceRefusal(
            503, "unavailable", f"the constitution guardian did not answer: {exc}", retry_after=1
        ) from None
    if not result.accepted:
        detail = f"{result.reason}" if result.reason else "refused"
        status = 503 if result.code in ("audit_unavailable", "storage_failed") else 422
        field = None if status == 503 else load_refusal_field(result.code, detail)
        raise GovernanceRefusal(status, result.code or "refused", detail, field=field)
    return LoadResponse(
        accepted=True,
        version=result.version,
        checksum=result.checksum,
        unchanged=result.unchanged,
        audit_id=result.audit_id,
    )
