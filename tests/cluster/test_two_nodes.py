"""Two real ``somabrain dev`` processes forming a cluster over a real nats-server.

Each tenant lives on the member that owns it; the other member answers exactly as the owner
would: remember, recall, evaluate, feedback and adaptation state, errors with their status
and field, and 503 ``unavailable`` (never a 500 or a hang) once the owner is gone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.cluster.chaos import MEMBERS, REQUEST_TIMEOUT, client, start_member, tenant_owned_by
from tests.edge.devnode import DevNode
from tests.servers import NatsServer

pytestmark = pytest.mark.integration

TENANT_A = tenant_owned_by("node-a", "alpha")
TENANT_B = tenant_owned_by("node-b", "beta")


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, nats_server: NatsServer
) -> Iterator[dict[str, DevNode]]:
    root = tmp_path_factory.mktemp("cluster")
    nodes: dict[str, DevNode] = {}
    try:
        for name in MEMBERS:
            nodes[name] = start_member(root, name, nats_server.url)
        yield nodes
    finally:
        for node in nodes.values():
            node.kill()


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _recalled(response: httpx.Response) -> list[tuple[str, float]]:
    return [(hit["key"], round(hit["score"], 6)) for hit in _ok(response)["results"]]


def _bundle(response: httpx.Response) -> Any:
    body = _ok(response)
    return (
        body["prompt"],
        [(m["key"], round(m["weight"], 6)) for m in body["memories"]],
        body["weights"],
        [round(x, 5) for x in body["residual_vector"]],
        [m["key"] for m in body["working_memory"]],
    )


FACTS = ["The Eiffel tower is in Paris", "Mount Fuji is in Japan", "The Nile flows in Egypt"]


def test_both_members_serve_every_tenant_identically(cluster: dict[str, DevNode]) -> None:
    a, b = cluster["node-a"], cluster["node-b"]
    for tenant in (TENANT_A, TENANT_B):
        with client(a, tenant) as via_a, client(b, tenant) as via_b:
            a.wait_ready(via_a)
            b.wait_ready(via_b)
            # Remembered through node A: for TENANT_B that is a request to its owner, node B.
            keys = [
                _ok(via_a.post("/memory/remember", json={"content": fact, "tags": ["geo"]}))["key"]
                for fact in FACTS
            ]
            query = {"query": "where is the Eiffel tower", "top_k": 3}
            recalled = _recalled(via_a.post("/memory/recall", json=query))
            assert recalled == _recalled(via_b.post("/memory/recall", json=query))
            assert recalled[0][0] == keys[0]
            got = [_ok(c.get(f"/memory/{keys[1]}"))["content"] for c in (via_a, via_b)]
            assert got == [FACTS[1], FACTS[1]]

            evaluate = {"query": "where is the Eiffel tower", "session_id": "s1", "top_k": 3}
            bundle = _bundle(via_a.post("/context/evaluate", json=evaluate))
            assert bundle == _bundle(via_b.post("/context/evaluate", json=evaluate))
            assert keys[0] in [key for key, _ in bundle[1]]

            # Feedback through the member that does not own the tenant adapts the owner's
            # weights, which both members then report.
            non_owner = via_b if tenant == TENANT_A else via_a
            feedback = {
                "session_id": "s1",
                "query": "where is the Eiffel tower",
                "used_keys": [keys[0]],
                "utility": 1.0,
            }
            assert _ok(non_owner.post("/context/feedback", json=feedback))["accepted"] is True
            states = [_ok(c.get("/context/adaptation/state")) for c in (via_a, via_b)]
            assert states[0] == states[1]
            assert states[0]["feedback"] == 1


def test_owner_errors_keep_their_status_and_field(cluster: dict[str, DevNode]) -> None:
    a, b = cluster["node-a"], cluster["node-b"]
    for tenant in (TENANT_A, TENANT_B):
        with client(a, tenant) as via_a, client(b, tenant) as via_b:
            key = _ok(via_a.post("/memory/remember", json={"content": "linked from here"}))["key"]
            link = {"from_key": key, "to_key": "no-such-key"}
            bad_vector = {"content": "short vector", "vector": [0.5, 0.5]}
            for path, body, status, code, field in (
                ("/memory/link", link, 404, "memory_not_found", "to_key"),
                ("/memory/remember", bad_vector, 422, "invalid_field", "vector"),
            ):
                answers = [c.post(path, json=body) for c in (via_a, via_b)]
                # Equal but for the trace id, which each edge gives its own request.
                errors = [
                    {k: v for k, v in r.json()["error"].items() if k != "trace_id"} for r in answers
                ]
                assert [r.status_code for r in answers] == [status, status]
                assert errors[0] == errors[1]
                assert (errors[0]["code"], errors[0].get("field")) == (code, field)
            assert via_b.get("/memory/no-such-key").status_code == 404


def test_a_stopped_owner_is_503_and_the_other_member_still_serves(
    cluster: dict[str, DevNode],
) -> None:
    a, b = cluster["node-a"], cluster["node-b"]
    assert b.stop() == 0
    with client(a, TENANT_B) as orphan, client(a, TENANT_A) as own:
        for path, body in (
            ("/memory/recall", {"query": "Paris", "top_k": 3}),
            ("/memory/remember", {"content": "written while node-b is down"}),
            ("/context/evaluate", {"query": "Paris", "top_k": 3}),
        ):
            started = time.monotonic()
            r = orphan.post(path, json=body)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "unavailable"
            assert "Retry-After" in r.headers
            assert time.monotonic() - started < REQUEST_TIMEOUT + 2.0
        assert _recalled(own.post("/memory/recall", json={"query": "Eiffel", "top_k": 3}))
        _ok(own.post("/context/evaluate", json={"query": "Eiffel", "top_k": 3}))
