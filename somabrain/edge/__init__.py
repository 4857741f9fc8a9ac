"""The HTTP edge: a Hypercorn server run by a supervised actor, an ASGI app that turns requests
into messages to the tenant's memory actor, JWT auth, per-tenant rate limits, Prometheus
metrics and the OpenAPI document. See ``docs/edge.md``."""

from .actor import EdgeActor, EdgeServerError
from .app import EdgeApp
from .auth import Authenticator, Principal, TokenIssuer
from .errors import HTTPError
from .metrics import Metrics
from .ratelimit import RateLimiter
from .shared_ratelimit import SharedRateLimiter

__all__ = [
    "Authenticator",
    "EdgeActor",
    "EdgeApp",
    "EdgeServerError",
    "HTTPError",
    "Metrics",
    "Principal",
    "RateLimiter",
    "SharedRateLimiter",
    "TokenIssuer",
]
