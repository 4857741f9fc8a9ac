"""The request contract every route shares, as an agent meets it: paths with a trailing
slash, query parameters, bodies where a route takes none, bodies that are not JSON objects.
In-process against a real tree (``test_app.harness``), on both anyio backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from somabrain.edge.routes import ROUTES
from tests.edge.test_app import error_of, harness

pytestmark = pytest.mark.anyio


async def test_a_trailing_slash_is_ignored_except_in_a_key(tmp_path: Path) -> None:
    """Every route answers with one trailing slash exactly as without it; under ``/memory/``,
    GET and DELETE take everything after the prefix as the key, so a key may end with a slash
    (and a 404 says the slash was part of the key)."""
    async with harness(tmp_path) as h, h.client(scopes=("admin",)) as client:
        # (not /admin/reload: it re-reads the default config, whose tree adds an edge on 9696)
        for route in (r for r in ROUTES if r.name != "admin_reload"):
            body = b"{}" if route.request is not None else None
            answers = []
            for path in (route.path, route.path + "/"):
                r = await client.request(route.method, path, content=body)
                code = r.json().get("error", {}).get("code") if r.status_code != 200 else None
                answers.append((r.status_code, code))
            assert answers[0] == answers[1], (route.method, route.path, answers)
            assert answers[1][0] not in (404, 405), (route.method, route.path, answers)
        r = await client.post("/memory/recall/", json={"query": "anything"})
        assert r.status_code == 200 and r.json()["results"] == []
        r = await client.post("/memory/remember/", json={"key": "k1", "content": "a note"})
        assert r.status_code == 200, r.text
        r = await client.post("/memory/remember", json={"key": "dir/", "content": "a folder"})
        assert r.status_code == 200, r.text
        assert (await client.get("/memory/dir/")).json()["content"] == "a folder"
        assert (await client.get("/memory/dir")).status_code == 404
        missing = await client.get("/memory/k1/")
        assert missing.status_code == 404
        assert "'k1/' (the trailing slash is part of the key)" in error_of(missing)["message"]
        assert (await client.get("/memory/k1")).json()["content"] == "a note"
        r = await client.post("/memory/k1/")  # a key's path: its methods
        assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, HEAD"


async def test_query_parameters_and_bodies_are_refused_where_no_route_takes_them(
    tmp_path: Path,
) -> None:
    """A parameter the edge ignored could change what a request does: a forget
    ``?namespace=notes`` would delete the key whatever its namespace. Tenant and admin routes
    refuse query parameters, and a body when they take none (an empty one or ``{}`` is fine);
    the probes, the metrics and the document ignore both."""
    async with harness(tmp_path) as h, h.client() as client:
        r = await client.post("/memory/remember", json={"key": "k", "content": "keep me"})
        assert r.status_code == 200, r.text
        r = await client.delete("/memory/k?namespace=notes")
        assert r.status_code == 422, r.text
        assert (error_of(r)["code"], error_of(r)["field"]) == ("unknown_field", "namespace")
        r = await client.post("/memory/recall?top_k=3&x=1", json={"query": "keep"})
        assert r.status_code == 422 and error_of(r)["field"] == "top_k"
        assert "JSON body" in error_of(r)["message"]
        r = await client.get("/memory/k?a%20b=1")
        assert r.status_code == 422 and error_of(r)["field"] == "a b"
        for content, status, field in (
            (b'{"namespace": "notes"}', 422, "namespace"),
            (b"[1]", 400, None),
            (b"not json", 400, None),
            (b"\xff\xfe", 400, None),
        ):
            r = await client.request("DELETE", "/memory/k", content=content)
            assert r.status_code == status, (content, r.text)
            assert error_of(r).get("field") == field, content
        assert (await client.get("/memory/k")).json()["content"] == "keep me"  # nothing lost
        for content in (b"[]", b'"x"', b"null", b"1"):
            r = await client.post("/memory/recall", content=content)
            assert r.status_code == 422 and error_of(r)["code"] == "invalid_field", content
            assert error_of(r)["message"].startswith("the request body must be a JSON object")
        r = await client.request("GET", "/memory/k", content=b" {} ")
        assert r.status_code == 200, r.text
        r = await client.request("DELETE", "/memory/k", content=b"{}")
        assert r.status_code == 200 and r.json()["deleted"] is True
        r = await client.post("/context/adaptation/reset", json={"tenant": "beta"})
        assert r.status_code == 403  # the scope first: admin
        async with h.client(scopes=("admin",)) as admin:
            r = await admin.post("/context/adaptation/reset", json={"tenant": "beta"})
            assert r.status_code == 422 and error_of(r)["field"] == "tenant"
            r = await admin.get("/admin/tree?depth=1")
            assert r.status_code == 422 and error_of(r)["field"] == "depth"
            assert (await admin.get("/metrics?x=1")).status_code == 200
        for path in ("/healthz?probe=1", "/readyz?x", "/health?_=1", "/openapi.json?v=3"):
            r = await client.request("GET", path, content=b"ignored")
            assert r.status_code == 200, (path, r.text)
