"""``/context/*`` through the ASGI app (httpx's ASGI transport), against a real tree: guardian
(governance gate), memory actors and the planner pool, on both anyio backends."""

from __future__ import annotations

import gc
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
from somabrain.supervision import SupervisionTree, SupervisorNode

pytestmark = pytest.mark.anyio

TREE = {
    "intensity": 10,
    "children": {
        "guardian": {"kind": "actor", "actor": "somabrain.governance.guardian:GuardianActor"},
        "memory": {"kind": "dynamic", "actor": "somabrain.memory.actor:MemoryActor",
                   "idle_timeout": 0, "backoff": {"initial": 0.0}},
        "planners": {"kind": "pool", "actor": "somabrain.context.actor:PlannerActor", "size": 2},
    },
}  # fmt: skip


@asynccontextmanager
async def edge(tmp_path: Path) -> AsyncIterator[tuple[EdgeApp, Authenticator]]:
    cfg = soma_config.load(environ={})
    cfg = msgspec.structs.replace(cfg, tree=msgspec.convert(TREE, SupervisorNode))
    auth = Authenticator(cfg.auth, tmp_path)
    async with ActorSystem() as system:
        system.resources.update(config=cfg, data_dir=tmp_path, auth=auth, config_path=None)
        tree = SupervisionTree(system, cfg.tree, cfg.node)
        system.resources["tree"] = tree
        await tree.start()
        try:
            yield EdgeApp(system, config=cfg, auth=auth), auth
        finally:
            await tree.stop()
    gc.collect()  # drop the guardian's policy engines on this thread (see tests/edge)


def client(app: EdgeApp, auth: Authenticator, *scopes: str) -> httpx.AsyncClient:
    token = auth.issuer().issue(["acme"], scopes=list(scopes))
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
        base_url="http://edge",
        headers={"Authorization": f"Bearer {token}"},
    )


async def remember(c: httpx.AsyncClient, items: list[dict[str, Any]]) -> None:
    r = await c.post("/memory/remember/batch", json={"items": items})
    assert r.status_code == 200, r.text


async def test_evaluate_feedback_state_reset(tmp_path: Path) -> None:
    async with edge(tmp_path) as (app, auth), client(app, auth) as c:
        await remember(c, [
            {"key": "a", "content": "Caroline joined a support group in May", "session_id": "s"},
            {"key": "b", "content": "It made her feel accepted", "session_id": "s",
             "links": [{"to_key": "a", "rel": "next"}]},
            {"key": "c", "content": "Melanie likes pottery"},
        ])  # fmt: skip
        body = {"query": "support group", "session_id": "s", "top_k": 3}
        r = await c.post("/context/evaluate", json=body)
        assert r.status_code == 200, r.text
        bundle = r.json()
        for name in ("query", "prompt", "memories", "weights", "residual_vector",
                     "working_memory", "constitution_checksum", "policy", "trace_id",
                     "audit_id"):  # fmt: skip
            assert name in bundle
        assert bundle["memories"][0]["key"] == "a"
        assert {"key", "content", "weight", "views"} <= set(bundle["memories"][0])
        assert set(bundle["memories"][0]["views"]) == {
            "semantic", "lexical", "graph", "recency", "salience", "association", "form"
        }  # fmt: skip
        assert bundle["memories"][1]["key"] == "b"  # lifted by the graph view
        assert len(bundle["residual_vector"]) == 1024
        assert bundle["policy"]["allowed"] is True and bundle["constitution_checksum"]
        assert bundle["trace_id"] == r.headers["x-trace-id"]

        r = await c.post("/context/feedback", json={
            "session_id": "s", "query": "support group", "used_keys": ["b"], "utility": 0.9,
            "tokens": {"model": "m", "prompt_tokens": 10, "completion_tokens": 5},
        })  # fmt: skip
        assert r.status_code == 200, r.text
        fb = r.json()
        assert fb["accepted"] and fb["adaptation_applied"]
        assert fb["weights_before"] != fb["weights_after"]
        state = (await c.get("/context/adaptation/state")).json()
        assert state["history_length"] == 1 and state["weights"] == fb["weights_after"]

        r = await c.post("/context/adaptation/reset")
        assert r.status_code == 403  # admin scope
        async with client(app, auth, "admin") as admin:
            r = await admin.post("/context/adaptation/reset")
            assert r.status_code == 200, r.text
            assert r.json()["weights"] == r.json()["defaults"]
        state = (await c.get("/context/adaptation/state")).json()
        assert state["history_length"] == 0


async def test_reset_resets_the_tenant_the_request_names(tmp_path: Path) -> None:
    async with edge(tmp_path) as (app, auth):
        token = auth.issuer().issue(["acme", "beta"], scopes=["admin"])
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
            base_url="http://edge",
            headers={"Authorization": f"Bearer {token}", "X-Tenant-ID": "acme"},
        ) as c:
            await remember(c, [{"key": "a", "content": "Caroline joined a support group"},
                               {"key": "b", "content": "Melanie likes pottery"}])  # fmt: skip
            r = await c.post("/context/feedback", json={
                "session_id": "s", "query": "support group", "used_keys": ["a"], "utility": 1,
            })  # fmt: skip
            assert r.status_code == 200, r.text

            async def history() -> int:
                state = await c.get("/context/adaptation/state")
                return int(state.json()["history_length"])

            assert await history() == 1
            r = await c.post("/context/adaptation/reset", headers={"X-Tenant-ID": "beta"})
            assert r.status_code == 200, r.text
            assert await history() == 1  # beta's weights were reset, not acme's
            assert (await c.post("/context/adaptation/reset")).status_code == 200
            assert await history() == 0


async def test_bad_input_is_refused_with_the_right_status(tmp_path: Path) -> None:
    async with edge(tmp_path) as (app, auth), client(app, auth) as c:
        r = await c.post("/context/evaluate", json={"query": "x", "top_k": 500})
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "top_k"
        assert r.json()["error"]["code"] == "out_of_range"  # as recall's top_k
        r = await c.post("/context/evaluate", json={"query": ""})
        assert r.status_code == 422
        r = await c.post("/context/evaluate", json={"query": "x", "bogus": 1})
        assert r.status_code == 422
        # A bad filter names its path, as in recall (not just "filters").
        for filters, field in (({"meta": 5}, "filters.meta"), ({"tags": 5}, "filters.tags"),
                               ({"any_tags": [1]}, "filters.any_tags[0]")):  # fmt: skip
            r = await c.post("/context/evaluate", json={"query": "x", "filters": filters})
            assert r.status_code == 422, r.text
            assert r.json()["error"]["field"] == field
            assert "$." not in r.json()["error"]["message"]
        r = await c.post("/context/evaluate", content=b"{nope")
        assert r.status_code == 400
        r = await c.post("/context/feedback", json={"query": "x"})
        assert r.status_code == 422  # session_id is required
        r = await c.post("/context/evaluate", json={"query": "x"}, headers={"X-Tenant-ID": "evil"})
        assert r.status_code == 403
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
                                     base_url="http://edge") as anon:  # fmt: skip
            assert (await anon.post("/context/evaluate", json={"query": "x"})).status_code == 401


async def test_a_query_over_its_limit_is_the_same_422_on_every_route(tmp_path: Path) -> None:
    """Recall, evaluate and feedback answer a query over its limit alike: 422 ``out_of_range``
    naming ``query`` (a field over its bound, as ``top_k``; 413 is for a body over
    ``edge.max_body_bytes``). Evaluate's limit is checked before the governance gate, whose
    own (16 KiB of content) would otherwise answer longer queries with a 403 naming no field;
    a blank query is a 422 ``invalid_field`` on all three."""
    async with edge(tmp_path) as (app, auth), client(app, auth) as c:
        limit = app.config.context.limits.max_query_chars
        feedback = {"session_id": "s"}
        for route, body, length in (
            ("/memory/recall", {}, 10_001),
            ("/context/evaluate", {}, limit + 1),
            ("/context/evaluate", {}, 16 * 1024 + 1),
            ("/context/evaluate", {}, 99_000),
            ("/context/evaluate", {}, 100_001),
            ("/context/feedback", feedback, limit + 1),
        ):
            r = await c.post(route, json={**body, "query": "q" * length})
            assert r.status_code == 422, (route, length, r.text)
            error = r.json()["error"]
            assert (error["code"], error["field"]) == ("out_of_range", "query"), (route, length)
        for route, body in (
            ("/memory/recall", {}),
            ("/context/evaluate", {}),
            ("/context/feedback", feedback),
        ):
            r = await c.post(route, json={**body, "query": " \n\t "})
            assert r.status_code == 422, (route, r.text)
            error = r.json()["error"]
            assert (error["code"], error["field"]) == ("invalid_field", "query"), route
        for route, body in (("/context/evaluate", {}), ("/context/feedback", feedback)):
            r = await c.post(route, json={**body, "query": "q" * limit})
            assert r.status_code == 200, (route, r.text)
        r = await c.post("/memory/recall", json={"query": "q" * 10_000})
        assert r.status_code == 200, r.text


async def test_feedback_names_the_used_keys_the_tenant_does_not_hold(tmp_path: Path) -> None:
    """A key forgotten between the bundle and its feedback (or never remembered) does not fail
    the feedback: the known keys are applied, the others listed in ``unknown_keys``."""
    async with edge(tmp_path) as (app, auth), client(app, auth) as c:
        await remember(c, [
            {"key": "a", "content": "the lighthouse keeper rows to the island"},
            {"key": "b", "content": "the lighthouse lamp burns whale oil"},
            {"key": "c", "content": "a note about something else entirely"},
        ])  # fmt: skip
        query = {"session_id": "s", "query": "lighthouse"}
        bundle = (await c.post("/context/evaluate", json=query)).json()
        assert {"a", "b"} <= {m["key"] for m in bundle["memories"]}
        assert (await c.delete("/memory/b")).status_code == 200  # forgotten since the bundle
        used = ["a", "b", "never", "a"]
        r = await c.post("/context/feedback", json={**query, "used_keys": used, "reward": 1})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["accepted"] and body["reinforced"] == 1
        assert body["unknown_keys"] == ["b", "never"]
        memory = (await c.post("/memory/recall", json={"query": "lighthouse"})).json()
        salience = {m["key"]: m["views"]["salience"] for m in memory["results"]}
        assert salience["a"] > 0.5 and "b" not in salience  # a reinforced, b stays forgotten
        # a reward of 0 reinforces nothing, and still says which keys are unknown
        r = await c.post("/context/feedback", json={**query, "used_keys": used, "reward": 0})
        assert r.status_code == 200, r.text
        assert (r.json()["reinforced"], r.json()["unknown_keys"]) == (0, ["b", "never"])
        r = await c.post("/context/feedback", json={**query, "used_keys": ["a"]})
        assert r.json()["unknown_keys"] == []
        r = await c.post("/context/feedback", json={**query, "used_keys": ["gone"]})
        assert r.status_code == 200, r.text
        assert (r.json()["reinforced"], r.json()["unknown_keys"]) == (0, ["gone"])


async def test_working_memory_is_searchable_with_layer_wm(tmp_path: Path) -> None:
    async with edge(tmp_path) as (app, auth), client(app, auth) as c:
        await remember(c, [
            {"key": f"w{i}", "content": f"note {i} about {topic}", "session_id": "s"}
            for i, topic in enumerate(["cats", "taxes", "cats and dogs", "gardening"])
        ] + [{"key": "other", "content": "cats elsewhere", "session_id": "t"}])  # fmt: skip
        query = {"query": "cats", "layer": "wm", "session_id": "s", "top_k": 2}
        r = await c.post("/memory/recall", json=query)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["key"] for x in body["results"]] == ["w2", "w0"]
        assert all(x["layer"] == "wm" for x in body["results"]) and body["wm_hits"] == 2
        assert set(body["results"][0]["views"]) == {"semantic", "lexical", "recency"}


async def test_feedback_teaches_the_form_view_until_a_reset(tmp_path: Path) -> None:
    """Feedback that uses a long memory over short ones teaches the tenant's form model: the
    state shows it, the next bundle's form scores follow it, and a reset forgets it."""
    async with edge(tmp_path) as (app, auth), client(app, auth) as c:
        await remember(c, [
            {"key": "long", "content": "Caroline: I went to the support group on 7 May and "
                                       "the stories people told there were so inspiring"},
            {"key": "s1", "content": "support group?"},
            {"key": "s2", "content": "Wow, a support group!"},
            {"key": "s3", "content": "the group"},
        ])  # fmt: skip
        assert (await c.get("/context/adaptation/state")).json()["form"] == {}
        query = {"session_id": "s", "query": "support group"}

        async def form_scores() -> dict[str, float]:
            r = await c.post("/context/evaluate", json={**query, "top_k": 4})
            assert r.status_code == 200, r.text
            return {m["key"]: m["views"]["form"] for m in r.json()["memories"]}

        assert set((await form_scores()).values()) == {0.5}  # nothing learned: all alike
        for _ in range(2):
            r = await c.post("/context/feedback", json={**query, "used_keys": ["long"],
                                                        "utility": 1.0})  # fmt: skip
            assert r.status_code == 200, r.text
        form = (await c.get("/context/adaptation/state")).json()["form"]
        assert form and form["words"] > 0.0 and form["question"] < 0.0
        scores = await form_scores()
        assert {"long", "s3"} <= set(scores)
        assert scores["long"] > 0.5 > scores["s3"]

        async with client(app, auth, "admin") as admin:
            r = await admin.post("/context/adaptation/reset")
            assert r.status_code == 200, r.text
            assert r.json()["form"] == {}
        assert (await c.get("/context/adaptation/state")).json()["form"] == {}
        assert set((await form_scores()).values()) == {0.5}
