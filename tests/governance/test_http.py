"""The governance routes and gate through the edge's ASGI app (httpx ASGI transport), with a
real tree (guardian + memory actors), on both anyio backends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from somabrain import config as soma_config
from somabrain.actors import ActorSystem
from somabrain.edge.app import EdgeApp
from somabrain.edge.auth import Authenticator
from somabrain.governance import (
    GovernanceSettings,
    SignerKey,
    checksum,
    draft,
    parse_signed,
    verify,
)
from somabrain.supervision import SupervisionTree, SupervisorNode
from tests.governance.helpers import MODULES, genesis, make

pytestmark = pytest.mark.anyio

TREE = {
    "children": {
        "guardian": {"kind": "actor", "actor": "somabrain.governance.guardian:GuardianActor"},
        "memory": {
            "kind": "dynamic",
            "actor": "somabrain.memory.actor:MemoryActor",
            "idle_timeout": 0,
        },
        "planners": {"kind": "pool", "actor": "somabrain.context.actor:PlannerActor", "size": 1},
    }
}


class Edge:
    def __init__(self, app: EdgeApp, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    def client(self, *scopes: str, tenant: str = "acme") -> httpx.AsyncClient:
        token = self.auth.issuer().issue([tenant], scopes=scopes)
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),  # type: ignore[arg-type]
            base_url="http://edge",
            headers={"Authorization": f"Bearer {token}"},
        )


@asynccontextmanager
async def edge(tmp_path: Path, **governance: Any) -> AsyncIterator[Edge]:
    cfg = soma_config.load(environ={})
    cfg = msgspec.structs.replace(
        cfg,
        tree=msgspec.convert(TREE, SupervisorNode),
        governance=GovernanceSettings(**governance),
    )
    auth = Authenticator(cfg.auth, tmp_path)
    async with ActorSystem() as system:
        system.resources.update(config=cfg, data_dir=tmp_path, auth=auth, config_path=None)
        tree = SupervisionTree(system, cfg.tree, cfg.node)
        system.resources["tree"] = tree
        await tree.start()
        try:
            yield Edge(EdgeApp(system, config=cfg, auth=auth), auth)
        finally:
            await tree.stop()


def error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


async def test_ungoverned_node_fails_closed_until_a_constitution_is_loaded(
    tmp_path: Path,
) -> None:
    async with edge(tmp_path, bootstrap="none") as e, e.client("admin") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and error(ready)["code"] == "not_governed"
        assert "Retry-After" in ready.headers
        remember = await client.post("/memory/remember", json={"content": "x"})
        assert remember.status_code == 503
        assert error(remember)["code"] == "not_governed"
        assert "no constitution" in error(remember)["message"]
        evaluate = await client.post("/context/evaluate", json={"query": "anything"})
        assert evaluate.status_code == 503 and error(evaluate)["code"] == "not_governed"
        version = (await client.get("/constitution/version")).json()
        assert version["ready"] is False and "no constitution" in version["reason"]
        validate = await client.post("/constitution/validate", json={"input": {}})
        assert validate.status_code == 503
        health = (await client.get("/health")).json()
        assert health["status"] == "degraded"
        assert health["components"]["governance"]["ready"] is False

        loaded = await client.post(
            "/constitution/load", content=msgspec.json.encode(genesis().signed())
        )
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["accepted"] and loaded.json()["version"] == 1
        assert (await client.get("/readyz")).status_code == 200
        ok = await client.post("/memory/remember", json={"content": "x"})
        assert ok.status_code == 200
        governance = (await client.get("/health")).json()["components"]["governance"]
        assert governance["ready"] and governance["version"] == 1 and governance["decisions"] == 1


async def test_load_needs_admin_and_refusals_say_why(tmp_path: Path) -> None:
    v1 = genesis()
    async with edge(tmp_path, bootstrap="none") as e:
        async with e.client() as user:
            body = msgspec.json.encode(v1.signed())
            forbidden = await user.post("/constitution/load", content=body)
            assert forbidden.status_code == 403
            assert error(forbidden)["code"] == "insufficient_scope"
        async with e.client("admin") as admin:
            assert (await admin.post("/constitution/load", content=body)).status_code == 200
            short = make("abc", 2, sign_with="a", previous=v1)
            refused = await admin.post("/constitution/load", content=msgspec.json.encode(short))
            assert refused.status_code == 422
            assert error(refused)["code"] == "insufficient_signatures"
            assert error(refused)["field"] == "signatures"
            assert "1 valid signature(s) of the 2 required" in error(refused)["message"]
            again = await admin.post("/constitution/load", content=msgspec.json.encode(v1.signed()))
            assert again.status_code == 200  # the active version again: unchanged
            stale = make("abc", 1, sign_with="a", previous=None)
            refused = await admin.post("/constitution/load", content=msgspec.json.encode(stale))
            assert (error(refused)["code"], error(refused)["field"]) == (
                "version_conflict",
                "document.version",
            )
            bad = v1.signed()
            bad.document["threshold"] = 9
            refused = await admin.post("/constitution/load", content=msgspec.json.encode(bad))
            assert (error(refused)["code"], error(refused)["field"]) == (
                "invalid_field",
                "document.threshold",
            )
            usurped = make("def", 2, sign_with="def", previous=v1)
            refused = await admin.post("/constitution/load", content=msgspec.json.encode(usurped))
            assert error(refused)["code"] == "rotation_not_approved"
            assert "is not a signer" in error(refused)["message"]
            garbage = await admin.post("/constitution/load", json={"document": {}, "x": 1})
            assert garbage.status_code == 422 and error(garbage)["field"] == "x"
            version = (await admin.get("/constitution/version")).json()
            assert version["version"] == 1 and version["checksum"] == v1.checksum


async def test_policies_gate_remember_and_validate_explains(tmp_path: Path) -> None:
    async with edge(tmp_path) as e, e.client() as client:
        version = (await client.get("/constitution/version")).json()
        assert version["ready"] and version["signers"] == ["dev"]
        assert version["policies"] == ["somabrain.rego"]

        blocked = await client.post(
            "/memory/remember", json={"content": "payload", "tags": ["malware"]}
        )
        assert blocked.status_code == 403
        assert error(blocked) | {"trace_id": ""} == {
            "code": "policy_denied",
            "message": 'tag "malware" is blocked by the constitution',
            "trace_id": "",
        }
        reserved = await client.post(
            "/memory/remember", json={"content": "x", "namespace": "_system"}
        )
        assert reserved.status_code == 403 and "admin" in error(reserved)["message"]
        batch = await client.post(
            "/memory/remember/batch",
            json={"items": [{"content": "fine"}, {"content": "x" * 300_000}]},
        )
        assert batch.status_code == 403 and error(batch)["field"] == "items[1]"
        assert "exceeds the 262144-byte limit" in error(batch)["message"]
        sensitive = await client.post(
            "/memory/remember", json={"content": "my email", "tags": ["pii"]}
        )
        assert sensitive.status_code == 200

        allowed = await client.post(
            "/constitution/validate",
            json={"input": {"action": "remember", "tenant": "acme", "tags": ["pii"]}},
        )
        assert allowed.status_code == 200
        body = allowed.json()
        assert body["allowed"] and body["explain"] == "allowed"
        assert body["decision"]["penalties"] == {"pii": 0.35}
        assert body["decision"]["constitution_checksum"] == version["checksum"]
        denied = await client.post(
            "/constitution/validate", json={"input": {"tenant": "acme", "tags": ["csam"]}}
        )
        assert denied.json()["allowed"] is False
        assert denied.json()["explain"] == 'tag "csam" is blocked by the constitution'
        missing = await client.post("/constitution/validate", json={"inputs": {}})
        assert missing.status_code == 422
        # The fields the node always sends are checked, and a bad one is named, instead of
        # an undefined decision ("the policies produced no decision") or a policy_error.
        for given, code, field in (
            ({"action": "remember"}, "missing_field", "input.tenant"),
            ({"tenant": "acme", "tags": "pii"}, "invalid_field", "input.tags"),
            ({"tenant": "acme", "tags": [1]}, "invalid_field", "input.tags[0]"),
            ({"tenant": "acme", "action": 5}, "invalid_field", "input.action"),
            ({"tenant": "acme", "content_size": "big"}, "invalid_field", "input.content_size"),
            ({"tenant": "acme", "content_size": -1}, "out_of_range", "input.content_size"),
        ):
            bad = await client.post("/constitution/validate", json={"input": given})
            assert bad.status_code == 422, (given, bad.text)
            assert (error(bad)["code"], error(bad).get("field")) == (code, field), given
        other = await client.post(
            "/constitution/validate", json={"input": {"tenant": "acme", "purpose": "audit"}}
        )
        assert other.status_code == 200 and other.json()["allowed"]  # other fields pass through


async def test_the_openapi_document_lists_the_governance_routes(tmp_path: Path) -> None:
    async with edge(tmp_path) as e, e.client() as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert {"/constitution/version", "/constitution/validate", "/constitution/load"} <= set(
            paths
        )


async def test_bundles_are_governed_memory_by_memory(tmp_path: Path) -> None:
    async with edge(tmp_path) as e, e.client("admin") as client:
        items = [
            {"key": "plain", "content": "The launch review is on Friday", "tags": ["project"]},
            {"key": "private", "content": "The launch lead's phone is 555-0100", "tags": ["pii"]},
            {"key": "legacy", "content": "The launch checklist lives in the wiki", "tags": ["x"]},
        ]
        r = await client.post("/memory/remember/batch", json={"items": items})
        assert r.status_code == 200, r.text
        query = {"query": "launch", "top_k": 3}
        bundle = (await client.post("/context/evaluate", json=query)).json()
        assert bundle["policy"]["penalties"] == {"pii": 0.35}
        assert bundle["policy"]["tags"] == ["sensitive", "sensitive:pii"]
        assert len(bundle["policy"]["directives"]) == 1
        weights = {m["key"]: m["weight"] for m in bundle["memories"]}
        assert set(weights) == {"plain", "private", "legacy"}
        assert sum(weights.values()) == pytest.approx(1.0)
        version = (await client.get("/constitution/version")).json()
        assert bundle["constitution_checksum"] == version["checksum"]

        # the quorum (here the dev signer) blocks the tag "x": such memories leave bundles
        # and prompts, although they were remembered before
        signer = SignerKey.read(tmp_path / "constitution" / "dev-signer.key")
        active = verify(
            parse_signed((tmp_path / "constitution").glob("v000001-*.json").__next__().read_bytes())
        )
        policy = json.loads(json.dumps(active.doc.policy))
        policy["tags"]["blocked"].append("x")
        successor = draft(
            signers=[signer.public_entry()],
            threshold=1,
            policy=policy,
            policies=active.doc.policies,
            previous=active,
        )
        successor.signatures.append(signer.sign(checksum(successor.document)))
        loaded = await client.post("/constitution/load", content=msgspec.json.encode(successor))
        assert loaded.status_code == 200, loaded.text
        bundle = (await client.post("/context/evaluate", json=query)).json()
        assert {m["key"] for m in bundle["memories"]} == {"plain", "private"}
        assert "wiki" not in bundle["prompt"]
        assert bundle["constitution_checksum"] == loaded.json()["checksum"]
        refused = await client.post("/memory/remember", json={"content": "another", "tags": ["x"]})
        assert refused.status_code == 403


async def test_reserved_namespaces_are_read_and_changed_with_the_admin_scope_only(
    tmp_path: Path,
) -> None:
    async with edge(tmp_path) as e, e.client("admin") as admin, e.client() as user:
        secrets = [
            {
                "key": f"sys{i}",
                "namespace": "system",
                "content": f"zebra system note {i}, classified",
            }
            for i in range(4)
        ]
        notes = [{"key": f"note{i}", "content": f"zebra field note {i}"} for i in range(4)]
        for items in (secrets, notes):
            r = await admin.post("/memory/remember/batch", json={"items": items})
            assert r.status_code == 200, r.text
        # the session's working memory holds a reserved memory too
        r = await admin.post(
            "/memory/remember",
            json={
                "key": "sys-wm",
                "namespace": "_ops",
                "content": "zebra ops runbook",
                "session_id": "s",
            },
        )
        assert r.status_code == 200, r.text
        query = {"query": "zebra system note", "top_k": 4}

        # an admin reads everything; the system notes match the query best
        found = (await admin.post("/memory/recall", json=query)).json()["results"]
        assert {m["key"] for m in found} == {f"sys{i}" for i in range(4)}
        # a token without the scope gets top_k of what it may read, not fewer
        found = (await user.post("/memory/recall", json=query)).json()["results"]
        assert {m["key"] for m in found} == {f"note{i}" for i in range(4)}
        denied = await user.post("/memory/recall", json={**query, "namespace": "system"})
        assert denied.status_code == 403 and "admin" in error(denied)["message"]
        wm = {"query": "zebra", "layer": "wm", "session_id": "s"}
        assert (await admin.post("/memory/recall", json=wm)).json()["results"]
        assert (await user.post("/memory/recall", json=wm)).json()["results"] == []

        bundle = (await user.post("/context/evaluate", json={**query, "session_id": "s"})).json()
        assert {m["key"] for m in bundle["memories"]} == {f"note{i}" for i in range(4)}
        assert "secret" not in bundle["prompt"] and "runbook" not in bundle["prompt"]
        assert bundle["working_memory"] == []
        bundle = (await admin.post("/context/evaluate", json=query)).json()
        assert {m["key"] for m in bundle["memories"]} == {f"sys{i}" for i in range(4)}

        # feedback changes nothing of a reserved memory, and tells nothing of it
        used = {"session_id": "s", "query": "zebra", "used_keys": ["sys1", "note1", "nope"]}
        fed = await user.post("/context/feedback", json=used)
        assert fed.status_code == 200, fed.text
        assert fed.json()["reinforced"] == 1
        assert fed.json()["unknown_keys"] == ["sys1", "nope"]  # as if sys1 did not exist
        views = (await admin.post("/memory/recall", json=query)).json()["results"]
        salience = {m["key"]: m["views"]["salience"] for m in views}
        assert salience["sys1"] == salience["sys2"]  # not reinforced
        fed = await admin.post("/context/feedback", json=used)
        assert fed.json()["unknown_keys"] == ["nope"] and fed.json()["reinforced"] == 2

        got = await user.get("/memory/sys0")
        assert got.status_code == 403 and error(got)["code"] == "policy_denied"
        link = await user.post("/memory/link", json={"from_key": "note0", "to_key": "sys0"})
        assert link.status_code == 403 and error(link)["field"] == "to_key"
        forget = await user.delete("/memory/sys0")
        assert forget.status_code == 403
        assert (await admin.get("/memory/sys0")).json()["content"].startswith("zebra system note 0")
        assert (await user.get("/memory/note0")).status_code == 200
        assert (await user.delete("/memory/note0")).json()["deleted"] is True
        assert (await admin.delete("/memory/sys0")).json()["deleted"] is True


async def _successor(
    client: httpx.AsyncClient,
    tmp_path: Path,
    change: Any,
    policies: dict[str, str] | None = None,
) -> None:
    """Load the next version, signed by the dev signer, with ``change(policy)`` applied."""
    signer = SignerKey.read(tmp_path / "constitution" / "dev-signer.key")
    stored = sorted((tmp_path / "constitution").glob("v*.json"))[-1]
    active = verify(parse_signed(stored.read_bytes()))
    policy = json.loads(json.dumps(active.doc.policy))
    change(policy)
    successor = draft(
        signers=[signer.public_entry()],
        threshold=1,
        policy=policy,
        policies=active.doc.policies if policies is None else policies,
        previous=active,
    )
    successor.signatures.append(signer.sign(checksum(successor.document)))
    loaded = await client.post("/constitution/load", content=msgspec.json.encode(successor))
    assert loaded.status_code == 200, loaded.text


async def test_an_unscoped_evaluate_reads_the_namespaces_open_to_the_caller(
    tmp_path: Path,
) -> None:
    """A tenant whose policy closes ``default`` still evaluates without naming a namespace:
    the gate does not decide it as ``default``, and the bundle holds what it may read."""
    async with edge(tmp_path) as e, e.client("admin") as admin, e.client() as user:
        items = [
            {"key": "n1", "namespace": "notes", "content": "the heron nests by the lake"},
            {"key": "d1", "content": "the heron was seen in the default namespace"},
        ]
        r = await admin.post("/memory/remember/batch", json={"items": items})
        assert r.status_code == 200, r.text

        def close_default(policy: dict[str, Any]) -> None:
            policy["namespaces"]["tenants"]["acme"] = {
                "allow": ["notes"],
                "reserved_prefixes": ["_", "system"],
            }
            policy["tenants"]["deny"] = ["beta"]

        await _successor(admin, tmp_path, close_default)
        query = {"query": "heron", "top_k": 5}
        r = await user.post("/context/evaluate", json=query)
        assert r.status_code == 200, r.text
        assert [m["key"] for m in r.json()["memories"]] == ["n1"]
        assert "default namespace" not in r.json()["prompt"]
        recalled = (await user.post("/memory/recall", json=query)).json()["results"]
        assert [m["key"] for m in recalled] == ["n1"]  # as recall reads it
        named = await user.post("/context/evaluate", json={**query, "namespace": "default"})
        assert named.status_code == 403, named.text
        assert error(named)["message"] == 'namespace "default" is not open to tenant "acme"'
        ok = await user.post("/context/evaluate", json={**query, "namespace": "notes"})
        assert [m["key"] for m in ok.json()["memories"]] == ["n1"]
        # the other rules still gate it: a denied tenant, a query over the policy's size
        async with e.client(tenant="beta") as beta:
            denied = await beta.post("/context/evaluate", json=query)
            assert denied.status_code == 403
            assert error(denied)["message"] == 'tenant "beta" is denied by the constitution'
        validate = {"input": {"action": "evaluate", "tenant": "acme", "namespace": ""}}
        assert (await user.post("/constitution/validate", json=validate)).json()["allowed"]


async def test_an_unscoped_evaluate_under_policies_that_predate_it(tmp_path: Path) -> None:
    """A constitution whose policies decide ``""`` as a namespace (signed before the node sent
    it): an unscoped evaluate is decided in ``default`` while that is open, as it always was."""
    async with edge(tmp_path) as e, e.client("admin") as admin, e.client() as user:
        r = await admin.post("/memory/remember", json={"key": "n1", "content": "the heron"})
        assert r.status_code == 200, r.text
        module = MODULES["somabrain.rego"]
        older = module.replace('\t\t\tinput.namespace != ""\n', "")
        assert older != module

        def allowlist(policy: dict[str, Any]) -> None:
            policy["namespaces"]["default"]["allow"] = ["default", "notes"]

        await _successor(admin, tmp_path, allowlist, {"somabrain.rego": older})
        r = await user.post("/context/evaluate", json={"query": "heron"})
        assert r.status_code == 200, r.text
        assert [m["key"] for m in r.json()["memories"]] == ["n1"]
