"""The ``[context]`` config section: retrieval views, embedder, working memory, bundle limits,
the planner's utility constants and the adaptation's learning rates.

Everything has a default (``somabrain/default.toml`` repeats them, documented), so a config
file names only what it changes::

    [context]
    embedder = "minilm"                     # or "builtin" (default: no download)

    [context.views]
    graph_steps = 2

The default view weights of every tenant (before adaptation) are ``memory.weights`` when set,
else ``somabrain.memory.views.default_weights(embedder)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ..memory.associations import ASSOCIATION, AssociationSettings, with_association
from ..memory.form import FORM, with_form
from ..memory.views import VIEW_NAMES, resolve_weights
from .adaptation import AdaptationSettings
from .planner import PlannerSettings

__all__ = [
    "MAX_QUERY_CHARS",
    "ContextSettings",
    "EmbedderSettings",
    "LimitSettings",
    "ViewSettings",
    "WorkingMemorySettings",
    "default_weights_for",
    "query_too_long",
    "tenant_default_weights",
]

#: The longest query any route takes, whatever the config (``max_query_chars`` is at most it).
MAX_QUERY_CHARS = 100_000

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
Fraction = Annotated[float, Meta(ge=0, le=1)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class ViewSettings(_Section, frozen=True):
    """Parameters of the graph, recency and salience views (``somabrain.memory.views``)."""

    graph_seeds: PositiveInt = 8
    graph_damping: Annotated[float, Meta(gt=0, le=1)] = 0.85
    graph_steps: Annotated[int, Meta(ge=1, le=8)] = 2
    recency_half_life: PositiveFloat = 30 * 86_400.0
    salience_gain: Annotated[float, Meta(ge=0, le=10)] = 1.0


class EmbedderSettings(_Section, frozen=True):
    """How embeddings are computed: off the event loop, in batches (``embedding.py``)."""

    #: Texts per model call; concurrent requests are gathered up to this.
    batch_size: PositiveInt = 64
    #: Seconds a request waits for others to join its batch (0: only those already queued).
    batch_window: Annotated[float, Meta(ge=0, le=1)] = 0.002
    #: Threads the model may use (onnxruntime's or torch's intra-op threads); 0 leaves the
    #: library's default (one per core).
    threads: Annotated[int, Meta(ge=0)] = 0
    #: How MiniLM runs (``embedder = "minilm"``): ``"onnx"`` (onnxruntime + tokenizers on an
    #: ONNX export made once with torch, 2-4x faster), ``"torch"`` (sentence-transformers), or
    #: ``"auto"``: onnx when onnxruntime is installed and the export can be read or made, else
    #: torch (with a warning). Same vectors either way (``minilm.py``).
    runtime: Literal["auto", "onnx", "torch"] = "auto"
    #: Where the ONNX export is kept (``minilm_export.py``); "" is ``$XDG_CACHE_HOME/somabrain``
    #: (``~/.cache/somabrain``).
    onnx_dir: str = ""


class WorkingMemorySettings(_Section, frozen=True):
    capacity: PositiveInt = 32
    max_sessions: PositiveInt = 1024
    recency_weight: Fraction = 0.2
    #: Working-memory items in a bundle (the best by relevance), and their share of the
    #: planner's weight when there are any.
    top_k: Annotated[int, Meta(ge=0, le=100)] = 5
    share: Fraction = 0.25


class LimitSettings(_Section, frozen=True):
    """Bundle size limits, enforced (a request over them is refused with 422)."""

    default_top_k: PositiveInt = 10
    max_memories: Annotated[int, Meta(ge=1, le=1000)] = 50
    max_prompt_chars: Annotated[int, Meta(ge=64)] = 8000
    #: An evaluate's or a feedback's query: 422 ``out_of_range`` naming ``query`` beyond it.
    max_query_chars: Annotated[int, Meta(ge=1, le=MAX_QUERY_CHARS)] = 4000
    #: Dimension of the HRR residual vector; embeddings are projected to it (see ``hrr``).
    hrr_dim: Annotated[int, Meta(ge=16)] = 1024
    max_vector_dim: PositiveInt = 4096

    def __post_init__(self) -> None:
        if self.hrr_dim > self.max_vector_dim:
            raise ValueError(
                f"hrr_dim ({self.hrr_dim}) must not exceed max_vector_dim ({self.max_vector_dim})"
            )


class ContextSettings(_Section, frozen=True):
    embedder: Literal["builtin", "minilm"] = "builtin"
    #: Softmax temperature of the memories' weights in a bundle: w = softmax(score / t).
    temperature: PositiveFloat = 0.1
    #: Seconds a planner waits for the tenant's memory actor.
    recall_timeout: PositiveFloat = 5.0
    #: Attempts of an evaluate whose planner died (then 503).
    attempts: Annotated[int, Meta(ge=1, le=5)] = 2
    #: Where bundles (the planning, the residual vector) are built: ``"busy"``, in the node's
    #: search worker process while other evaluates are in progress on the node (the event loop
    #: has other work; alone, the loop builds it sooner than a round trip to the worker),
    #: ``"always"`` there, ``"never"`` (on the event loop). See ``offload``.
    build_in_worker: Literal["busy", "always", "never"] = "busy"
    views: ViewSettings = msgspec.field(default_factory=ViewSettings)
    embedding: EmbedderSettings = msgspec.field(default_factory=EmbedderSettings)
    working_memory: WorkingMemorySettings = msgspec.field(default_factory=WorkingMemorySettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    planner: PlannerSettings = msgspec.field(default_factory=PlannerSettings)
    adaptation: AdaptationSettings = msgspec.field(default_factory=AdaptationSettings)
    #: What feedback teaches besides the weights: the ``association`` view and co-use links.
    associations: AssociationSettings = msgspec.field(default_factory=AssociationSettings)

    def for_embedder(self) -> ContextSettings:
        """These settings with what the config left to the embedder filled in for
        ``embedder`` (``adaptation.prior_pull``, ``associations.weight`` and ``neighbours``).
        ``SomaConfig`` does it once loaded; settings built otherwise call it themselves."""
        return msgspec.structs.replace(
            self,
            adaptation=self.adaptation.for_embedder(self.embedder),
            associations=self.associations.for_embedder(self.embedder),
        )


def query_too_long(limit: int) -> str:
    """The message of a query over ``max_query_chars`` (the edge and the planners say it)."""
    return f"query is longer than {limit} characters (context.limits.max_query_chars)"


def tenant_default_weights(config: Any) -> dict[str, float]:
    """Every tenant's weights before adaptation, from a ``SomaConfig`` (or None: defaults):
    ``memory.weights`` when set, else the embedder's defaults over the enabled views, plus the
    ``association`` view when enabled (``context.associations.weight`` of the others' sum)."""
    context = getattr(config, "context", None)
    if not isinstance(context, ContextSettings):
        context = ContextSettings()
    memory = getattr(config, "memory", None)
    configured = getattr(memory, "weights", None) or {}
    enabled = getattr(memory, "extra_views", None)
    enabled = [*VIEW_NAMES, ASSOCIATION, FORM] if enabled is None else enabled
    return default_weights_for(configured, enabled, context)


def default_weights_for(
    configured: Mapping[str, float], enabled: Sequence[str], context: ContextSettings
) -> dict[str, float]:
    """The default weights for ``memory.weights`` (``configured``) and ``memory.extra_views``
    (``enabled``): what the planner adapts from and what the memory actor recalls with."""
    weights = resolve_weights(configured, enabled, context.embedder)
    return weights if configured else with_learned_views(weights, enabled, context)


def with_learned_views(
    weights: dict[str, float], enabled: Sequence[str], context: ContextSettings
) -> dict[str, float]:
    """``weights`` plus the views feedback teaches, among ``enabled``: ``association`` at
    ``context.associations.weight`` of their sum, then ``form`` at
    ``context.adaptation.form_weight`` of the sum of all those."""
    if ASSOCIATION in enabled:
        weights = with_association(weights, context.associations.view_weight)
    if FORM in enabled:
        weights = with_form(weights, context.adaptation.form_weight)
    return weights
