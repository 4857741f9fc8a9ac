"""The edge's routes as data: one table read by the ASGI app (dispatch) and by the OpenAPI
generator (documentation), so the two never disagree."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import SomaConfig
from ..context import messages as ctx
from ..governance import http as gov
from . import context as c
from . import schemas as s
from .errors import ErrorResponse

__all__ = ["KEY_ROUTE", "ROUTES", "Route"]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    #: Name of the handler (``EdgeApp._<name>``) and the ``route`` label of metrics.
    name: str
    summary: str
    request: type | None = None
    response: type | None = ErrorResponse
    #: ``None``: no token needed; ``""``: any valid token for the tenant; else that scope.
    scope: str | None = ""
    #: When this returns true for the node's current config, no token is needed after all
    #: (read per request, so ``/admin/reload`` applies it).
    public_when: Callable[[SomaConfig], bool] | None = None
    tenant: bool = True
    text: bool = False  # the response is text/plain (metrics)
    errors: tuple[int, ...] = ()
    #: Said in the OpenAPI document after the scope the route needs.
    description: str = ""
    #: The body is stored or sent on as msgpack: its integers must fit 64 bits (``integers``).
    #: Policy inputs are not (the policies read JSON), so any integer stays valid there.
    msgpack_bound: bool = True
    #: Query parameters and a request body are ignored (the probes, the metrics and the
    #: document: monitors, scrapers and fetchers add cache busters and the like). Every other
    #: route takes neither (it refuses them: ``app._check_extras``), so that a parameter an
    #: agent believes it sent (``DELETE /memory/k?namespace=notes``) never goes unheeded.
    lenient: bool = False


def _metrics_public(config: SomaConfig) -> bool:
    return config.edge.metrics_public


_MEMORY_ERRORS = (400, 401, 403, 413, 422, 429, 503)
_ADMIN_ERRORS = (400, 401, 403, 413, 422, 503)

ROUTES: tuple[Route, ...] = (
    Route("POST", "/memory/remember", "remember", "Remember one memory",
          s.RememberRequest, s.RememberResponse, errors=(*_MEMORY_ERRORS, 404)),
    Route("POST", "/memory/remember/batch", "remember_batch", "Remember many memories at once",
          s.RememberBatchRequest, s.RememberBatchResponse, errors=(*_MEMORY_ERRORS, 404)),
    Route("POST", "/memory/recall", "recall", "Recall the memories best matching a query",
          s.RecallRequest, s.RecallResponse, errors=_MEMORY_ERRORS),
    Route("POST", "/memory/link", "link", "Link two memories (graph edge)",
          s.LinkRequest, s.LinkResponse, errors=(*_MEMORY_ERRORS, 404)),
    Route("GET", "/healthz", "healthz", "Liveness: the process answers",
          response=s.StatusResponse, scope=None, tenant=False, lenient=True),
    Route("GET", "/readyz", "readyz", "Readiness: the whole supervision tree is up",
          response=s.StatusResponse, scope=None, tenant=False, errors=(503,), lenient=True),
    Route("GET", "/health", "health", "Health of each component",
          response=s.HealthResponse, scope=None, tenant=False, lenient=True),
    # Its labels name tenants and their traffic: a scraper's token (scope metrics, no tenant),
    # unless the operator opens it (edge.metrics_public) on a network only the scraper reaches.
    Route("GET", "/metrics", "metrics",
          "Prometheus metrics (text exposition format)",
          response=None, scope="metrics", public_when=_metrics_public, tenant=False, text=True,
          errors=(401, 403), description="The admin scope implies metrics. With "
          "edge.metrics_public = true no token is needed.", lenient=True),
    Route("GET", "/openapi.json", "openapi", "This OpenAPI document",
          response=None, scope=None, tenant=False, lenient=True),
    Route("GET", "/admin/tree", "admin_tree", "The supervision tree, with counters",
          response=None, scope="admin", tenant=False, errors=_ADMIN_ERRORS),
    Route("POST", "/admin/actors/kill", "admin_kill",
          "Kill an actor or supervisor (its supervisor restarts it)",
          s.KillRequest, s.KillResponse, scope="admin", tenant=False,
          errors=(*_ADMIN_ERRORS, 404, 409)),
    Route("POST", "/admin/reload", "admin_reload",
          "Re-read the config file and apply what changed",
          s.ReloadRequest, s.ReloadResponse, scope="admin", tenant=False, errors=_ADMIN_ERRORS),
    Route("POST", "/context/evaluate", "context_evaluate",
          "A context bundle: weighted memories, residual vector, working memory, prompt",
          c.EvaluateRequest, ctx.ContextBundle, errors=(*_MEMORY_ERRORS, 403)),
    Route("POST", "/context/feedback", "context_feedback",
          "Feedback on a bundle: reinforces used memories, adapts the tenant's view weights",
          c.FeedbackRequest, ctx.FeedbackResult, errors=_MEMORY_ERRORS),
    Route("GET", "/context/adaptation/state", "context_adaptation_state",
          "The tenant's view weights and adaptation history length",
          response=ctx.AdaptationView, errors=_MEMORY_ERRORS),
    Route("POST", "/context/adaptation/reset", "context_adaptation_reset",
          "Restore the tenant's default view weights (admin scope)",
          response=ctx.AdaptationView, scope="admin", errors=_MEMORY_ERRORS),
    Route("GET", "/constitution/version", "constitution_version",
          "The active constitution (version, checksum, signers) or why there is none",
          response=gov.VersionResponse, tenant=False, errors=(401, 503)),
    Route("POST", "/constitution/validate", "constitution_validate",
          "Evaluate the policies on an input: {allowed, explain}",
          gov.ValidateRequest, gov.ValidateResponse, tenant=False,
          errors=(400, 401, 413, 422, 503), msgpack_bound=False),
    Route("POST", "/constitution/load", "constitution_load",
          "Load a signed constitution (refused with the reason unless it verifies)",
          gov.LoadRequest, gov.LoadResponse, scope="admin", tenant=False,
          errors=(*_ADMIN_ERRORS, 422)),
)  # fmt: skip

#: ``GET`` and ``DELETE /memory/{key}`` (everything after the prefix is the key).
KEY_ROUTE = "/memory/{key}"
