"""A real two-member cluster under faults: the nats-server killed and restarted, a member
killed with SIGKILL and restarted on its data, its memory actor killed, requests too large
for NATS, and members configured with different lists.

Agents keep sending requests to both members while things break: every answer must be a 200
or a clean 503 within the request timeout (never a 500 or a hang), a member's own tenants
keep working, nothing acknowledged is lost, and the cluster heals by itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from somabrain.audit.spool import read_spool
from tests.cluster.chaos import (
    BOUND,
    Agents,
    Cluster,
    assert_unavailable,
    client,
    cluster,
    health,
    ok,
    tenant_owned_by,
    wait_for,
)
from tests.edge.devnode import DevNode

pytestmark = pytest.mark.integration

TENANT_A = tenant_owned_by("node-a", "own-a")
TENANT_B = tenant_owned_by("node-b", "own-b")

REQUESTS = [
    ("/memory/remember", {"content": "sent while the cluster is broken"}),
    ("/memory/recall", {"query": "agent fact", "top_k": 3}),
    ("/context/evaluate", {"query": "agent fact", "top_k": 3}),
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("chaos")) as running:
        yield running


def _forwarding(node: DevNode, tenant: str) -> bool:
    with client(node, tenant) as c:
        return c.post("/memory/recall", json={"query": "x", "top_k": 1}).status_code == 200


def _heals(pair: Cluster) -> None:
    """Both directions forward again (each member re-subscribed) and /health is ok."""
    wait_for("node-a forwards to node-b", lambda: _forwarding(pair.a, TENANT_B))
    wait_for("node-b forwards to node-a", lambda: _forwarding(pair.b, TENANT_A))
    for node in (pair.a, pair.b):
        wait_for(f"{node.data_dir.name} healthy", lambda n=node: health(n)["status"] == "ok")


def test_nats_outage_fails_remote_tenants_cleanly_and_heals(pair: Cluster) -> None:
    _heals(pair)
    with client(pair.a, TENANT_B) as a_b:
        before = ok(a_b.post("/memory/remember", json={"content": "remembered before"}))["key"]
    routes = [
        ("a->A", pair.a, TENANT_A),
        ("a->B", pair.a, TENANT_B),
        ("b->B", pair.b, TENANT_B),
        ("b->A", pair.b, TENANT_A),
    ]
    with Agents(routes) as agents:
        wait_for("agents served", lambda: agents.count(200) >= 8)
        pair.nats.kill()
        for node in (pair.a, pair.b):
            wait_for("disconnect seen", lambda n=node: not _cluster(n)["nats"]["connected"])
        for node, own, other in ((pair.a, TENANT_A, TENANT_B), (pair.b, TENANT_B, TENANT_A)):
            with client(node, own) as local, client(node, other) as remote:
                for path, body in REQUESTS:
                    started = time.monotonic()
                    assert_unavailable(remote.post(path, json=body), "not connected to NATS")
                    assert time.monotonic() - started < BOUND
                    ok(local.post(path, json=body))
        with client(pair.a, TENANT_B) as a_b:
            ghost = {"content": "refused while NATS was down"}
            assert_unavailable(a_b.post("/memory/remember", json=ghost))
        report = health(pair.a)
        assert report["status"] == "degraded"
        assert report["components"]["cluster"]["problems"][0].startswith("not connected to NATS")
        served_while_down = agents.count(200)
        wait_for("own tenants served", lambda: agents.count(200) > served_while_down + 4)
        pair.nats.restart()
        _heals(pair)
    agents.assert_clean()
    assert agents.count(503) > 0
    with client(pair.b, TENANT_B) as owner:
        assert ok(owner.get(f"/memory/{before}"))["content"] == "remembered before"
        # The write refused while disconnected was not buffered and sent after the reconnect.
        hits = ok(owner.post("/memory/recall", json={"query": ghost["content"], "top_k": 50}))
        assert ghost["content"] not in [hit["content"] for hit in hits["results"]]


def test_a_member_killed_with_sigkill_keeps_every_acknowledged_write(pair: Cluster) -> None:
    _heals(pair)
    routes = [("a->B", pair.a, TENANT_B), ("b->B", pair.b, TENANT_B), ("a->A", pair.a, TENANT_A)]
    with Agents(routes) as agents:
        wait_for("writes acknowledged", lambda: len(agents.acknowledged()) >= 12)
        pair.b.kill()
        with client(pair.a, TENANT_B) as orphan, client(pair.a, TENANT_A) as own:
            for path, body in REQUESTS:
                started = time.monotonic()
                assert_unavailable(orphan.post(path, json=body), "no responders")
                assert time.monotonic() - started < BOUND
                ok(own.post(path, json=body))
        silent = "member 'node-b' not heard from (down, or cut off from NATS)"
        wait_for("node-b reported silent", lambda: silent in _cluster(pair.a)["problems"])
    agents.assert_clean()
    pair.b.start()
    _heals(pair)
    acknowledged = agents.acknowledged()
    assert any(a.label.startswith("a->B") for a in acknowledged)
    assert any(a.label.startswith("b->B") for a in acknowledged)
    for node in (pair.a, pair.b):
        with client(node, TENANT_A, TENANT_B) as c:
            for answer in acknowledged:
                tenant = TENANT_A if answer.label.startswith("a->A") else TENANT_B
                got = ok(c.get(f"/memory/{answer.key}", headers={"X-Tenant-ID": tenant}))
                assert got["content"] == answer.content


def test_the_owners_memory_actor_killed_during_forwarded_traffic(pair: Cluster) -> None:
    _heals(pair)
    path = f"/root/memory/{TENANT_B}"
    with Agents([("a->B", pair.a, TENANT_B)]) as agents, client(pair.b, TENANT_B) as admin:
        kills = 0
        for _ in range(3):
            served = agents.count(200)
            wait_for("forwarded traffic", lambda n=served: agents.count(200) >= n + 5)
            r = admin.post("/admin/actors/kill", json={"path": path})
            assert r.status_code in (200, 409), r.text  # 409: still restarting
            kills += r.status_code == 200
        served = agents.count(200)
        wait_for("forwarded traffic after the kills", lambda: agents.count(200) >= served + 5)
    assert kills >= 1
    agents.assert_clean()
    with client(pair.b, TENANT_B) as owner:
        for answer in agents.acknowledged():
            assert ok(owner.get(f"/memory/{answer.key}"))["content"] == answer.content


def test_forwarded_requests_keep_auth_trace_audit_and_fail_too_large_bodies_cleanly(
    pair: Cluster,
) -> None:
    _heals(pair)
    with client(pair.a, TENANT_A, scopes=()) as only_a:
        r = only_a.post("/memory/recall", json={"query": "x"}, headers={"X-Tenant-ID": TENANT_B})
        assert r.status_code == 403, r.text  # refused by the member called, never forwarded
    with client(pair.a, TENANT_B) as a_b, client(pair.b, TENANT_B) as owner:
        r = a_b.post(
            "/memory/remember",
            json={"content": "traced across the cluster"},
            headers={"X-Request-ID": "chaos-trace-0001"},
        )
        body = ok(r)
        assert (body["trace_id"], r.headers["X-Trace-Id"]) == ("chaos-trace-0001",) * 2
        assert ok(owner.get(f"/memory/{body['key']}"))["content"] == "traced across the cluster"
        events = {name: _audit(pair.nodes[name].data_dir) for name in pair.nodes}
        [event] = [e for e in events["node-a"] if e["trace_id"] == "chaos-trace-0001"]
        assert (event["tenant"], event["action"], event["event_id"]) == (
            TENANT_B,
            "memory.remember",
            body["audit_id"],
        )
        assert event["request"]["attributes"]["owner"] == "node-b"
        assert not [e for e in events["node-b"] if e["trace_id"] == "chaos-trace-0001"]

        # A batch near the edge's body limit (1 MiB) crosses NATS (1 MiB max_payload).
        big = [{"content": f"bulk {i} " + "z" * 240_000, "tags": ["bulk"]} for i in range(4)]
        batch = msgspec.json.encode({"items": big})
        assert 900_000 < len(batch) < 1_048_576
        headers = {"Content-Type": "application/json"}
        stored = ok(a_b.post("/memory/remember/batch", content=batch, headers=headers))
        keys = [item["key"] for item in stored["results"]]
        contents = [ok(owner.get(f"/memory/{key}"))["content"] for key in keys]
        assert contents == [item["content"] for item in big]

        # Larger on the wire than in JSON (vectors are float64 in msgpack): a clear 413.
        vectors = [
            {"key": f"vec-{i}", "content": f"v {i}", "vector": [0.5] * 256} for i in range(500)
        ]
        r = a_b.post("/memory/remember/batch", json={"items": vectors})
        assert r.status_code == 413, r.text[:500]
        assert r.json()["error"]["code"] == "payload_too_large"
        assert "request to the owner" in r.json()["error"]["message"]
        assert owner.get("/memory/vec-0").status_code == 404  # nothing was written

        # A reply too large for one NATS message (five of those memories): the owner answers
        # 413 at once, where it used to drop the reply and leave the asker waiting.
        fifth = {"content": "bulk 4 " + "z" * 240_000, "tags": ["bulk"]}
        ok(a_b.post("/memory/remember", json=fifth))
        recall = {"query": "bulk", "top_k": 5, "filters": {"tags": ["bulk"]}}
        started = time.monotonic()
        r = a_b.post("/memory/recall", json=recall)
        assert r.status_code == 413, r.text[:500]
        assert "owner's reply" in r.json()["error"]["message"]
        assert time.monotonic() - started < BOUND
        assert len(ok(owner.post("/memory/recall", json=recall))["results"]) == 5


def _cluster(node: DevNode) -> dict[str, Any]:
    """The ``cluster`` component of the node's /health."""
    report: dict[str, Any] = health(node)["components"]["cluster"]
    return report


def _audit(data_dir: Path) -> list[dict[str, object]]:
    return [msgspec.json.decode(payload) for _, payload in read_spool(data_dir / "audit" / "spool")]


def test_members_with_different_lists_are_reported_and_refuse_each_other(
    tmp_path: Path,
) -> None:
    wide = ["node-a", "node-b", "node-c"]
    tenant = tenant_owned_by("node-b", "both", ["node-a", "node-b"], wide)
    lists = {"node-a": ["node-a", "node-b"], "node-b": wide}
    with cluster(tmp_path, lists) as pair:

        def problems(node: DevNode) -> list[str]:
            return list(_cluster(node)["problems"])

        for node, other in ((pair.a, "node-b"), (pair.b, "node-a")):
            seen = f"member {other!r} has other cluster.members"
            wait_for(
                f"{other}'s list seen", lambda n=node, s=seen: any(s in p for p in problems(n))
            )
        report = health(pair.a)
        assert report["status"] == "degraded"
        assert report["components"]["cluster"]["peers"]["node-b"]["same_members"] is False
        assert "member 'node-c' not heard from (down, or cut off from NATS)" in problems(pair.b)
        # Both lists give the tenant to node-b, yet node-b refuses node-a's call.
        with client(pair.a, tenant) as c:
            for path, body in REQUESTS:
                assert_unavailable(c.post(path, json=body), "differ from its own")
        assert any("has cluster.members" in line for line in pair.a.output)
