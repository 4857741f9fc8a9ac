"""End to end: the real dev node in a child process, spoken to over HTTP on loopback.

What an agent sees: remember/recall round trips, tenant isolation with a token per tenant,
clear 4xx for every kind of bad input and bad token, and the supervision story: the memory
actor, its supervisor and the edge itself killed through /admin/actors/kill, and everything
remembered still recalled afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from tests.edge.devnode import DevNode

pytestmark = pytest.mark.integration

CONFIG = """
[edge]
max_body_bytes = 65536
max_batch_items = 50

[edge.rate_limit]
rate = 100000.0
burst = 100000
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevNode]:
    root = tmp_path_factory.mktemp("e2e")
    config = root / "soma.toml"
    config.write_text(CONFIG)
    with DevNode.running(root / "data", "--config", str(config)) as node:
        yield node


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()["error"]
    return body


def test_banner_token_and_round_trip(node: DevNode) -> None:
    assert node.url.startswith("http://127.0.0.1:")
    with node.client() as client:  # the token the node printed: tenant "default", admin
        assert client.get("/healthz").json() == {"status": "ok"}
        node.wait_ready(client)
        facts = ["The Eiffel tower is in Paris", "Mount Fuji is in Japan", "The Nile is in Egypt"]
        keys = [
            client.post("/memory/remember", json={"content": fact, "tags": ["geo"]}).json()["key"]
            for fact in facts
        ]
        r = client.post("/memory/recall", json={"query": "where is the Eiffel tower", "top_k": 3})
        assert r.status_code == 200
        results = r.json()["results"]
        assert results[0]["key"] == keys[0]
        assert {"semantic", "lexical"} <= set(results[0]["views"])
        assert r.json()["duration_ms"] >= 0
        r = client.post("/memory/link", json={"from_key": keys[0], "to_key": keys[1], "rel": "see"})
        assert r.status_code == 200
        assert client.get(f"/memory/{keys[0]}").json()["links"][0]["to_key"] == keys[1]
        batch = [{"content": f"batch memory {i}"} for i in range(20)]
        r = client.post("/memory/remember/batch", json={"items": batch})
        assert r.json()["count"] == 20
        assert client.delete(f"/memory/{keys[2]}").json()["deleted"]
        assert client.get(f"/memory/{keys[2]}").status_code == 404


def test_original_api_fields(node: DevNode) -> None:
    with node.client(node.token_for("legacy")) as client:
        r = client.post(
            "/memory/remember",
            json={
                "tenant": "legacy",
                "namespace": "tasks",
                "key": "t-1",
                "value": {"task": "water the plants", "due": "friday"},
            },
        )
        assert r.json()["key"] == "t-1" and r.json()["namespace"] == "tasks"
        r = client.post("/memory/recall", json={"query": "plants", "top_k": 1, "layer": "ltm"})
        assert r.json()["results"][0]["content"] == "water the plants"
        assert client.get("/memory/t-1").json()["value"] == {
            "task": "water the plants",
            "due": "friday",
        }


def test_tenant_isolation(node: DevNode) -> None:
    with node.client(node.token_for("tenant-a")) as a, node.client(node.token_for("tenant-b")) as b:
        key = a.post("/memory/remember", json={"content": "the launch code is 0000"}).json()["key"]
        a.post("/memory/link", json={"from_key": key, "to_key": key})
        assert b.post("/memory/recall", json={"query": "launch code"}).json()["results"] == []
        assert b.get(f"/memory/{key}").status_code == 404
        assert b.delete(f"/memory/{key}").status_code == 404
        assert b.post("/memory/link", json={"from_key": key, "to_key": key}).status_code == 404
        r = b.get(f"/memory/{key}", headers={"X-Tenant-ID": "tenant-a"})
        assert r.status_code == 403 and error_of(r)["code"] == "tenant_forbidden"
        r = b.post("/memory/recall", json={"query": "launch", "tenant": "tenant-a"})
        assert r.status_code == 403
        assert a.get(f"/memory/{key}").status_code == 200  # still there for its owner


BAD_INPUT = [
    ("/memory/recall", b'{"query": "x", "top_k": 5', 400, "malformed_json", None),
    ("/memory/recall", b'{"query": "x", "top_k": "five"}', 422, "invalid_field", "top_k"),
    ("/memory/recall", b'{"query": "x", "top_k": 0}', 422, "out_of_range", "top_k"),
    ("/memory/recall", b'{"query": "x", "top_k": 101}', 422, "out_of_range", "top_k"),
    ("/memory/recall", b'{"query": "x", "topk": 5}', 422, "unknown_field", "topk"),
    ("/memory/remember", b'{"content": 42}', 422, "invalid_field", "content"),
    ("/memory/remember", b'{"content": "x", "tags": "geo"}', 422, "invalid_field", "tags"),
    ("/memory/remember", b'{"namespace": "n"}', 422, "missing_field", "content"),
    (
        "/memory/remember/batch",
        b'{"items": [{"content": "a"}, {"content": "b", "x": 1}]}',
        422,
        "unknown_field",
        "items[1].x",
    ),
]


@pytest.mark.parametrize(("path", "raw", "status", "code", "field"), BAD_INPUT)
def test_bad_input(
    node: DevNode, path: str, raw: bytes, status: int, code: str, field: str | None
) -> None:
    with node.client() as client:
        r = client.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == status, r.text
        error = error_of(r)
        assert (error["code"], error.get("field")) == (code, field)
        assert error["message"]


def test_limits_and_unknown_keys(node: DevNode) -> None:
    with node.client() as client:
        r = client.post("/memory/remember", json={"content": "x" * 70_000})
        assert r.status_code == 413 and error_of(r)["code"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
            yield b'{"content": "'
            for _ in range(20):
                yield b"y" * 4096
            yield b'"}'

        r = client.post("/memory/remember", content=chunks())
        assert r.status_code == 413
        items = [{"content": f"m{i}"} for i in range(51)]
        r = client.post("/memory/remember/batch", json={"items": items})
        assert r.status_code == 422 and error_of(r)["field"] == "items"
        for method in ("GET", "DELETE"):
            r = client.request(method, "/memory/no-such-key")
            assert r.status_code == 404 and error_of(r)["code"] == "memory_not_found"
        assert client.get("/memory/recall").status_code == 404  # a key named "recall"
        assert client.get("/no/such/route").status_code == 404
        assert client.get("/healthz").status_code == 200  # the connection survived all that


def test_auth_failures(node: DevNode) -> None:
    with httpx.Client(base_url=node.url, timeout=30) as anonymous:
        r = anonymous.post("/memory/recall", json={"query": "x"})
        assert r.status_code == 401 and error_of(r)["code"] == "missing_token"
        assert r.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/healthz").status_code == 200  # probes need no token
    forged = jwt.encode(
        {"tenants": ["default"], "scopes": ["admin"], "exp": time.time() + 600},
        "not-the-node-secret-not-the-node-secret",
        algorithm="HS256",
    )
    cases = [
        (forged, "/memory/recall", 401, "invalid_token"),
        (node.token_for("default", ttl=-120), "/memory/recall", 401, "token_expired"),
        (node.token[:-4] + "AAAA", "/memory/recall", 401, "invalid_token"),
        ("garbage", "/memory/recall", 401, "invalid_token"),
    ]
    for token, path, status, code in cases:
        with node.client(token) as client:
            r = client.post(path, json={"query": "x"})
            assert (r.status_code, error_of(r)["code"]) == (status, code), token
    with node.client(node.token_for("someone-else")) as client:
        r = client.post("/memory/recall", json={"query": "x"}, headers={"X-Tenant-ID": "default"})
        assert (r.status_code, error_of(r)["code"]) == (403, "tenant_forbidden")
        for method, path in (
            ("GET", "/admin/tree"),
            ("POST", "/admin/actors/kill"),
            ("POST", "/admin/reload"),
        ):
            r = client.request(method, path, json={"path": "/root/edge"})
            assert (r.status_code, error_of(r)["code"]) == (403, "insufficient_scope"), path


def remember_many(client: httpx.Client, prefix: str, n: int) -> list[str]:
    keys = []
    for i in range(n):
        r = client.post(
            "/memory/remember",
            json={"key": f"{prefix}-{i}", "content": f"{prefix} fact number {i}"},
        )
        assert r.status_code == 200
        keys.append(r.json()["key"])
    return keys


def assert_all_there(client: httpx.Client, keys: list[str], prefix: str) -> None:
    for key in keys:
        r = client.get(f"/memory/{key}")
        assert r.status_code == 200, (key, r.text)
    r = client.post("/memory/recall", json={"query": f"{prefix} fact number 7", "top_k": 3})
    assert r.json()["results"][0]["key"] == f"{prefix}-7"


def retrying(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """What a well-behaved client does while a supervisor restarts something: retry 503s and
    refused connections (bounded)."""
    for _ in range(200):
        try:
            r = client.request(method, path, **kwargs)
        except httpx.TransportError:
            time.sleep(0.02)
            continue
        if r.status_code != 503:
            return r
        time.sleep(0.02)
    raise AssertionError(f"{method} {path} never succeeded")


@pytest.mark.parametrize("target", ["/root/memory/default", "/root/memory", "/root/edge"])
def test_kill_through_admin_and_recall_everything(node: DevNode, target: str) -> None:
    prefix = "kill" + target.replace("/", "-")
    with node.client() as client:
        keys = remember_many(client, prefix, 30)
        before = client.get("/admin/tree").json()
        r = client.post("/admin/actors/kill", json={"path": target})
        assert r.json() == {"ok": True, "path": target, "killed": True}
    with node.client() as client:  # a fresh connection: the old one may be gone with the edge
        node.wait_ready(client)
        retrying(client, "GET", "/healthz")
        assert_all_there(client, keys, prefix)
        after = retrying(client, "GET", "/admin/tree").json()
        restarts = {c["path"]: c["restarts"] for c in after["children"]}
        old = {c["path"]: c["restarts"] for c in before["children"]}
        supervised = "/root/memory" if target.startswith("/root/memory") else "/root/edge"
        if target == "/root/memory/default":
            memory = next(c for c in after["children"] if c["path"] == "/root/memory")
            tenant = next(c for c in memory["children"] if c["path"] == target)
            assert tenant["restarts"] >= 1
        else:
            assert restarts[supervised] == old[supervised] + 1
        metrics = client.get("/metrics").text
        assert f'soma_restarts_total{{path="{supervised}"' in metrics


def test_observability_endpoints(node: DevNode) -> None:
    with node.client() as client:
        client.post("/memory/recall", json={"query": "anything"})
        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        for name in (
            "soma_http_requests_total{",
            "soma_http_request_duration_seconds_bucket{",
            "soma_mailbox_depth{",
            "soma_restarts_total{",
            "soma_dead_letters_total",
            "soma_tree_ready 1",
        ):
            assert name in text, name
        assert 'route="recall",method="POST",status="200"' in text
        doc = client.get("/openapi.json").json()
        assert doc["openapi"] == "3.1.0" and "/memory/recall" in doc["paths"]
        health = client.get("/health").json()
        assert health["status"] == "ok"
        assert {"memory", "edge", "tree", "dead_letters"} <= set(health["components"])
        assert client.get("/readyz").json() == {"status": "ready"}


def test_audit_trail_of_the_edge(node: DevNode) -> None:
    """remember, link, batch, forget and evaluate each leave one durable audit event (content
    hashed, never copied), in request order, and the spool's chain verifies."""
    import json
    import subprocess
    import sys

    from somabrain.audit.sources import read_spool_dir

    secret = "the audited secret is 4711"
    with node.client(node.token_for("audited")) as client:
        node.wait_ready(client)
        r = client.post("/memory/remember", json={"content": secret, "session_id": "s1"})
        assert r.status_code == 200, r.text
        remembered = r.json()
        assert remembered["audit_id"]
        other = client.post("/memory/remember", json={"content": "a second audited memory"})
        link = {"from_key": remembered["key"], "to_key": other.json()["key"], "rel": "see"}
        assert client.post("/memory/link", json=link).status_code == 200
        batch = client.post("/memory/remember/batch", json={"items": [{"content": "b1"}]})
        assert batch.json()["audit_id"]
        r = client.post("/context/evaluate", json={"query": "audited secret", "session_id": "s1"})
        assert r.status_code == 200, r.text
        evaluated = r.json()["audit_id"]
        assert evaluated
        assert client.delete(f"/memory/{other.json()['key']}").status_code == 200
        blocked = client.post("/memory/remember", json={"content": "x", "tags": ["malware"]})
        assert blocked.status_code == 403

    spool = node.data_dir / "audit" / "spool"
    events = [json.loads(payload) for _, payload in read_spool_dir(spool)]
    mine = [e for e in events if e["tenant"] == "audited"]
    assert [e["action"] for e in mine] == [
        "memory.remember",
        "memory.remember",
        "memory.link",
        "memory.remember_batch",
        "context.evaluate",
        "memory.forget",
        "memory.remember",
    ]
    assert mine[0]["event_id"] == remembered["audit_id"] and mine[0]["decision"] == "allow"
    assert mine[0]["request"]["content_sha256"] and secret not in json.dumps(mine)
    assert mine[4]["event_id"] == evaluated
    assert mine[4]["request"]["attributes"]["session_id"] == "s1"
    assert mine[5]["request"]["attributes"]["key"] == other.json()["key"]
    assert mine[6]["decision"] == "deny" and "malware" in mine[6]["reason"]
    assert mine[6]["request"]["status"] == 403
    seqs = [e["seq"] for e in mine]
    assert seqs == sorted(seqs)

    done = subprocess.run(
        [sys.executable, "-m", "somabrain.cli", "audit", "verify", "--from", "spool",
         "--data-dir", str(node.data_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert ": ok," in done.stdout


def working_memory(client: httpx.Client, session: str) -> list[str]:
    """The session's working-memory keys, oldest first (``views.recency`` is the position)."""
    query = {"query": "note", "layer": "wm", "session_id": session, "top_k": 100}
    r = retrying(client, "POST", "/memory/recall", json=query)
    assert r.status_code == 200, r.text
    return [x["key"] for x in sorted(r.json()["results"], key=lambda x: x["views"]["recency"])]


def test_working_memory_survives_a_kill_and_a_process_restart(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data = tmp_path_factory.mktemp("wm")
    with DevNode.running(data) as node, node.client() as client:
        node.wait_ready(client)
        for i in range(4):
            note = {"key": f"n{i}", "content": f"note {i}", "session_id": "s1"}
            r = client.post("/memory/remember", json=note)
            assert r.status_code == 200, r.text
        client.post("/memory/remember", json={"key": "n1", "content": "note 1", "session_id": "s1"})
        assert client.delete("/memory/n2").status_code == 200
        expected = ["n0", "n3", "n1"]
        assert working_memory(client, "s1") == expected
        r = client.post("/admin/actors/kill", json={"path": "/root/memory/default"})
        assert r.json()["killed"]
        assert working_memory(client, "s1") == expected
        node.kill()  # kill -9: no chance to flush anything
    with DevNode.running(data) as node, node.client() as client:
        node.wait_ready(client)
        assert working_memory(client, "s1") == expected
