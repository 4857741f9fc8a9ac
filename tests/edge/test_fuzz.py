"""Schema-driven robustness test of the HTTP edge: whatever a client sends, the answer is a
success or a clear 4xx in the error model, never a 500, and acknowledged writes stay readable.

The operations come from the OpenAPI document the app serves (a test checks that the served
``/openapi.json`` holds exactly the operations fuzzed here), so a new route is fuzzed without
touching this file. Bodies are derived from each route's JSON Schema: a valid body with one
mutation (a wrong type or a null, a missing required field, an unknown field, an extreme number,
a very long string, deep nesting), and where the mutation must fail decoding, the 422 has to
name the field by its msgspec path. Besides: arbitrary JSON, raw bytes (not JSON, not UTF-8,
empty, chunked) under any Content-Type, odd headers (Content-Length, X-Tenant-ID, trace ids),
missing, malformed and forged tokens (and validly signed ones with odd claims), and odd keys in
``/memory/{key}``. At the end the tenant's memory actor is killed: replaying its log must give
back exactly what was readable before.

The harness is the in-process one of ``test_app.py`` (the app over a real tree: audit writer,
guardian, memory actors, planners), on both backends, driven by a minimal ASGI client that
builds the scope as Hypercorn does (``path`` is the percent-decoded ``raw_path``), so paths,
headers and body chunks reach the app exactly as written. Hypothesis draws in synchronous
tests (its ``StopTest`` must not cross the anyio test runner) and each request is a call into
the tree's event loop, running in a portal thread; one tree serves the module. Derandomized and
without an example database: every run sends the same requests.
"""

from __future__ import annotations

import base64
import datetime as dt
import gc
import hashlib
import hmac
import json
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

import msgspec
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from somabrain import config as soma_config
from somabrain.edge.app import EdgeApp
from somabrain.edge.errors import ErrorResponse
from somabrain.edge.openapi import openapi_document
from somabrain.edge.routes import KEY_ROUTE, ROUTES
from tests.edge.test_app import TREE, harness

FUZZ_TREE = {
    **TREE,
    "children": {
        "audit": {"kind": "actor", "actor": "somabrain.audit.writer:AuditWriter"},
        **TREE["children"],
        "planners": {"kind": "pool", "actor": "somabrain.context.actor:PlannerActor", "size": 2},
    },
}
TENANT = "acme"
MAX_BODY = 1 << 20  # edge.max_body_bytes (the default)

FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ_BODIES = settings(FUZZ, max_examples=50)  # the schema-shaped bodies reach the most code

# ----------------------------------------------------------------------------- the operations


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    body: dict[str, Any] | None  # the request body's JSON Schema
    secured: bool

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _operations(document: dict[str, Any]) -> list[Operation]:
    found = []
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            schema = body["schema"] if body else None
            found.append(Operation(method.upper(), path, schema, "security" in op))
    return found


DOCUMENT = openapi_document()  # what GET /openapi.json serves (checked below)
COMPONENTS: dict[str, Any] = DOCUMENT["components"]["schemas"]
OPERATIONS = _operations(DOCUMENT)
BODY_OPERATIONS = [op for op in OPERATIONS if op.body is not None]


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = COMPONENTS[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


# ----------------------------------------------------------------------------- the ASGI client


class Reply(NamedTuple):
    status: int
    headers: dict[bytes, bytes]
    body: bytes


async def call(
    app: EdgeApp,
    method: str,
    raw_path: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes | list[bytes] | None,
) -> Reply:
    """One request as Hypercorn hands it to the app. ``body`` as bytes: one chunk, with its
    Content-Length unless ``headers`` has one; as a list: one chunk each, chunked."""
    headers = list(headers)
    chunks = [body] if isinstance(body, bytes) else list(body or [b""])
    if isinstance(body, bytes) and body and all(k != b"content-length" for k, _ in headers):
        headers.append((b"content-length", str(len(body)).encode()))
    elif isinstance(body, list):
        headers.append((b"transfer-encoding", b"chunked"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode("ascii")),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 9696),
    }
    pending = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent and sent[0]["type"] == "http.response.start", sent
    body_out = b"".join(m.get("body", b"") for m in sent[1:])
    return Reply(sent[0]["status"], dict(sent[0]["headers"]), body_out)


# ----------------------------------------------------------------------------- the invariants

_STATUSES = {200, 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 503}
_CODE = re.compile(r"^[a-z][a-z_]*$")


def check(reply: Reply, what: object) -> dict[str, Any] | None:
    """Never a 500; an error is the error model with the headers its status promises.
    Returns the error (None for a success)."""
    assert reply.status in _STATUSES, (reply.status, reply.body[:2000], what)
    if reply.status == 200:
        if reply.headers[b"content-type"] == b"application/json":
            msgspec.json.decode(reply.body)
        return None
    assert reply.headers[b"content-type"] == b"application/json", what
    error = msgspec.json.decode(reply.body, type=ErrorResponse).error
    assert _CODE.match(error.code) and error.message, (error, what)
    assert error.trace_id == reply.headers[b"x-trace-id"].decode(), what
    assert error.field is None or error.field, (error, what)
    if reply.status == 401:
        assert reply.headers[b"www-authenticate"] == b"Bearer", what
    if reply.status in (429, 503):
        assert int(reply.headers[b"retry-after"]) >= 1, (error, what)
    if reply.status == 405:
        assert reply.headers[b"allow"], what
    return msgspec.structs.asdict(error)


# ----------------------------------------------------------------------------- the harness


@dataclass
class Edge:
    app: EdgeApp
    portal: BlockingPortal
    token: str  # tenant acme, admin scope
    #: Keys a remember was acknowledged for (checked again after a restart).
    acknowledged: set[str] = field(default_factory=set)

    def call(
        self,
        method: str,
        raw_path: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes | list[bytes] | None = None,
    ) -> Reply:
        """One request, with the admin token unless ``headers`` are given."""
        if headers is None:
            headers = [(b"authorization", f"Bearer {self.token}".encode())]
        return self.portal.call(call, self.app, method, raw_path, headers, body)

    def send(
        self,
        op: Operation,
        body: bytes | list[bytes] | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> Reply:
        return self.call(op.method, op.path.replace("{key}", "some-key").encode(), headers, body)


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def edge(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    # No rate limit: thousands of requests in a few seconds are the point here.
    environ = {"SOMA_EDGE__RATE_LIMIT__ENABLED": "false"}
    with start_blocking_portal(request.param) as portal:
        with (
            portal.wrap_async_context_manager(harness(tmp, FUZZ_TREE, environ=environ)) as h,
            pytest.MonkeyPatch.context() as patch,
        ):
            # /admin/reload re-reads the config: let it read this harness's (the default file
            # would add the edge and the workers to the tree under test).
            patch.setattr(soma_config, "load", lambda *args, **kwargs: h.app.config)
            yield Edge(h.app, portal, h.token(TENANT, scopes=("admin",)))
        # The guardian's policy engines may only be dropped on the thread that made them:
        # drop them in the portal's, not wherever the last reference to the app goes.
        portal.call(_drop_governance, h.app.system.resources)


def _drop_governance(resources: dict[str, Any]) -> None:
    resources.pop("governance", None)
    gc.collect()


# ----------------------------------------------------------------------------- JSON from schemas


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def allowed_types(schema: dict[str, Any]) -> set[str] | None:
    """The JSON types a schema accepts (None: any)."""
    schema = resolve(schema)
    if "anyOf" in schema:
        parts = [allowed_types(s) for s in schema["anyOf"]]
        return None if None in parts else set().union(*(p for p in parts if p is not None))
    if "enum" in schema:
        return {_json_type(v) for v in schema["enum"]}
    if "type" not in schema:
        return None
    types = {schema["type"]} if isinstance(schema["type"], str) else set(schema["type"])
    return types | {"integer"} if "number" in types else types


def _vocabulary(node: Any) -> set[str]:
    """The property names of a schema and of every schema it refers to: the field names a
    client uses. Free-form objects (``filters``, ``meta``, ``metadata``, a policy's ``input``)
    may give some of them a meaning of their own."""
    if isinstance(node, list):
        return set().union(*map(_vocabulary, node)) if node else set()
    if not isinstance(node, dict):
        return set()
    if "$ref" in node:
        return _vocabulary(resolve(node))
    props = node.get("properties")
    names = set(props) if isinstance(props, dict) else set()
    return names.union(*map(_vocabulary, node.values()))


# Plus what a flat ``filters`` and a remember's ``value`` read (docs/edge.md).
REQUEST_NAMES = _vocabulary([op.body for op in BODY_OPERATIONS]) | {"text", "any_tags", "task"}
json_keys = st.sampled_from(sorted(REQUEST_NAMES))
json_keys |= st.text(max_size=8)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_keys, inner, max_size=4),
    max_leaves=12,
)


def valid(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values the schema accepts (kept small: the fuzzing is in the mutations)."""
    schema = resolve(schema)
    if schema.get("format") == "date-time":  # ``at``, ``occurred_at``: RFC 3339
        return st.datetimes(timezones=st.none() | st.just(dt.UTC)).map(dt.datetime.isoformat)
    if "anyOf" in schema:
        return st.one_of([valid(s) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "string" and "pattern" in schema:
        return st.just(TENANT) | st.from_regex(schema["pattern"])
    if kind == "string":
        low = schema.get("minLength", 0)
        return st.text(min_size=low, max_size=min(schema.get("maxLength", 30), max(low, 30)))
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(
            schema.get("minimum", schema.get("exclusiveMinimum")),
            schema.get("maximum", schema.get("exclusiveMaximum")),
            exclude_min="exclusiveMinimum" in schema,
            exclude_max="exclusiveMaximum" in schema,
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array" and "prefixItems" in schema:
        return st.tuples(*map(valid, schema["prefixItems"])).map(list)
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(valid(schema.get("items", {})), min_size=low, max_size=max(low, 3))
    if kind == "object" and "properties" in schema:
        props, required = schema["properties"], set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: valid(v) for k, v in props.items() if k in required},
            optional={k: valid(v) for k, v in props.items() if k not in required},
        )
    if kind == "object":
        return st.dictionaries(json_keys, json_values, max_size=4)
    return json_values


class Case(NamedTuple):
    body: Any  # JSON-able, may hold msgspec.Raw
    #: (code, field) of the 422 the mutation must get, or None: only the invariants apply.
    expect: tuple[str, str] | None
    what: str


_WRONG = [None, True, 0, -7, 2.5, "", "text", [], [1, "a"], {}, {"k": "v"}]
# Out of float range, at its ends, past 64 bits, and more digits than int() parses by default.
_EXTREME_NUMBERS = [b"1e400", b"-1e400", b"1e308", b"-1e308", b"-0.0", b"5e-324",
                    b"18446744073709551616", b"-9223372036854775809", b"7" * 5000]  # fmt: skip


def _long(char: str, times: int) -> str:
    return char * times


def _nested(depth: int, pair: tuple[bytes, bytes]) -> msgspec.Raw:
    return msgspec.Raw(pair[0] * depth + b"1" + pair[1] * depth)


extremes = (
    st.sampled_from([msgspec.Raw(n) for n in _EXTREME_NUMBERS])
    | st.builds(_long, st.sampled_from("x é\U0001f600\x00"), st.sampled_from([1000, 300_000]))
    | st.builds(
        _nested,
        st.sampled_from([30, 63, 300, 900, 5000]),
        st.sampled_from([(b"[", b"]"), (b'{"a": ', b"}")]),
    )
    | st.just(msgspec.Raw(b"[" + b",".join([b"0.5"] * 10000) + b"]"))
)


def _object_schemas(schema: dict[str, Any]) -> list[tuple[dict[str, Any], bool]]:
    """The object schemas (with properties) a value of ``schema`` may be, and whether as the
    items of a list."""
    schema = resolve(schema)
    if "anyOf" in schema:
        return [found for s in schema["anyOf"] for found in _object_schemas(s)]
    if schema.get("type") == "object" and "properties" in schema:
        return [(schema, False)]
    if schema.get("type") == "array" and "items" in schema:
        return [(s, True) for s, listed in _object_schemas(schema["items"]) if not listed]
    return []


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


@st.composite
def mutated(draw: st.DrawFn, schema: dict[str, Any], where: str = "") -> Case:
    """A valid object of ``schema`` with one mutation (or none), maybe in a nested object."""
    schema = resolve(schema)
    props: dict[str, Any] = schema.get("properties", {})
    body: dict[str, Any] = draw(valid(schema))
    typed = [n for n in props if allowed_types(props[n]) is not None]
    nested = [(n, s, listed) for n in props for s, listed in _object_schemas(props[n])]
    kinds = ["none", "unknown"]
    kinds += ["extreme"] * bool(props) + ["wrong_type"] * bool(typed)
    kinds += ["missing"] * bool(schema.get("required")) + ["nested"] * bool(nested)
    kind = draw(st.sampled_from(kinds))
    if kind == "wrong_type":
        name = draw(st.sampled_from(typed))
        ok = allowed_types(props[name]) or set()
        body[name] = draw(st.sampled_from([v for v in _WRONG if _json_type(v) not in ok]))
        return Case(body, ("invalid_field", _join(where, name)), f"wrong type for {name}")
    if kind == "missing":
        name = draw(st.sampled_from(schema["required"]))
        body.pop(name, None)
        return Case(body, ("missing_field", _join(where, name)), f"missing {name}")
    if kind == "unknown":
        unknown = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True)
        name = draw(unknown.filter(lambda n: n not in props))
        body[name] = draw(json_values)
        if schema.get("additionalProperties") is False:
            return Case(body, ("unknown_field", _join(where, name)), f"unknown {name}")
        return Case(body, None, f"extra {name}")
    if kind == "nested":
        name, inner, listed = draw(st.sampled_from(nested))
        case = draw(mutated(inner, f"{_join(where, name)}[0]" if listed else _join(where, name)))
        body[name] = [case.body, *draw(st.lists(valid(inner), max_size=2))] if listed else case.body
        return Case(body, case.expect, f"{name}: {case.what}")
    if kind == "extreme":
        name = draw(st.sampled_from(sorted(props)))
        body[name] = draw(extremes)
        return Case(body, None, f"extreme {name}")
    return Case(body, None, "valid")


# ----------------------------------------------------------------------------- bodies


def test_every_route_is_fuzzed(edge: Edge) -> None:
    served = _operations(json.loads(edge.call("GET", b"/openapi.json").body))
    assert sorted(map(str, served)) == sorted(map(str, OPERATIONS))
    fuzzed = {(op.method, op.path) for op in OPERATIONS}
    assert {(r.method, r.path) for r in ROUTES} | {("GET", KEY_ROUTE), ("DELETE", KEY_ROUTE)} <= (
        fuzzed
    )


def _readback(edge: Edge, op: Operation, body: Any, reply: Reply) -> None:
    """An acknowledged remember is readable at once, with the content it was given."""
    answer = json.loads(reply.body)
    items = body["items"] if "results" in answer else [body]
    keys = [r["key"] for r in answer["results"]] if "results" in answer else [answer["key"]]
    latest = dict(zip(keys, items, strict=True))  # a key given twice holds its last item
    for key, item in latest.items():
        if item.get("ttl_seconds") is not None:
            continue  # may have expired already
        got = edge.call("GET", b"/memory/" + quote(key, safe="").encode())
        assert got.status == 200, (key, got.body)
        if isinstance(item.get("content"), str):
            assert json.loads(got.body)["content"] == item["content"]
        edge.acknowledged.add(key)


@pytest.mark.parametrize("op", BODY_OPERATIONS, ids=str)
@FUZZ_BODIES
@given(data=st.data())
def test_schema_mutations(edge: Edge, op: Operation, data: st.DataObject) -> None:
    assert op.body is not None
    case = data.draw(mutated(op.body))
    raw = msgspec.json.encode(case.body)
    reply = edge.send(op, raw)
    error = check(reply, (op, case.what, raw[:300]))
    if case.expect is not None and len(raw) <= MAX_BODY:
        assert error is not None and reply.status == 422, (op, case.what, raw[:300], reply.body)
        assert (error["code"], error.get("field")) == case.expect, (op, case.what, raw[:300])
    if reply.status == 200 and op.path.startswith("/memory/remember"):
        _readback(edge, op, case.body, reply)


@pytest.mark.parametrize("op", OPERATIONS, ids=str)
@FUZZ
@given(value=json_values)
def test_any_json(edge: Edge, op: Operation, value: Any) -> None:
    raw = msgspec.json.encode(value)
    reply = edge.send(op, raw)
    check(reply, (op, raw[:300]))
    if op.body is not None and not isinstance(value, dict):
        assert reply.status == 422, (op, raw[:300], reply.body)


@pytest.mark.parametrize("op", BODY_OPERATIONS, ids=str)
@FUZZ_BODIES
@given(data=st.data())
def test_known_fields_with_any_values(edge: Edge, op: Operation, data: st.DataObject) -> None:
    assert op.body is not None
    names = sorted(resolve(op.body).get("properties", {}))
    values = st.dictionaries(st.sampled_from(names), json_values | extremes, max_size=len(names))
    raw = msgspec.json.encode(data.draw(values if names else st.just({})))
    check(edge.send(op, raw), (op, raw[:300]))


_RAW = [b"", b" \n", b"null", b"[]", b"[1]", b"1", b'"x"', b"true", b"\xff\xfe", b"\xef\xbb\xbf{}",
        b"{", b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1e400}', b"{'a': 1}", b'{"a": 1,}',
        b"\x00", b'{"query": "\xed\xa0\x80"}', b'{"query": "\\ud800"}', b'{"query": "\xc3"}',
        b'{"a": 1} {"b": 2}', b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
        b'{"query": "x", "query": "y"}', b"<xml/>", b"query=x&top_k=3"]  # fmt: skip
_CONTENT_TYPES = [None, b"application/json", b"text/plain", b"application/x-www-form-urlencoded",
                  b"multipart/form-data; boundary=x", b"application/json; charset=latin-1",
                  b"application/xml", b"", b"\xff\xfe", b"Application/JSON; Charset=\"UTF-8\"",
                  b"application/problem+json"]  # fmt: skip
#: The ones a body may be declared as (no header at all is taken as JSON).
_JSON_TYPES = {None, b"application/json", b"Application/JSON; Charset=\"UTF-8\"",
               b"application/problem+json"}  # fmt: skip


def _is_json(raw: bytes) -> bool:
    def refuse(constant: str) -> None:
        raise ValueError(constant)  # NaN, Infinity: Python's json takes them, JSON does not

    try:
        json.loads(raw.decode("utf-8"), parse_constant=refuse)
    except (ValueError, RecursionError):
        return False
    return True


@pytest.mark.parametrize("op", OPERATIONS, ids=str)
@FUZZ
@given(
    raw=st.sampled_from(_RAW) | st.binary(max_size=64),
    content_type=st.sampled_from(_CONTENT_TYPES),
    chunked=st.booleans(),
)
def test_raw_bodies(
    edge: Edge, op: Operation, raw: bytes, content_type: bytes | None, chunked: bool
) -> None:
    headers = [(b"authorization", f"Bearer {edge.token}".encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    body: bytes | list[bytes] = [raw[: len(raw) // 2], raw[len(raw) // 2 :]] if chunked else raw
    reply = edge.send(op, body, headers)
    error = check(reply, (op, raw[:300]))
    if op.body is not None and content_type not in _JSON_TYPES:
        assert error is not None and error["code"] == "unsupported_media_type", (op, content_type)
        assert reply.status == 415, (op, content_type, reply.status)
    elif op.body is not None and not raw.strip():
        assert error is not None and error["code"] == "malformed_json", (op, raw)
    elif op.body is not None and not _is_json(raw):
        # 400 malformed_json, unless msgspec (which validates while it parses) met a field it
        # refuses before the syntax error: 422.
        assert error is not None and reply.status in (400, 422), (op, raw, reply.body)
        assert reply.status == 422 or error["code"] == "malformed_json", (op, raw, error)


# ----------------------------------------------------------------------------- headers and tokens

_LENGTHS = [b"abc", b"-1", b"1.5", b" 12", b"", b"9" * 30, b"9" * 5000, b"\xd9\xa1", b"0x10"]
_TENANTS = [None, TENANT, "", "a/b", "../x", "x" * 65, "*"]
_TRACEPARENTS = [None, b"00-abc-def-01", b"---", b"00--x-01"]


@pytest.mark.parametrize("op", OPERATIONS, ids=str)
@FUZZ
@given(
    length=st.sampled_from(_LENGTHS) | st.integers(0, 2**70).map(lambda n: str(n).encode()),
    tenant=st.sampled_from(_TENANTS) | st.binary(max_size=70),
    trace=st.none() | st.binary(max_size=80),
    traceparent=st.sampled_from(_TRACEPARENTS) | st.binary(max_size=80),
)
def test_odd_headers(
    edge: Edge,
    op: Operation,
    length: bytes,
    tenant: bytes | str | None,
    trace: bytes | None,
    traceparent: bytes | None,
) -> None:
    headers = [(b"authorization", f"Bearer {edge.token}".encode()), (b"content-length", length)]
    odd = {b"x-tenant-id": tenant, b"x-request-id": trace, b"traceparent": traceparent}
    for name, value in odd.items():
        if value is not None:
            headers.append((name, value.encode() if isinstance(value, str) else value))
    check(edge.send(op, b'{"query": "x"}', headers), (op, headers))


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _forged(header: bytes, payload: bytes = b'{"tenants": ["acme"], "exp": 9999999999}') -> bytes:
    """A token with any header and payload (the header is parsed before the signature is
    checked)."""
    return b"Bearer " + _b64(header) + b"." + _b64(payload) + b"." + _b64(b"signature")


def _signed(claims: dict[str, Any], key: str) -> bytes:
    """An HS256 token with any claims (PyJWT's encoder refuses some), NaN and Infinity
    written as Python's json writes them."""
    signed = _b64(b'{"alg": "HS256", "typ": "JWT"}') + b"." + _b64(json.dumps(claims).encode())
    signature = hmac.new(key.encode(), signed, hashlib.sha256).digest()
    return b"Bearer " + signed + b"." + _b64(signature)


_BAD_AUTHORIZATION = [
    b"", b"Bearer", b"Bearer ", b"Basic abc", b"bearer  x.y.z", b"Bearer a.b.c", b"Bearer \xff",
    _forged(b"[" * 5000 + b"]" * 5000),
    _forged(b'{"alg": "HS256", "kid": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    _forged(b"[]"), _forged(b"null"), _forged(b"\xff\xfe"), _forged(b'{"alg": "none"}'),
    _forged(b'{"alg": "HS512", "typ": "JWT"}'), _forged(b'{"alg": ["HS256"]}'),
    _forged(b'{"alg": "HS256", "crit": ["exp"]}'),
    _forged(b'{"alg": "HS256"}', b"[" * 5000 + b"]" * 5000),
]  # fmt: skip
_ODD = [float("inf"), float("nan"), 2**70, -1, "x", None, True]
claims = st.fixed_dictionaries(
    {},
    optional={
        "sub": json_values,
        "tenants": st.sampled_from([[TENANT], ["*"], [], ["a/b"], TENANT, [1], [[TENANT]]])
        | json_values,
        "tenant": json_values,
        "scopes": st.sampled_from([["admin"], "admin", "admin other", [None]]) | json_values,
        "scope": json_values,
        "exp": st.sampled_from([2**33, 1.5e9, "2**33", *_ODD]) | json_values,
        "iat": st.sampled_from(_ODD) | json_values,
        "nbf": st.sampled_from(_ODD) | json_values,
        "aud": json_values,
        "iss": json_values,
    },
)  # fmt: skip


@pytest.mark.parametrize("op", OPERATIONS, ids=str)
@FUZZ
@given(
    authorization=st.sampled_from([None, *_BAD_AUTHORIZATION])
    | st.binary(max_size=80).map(lambda b: b"Bearer " + b),
    claims=st.none() | claims,
    wrong_key=st.booleans(),
)
def test_tokens(
    edge: Edge,
    op: Operation,
    authorization: bytes | None,
    claims: dict[str, Any] | None,
    wrong_key: bool,
) -> None:
    """No token, a malformed or forged one, or one signed with the node's key (only the
    issuer can send those, but a 500 would still be a bug) carrying odd claims."""
    if claims is not None:
        key = "not the node's secret, but as long" if wrong_key else edge.app.auth.key
        authorization = _signed(claims, key)
    headers = [] if authorization is None else [(b"authorization", authorization)]
    reply = edge.send(op, b"{}", headers)
    error = check(reply, (op, authorization))
    if op.secured and (claims is None or wrong_key):
        assert error is not None and reply.status == 401, (op, authorization, reply.body)


# ----------------------------------------------------------------------------- keys

_KEY_CHARS = st.text(
    alphabet=st.sampled_from(string.printable + "é中\U0001f600\u202e\ufeff") | st.characters(),
    min_size=1,
    max_size=40,
)
key_paths = (
    _KEY_CHARS.map(lambda k: quote(k, safe="").encode())
    | _KEY_CHARS.map(lambda k: quote(k, safe="/.:@!$&'()*+,;=").encode())
    | st.sampled_from([b".", b"..", b"../healthz", b"./x", b"%2e%2e", b"%2F", b"%00", b"%FF",
                       b"%", b"%zz", b"%C3", b"recall", b"remember/batch", b"a" * 5000,
                       b"%F0%9F%98%80" * 500, b"/", b"//", b"%20"])
    | st.text(alphabet="%0123456789abcdefABCDEF./", min_size=1, max_size=30).map(str.encode)
)  # fmt: skip


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@FUZZ
@given(key_path=key_paths)
def test_odd_keys(edge: Edge, method: str, key_path: bytes) -> None:
    reply = edge.call(method, b"/memory/" + key_path)
    error = check(reply, key_path)
    assert reply.status in (200, 404), (key_path, reply.body)
    assert error is None or error["code"] == "memory_not_found", (key_path, error)


@FUZZ
@given(key=st.text(min_size=1, max_size=512))
def test_any_key_round_trips(edge: Edge, key: str) -> None:
    """Whatever key a memory is remembered under, it is read and forgotten under that key; a
    blank key (whitespace only, as a blank content) is a 422 naming it."""
    body = msgspec.json.encode({"key": key, "content": "a memory with an odd key"})
    remember = edge.call("POST", b"/memory/remember", body=body)
    error = check(remember, key)
    if not key.strip():
        assert remember.status == 422 and error is not None, (key, remember.body)
        assert (error["code"], error["field"]) == ("invalid_field", "key"), (key, error)
        return
    assert remember.status == 200 and json.loads(remember.body)["key"] == key, remember.body
    path = b"/memory/" + quote(key, safe="").encode()
    got = edge.call("GET", path)
    assert got.status == 200 and json.loads(got.body)["key"] == key, (key, got.body)
    assert edge.call("DELETE", path).status == 200
    assert edge.call("GET", path).status == 404


# ----------------------------------------------------------------------------- afterwards


def test_replay_after_fuzzing_gives_back_what_was_readable(edge: Edge) -> None:
    """The last test of the module: the tenant's log, after all of the above, replays to the
    state the live actor answered (keys overwritten or forgotten since count as they are)."""
    body = b'{"key": "after-fuzzing", "content": "still here"}'
    assert edge.call("POST", b"/memory/remember", body=body).status == 200
    keys = sorted(edge.acknowledged | {"after-fuzzing"})

    def state() -> list[tuple[int, Any]]:
        """Each key's record, or its error code (errors carry a fresh trace id)."""
        answers = []
        for key in keys:
            reply = edge.call("GET", b"/memory/" + quote(key, safe="").encode())
            answer = json.loads(reply.body)
            answers.append((reply.status, answer["error"]["code"] if "error" in answer else answer))
        return answers

    before = state()
    kill = edge.call("POST", b"/admin/actors/kill", body=b'{"path": "/root/memory/acme"}')
    assert kill.status == 200, kill.body
    assert state() == before
    recall = edge.call("POST", b"/memory/recall", body=b'{"query": "still here"}')
    assert recall.status == 200 and b"after-fuzzing" in recall.body
    assert edge.call("GET", b"/readyz").status == 200
