"""The context protocol: requests on the ``soma.ctx.*`` subjects, their replies, the bundle.

Subjects (the planner pool subscribes to each in the queue group ``planners``, so exactly one
planner handles each request):

``soma.ctx.evaluate``    ``Evaluate``          -> ``ContextBundle``
``soma.ctx.feedback``    ``Feedback``          -> ``FeedbackResult``
``soma.ctx.adaptation``  ``AdaptationQuery``   -> ``AdaptationView``

Any request may instead be answered with a ``ContextFailure`` (the status and code the HTTP
edge answers with). Feedback events are also published on ``soma.feedback`` (bridged to Kafka).
Frozen tagged structs: they cross the bus as objects in process and as msgpack over NATS.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "ADAPTATION_SUBJECT",
    "EVALUATE_SUBJECT",
    "FEEDBACK_EVENTS_SUBJECT",
    "FEEDBACK_SUBJECT",
    "PLANNER_QUEUE",
    "AdaptationQuery",
    "AdaptationView",
    "BundleMemory",
    "BundleWorkingMemory",
    "ContextBundle",
    "ContextFailure",
    "ContextRequest",
    "Evaluate",
    "Feedback",
    "FeedbackResult",
    "PlanSummary",
    "Tokens",
]

EVALUATE_SUBJECT = "soma.ctx.evaluate"
FEEDBACK_SUBJECT = "soma.ctx.feedback"
ADAPTATION_SUBJECT = "soma.ctx.adaptation"
FEEDBACK_EVENTS_SUBJECT = "soma.feedback"
PLANNER_QUEUE = "planners"


class Evaluate(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    tenant: str
    query: str
    session_id: str | None = None
    top_k: int | None = None
    namespace: str | None = None
    #: The time the query is about (epoch seconds; the recency view's reference), else now.
    at: float | None = None
    filters: dict[str, Any] | None = None
    trace_id: str | None = None
    #: Sequence number of this attempt (the edge retries once when a planner dies).
    attempt: int = 1
    #: The caller's token scopes: the policies decide which namespaces it may read.
    scopes: tuple[str, ...] = ()


class Tokens(msgspec.Struct, frozen=True, kw_only=True):
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Feedback(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    tenant: str
    session_id: str
    query: str
    prompt: str = ""
    response_text: str | None = None
    utility: float | None = None
    reward: float | None = None
    used_keys: tuple[str, ...] = ()
    tokens: Tokens | None = None
    latency_ms: float | None = None
    metadata: dict[str, Any] | None = None
    namespace: str | None = None
    at: float | None = None
    trace_id: str | None = None
    #: The caller's token scopes: used keys in namespaces closed to the caller change nothing.
    scopes: tuple[str, ...] = ()


class AdaptationQuery(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    tenant: str
    reset: bool = False


ContextRequest = Evaluate | Feedback | AdaptationQuery


class BundleMemory(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    content: str
    #: softmax(score / temperature) over the bundle's memories: they sum to 1.
    weight: float
    score: float
    views: dict[str, float]
    occurred_at: float | None = None
    session_id: str | None = None
    tags: list[str] = []


class BundleWorkingMemory(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    content: str
    score: float
    views: dict[str, float]


class PlanSummary(msgspec.Struct, frozen=True, kw_only=True):
    """How the planner built the prompt: the chosen memories and their level, the utility."""

    selected: list[tuple[str, str]]
    utility: float
    coverage: float
    iterations: int
    variants: int
    planner: str = ""


class ContextBundle(msgspec.Struct, frozen=True, kw_only=True):
    """What ``POST /context/evaluate`` answers (see DESIGN.md, HTTP API).

    ``weights`` are the tenant's view weights used for this bundle. ``residual_vector`` is the
    HRR superposition of the memories bound to their keys (``somabrain.context.hrr``).
    ``constitution_checksum`` and ``policy`` are filled by governance (null without it).
    """

    query: str
    prompt: str
    memories: list[BundleMemory]
    weights: dict[str, float]
    residual_vector: list[float]
    working_memory: list[BundleWorkingMemory]
    constitution_checksum: str | None = None
    policy: dict[str, Any] | None = None
    trace_id: str | None = None
    audit_id: str | None = None
    session_id: str | None = None
    plan: PlanSummary | None = None
    duration_ms: float = 0.0


class FeedbackResult(msgspec.Struct, frozen=True, kw_only=True):
    accepted: bool
    adaptation_applied: bool
    weights_before: dict[str, float]
    weights_after: dict[str, float]
    reinforced: int = 0
    learning_rate: float = 0.0
    #: Used keys the tenant does not hold (never remembered, or forgotten since the bundle):
    #: they change nothing; the feedback applies to the others.
    unknown_keys: list[str] = []


class AdaptationView(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    weights: dict[str, float]
    defaults: dict[str, float]
    history_length: int
    feedback: int
    updates: int
    updated_at: float
    history: list[dict[str, Any]] = []
    #: The form view's model (``memory.form``): a weight per feature; empty until learned.
    form: dict[str, float] = {}


class ContextFailure(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A refusal or failure, with the HTTP status the edge should answer."""

    status: int
    code: str
    message: str
    field: str | None = None
    retry_after: float | None = None
