"""The OpenAPI 3.1 document of the edge, generated from the msgspec types and the route table.

``msgspec.json.schema_components`` gives JSON Schema 2020-12 components (which OpenAPI 3.1
uses as is) for every request and response type, so the document states exactly what the
decoders accept: required fields, ``Meta`` limits, unknown fields refused. ``schemas/openapi.json``
is this document, regenerated with ``somabrain openapi > schemas/openapi.json`` (a test checks
that the committed copy is current).
"""

from __future__ import annotations

import importlib.metadata
import inspect
from typing import Any

import msgspec

from . import schemas as s
from .errors import ErrorResponse
from .routes import KEY_ROUTE, ROUTES, Route

__all__ = ["openapi_document", "openapi_json"]

_REF = "#/components/schemas/{name}"

_STATUS_TEXT = {
    400: "Malformed request (bad JSON, bad tenant id, ambiguous tenant)",
    401: "Missing, invalid or expired bearer token",
    403: "The token does not grant this tenant or scope",
    404: "Unknown memory key (or actor path)",
    409: "The target is not in a state that allows this",
    413: "Request body larger than edge.max_body_bytes",
    415: "The body is declared as something other than UTF-8 JSON (Content-Type)",
    422: "A field is invalid; error.field names it",
    429: "Tenant rate limit exceeded; see Retry-After",
    503: "Not ready, actor unavailable or timed out; see Retry-After",
}


def _json(ref: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": ref}}


def _ok(name: str) -> dict[str, Any]:
    return {"description": "OK", "content": _json({"$ref": _REF.format(name=name)})}


def _error(status: int) -> dict[str, Any]:
    return {
        "description": _STATUS_TEXT.get(status, "Error"),
        "content": _json({"$ref": _REF.format(name="ErrorResponse")}),
    }


def _operation(route: Route, names: dict[type, str]) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": route.summary, "operationId": route.name}
    needs = f"Needs a token with the {route.scope} scope." if route.scope else ""
    description = " ".join(part for part in (needs, route.description) if part)
    if description:
        op["description"] = description
    if route.request is not None:
        op["requestBody"] = {
            "required": True,
            "content": _json({"$ref": _REF.format(name=names[route.request])}),
        }
    if route.text:
        ok: dict[str, Any] = {"description": "OK", "content": {"text/plain": {"schema": {}}}}
    elif route.response is not None:
        ok = {
            "description": "OK",
            "content": _json({"$ref": _REF.format(name=names[route.response])}),
        }
    else:
        ok = {"description": "OK", "content": _json({"type": "object"})}
    errors = sorted({*route.errors, *((415,) if route.request is not None else ())})
    op["responses"] = {"200": ok, **{str(code): _error(code) for code in errors}}
    if route.scope is not None:
        op["security"] = [{"bearer": []}]
    if route.tenant:
        op["parameters"] = [_TENANT_HEADER]
    return op


_TENANT_HEADER = {
    "name": "X-Tenant-ID",
    "in": "header",
    "required": False,
    "description": "The tenant to act for, among the token's tenants (optional when the "
    "token grants exactly one).",
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"},
}


def _version() -> str:
    try:
        return importlib.metadata.version("somabrain")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


_BEARER = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}


def openapi_document() -> dict[str, Any]:
    types: list[type] = [ErrorResponse, s.MemoryRecord, s.ForgetResponse]
    for route in ROUTES:
        types += [t for t in (route.request, route.response) if t is not None]
    unique = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(unique, ref_template=_REF)
    for component in components.values():
        # A struct's docstring is its description: msgspec 0.23 dedents it, earlier versions
        # keep the source's indentation; the document must not depend on which is installed.
        if isinstance(component.get("description"), str):
            component["description"] = inspect.cleandoc(component["description"])
    names = {t: ref["$ref"].rsplit("/", 1)[-1] for t, ref in zip(unique, schemas, strict=True)}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, names)
    key_param = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
    memory_errors = {str(c): _error(c) for c in (400, 401, 403, 404, 429, 503)}
    paths[KEY_ROUTE] = {
        "get": {
            "summary": "Get one memory by key",
            "operationId": "get_memory",
            "parameters": [key_param, _TENANT_HEADER],
            "security": [{"bearer": []}],
            "responses": {
                "200": _ok(names[s.MemoryRecord]),
                **memory_errors,
            },
        },
        "delete": {
            "summary": "Forget one memory (and its links)",
            "operationId": "forget_memory",
            "parameters": [key_param, _TENANT_HEADER],
            "security": [{"bearer": []}],
            "responses": {
                "200": _ok(names[s.ForgetResponse]),
                **memory_errors,
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SomaBrain",
            "version": _version(),
            "description": "Governed memory and context for AI agents. Errors are "
            '{"error": {"code", "message", "field"?, "trace_id"?}}.',
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"bearer": _BEARER},
        },
    }


def openapi_json() -> bytes:
    """The document as stable, indented JSON (what ``schemas/openapi.json`` holds)."""
    return msgspec.json.format(msgspec.json.encode(openapi_document()), indent=2) + b"\n"
