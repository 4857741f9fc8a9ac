"""The edge's ASGI application: HTTP in, actor messages out, JSON back.

Per request: match the route (404/405; HEAD is a GET answered without its body), authenticate
(401/403), check the body's media type (415 unless JSON: ``application/json`` or ``+json``,
UTF-8; a request without Content-Type is taken as JSON), read the body within
``edge.max_body_bytes`` (413, checked against Content-Length first and again while reading),
decode it with the one reused msgspec decoder of its type (400 malformed or nested deeper
than ``nesting.MAX_DEPTH``, 422 naming the field), resolve the tenant and take a rate-limit
token (429 with Retry-After), then the handler (``handlers.py``) asks the tenant's memory
actor. Every refusal is an ``HTTPError`` in the error model; an unexpected exception is logged
with the trace id and answered 500 without disturbing other requests.

Each response carries ``X-Trace-Id`` (taken from ``X-Request-ID`` or ``traceparent`` when the
client sends one). When the edge incarnation that owns this app has ended (``closing``), its
responses say ``Connection: close``: on asyncio, keep-alive connections accepted by a killed
edge outlive it, and this moves their clients to the new incarnation after one more request.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import anyio
import msgspec

from ..actors import ActorSystem
from ..config import SomaConfig
from .auth import Authenticator, Principal
from .context import ContextHandlers
from .errors import HTTPError, encode_error, from_decode_error, from_validation
from .governance import GovernanceHandlers
from .integers import WideInt, find_wide_int
from .metrics import Metrics
from .nesting import MAX_DEPTH, nests_too_deep
from .ops import OpsHandlers
from .ratelimit import RateLimiter, build_limiter
from .routes import ROUTES, Route
from .shared_ratelimit import SharedRateLimiter

__all__ = ["EdgeApp", "Request", "Response"]

logger = logging.getLogger("somabrain.edge")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = b"application/json"
_KEY_PREFIX = "/memory/"
_KEY_ROUTES = {
    "GET": Route("GET", "/memory/{key}", "get", "Get one memory by key"),
    "DELETE": Route("DELETE", "/memory/{key}", "forget", "Forget one memory"),
}
_TRACE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_HUGE = 10**18  # a Content-Length over every limit


class ClientDisconnectedError(Exception):
    """The client went away before its request body arrived: nobody to answer."""


@dataclass(slots=True)
class Request:
    route: Route
    trace_id: str
    principal: Principal | None
    tenant_header: str | None
    key: str | None
    body: Any
    #: Run after the response is sent (e.g. killing the edge that carries the response).
    after: Callable[[], Awaitable[None]] | None = None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = _JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


class EdgeApp(OpsHandlers, GovernanceHandlers, ContextHandlers):
    def __init__(
        self,
        system: ActorSystem,
        *,
        config: SomaConfig,
        auth: Authenticator,
        metrics: Metrics | None = None,
        limiter: RateLimiter | SharedRateLimiter | None = None,
        edge_path: str = "/root/edge",
    ) -> None:
        self.system = system
        self.config = config
        self.auth = auth
        self.metrics = metrics or Metrics()
        self.limiter = limiter or build_limiter(config.edge.rate_limit)
        if isinstance(self.limiter, SharedRateLimiter):  # its state, for /metrics
            system.resources.setdefault("metrics.sources", {})["edge.rate_limit"] = (
                self.limiter.metrics
            )
        self.edge_path = edge_path
        self.closing = False
        self._ended = False
        self._lifespan_ended: anyio.Event | None = None
        self._routes = {(r.method, r.path): r for r in ROUTES}
        self._methods: dict[str, list[str]] = {}
        for r in ROUTES:
            self._methods.setdefault(r.path, []).append(r.method)
        self._decoders: dict[type, msgspec.json.Decoder[Any]] = {
            r.request: msgspec.json.Decoder(r.request) for r in ROUTES if r.request is not None
        }
        self._handlers: dict[str, Callable[[Request], Awaitable[Response]]] = {
            r.name: getattr(self, f"_h_{r.name}") for r in (*ROUTES, *_KEY_ROUTES.values())
        }
        self.encoder = msgspec.json.Encoder()

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websockets: not part of the API
            await send({"type": "websocket.close", "code": 1003})

    def end(self) -> None:
        """The edge incarnation that serves this app has ended (stopped or killed): answer
        with ``Connection: close`` from now on, and end the lifespan."""
        self.closing = True
        self._ended = True
        if self._lifespan_ended is not None:
            self._lifespan_ended.set()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Nothing to do at startup or shutdown; the lifespan also ends with the incarnation
        (``end``). A kill cancels Hypercorn's asyncio server in the middle of its cleanup, so
        the shutdown message never comes, and Hypercorn runs the lifespan in a task of its own,
        outside the kill's cancel scope: that task would stay pending for good."""
        ended = self._lifespan_ended = anyio.Event()
        if self._ended:
            ended.set()
        async with anyio.create_task_group() as task_group:

            async def end_with_the_incarnation() -> None:
                await ended.wait()
                task_group.cancel_scope.cancel()

            task_group.start_soon(end_with_the_incarnation)
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    break
            task_group.cancel_scope.cancel()

    def _match(self, method: str, path: str) -> tuple[Route, str | None]:
        # HEAD is GET without the body (load balancers probe /healthz with it): the GET route
        # handles it, and ``_http`` drops the body.
        lookup = "GET" if method == "HEAD" else method
        route = self._routes.get((lookup, path))
        if route is not None:
            return route, None
        # One trailing slash is ignored (``POST /memory/recall/`` is ``/memory/recall``),
        # except on the key routes below: a key may end with a slash.
        bare = path[:-1] if len(path) > 1 and path.endswith("/") else None
        if bare is not None and (route := self._routes.get((lookup, bare))) is not None:
            return route, None
        allowed = set(self._methods.get(path, ()))
        if bare is not None:
            allowed.update(self._methods.get(bare, ()))
        if path.startswith(_KEY_PREFIX) and len(path) > len(_KEY_PREFIX):
            # Every key is addressable, even one named like a route ("recall"): GET and
            # DELETE of /memory/<anything> are the key routes.
            key_route = _KEY_ROUTES.get(lookup)
            if key_route is not None:
                return key_route, path[len(_KEY_PREFIX) :]
            allowed.update(_KEY_ROUTES)
        if not allowed:
            raise HTTPError(
                404, "not_found", f"no route for {method} {path} (GET /openapi.json lists them)"
            )
        if "GET" in allowed:
            allowed.add("HEAD")
        listed = ", ".join(sorted(allowed))
        raise HTTPError(
            405,
            "method_not_allowed",
            f"{path} accepts {listed}",
            headers=((b"allow", listed.encode()),),
        )

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        authorization = tenant = trace = None
        media_type: bytes | None = None
        content_length: int | None = None
        has_body = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                has_body = value != b"0"
                content_length = _content_length(value)
            elif name == b"x-tenant-id":
                tenant = value.decode("latin-1")
            elif name == b"content-type":
                media_type = value
            elif name == b"transfer-encoding":
                has_body = True
            elif name == b"x-request-id" or (name == b"traceparent" and trace is None):
                trace = value.decode("latin-1")
                if name == b"traceparent":
                    parts = trace.split("-")
                    trace = parts[1] if len(parts) == 4 else None
        trace_id = trace if trace is not None and _TRACE.match(trace) else os.urandom(8).hex()
        route_name = "unmatched"
        body_read = False
        request: Request | None = None
        try:
            route, key = self._match(scope["method"], scope["path"])
            route_name = route.name
            principal = None
            if route.scope is not None and not (
                route.public_when is not None and route.public_when(self.config)
            ):
                principal = self.auth.authenticate(authorization)
                principal.authorize(route.scope)
            body = None
            if not route.lenient and scope.get("query_string"):
                raise _query_refused(route, scope["query_string"])
            if route.request is not None:
                if media_type is not None:
                    _check_media_type(media_type)
                raw = await self._read_body(receive, content_length)
                body_read = True
                body = self._decode(route, raw)
            elif has_body and not route.lenient:
                raw = await self._read_body(receive, content_length)
                body_read = True
                _check_no_body(route, raw)
            request = Request(route, trace_id, principal, tenant, key, body)
            response = await self._handlers[route.name](request)
        except HTTPError as exc:
            response = Response(exc.status, encode_error(exc, trace_id), headers=exc.headers)
        except ClientDisconnectedError:
            self.metrics.observe(route_name, scope["method"], 499, time.perf_counter() - start)
            return
        except Exception:
            logger.exception(
                "internal error (trace id %s) on %s %s", trace_id, scope["method"], scope["path"]
            )
            error = HTTPError(500, "internal", f"internal error; trace id {trace_id}")
            response = Response(500, encode_error(error, trace_id))
        except anyio.get_cancelled_exc_class():
            # The server cancelled this request: its edge incarnation was killed (on asyncio,
            # Hypercorn cancels its connection tasks on the way out) or the graceful timeout
            # ran out. Hypercorn would answer a bare 500; the change may or may not have
            # happened, and the agent should retry: a 503, on a connection that closes.
            await self._answer_cancelled(send, trace_id, route_name, scope["method"], start)
            raise
        close = False
        if has_body and not body_read:
            # Answered before its body was read (refused early, or a body nobody wanted):
            # drain a small body so the connection can stay open; a large or chunked one
            # closes the connection instead.
            close = content_length is None or not await self._drain(receive, content_length)
        headers = _headers(response, trace_id, close or self.closing)
        try:
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            # A HEAD answer keeps the GET's headers (its Content-Length included), not its body.
            body = b"" if scope["method"] == "HEAD" else response.body
            await send({"type": "http.response.body", "body": body})
        finally:
            # Also when the send was cancelled (the connection went away, the edge was killed
            # meanwhile): the request was handled, and a kill-after-response must still happen.
            self.metrics.observe(
                route_name, scope["method"], response.status, time.perf_counter() - start
            )
            if request is not None and request.after is not None:
                with anyio.CancelScope(shield=True):
                    await request.after()

    async def _answer_cancelled(
        self, send: Send, trace_id: str, route_name: str, method: str, start: float
    ) -> None:
        error = HTTPError.retry_later(
            503, "unavailable", "the edge stopped while handling this request; retry it", 1
        )
        body = encode_error(error, trace_id)
        headers = _headers(Response(503, body, headers=error.headers), trace_id, close=True)
        # Shielded (trio and anyio cancel scopes cancel every await until the scope ends), and
        # bounded: the connection may be gone too, or its peer may not read.
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
            try:
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            except Exception:  # the connection is closed: nobody to tell
                pass
        self.metrics.observe(route_name, method, 503, time.perf_counter() - start)

    async def _read_body(self, receive: Receive, content_length: int | None) -> bytes:
        limit = self.config.edge.max_body_bytes
        if content_length is not None:
            if content_length < 0:
                raise HTTPError(400, "bad_request", "Content-Length is not a number")
            if content_length > limit:
                raise _too_large(limit)
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnectedError
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise _too_large(limit)
            return body
        chunks = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientDisconnectedError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _drain(self, receive: Receive, content_length: int) -> bool:
        """Read and drop a refused request's body; False if it is too large to bother."""
        if content_length < 0 or content_length > 65536:
            return False
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            if not message.get("more_body", False):
                return True

    def _decode(self, route: Route, raw: bytes) -> Any:
        assert route.request is not None
        if not raw.strip():
            raise HTTPError(400, "malformed_json", "the request body is empty: send a JSON object")
        try:
            body = self._decoders[route.request].decode(raw)
        except msgspec.ValidationError as exc:
            error = from_validation(exc)
            if error.field is None and error.message.startswith("Expected `object`"):
                error.message = f"the request body must be a JSON object ({error.message})"
            raise error from None
        except msgspec.DecodeError as exc:
            raise from_decode_error(exc) from None
        except UnicodeDecodeError as exc:  # msgspec's error for bad UTF-8 inside a string
            raise HTTPError(
                400, "malformed_json", f"request body is not valid UTF-8: {exc}"
            ) from None
        except RecursionError:  # nested far beyond MAX_DEPTH: see nesting.py
            raise _too_deep() from None
        if nests_too_deep(raw):
            raise _too_deep()
        if route.msgpack_bound:
            wide = find_wide_int(raw, body)
            if wide is not None:
                raise _too_wide(wide)
        return body

    def json(self, value: Any, status: int = 200) -> Response:
        return Response(status, self.encoder.encode(value))


def _headers(response: Response, trace_id: str, close: bool) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", response.content_type),
        (b"content-length", str(len(response.body)).encode()),
        (b"x-trace-id", trace_id.encode()),
        *response.headers,
    ]
    if close:
        headers.append((b"connection", b"close"))
    return headers


def _content_length(value: bytes) -> int:
    """The Content-Length header as a number (-1: not a number). int() refuses more than
    4300 digits; any number over 18 digits is over every body limit, so it is not parsed."""
    if not value.isdigit():
        return -1
    return int(value) if len(value) <= 18 else _HUGE


def _check_media_type(value: bytes) -> None:
    """Refuse (415) a body declared as anything but UTF-8 JSON. Why refuse rather than try to
    parse it: ``curl -d`` without a Content-Type header sends form encoding, and a client that
    declares XML, a form or Latin-1 text has a bug that a JSON parse error would hide behind a
    misleading message."""
    media, _, params = value.decode("latin-1").partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        shown = media or "(empty)"
        raise HTTPError(
            415,
            "unsupported_media_type",
            f"Content-Type {shown!r} is not supported: send a JSON body with "
            "'Content-Type: application/json'",
        )
    for param in params.split(";"):
        name, _, arg = param.partition("=")
        if name.strip().lower() == "charset":
            charset = arg.strip().strip('"').lower()
            if charset not in ("utf-8", "utf8"):
                raise HTTPError(
                    415,
                    "unsupported_media_type",
                    f"charset {charset!r} is not supported: JSON bodies are UTF-8",
                )


def _route_name(route: Route) -> str:
    return f"{route.method} {route.path}"


def _query_refused(route: Route, query: bytes) -> HTTPError:
    """422 ``unknown_field`` naming the first query parameter: no route but the lenient ones
    takes any (request fields go in the JSON body, the key in the path), and one the edge
    ignored could change what a request does (``DELETE /memory/k?namespace=notes`` would
    forget ``k`` whatever its namespace)."""
    first = query.split(b"&", 1)[0].split(b"=", 1)[0]
    name = unquote_plus(first.decode("latin-1"))[:64]
    hint = ": its fields go in the JSON body" if route.request is not None else ""
    return HTTPError(
        422,
        "unknown_field",
        f"{_route_name(route)} takes no query parameters ({name!r}){hint}",
        field=name or None,
    )


def _check_no_body(route: Route, raw: bytes) -> None:
    """A route without a request body accepts an empty one or ``{}`` (what many clients send
    with every POST), and refuses anything else rather than ignore it: a body field the edge
    ignored could change what the request does, as a query parameter could."""
    text = raw.strip()
    if not text:
        return
    try:
        value = msgspec.json.decode(text)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        value = None
    else:
        if value == {}:
            return
    if isinstance(value, dict):
        name = str(next(iter(value)))[:64]
        raise HTTPError(
            422,
            "unknown_field",
            f"{_route_name(route)} takes no request body: unknown field {name!r}",
            field=name or None,
        )
    raise HTTPError(
        400, "bad_request", f"{_route_name(route)} takes no request body: send none, or {{}}"
    )


def _too_deep() -> HTTPError:
    return HTTPError(
        400, "bad_request", f"the request body nests arrays and objects deeper than {MAX_DEPTH}"
    )


def _too_wide(wide: WideInt) -> HTTPError:
    return HTTPError(
        422,
        "out_of_range",
        f"{wide.location} is an integer outside [-2^63, 2^64 - 1], the range that can be "
        "stored: send larger numbers as strings",
        field=wide.field,
    )


def _too_large(limit: int) -> HTTPError:
    return HTTPError(413, "payload_too_large", f"the request body exceeds {limit} bytes")
