"""State changes beyond memory writes are audited too: feedback (it reinforces memories and
adapts the tenant's weights), an adaptation reset, and the admin actions (kill, reload), on
the real dev node over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from somabrain.audit.sources import read_spool_dir
from tests.edge.devnode import DevNode

pytestmark = pytest.mark.integration


def test_feedback_reset_and_admin_actions_are_audited(tmp_path: Path) -> None:
    with DevNode.running(tmp_path / "data") as node:
        agent = node.client(node.token_for("fb"))
        admin = node.client(node.token_for("fb", scopes=["admin"]))
        with agent, admin:
            node.wait_ready(agent)
            key = agent.post("/memory/remember", json={"content": "tea is served at five"})
            key = key.json()["key"]
            bundle = agent.post(
                "/context/evaluate", json={"query": "when is tea", "session_id": "s1"}
            ).json()
            feedback = {"session_id": "s1", "query": "when is tea", "used_keys": [key],
                        "reward": 1.0, "metadata": {"audit_id": bundle["audit_id"]}}  # fmt: skip
            r = agent.post("/context/feedback", json=feedback)
            assert r.status_code == 200, r.text
            assert admin.post("/context/adaptation/reset", json={}).status_code == 200
            r = admin.post("/admin/actors/kill", json={"path": "/root/memory/fb"})
            assert r.status_code == 200 and r.json()["killed"]
            assert admin.post("/admin/reload", json={}).status_code == 200
    events = [json.loads(p) for _, p in read_spool_dir(node.data_dir / "audit" / "spool")]
    by_action = {e["action"]: e for e in events}
    fb = by_action["context.feedback"]
    assert fb["tenant"] == "fb" and fb["request"]["attributes"]["bundle"] == bundle["audit_id"]
    assert fb["request"]["attributes"]["used_keys"] == 1
    assert fb["request"]["attributes"]["reward"] == "1.0"  # floats are kept as text
    assert "when is tea" not in json.dumps(events)
    assert by_action["context.adaptation_reset"]["tenant"] == "fb"
    kill = by_action["admin.kill"]
    assert kill["tenant"] == "" and kill["request"]["attributes"]["path"] == "/root/memory/fb"
    assert by_action["admin.reload"]["request"]["path"] == "/admin/reload"
