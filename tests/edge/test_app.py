"""The ASGI app in-process (httpx's ASGI transport), against a real tree of memory actors,
on both anyio backends. Everything but the socket: routing, auth, decoding, errors, dispatch."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from somabrain import config as soma_config
from somabrain.actors import ActorSystem
from somabrain.edge.app import EdgeApp
from somabrain.edge.auth import Authenticator
from somabrain.edge.ops import CLI_OVERRIDES_RESOURCE
from somabrain.supervision import SupervisionTree, SupervisorNode

pytestmark = pytest.mark.anyio

TREE = {
    "intensity": 10,
    "children": {
        # remember fails closed (503) without a constitution: the guardian bootstraps a dev one
        "guardian": {"kind": "actor", "actor": "somabrain.governance.guardian:GuardianActor"},
        "memory": {
            "kind": "dynamic",
            "actor": "somabrain.memory.actor:MemoryActor",
            "idle_timeout": 0,
            "backoff": {"initial": 0.0},
        },
    },
}


class Harness:
    def __init__(self, app: EdgeApp, auth: Authenticator, tree: SupervisionTree) -> None:
        self.app = app
        self.auth = auth
        self.tree = tree

    def token(self, *tenants: str, scopes: tuple[str, ...] = (), ttl: float | None = None) -> str:
        return self.auth.issuer().issue(tenants, scopes=scopes, ttl=ttl)

    def client(self, *tenants: str, scopes: tuple[str, ...] = ()) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.token(*(tenants or ('acme',)), scopes=scopes)}"}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),  # type: ignore[arg-type]
            base_url="http://edge",
            headers=headers,
        )


@asynccontextmanager
async def harness(
    tmp_path: Path,
    tree: dict[str, Any] | None = None,
    *,
    environ: dict[str, str] | None = None,
    **edge: Any,
) -> AsyncIterator[Harness]:
    """``environ``: ``SOMA_*`` overrides, read as the node reads them. The port is 0, as if
    given on the command line (``--port 0``): a reload that starts the tree's edge child (the
    default tree has one) must not take the default port, which a dev node may hold."""
    cfg = soma_config.load(environ=environ or {})
    edge.setdefault("port", 0)
    tree_node = msgspec.convert(tree or TREE, SupervisorNode)
    cfg = msgspec.structs.replace(
        cfg, tree=tree_node, edge=msgspec.structs.replace(cfg.edge, **edge)
    )
    auth = Authenticator(cfg.auth, tmp_path)
    async with ActorSystem() as system:
        system.resources.update(config=cfg, data_dir=tmp_path, auth=auth, config_path=None)
        system.resources[CLI_OVERRIDES_RESOURCE] = {"port": edge["port"]}
        tree = SupervisionTree(system, cfg.tree, cfg.node)
        system.resources["tree"] = tree
        await tree.start()
        try:
            yield Harness(EdgeApp(system, config=cfg, auth=auth), auth, tree)
        finally:
            await tree.stop()
    # The guardian's regorus engines may only be dropped on the thread that made them: collect
    # them here rather than in whatever thread (a log writer, a later test's client) a GC
    # happens to run in.
    gc.collect()


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    assert body["trace_id"] == response.headers["x-trace-id"]
    return body


async def test_memory_round_trip(tmp_path: Path) -> None:
    async with harness(tmp_path) as h, h.client() as client:
        r = await client.post(
            "/memory/remember",
            json={"content": "Paris is in France", "tags": ["geo"], "meta": {"kind": "fact"}},
        )
        assert r.status_code == 200, r.text
        first = r.json()
        assert first["ok"] and first["namespace"] == "default" and not first["deduplicated"]
        assert first["audit_id"] is None  # this tree runs no audit writer: nothing recorded
        again = (
            await client.post("/memory/remember", json={"content": "Paris is in France"})
        ).json()
        assert again["key"] == first["key"] and again["deduplicated"]
        r = await client.post(
            "/memory/remember",
            json={
                "key": "k2",
                "namespace": "notes",
                "value": {"task": "visit Rome"},
                "occurred_at": "2024-05-01T10:00:00Z",
                "importance": 0.9,
            },
        )
        assert r.status_code == 200, r.text
        r = await client.post("/memory/recall", json={"query": "France", "top_k": 5})
        body = r.json()
        assert body["results"][0]["key"] == first["key"]
        views = body["results"][0]["views"]
        assert set(views) == {
            "semantic", "lexical", "graph", "recency", "salience", "association", "form"
        }  # fmt: skip
        assert views["form"] == 0.5  # no feedback yet: every memory alike
        assert all(0.0 <= v <= 1.0 for v in views.values())
        assert body["results"][0]["meta"] == {"kind": "fact"}
        assert body["ltm_hits"] == len(body["results"]) and body["wm_hits"] == 0
        r = await client.post("/memory/recall", json={"query": "Rome", "namespace": "notes"})
        assert [x["key"] for x in r.json()["results"]] == ["k2"]
        r = await client.post("/memory/recall", json={"query": "France", "filters": {"kind": "x"}})
        assert r.json()["results"] == []
        r = await client.post(
            "/memory/link",
            json={"from_key": "k2", "to_key": first["key"], "rel": "mentions", "weight": 0.5},
        )
        assert r.json()["rel"] == "mentions"
        got = (await client.get("/memory/k2")).json()
        assert got["content"] == "visit Rome" and got["importance"] == 0.9
        assert got["occurred_at"] == 1714557600.0
        assert got["links"] == [{"to_key": first["key"], "rel": "mentions", "weight": 0.5}]
        assert (await client.delete("/memory/k2")).json()["deleted"] is True
        assert error_of(await client.get("/memory/k2"))["code"] == "memory_not_found"
        assert (await client.delete("/memory/k2")).status_code == 404


async def test_batch_and_working_memory_layer(tmp_path: Path) -> None:
    async with harness(tmp_path, max_batch_items=5) as h, h.client() as client:
        items = [{"content": f"session note {i}", "session_id": "s1"} for i in range(3)]
        items.append({"content": "older note", "session_id": "s0"})
        r = await client.post("/memory/remember/batch", json={"items": items})
        assert r.status_code == 200 and r.json()["count"] == 4
        r = await client.post(
            "/memory/recall", json={"query": "note", "layer": "wm", "session_id": "s1"}
        )
        body = r.json()
        assert body["wm_hits"] == 3 and body["ltm_hits"] == 0
        r = await client.post(
            "/memory/recall", json={"query": "note", "layer": "both", "session_id": "s1"}
        )
        body = r.json()
        assert (body["wm_hits"], body["ltm_hits"]) == (3, 1)
        r = await client.post("/memory/remember/batch", json={"items": items * 2})
        assert r.status_code == 422 and error_of(r) | {"trace_id": None} == {
            "code": "batch_too_large",
            "message": "8 items in one batch; the limit is 5",
            "field": "items",
            "trace_id": None,
        }


async def test_recall_ranks_recency_from_at(tmp_path: Path) -> None:
    """Two memories equal on every view but recency: ``at`` decides which one is recent."""
    yesterday = float(int(time.time()) - 86400)
    async with harness(tmp_path) as h, h.client() as client:
        for namespace, when in (("old", "2020-01-01T00:00:00Z"), ("new", yesterday)):
            r = await client.post(
                "/memory/remember",
                json={"content": "quarterly planning meeting", "namespace": namespace,
                      "occurred_at": when},
            )  # fmt: skip
            assert r.status_code == 200, r.text

        async def ranking(at: object) -> list[tuple[str, float]]:
            r = await client.post(
                "/memory/recall", json={"query": "planning meeting", "top_k": 2, "at": at}
            )
            assert r.status_code == 200, r.text
            return [(x["namespace"], x["views"]["recency"]) for x in r.json()["results"]]

        near_old = await ranking("2020-01-02T00:00:00+00:00")
        assert [ns for ns, _ in near_old] == ["old", "new"]
        assert near_old[0][1] > 0.9 > near_old[1][1]
        near_new = await ranking(int(yesterday))  # epoch seconds, an int is fine
        assert [ns for ns, _ in near_new] == ["new", "old"] and near_new[0][1] == 1.0
        assert [ns for ns, _ in await ranking("2020-01-01T12:00:00")] == ["old", "new"]  # UTC
        assert [ns for ns, _ in await ranking(None)] == ["new", "old"]  # default: now


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "field"),
    [
        ("/memory/recall", {"query": "x", "top_k": "a"}, 422, "invalid_field", "top_k"),
        ("/memory/recall", {"query": "x", "top_k": 0}, 422, "out_of_range", "top_k"),
        ("/memory/recall", {"query": "x", "top_k": 101}, 422, "out_of_range", "top_k"),
        ("/memory/recall", {"query": "x", "nope": 1}, 422, "unknown_field", "nope"),
        ("/memory/recall", {"top_k": 3}, 422, "missing_field", "query"),
        ("/memory/recall", {"query": "x", "layer": "wm"}, 422, "missing_field", "session_id"),
        ("/memory/recall", {"query": "x", "at": "last week"}, 422, "invalid_field", "at"),
        ("/memory/recall", {"query": "x", "at": [2024]}, 422, "invalid_field", "at"),
        (
            "/memory/recall",
            {"query": "x", "filters": {"tags": 3}},
            422,
            "invalid_field",
            "filters.tags",
        ),
        ("/memory/remember", {"key": "k"}, 422, "missing_field", "content"),
        ("/memory/remember", {"content": "  "}, 422, "invalid_field", "content"),
        ("/memory/remember", {"content": "x", "importance": 2}, 422, "out_of_range", "importance"),
        (
            "/memory/remember",
            {"content": "x", "vector": [1.0, 2.0]},
            422,
            "invalid_field",
            "vector",
        ),
        (
            "/memory/remember",
            {"content": "x", "links": [{"to_key": "ghost"}]},
            404,
            "memory_not_found",
            "links[0].to_key",
        ),
        (
            "/memory/remember/batch",
            {"items": [{"content": "x"}, {"content": "y", "links": [{"to_key": "ghost"}]}]},
            404,
            "memory_not_found",
            "items[1].links[0].to_key",
        ),
        ("/memory/remember", {"content": "x", "tenant": "other"}, 403, "tenant_forbidden", None),
        ("/memory/remember", {"content": "x", "tenant": "a/b"}, 422, "invalid_field", "tenant"),
        (
            "/memory/remember/batch",
            {"items": [{"content": "x"}, {"content": 1}]},
            422,
            "invalid_field",
            "items[1].content",
        ),
        (
            "/memory/remember/batch",
            {"items": [{"content": "x", "tenant": "zz"}]},
            400,
            "tenant_conflict",
            "items[0].tenant",
        ),
        ("/memory/remember/batch", {"items": []}, 422, "out_of_range", "items"),
        ("/memory/link", {"from_key": "a", "to_key": "b"}, 404, "memory_not_found", "from_key"),
        ("/memory/link", {"from_key": "a"}, 422, "missing_field", "to_key"),
        # blank keys and namespaces, as blank content; times no RFC 3339 date-time can say
        ("/memory/remember", {"content": "x", "key": "  "}, 422, "invalid_field", "key"),
        ("/memory/remember", {"content": "x", "namespace": "\t"}, 422, "invalid_field",
         "namespace"),
        ("/memory/remember/batch", {"items": [{"content": "x", "links": [{"to_key": " "}]}]},
         422, "invalid_field", "items[0].links[0].to_key"),
        ("/memory/link", {"from_key": " ", "to_key": "b"}, 422, "invalid_field", "from_key"),
        ("/memory/recall", {"query": "x", "namespace": " "}, 422, "invalid_field", "namespace"),
        ("/context/evaluate", {"query": "x", "namespace": " "}, 422, "invalid_field",
         "namespace"),
        ("/context/feedback", {"query": "x", "session_id": "s", "used_keys": ["a", " "]}, 422,
         "invalid_field", "used_keys[1]"),
        # blank tags, link relations and session ids too
        ("/memory/remember", {"content": "x", "tags": ["geo", " "]}, 422, "invalid_field",
         "tags[1]"),
        ("/memory/remember", {"content": "x", "session_id": "  "}, 422, "invalid_field",
         "session_id"),
        ("/memory/link", {"from_key": "a", "to_key": "b", "rel": "\t"}, 422, "invalid_field",
         "rel"),
        ("/memory/recall", {"query": "x", "layer": "wm", "session_id": " "}, 422,
         "invalid_field", "session_id"),
        ("/context/evaluate", {"query": "x", "session_id": " "}, 422, "invalid_field",
         "session_id"),
        ("/context/feedback", {"query": "x", "session_id": " "}, 422, "invalid_field",
         "session_id"),
        ("/memory/remember", {"content": "x", "occurred_at": 1e300}, 422, "out_of_range",
         "occurred_at"),
        ("/memory/remember", {"content": "x", "occurred_at": -1e15}, 422, "out_of_range",
         "occurred_at"),
        ("/memory/recall", {"query": "x", "at": 1e19}, 422, "out_of_range", "at"),
        ("/context/evaluate", {"query": "x", "at": -1e300}, 422, "out_of_range", "at"),
    ],
)  # fmt: skip
async def test_bad_input_is_a_clear_4xx(
    tmp_path: Path, path: str, body: Any, status: int, code: str, field: str | None
) -> None:
    async with harness(tmp_path) as h, h.client() as client:
        r = await client.post(path, json=body)
        assert r.status_code == status, r.text
        error = error_of(r)
        assert (error["code"], error.get("field")) == (code, field)


async def test_an_unknown_link_target_is_named_in_the_404(tmp_path: Path) -> None:
    async with harness(tmp_path) as h, h.client() as client:
        assert (await client.post("/memory/remember", json={"content": "a", "key": "a"})).is_success
        r = await client.post("/memory/link", json={"from_key": "a", "to_key": "ghost"})
        assert r.status_code == 404
        assert (error_of(r)["code"], error_of(r)["field"]) == ("memory_not_found", "to_key")


async def test_malformed_bodies(tmp_path: Path) -> None:
    async with harness(tmp_path, max_body_bytes=1000) as h, h.client() as client:
        for raw in (b'{"query": ', b"", b"\xff\xfe", b"not json"):
            r = await client.post("/memory/recall", content=raw)
            assert r.status_code == 400 and error_of(r)["code"] == "malformed_json", raw
        r = await client.post("/memory/recall", content=b"[1]")
        assert r.status_code == 422
        r = await client.post("/memory/remember", json={"content": "x" * 2000})
        assert r.status_code == 413 and error_of(r)["code"] == "payload_too_large"


async def test_a_body_declared_as_anything_but_json_is_a_415(tmp_path: Path) -> None:
    """``curl -d`` without a Content-Type header declares a form: refused with a hint, and
    nothing is stored. JSON under its own media types (any case, UTF-8, ``+json``) and a
    body without Content-Type are read as JSON."""
    body = b'{"content": "Paris is the capital of France", "key": "paris"}'
    async with harness(tmp_path) as h, h.client() as client:
        for declared in ("application/x-www-form-urlencoded", "text/plain", "application/xml",
                         "multipart/form-data; boundary=x", "application/json; charset=latin-1",
                         "application/jsonx", ""):  # fmt: skip
            r = await client.post("/memory/remember", content=body,
                                  headers={"content-type": declared})  # fmt: skip
            assert r.status_code == 415, (declared, r.text)
            assert error_of(r)["code"] == "unsupported_media_type"
            assert "application/json" in error_of(r)["message"] or "UTF-8" in error_of(r)["message"]
        r = await client.get("/memory/paris")
        assert r.status_code == 404, "a refused remember stored nothing"
        for declared in ("application/json", "Application/JSON; Charset=\"UTF-8\"",
                         "application/vnd.soma+json", None):  # fmt: skip
            headers = {} if declared is None else {"content-type": declared}
            r = await client.post("/memory/recall", content=b'{"query": "x"}', headers=headers)
            assert r.status_code == 200, (declared, r.text)
        # a route without a body ignores what the request declares
        r = await client.get("/memory/paris", headers={"content-type": "text/plain"})
        assert r.status_code == 404 and error_of(r)["code"] == "memory_not_found"


async def test_bodies_that_break_the_decoder_are_400s(tmp_path: Path) -> None:
    """Invalid UTF-8 inside a string and nesting past the recursion limit make msgspec raise
    UnicodeDecodeError and RecursionError, not DecodeError; a Content-Length of thousands of
    digits is more than int() parses. Each is a 4xx, not a 500."""
    async with harness(tmp_path) as h, h.client() as client:
        r = await client.post("/memory/recall", content=b'{"query": "\xed\xa0\x80"}')
        assert r.status_code == 400 and error_of(r)["code"] == "malformed_json"
        for deep in (b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000):
            body = b'{"query": "x", "filters": {"a": %s}}' % deep
            r = await client.post("/memory/recall", content=body)
            assert r.status_code == 400 and error_of(r)["code"] == "bad_request", deep[:10]
        r = await client.post(
            "/memory/recall", content=b"{}", headers={"content-length": "9" * 5000}
        )
        assert r.status_code == 413 and error_of(r)["code"] == "payload_too_large"


async def test_nesting_is_limited_so_every_stored_value_stays_encodable(tmp_path: Path) -> None:
    """A value nested just short of the recursion limit would decode, be stored, and then
    fail every recall that encodes it inside a response: the edge refuses bodies nested
    deeper than MAX_DEPTH."""
    from somabrain.edge.nesting import MAX_DEPTH

    def remember(depth: int) -> bytes:  # the body's object, then meta, then arrays
        arrays = depth - 2
        return b'{"content": "deep", "meta": {"a": %s}}' % (b"[" * arrays + b"]" * arrays)

    async with harness(tmp_path) as h, h.client() as client:
        r = await client.post("/memory/remember", content=remember(MAX_DEPTH))
        assert r.status_code == 200, r.text
        r = await client.post("/memory/remember", content=remember(MAX_DEPTH + 1))
        assert r.status_code == 400 and error_of(r)["code"] == "bad_request"
        assert str(MAX_DEPTH) in error_of(r)["message"]
        r = await client.post("/memory/remember", content=remember(950))
        assert r.status_code == 400 and error_of(r)["code"] == "bad_request"
        r = await client.post("/memory/recall", json={"query": "deep"})
        assert r.status_code == 200 and len(r.json()["results"]) == 1


async def test_routing_errors(tmp_path: Path) -> None:
    async with harness(tmp_path) as h, h.client() as client:
        r = await client.get("/nope")
        assert r.status_code == 404 and error_of(r)["code"] == "not_found"
        assert "GET /nope" in error_of(r)["message"] and "/openapi.json" in error_of(r)["message"]
        r = await client.put("/memory/remember", json={})
        assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, HEAD, POST"
        r = await client.put("/healthz/")  # the methods of the path without its slash
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
        r = await client.post("/healthz")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
        r = await client.put("/memory/somekey")
        assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, HEAD"


async def test_head_answers_like_get_without_a_body(tmp_path: Path) -> None:
    """Load balancers probe with HEAD: every GET route answers it with the GET's status and
    headers, and no body."""
    async with harness(tmp_path) as h, h.client() as client:
        assert (await client.post("/memory/remember", json={"content": "x", "key": "k"})).is_success
        for path in ("/healthz", "/readyz", "/health", "/openapi.json", "/memory/k"):
            get, head = await client.get(path), await client.head(path)
            assert (head.status_code, head.content) == (get.status_code, b""), path
            assert head.headers["content-type"] == get.headers["content-type"], path
            assert head.headers["content-length"] == get.headers["content-length"], path
        r = await client.head("/memory/ghost")
        assert (r.status_code, r.content) == (404, b"")
        r = await client.head("/context/evaluate")
        assert r.status_code == 405 and r.headers["allow"] == "POST"


async def test_tenants_and_headers(tmp_path: Path) -> None:
    async with (
        harness(tmp_path) as h,
        h.client("a") as a,
        h.client("b") as b,
        h.client("a", "b") as ab,
    ):
        key = (await a.post("/memory/remember", json={"content": "alpha only"})).json()["key"]
        assert (await b.get(f"/memory/{key}")).status_code == 404
        assert (await b.post("/memory/recall", json={"query": "alpha"})).json()["results"] == []
        r = await ab.post("/memory/recall", json={"query": "alpha"})
        assert r.status_code == 400 and error_of(r)["code"] == "tenant_required"
        r = await ab.get(f"/memory/{key}", headers={"X-Tenant-ID": "a"})
        assert r.status_code == 200
        r = await ab.post(
            "/memory/recall",
            json={"query": "alpha", "tenant": "b"},
            headers={"X-Tenant-ID": "a"},
        )
        assert error_of(r)["code"] == "tenant_conflict"
        r = await a.get(f"/memory/{key}", headers={"X-Tenant-ID": "b"})
        assert r.status_code == 403 and error_of(r)["code"] == "tenant_forbidden"
        r = await a.get("/healthz", headers={"X-Request-ID": "req-42"})
        assert r.headers["x-trace-id"] == "req-42"
        trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        r = await a.get("/healthz", headers={"traceparent": trace})
        assert r.headers["x-trace-id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    async with harness(tmp_path) as h, h.client() as client:
        h.app.limiter.configure(rate=0.5, burst=2)
        codes = [
            (await client.post("/memory/recall", json={"query": "x"})).status_code for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        r = await client.post("/memory/recall", json={"query": "x"})
        assert r.headers["retry-after"] == "2" and error_of(r)["code"] == "rate_limited"
        assert h.app.metrics.rate_limited == {"acme": 2}
        async with h.client("other") as other:  # per tenant
            assert (await other.post("/memory/recall", json={"query": "x"})).status_code == 200


async def test_per_tenant_rate_limits_from_config_and_reload(tmp_path: Path) -> None:
    config = tmp_path / "soma.toml"
    config.write_text("[edge.rate_limit.tenants.slow]\nrate = 0.5\nburst = 2\n")
    async with (
        harness(tmp_path) as h,
        h.client("slow") as slow,
        h.client("fast") as fast,
        h.client(scopes=("admin",)) as admin,
    ):
        h.app.system.resources["config_path"] = config
        r = await admin.post("/admin/reload", json={})
        assert "edge: settings changed" in r.json()["changes"]

        async def statuses(client: httpx.AsyncClient, n: int) -> list[int]:
            return [
                (await client.post("/memory/recall", json={"query": "x"})).status_code
                for _ in range(n)
            ]

        assert await statuses(slow, 3) == [200, 200, 429]
        r = await slow.post("/memory/recall", json={"query": "x"})
        assert r.headers["retry-after"] == "2" and error_of(r)["code"] == "rate_limited"
        assert await statuses(fast, 20) == [200] * 20  # the node-wide limit: 4000 burst
        config.write_text("[edge.rate_limit.tenants.slow]\nenabled = false\n")
        r = await admin.post("/admin/reload", json={})
        assert "edge: settings changed" in r.json()["changes"]
        assert await statuses(slow, 20) == [200] * 20
        config.write_text("[edge.rate_limit.tenants.slow]\nburst = 0\n")
        r = await admin.post("/admin/reload", json={})
        assert r.status_code == 422
        assert error_of(r)["field"] == "edge.rate_limit.tenants.slow.burst"
        assert await statuses(slow, 5) == [200] * 5  # the refused reload changed nothing


async def test_reload_says_which_edge_settings_wait_for_a_restart(tmp_path: Path) -> None:
    """The listener (socket, Hypercorn) is set up when the node starts: a reload keeps its
    settings and says so for each changed one; the others apply at once. What the command
    line overrode is not a change of the file."""
    config = tmp_path / "soma.toml"
    async with harness(tmp_path) as h, h.client(scopes=("admin",)) as admin:
        h.app.system.resources["config_path"] = config
        h.app.system.resources[CLI_OVERRIDES_RESOURCE] = {}  # the port comes from the file
        port = h.app.config.edge.port
        config.write_text("[edge]\nport = 19899\nbacklog = 7\nmax_batch_items = 5\n")
        for _ in range(2):  # the second reload: still waiting for the restart
            changes = (await admin.post("/admin/reload", json={})).json()["changes"]
            assert "edge: port, backlog apply after a node restart" in changes
            assert (h.app.config.edge.port, h.app.config.edge.backlog) == (port, 1024)
            assert h.app.system.resources["config"].edge.port == port
        assert h.app.config.edge.max_batch_items == 5
        config.write_text("[edge]\nport = 19899\nmax_batch_items = 5\n")
        h.app.system.resources[CLI_OVERRIDES_RESOURCE] = {"port": port}  # as `--port` does
        changes = (await admin.post("/admin/reload", json={})).json()["changes"]
        assert not [c for c in changes if c.startswith("edge:")], changes
        config.write_text("[edge]\nhost = '0.0.0.0'\nmax_batch_items = 5\n")
        changes = (await admin.post("/admin/reload", json={})).json()["changes"]
        assert changes == ["edge: host applies after a node restart"]


async def test_unexpected_errors_are_logged_500s(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with harness(tmp_path) as h, h.client() as client:

        async def broken(request: Any) -> Any:
            raise RuntimeError("bug")

        h.app._handlers["recall"] = broken
        with caplog.at_level(logging.ERROR, logger="somabrain.edge"):
            r = await client.post("/memory/recall", json={"query": "x"})
        assert r.status_code == 500
        trace = r.headers["x-trace-id"]
        assert error_of(r)["code"] == "internal" and trace in r.json()["error"]["message"]
        assert any(trace in record.getMessage() for record in caplog.records)
        assert (await client.get("/healthz")).status_code == 200  # still serving


async def test_admin_endpoints(tmp_path: Path) -> None:
    async with harness(tmp_path) as h, h.client(scopes=("admin",)) as admin, h.client() as user:
        assert (await user.get("/admin/tree")).status_code == 403
        tree = (await admin.get("/admin/tree")).json()
        assert tree["path"] == "/root"
        key = (await user.post("/memory/remember", json={"content": "survives"})).json()["key"]
        r = await admin.post("/admin/actors/kill", json={"path": "/root/memory/acme"})
        assert r.json() == {"ok": True, "path": "/root/memory/acme", "killed": True}
        assert (await user.get(f"/memory/{key}")).json()["content"] == "survives"
        r = await admin.post("/admin/actors/kill", json={"path": "/root/memory"})
        assert r.status_code == 200
        assert (await user.get(f"/memory/{key}")).json()["content"] == "survives"
        r = await admin.post("/admin/actors/kill", json={"path": "/root"})
        assert r.status_code == 409 and error_of(r)["code"] == "refused"
        r = await admin.post("/admin/actors/kill", json={"path": "/root/nope"})
        assert r.status_code == 404 and error_of(r)["field"] == "path"
        r = await admin.post("/admin/reload", json={})
        assert r.status_code == 200 and isinstance(r.json()["changes"], list)
        assert (await admin.get("/readyz")).json() == {"status": "ready"}
        health = (await admin.get("/health")).json()
        assert health["status"] == "ok" and health["components"]["memory"]["active"] == 1
        metrics = (await admin.get("/metrics")).text
        assert 'soma_restarts_total{path="/root/memory/acme",kind="actor"}' in metrics
        assert "soma_dead_letters_total" in metrics
        doc = (await admin.get("/openapi.json")).json()
        assert doc["openapi"] == "3.1.0"


async def test_a_tenant_with_an_unreadable_log_gets_503(tmp_path: Path) -> None:
    from somabrain.memory import tenant_log_path

    bad = tenant_log_path(tmp_path / "memory", "broken")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"garbage")
    async with harness(tmp_path) as h, h.client("broken") as broken, h.client() as fine:
        r = await broken.post("/memory/recall", json={"query": "x"})
        assert r.status_code == 503 and error_of(r)["code"] == "storage_unavailable"
        assert r.headers["retry-after"] == "1"
        assert (await fine.post("/memory/recall", json={"query": "x"})).status_code == 200
        assert (await fine.get("/readyz")).status_code == 200


async def test_remember_and_forget_are_audited(tmp_path: Path) -> None:
    from somabrain.audit.cli import run_verify
    from somabrain.audit.sources import read_spool_dir

    audit = {"kind": "actor", "actor": "somabrain.audit.writer:AuditWriter"}
    tree = {**TREE, "children": {"audit": audit, **TREE["children"]}}  # type: ignore[dict-item]
    async with harness(tmp_path, tree) as h, h.client() as client:
        r = await client.post("/memory/remember", json={"content": "Paris is in France"})
        assert r.status_code == 200, r.text
        audit_id = r.json()["audit_id"]
        assert audit_id
        assert (await client.delete(f"/memory/{r.json()['key']}")).status_code == 200
    events = [msgspec.json.decode(p) for _, p in read_spool_dir(tmp_path / "audit" / "spool")]
    mine = [e for e in events if e["tenant"] == "acme"]
    assert [e["action"] for e in mine] == ["memory.remember", "memory.forget"]
    assert mine[0]["event_id"] == audit_id and mine[0]["actor"]
    assert "Paris" not in msgspec.json.encode(mine).decode()
    reports = await run_verify(soma_config.load(environ={}), "spool", str(tmp_path))
    assert reports and all(report.ok for report in reports.values())


async def run_lifespan(app: Any, messages: list[dict[str, Any]], end: bool) -> list[str]:
    """Drive the app's lifespan with ``messages``; then, if ``end``, end the incarnation while
    the lifespan waits for the next message. What the app sent back."""
    inbox = list(messages)
    sent: list[str] = []
    waiting = anyio.Event()

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        waiting.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, {"type": "lifespan"}, receive, send)
            if end:
                await waiting.wait()
                app.end()
    return sent


async def test_the_lifespan_ends_with_the_incarnation(tmp_path: Path) -> None:
    """Startup and shutdown are answered; and when the edge incarnation ends without the
    shutdown message (a kill cuts Hypercorn's cleanup short), ``end`` ends the lifespan."""
    startup, shutdown = {"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}
    async with harness(tmp_path) as h:
        sent = await run_lifespan(h.app, [startup, shutdown], end=False)
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert not h.app.closing
        assert await run_lifespan(h.app, [startup], end=True) == ["lifespan.startup.complete"]
        assert h.app.closing  # its answers say Connection: close from now on
