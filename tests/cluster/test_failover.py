"""Failover (``cluster.failover``, memories in a PostgreSQL every member reaches): a member
killed with SIGKILL loses its tenants to the member that is up, which serves them with every
acknowledged memory, the sessions' working memory and what feedback taught; when the member is
back it gets them again, with what was written and learned meanwhile, and the stand-in lets go
of them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from somabrain import config as soma_config
from somabrain.cluster.membership import SILENT_AFTER
from somabrain.supervision import ConfigError
from tests.cluster.chaos import (
    BOUND,
    MEMBERS,
    Agents,
    Cluster,
    client,
    cluster,
    config,
    health,
    ok,
    tenant_owned_by,
    wait_for,
)
from tests.edge.devnode import DevNode
from tests.servers import PostgresServer

pytestmark = pytest.mark.integration

TENANT_B = tenant_owned_by("node-b", "failover-b")


@pytest.fixture
def pair(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[Cluster]:
    extra = f'failover = true\n\n[memory]\npostgres_url = "{postgres_server.url}"\n'
    with cluster(tmp_path, extra=extra) as running:
        yield running


def _remember(node: DevNode, content: str) -> httpx.Response:
    with client(node, TENANT_B) as c:
        return c.post("/memory/remember", json={"content": content})


def _get(node: DevNode, key: str) -> int:
    with client(node, TENANT_B) as c:
        return c.get(f"/memory/{key}").status_code


def test_a_dead_members_tenants_move_and_come_back(pair: Cluster) -> None:
    a, b = pair.a, pair.b
    before = ok(_remember(a, "written through a, kept by b"))["key"]
    assert health(a)["components"]["cluster"]["owners"] == MEMBERS
    _feedback(a, before)  # b learns its tenant's weights, and "s" holds the memory used
    assert _learned(a) == 1
    assert _session(a) == [before]
    assert _association(a, before) > 0.0

    b.kill()  # SIGKILL: b's tenants answer 503 until a hears b is gone, then a serves them
    started = time.monotonic()
    statuses: list[int] = []

    def taken_over() -> bool:
        r = _remember(a, "written through a while b is down")
        statuses.append(r.status_code)
        return r.status_code == 200

    wait_for("node-a serves node-b's tenant", taken_over, timeout=SILENT_AFTER + 15)
    assert set(statuses) <= {200, 503}, statuses  # never a 500
    assert time.monotonic() - started >= 1.0  # not before b was missed
    assert _get(a, before) == 200  # replayed from the database
    meanwhile = ok(_remember(a, "written through a, b away"))["key"]
    assert health(a)["components"]["cluster"]["owners"] == ["node-a"]
    assert _learned(a) == 1  # a stands in with the weights b learned (in the database)
    assert _session(a) == [before]  # and b's working memory and associations (journaled there)
    assert _association(a, before) > 0.0
    _feedback(a, meanwhile)
    assert TENANT_B in _memory_actors(a)

    b.start()  # on its data directory; its tenants come back to it
    with client(b, "default") as c:
        b.wait_ready(c)
    wait_for("node-b serves its tenant again", lambda: _get(b, meanwhile) == 200)
    wait_for(
        "node-a forwards to node-b again",
        lambda: health(a)["components"]["cluster"]["owners"] == MEMBERS,
    )
    after = ok(_remember(a, "written through a, kept by b again"))["key"]
    for key in (before, meanwhile, after):
        assert _get(b, key) == 200, key
    assert _learned(b) == 2  # and b finds what a learned meanwhile
    assert sorted(_session(b)) == sorted([before, meanwhile])
    assert TENANT_B not in _memory_actors(a)  # a let go of it


def _feedback(node: DevNode, key: str) -> None:
    with client(node, TENANT_B) as c:
        body = {"session_id": "s", "query": "written through a", "used_keys": [key]}
        assert ok(c.post("/context/feedback", json=body))["unknown_keys"] == []


def _session(node: DevNode) -> list[str]:
    """The keys in the working memory of the session feedback is given in."""
    with client(node, TENANT_B) as c:
        body = {"query": "written through a", "layer": "wm", "session_id": "s", "top_k": 10}
        return [hit["key"] for hit in ok(c.post("/memory/recall", json=body))["results"]]


def _association(node: DevNode, key: str) -> float:
    """The ``association`` view's score of ``key`` for a query like the feedback's."""
    with client(node, TENANT_B) as c:
        body = {"query": "written through node a", "top_k": 20}
        hits = ok(c.post("/memory/recall", json=body))["results"]
    return next((hit["views"]["association"] for hit in hits if hit["key"] == key), 0.0)


def _learned(node: DevNode) -> int:
    """How many feedbacks the tenant's weights learned from."""
    with client(node, TENANT_B) as c:
        return int(ok(c.get("/context/adaptation/state"))["history_length"])


def _memory_actors(node: DevNode) -> set[str]:
    """The tenants whose memory actor runs on ``node``."""
    with client(node, "default") as c:
        tree = ok(c.get("/admin/tree"))
    memory = next(c for c in tree["children"] if c["path"].endswith("/memory"))
    return {c["path"].rsplit("/", 1)[-1] for c in memory.get("children", ())}


def test_nothing_acknowledged_is_lost_across_a_failover_and_back(pair: Cluster) -> None:
    """Agents write and recall the tenant through node-a all along, while its owner node-b is
    killed and restarted: the tenant's log goes from b to a and back under traffic. Every
    answer is a 200 or a clean 503, and every acknowledged memory is there at the end."""
    a, b = pair.a, pair.b
    with Agents([("a", a, TENANT_B)], limit=4000) as agents:
        wait_for("traffic", lambda: agents.count(200) >= 20)
        b.kill()
        killed = len(agents.answers)
        wait_for(
            "node-a serves the tenant",
            lambda: any(x.status == 200 for x in agents.answers[killed:]),
            timeout=SILENT_AFTER + 15,
        )
        b.start()
        restarted = len(agents.answers)
        wait_for(
            "node-b owns its tenant again",
            lambda: health(a)["components"]["cluster"]["owners"] == MEMBERS,
        )
        wait_for(
            "forwarded writes again",
            lambda: sum(x.status == 200 for x in agents.answers[restarted:]) >= 20,
        )
    for answer in agents.answers:
        assert answer.status in (200, 503), answer
        if answer.status == 503:  # owner gone, or a log found ahead while ownership moved
            assert answer.code in ("unavailable", "timeout", "storage_unavailable"), answer
        assert answer.seconds < BOUND, answer
    acknowledged = agents.acknowledged()
    assert len(acknowledged) >= 40
    with client(b, TENANT_B) as on_b, client(a, TENANT_B) as on_a:
        for answer in acknowledged:
            for c in (on_b, on_a):  # b's own memory, and a's through b
                r = c.get(f"/memory/{answer.key}")
                assert r.status_code == 200, (answer, r.text)
                assert r.json()["content"] == answer.content


def test_failover_needs_the_memories_in_a_database(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(config("node-a", "nats://127.0.0.1:4222", MEMBERS, "failover = true\n"))
    with pytest.raises(ConfigError, match="postgres_url"):
        soma_config.load(path)
