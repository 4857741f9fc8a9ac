"""Read auditing (``audit.reads``): off by default, and when on every recall and get leaves a
``memory.recall`` / ``memory.get`` event that names who read what without copying the query.

In-process (the ASGI app against a real tree with the audit writer, both backends), and end
to end against the dev node with ``SOMA_AUDIT__READS=true`` in its environment."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from somabrain import config as soma_config
from somabrain.audit.cli import run_verify
from somabrain.audit.sources import read_spool_dir
from tests.edge.devnode import DevNode
from tests.edge.test_app import TREE, harness

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "schemas" / "audit_event_v2.json").read_text("utf-8")
)
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)
AUDITED_TREE: dict[str, Any] = {
    **TREE,
    "children": {
        "audit": {"kind": "actor", "actor": "somabrain.audit.writer:AuditWriter"},
        **TREE["children"],  # type: ignore[dict-item]
    },
}
READS_ON = {"SOMA_AUDIT__READS": "true"}


def events_of(data_dir: Path, tenant: str) -> list[dict[str, Any]]:
    events = [msgspec.json.decode(p) for _, p in read_spool_dir(data_dir / "audit" / "spool")]
    for event in events:
        VALIDATOR.validate(event)
    return [e for e in events if e["tenant"] == tenant]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.anyio
async def test_reads_are_not_audited_by_default(tmp_path: Path) -> None:
    async with harness(tmp_path, AUDITED_TREE) as h, h.client() as client:
        key = (await client.post("/memory/remember", json={"content": "Rome is in Italy"})).json()
        r = await client.post("/memory/recall", json={"query": "Italy"})
        assert r.status_code == 200 and r.json()["audit_id"] is None
        r = await client.get(f"/memory/{key['key']}")
        assert r.status_code == 200 and r.json()["audit_id"] is None
    assert [e["action"] for e in events_of(tmp_path, "acme")] == ["memory.remember"]


@pytest.mark.anyio
async def test_recall_and_get_are_audited_when_reads_are_on(tmp_path: Path) -> None:
    query = "which secret city hosts the tower"
    async with (
        harness(tmp_path, AUDITED_TREE, environ=READS_ON) as h,
        h.client() as client,
    ):
        keys = []
        for content in ("Paris has the Eiffel tower", "Pisa has a leaning tower"):
            r = await client.post("/memory/remember", json={"content": content, "session_id": "s"})
            keys.append(r.json()["key"])
        r = await client.post("/memory/recall", json={"query": query, "top_k": 5})
        assert r.status_code == 200, r.text
        recall = r.json()
        returned = [hit["key"] for hit in recall["results"]]
        assert sorted(returned) == sorted(keys) and recall["audit_id"]
        r = await client.post(
            "/memory/recall", json={"query": query, "layer": "wm", "session_id": "s"}
        )
        wm = r.json()
        assert r.status_code == 200 and wm["audit_id"] and wm["wm_hits"] == 2
        got = await client.get(f"/memory/{keys[0]}")
        assert got.status_code == 200 and got.json()["audit_id"]
        missing = await client.get("/memory/no-such-key")
        assert missing.status_code == 404
        # Writes answer their audit_id too (link and forget included).
        link = await client.post("/memory/link", json={"from_key": keys[0], "to_key": keys[1]})
        assert link.json()["audit_id"]
        forget = await client.delete(f"/memory/{keys[1]}")
        assert forget.json()["audit_id"]

    events = events_of(tmp_path, "acme")
    assert [e["action"] for e in events] == [
        "memory.remember",
        "memory.remember",
        "memory.recall",
        "memory.recall",
        "memory.get",
        "memory.get",
        "memory.link",
        "memory.forget",
    ]
    ltm, in_wm, get, get_missing = events[2:6]
    assert ltm["event_id"] == recall["audit_id"] and in_wm["event_id"] == wm["audit_id"]
    assert ltm["actor"] == "dev" and ltm["decision"] == "none"
    assert ltm["request"]["path"] == "/memory/recall" and ltm["request"]["status"] == 200
    # The query is hashed, never copied; the result keys are listed.
    assert ltm["request"]["content_sha256"] == sha256(query)
    assert query not in json.dumps(events)
    attrs = ltm["request"]["attributes"]
    assert attrs["results"] == 2 and attrs["keys"] == ",".join(returned)
    assert (attrs["top_k"], attrs["layer"], attrs["filtered"]) == (5, "both", False)
    assert in_wm["request"]["attributes"]["layer"] == "wm"
    assert get["event_id"] == got.json()["audit_id"]
    assert get["request"]["attributes"] == {"results": 1, "keys": keys[0]}
    assert get_missing["request"]["status"] == 404
    assert get_missing["request"]["attributes"] == {"results": 0, "keys": ""}
    assert events[6]["event_id"] == link.json()["audit_id"]
    reports = await run_verify(soma_config.load(environ={}), "spool", str(tmp_path))
    assert reports and all(report.ok for report in reports.values())


@pytest.mark.anyio
async def test_many_result_keys_are_recorded_as_their_digest(tmp_path: Path) -> None:
    async with (
        harness(tmp_path, AUDITED_TREE, environ=READS_ON) as h,
        h.client() as client,
    ):
        items = [{"content": f"harbor lighthouse number {i}"} for i in range(30)]
        assert (await client.post("/memory/remember/batch", json={"items": items})).is_success
        r = await client.post("/memory/recall", json={"query": "lighthouse", "top_k": 30})
        returned = [hit["key"] for hit in r.json()["results"]]
    [event] = [e for e in events_of(tmp_path, "acme") if e["action"] == "memory.recall"]
    attrs = event["request"]["attributes"]
    assert attrs["results"] == 30
    assert attrs["keys"] == "sha256:" + sha256(",".join(returned))


@pytest.mark.integration
def test_dev_node_audits_reads_with_the_env_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOMA_AUDIT__READS", "true")
    with DevNode.running(tmp_path / "data") as node, node.client(node.token_for("reader")) as c:
        node.wait_ready(c)
        key = c.post("/memory/remember", json={"content": "Oslo is in Norway"}).json()["key"]
        r = c.post("/memory/recall", json={"query": "capital of Norway", "top_k": 3})
        assert r.status_code == 200, r.text
        recall_id = r.json()["audit_id"]
        assert recall_id and r.json()["results"][0]["key"] == key
        bad = c.post("/memory/recall", json={"query": "", "top_k": 3})
        assert bad.status_code == 422  # refused before anything is read or audited
        scraper = {"Authorization": f"Bearer {node.token_for(scopes=['metrics'])}"}
        metrics = c.get("/metrics", headers=scraper).text
    assert 'soma_audit_tier_up{node="soma-dev",tier="spool"} 1' in metrics
    assert "soma_audit_events_total{" in metrics and "soma_audit_batches_total{" in metrics
    events = events_of(node.data_dir, "reader")
    assert [e["action"] for e in events] == ["memory.remember", "memory.recall"]
    assert events[1]["event_id"] == recall_id
    assert events[1]["request"]["content_sha256"] == sha256("capital of Norway")
