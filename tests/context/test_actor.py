"""The planner pool in an actor system (both backends): evaluate, feedback, adaptation state,
a killed planner (answered and retried, never lost), no planners at all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from somabrain import config as soma_config
from somabrain.actors import ActorSystem
from somabrain.context import client
from somabrain.context.actor import PlannerActor
from somabrain.context.messages import (
    AdaptationQuery,
    AdaptationView,
    ContextBundle,
    ContextFailure,
    Evaluate,
    Feedback,
    FeedbackResult,
)
from somabrain.memory import Link, Memory, search_offload, tenant_log_path
from somabrain.memory.messages import GetMemory, Remember, ask_memory
from somabrain.memory.replica import OFFLOAD_RESOURCE
from somabrain.supervision import SupervisionTree, SupervisorNode

pytestmark = pytest.mark.anyio


def tree(planner: str = "somabrain.context.actor:PlannerActor", size: int = 2) -> dict[str, Any]:
    return {
        "intensity": 10,
        "children": {
            "memory": {"kind": "dynamic", "actor": "somabrain.memory.actor:MemoryActor",
                       "idle_timeout": 0, "backoff": {"initial": 0.0}},
            "planners": {"kind": "pool", "actor": planner, "size": size, "intensity": 10,
                         "backoff": {"initial": 0.0, "jitter": 0.0}},
        },
    }  # fmt: skip


@asynccontextmanager
async def node(
    tmp_path: Path, context: dict[str, Any] | None = None, **kw: Any
) -> AsyncIterator[tuple[ActorSystem, SupervisionTree]]:
    cfg = soma_config.load(environ={})
    cfg = msgspec.structs.replace(cfg, tree=msgspec.convert(tree(**kw), SupervisorNode))
    if context:
        changed = msgspec.structs.replace(cfg.context, **context)
        cfg = msgspec.structs.replace(cfg, context=changed)
    async with ActorSystem() as system:
        system.resources.update(config=cfg, data_dir=tmp_path)
        t = SupervisionTree(system, cfg.tree, cfg.node)
        system.resources["tree"] = t
        await t.start()
        try:
            yield system, t
        finally:
            await t.stop()


TURNS = [
    ("t1", "Caroline: I went to the LGBTQ support group yesterday"),
    ("t2", "Melanie: That's great! How did it feel?"),
    ("t3", "Caroline: It was powerful, I felt accepted"),
    ("t4", "Melanie: I painted a sunrise last week"),
]


async def seed(system: ActorSystem, t: SupervisionTree, tenant: str = "acme") -> None:
    memories = []
    for i, (key, text) in enumerate(TURNS):
        links = (Link(to_key=TURNS[i - 1][0], rel="next"),) if i else ()
        memories.append(Memory(key=key, content=text, session_id="s1", links=links))
    runner: Any = t.find("/root/memory")
    await ask_memory(runner.ref(tenant), Remember(tuple(memories)), 10.0)


async def ask(system: ActorSystem, message: Any) -> Any:
    return await client.request(system.bus, message, timeout=5.0, attempts=2)


async def test_evaluate_feedback_and_adaptation(tmp_path: Path) -> None:
    async with node(tmp_path) as (system, t):
        await seed(system, t)
        bundle = await ask(system, Evaluate(tenant="acme", query="support group feelings",
                                            session_id="s1", top_k=3))  # fmt: skip
        assert isinstance(bundle, ContextBundle), bundle
        assert bundle.memories[0].key == "t1"
        assert len(bundle.memories) == 3
        assert sum(m.weight for m in bundle.memories) == pytest.approx(1.0)
        assert set(bundle.memories[0].views) == set(bundle.weights)
        assert len(bundle.residual_vector) == 1024
        assert bundle.working_memory and bundle.working_memory[0].key in {k for k, _ in TURNS}
        assert "Query: support group feelings" in bundle.prompt
        assert bundle.plan is not None and bundle.plan.planner.startswith("planners-")
        assert bundle.constitution_checksum is None and bundle.policy is None

        before: AdaptationView = await ask(system, AdaptationQuery(tenant="acme"))
        assert before.history_length == 0 and before.weights == before.defaults
        result = await ask(system, Feedback(tenant="acme", session_id="s1",
                                            query="support group feelings",
                                            used_keys=("t3",), utility=1.0))  # fmt: skip
        assert isinstance(result, FeedbackResult) and result.accepted
        assert result.adaptation_applied and result.reinforced == 1
        assert result.weights_after != result.weights_before
        state: AdaptationView = await ask(system, AdaptationQuery(tenant="acme"))
        assert state.history_length == 1 and state.weights == result.weights_after
        # the reinforced memory is more salient now
        again = await ask(system, Evaluate(tenant="acme", query="support group feelings"))
        t3 = next(m for m in again.memories if m.key == "t3")
        assert t3.views["salience"] > 0.5
        # other tenants are untouched
        other: AdaptationView = await ask(system, AdaptationQuery(tenant="other"))
        assert other.history_length == 0
    # state survives a restart of the node
    async with node(tmp_path) as (system, _):
        state = await ask(system, AdaptationQuery(tenant="acme"))
        assert state.history_length == 1 and state.weights == result.weights_after
        reset = await ask(system, AdaptationQuery(tenant="acme", reset=True))
        assert reset.weights == reset.defaults and reset.history_length == 0


@pytest.fixture
def patient_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """What these tests check is where bundles are built, not the failover of a worker that
    is slow: on a loaded machine the worker may take longer than ``STALL_AFTER`` (0.5 s) to
    answer, and the bundle would be built on the loop instead."""
    monkeypatch.setattr(search_offload, "STALL_AFTER", 10.0)


async def running_worker(system: ActorSystem) -> Any:
    offload = system.resources[OFFLOAD_RESOURCE]
    with anyio.fail_after(20):
        while not offload.running:  # noqa: ASYNC110 (no event to wait on)
            await anyio.sleep(0.02)
    return offload


@pytest.mark.usefixtures("patient_worker")
async def test_bundles_are_built_in_the_search_worker_once_it_runs(tmp_path: Path) -> None:
    query = Evaluate(tenant="acme", query="support group feelings", top_k=3)
    async with node(tmp_path, context={"build_in_worker": "always"}) as (system, t):
        await seed(system, t)
        first = await ask(system, query)  # starts the worker: built here meanwhile
        offload = await running_worker(system)
        calls = offload.calls
        second = await ask(system, query)
        assert offload.calls == calls + 1 and offload.failed_over == 0
        assert isinstance(second, ContextBundle)
        assert [m.key for m in second.memories] == [m.key for m in first.memories]
        assert second.prompt == first.prompt and second.plan.selected == first.plan.selected
        assert second.residual_vector == first.residual_vector
    async with node(tmp_path, context={"build_in_worker": "never"}) as (system, t):
        assert isinstance(await ask(system, query), ContextBundle)
        assert OFFLOAD_RESOURCE not in system.resources  # no worker process at all


@pytest.mark.usefixtures("patient_worker")
async def test_by_default_only_concurrent_evaluates_go_to_the_worker(tmp_path: Path) -> None:
    """``build_in_worker = "busy"``: alone, an evaluate's bundle is built on the loop (sooner
    than a round trip); while others are in progress, in the worker."""
    async with node(tmp_path) as (system, t):
        await seed(system, t)
        query = Evaluate(tenant="acme", query="support group feelings", top_k=3)
        await ask(system, query)  # starts the worker
        offload = await running_worker(system)
        for _ in range(3):
            assert isinstance(await ask(system, query), ContextBundle)
        assert offload.calls == 0
        bundles: list[Any] = []

        async def agent() -> None:
            bundles.append(await ask(system, query))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(agent)
        assert all(isinstance(b, ContextBundle) for b in bundles) and len(bundles) == 8
        assert offload.calls > 0 and offload.failed_over == 0
        assert system.resources["context.evaluating"] == [0]


async def test_feedback_teaches_associations_and_co_use_links_that_survive_a_restart(
    tmp_path: Path,
) -> None:
    query = "how did Caroline feel at the support group"
    async with node(tmp_path) as (system, t):
        await seed(system, t)
        before = await ask(system, Evaluate(tenant="acme", query="Caroline support", top_k=4))
        assert all(m.views["association"] == 0.0 for m in before.memories)
        result = await ask(system, Feedback(tenant="acme", session_id="s1", query=query,
                                            used_keys=("t1", "t3"), utility=1.0))  # fmt: skip
        assert isinstance(result, FeedbackResult) and result.reinforced == 2
        assert "association" in result.weights_after
    async with node(tmp_path) as (system, t):
        after = await ask(system, Evaluate(tenant="acme", query="Caroline support", top_k=4))
        lifted = {m.key for m in after.memories if m.views["association"] > 0.0}
        assert lifted == {"t1", "t3"}
        runner: Any = t.find("/root/memory")
        t1 = await ask_memory(runner.ref("acme"), GetMemory(key="t1"), 5.0)
        assert any(ln.to_key == "t3" and ln.rel == "co_used" for ln in t1.links)


async def test_refusals_come_back_as_failures(tmp_path: Path) -> None:
    async with node(tmp_path) as (system, t):
        await seed(system, t)
        bad = await ask(system, Evaluate(tenant="acme", query="x", top_k=10_000))
        assert isinstance(bad, ContextFailure) and bad.status == 422 and bad.field == "top_k"
        blank = await ask(system, Evaluate(tenant="acme", query="   "))
        assert isinstance(blank, ContextFailure) and blank.status == 422
        big = await ask(system, Evaluate(tenant="acme", query="x" * 5000))
        assert isinstance(big, ContextFailure) and (big.status, big.code) == (422, "out_of_range")
        assert big.field == "query"
        flt = await ask(system, Evaluate(tenant="acme", query="x", filters={"tags": 3}))
        assert isinstance(flt, ContextFailure) and flt.status == 422
        empty = await ask(system, Evaluate(tenant="nobody", query="anything"))
        assert isinstance(empty, ContextBundle) and empty.memories == []


class SlowPlanner(PlannerActor):
    """Waits for the test's go-ahead before building a bundle (first incarnation only)."""

    async def evaluate(self, request: Evaluate) -> Any:
        gate: dict[str, Any] = self.context.system.resources["test.gate"]
        if self.context.incarnation == 1:
            gate["entered"].set()
            await anyio.sleep_forever()
        return await super().evaluate(request)


async def test_killed_planner_is_restarted_and_the_request_retried(tmp_path: Path) -> None:
    async with node(tmp_path, planner="tests.context.test_actor:SlowPlanner", size=1) as (
        system,
        t,
    ):
        await seed(system, t)
        gate = {"entered": anyio.Event()}
        system.resources["test.gate"] = gate
        result: list[Any] = []

        async def evaluate() -> None:
            result.append(await ask(system, Evaluate(tenant="acme", query="support group")))

        async with anyio.create_task_group() as tg:
            tg.start_soon(evaluate)
            with anyio.fail_after(5):
                await gate["entered"].wait()
            ref = system.lookup("/root/planners/planners-0")
            assert ref is not None
            ref.kill()
        assert isinstance(result[0], ContextBundle), result[0]
        assert result[0].memories
        assert ref.statistics().restarts >= 1


async def test_feedback_is_not_retried_after_a_kill(tmp_path: Path) -> None:
    class Bus:  # a bus whose planner always dies mid-request
        calls = 0

        async def request(self, subject: str, data: Any, timeout: float) -> Any:
            Bus.calls += 1
            failure = ContextFailure(status=503, code="planner_restarted", message="killed")
            return type("Msg", (), {"data": failure})()

    fb = Feedback(tenant="acme", session_id="s", query="q")
    reply = await client.request(Bus(), fb, timeout=1.0, attempts=3)
    assert isinstance(reply, ContextFailure) and reply.status == 503
    assert "may not have been applied" in reply.message and Bus.calls == 1
    Bus.calls = 0
    reply = await client.request(Bus(), Evaluate(tenant="a", query="q"), timeout=1.0, attempts=3)
    assert reply.code == "planner_restarted" and Bus.calls == 3


async def test_no_planner_is_a_503(tmp_path: Path) -> None:
    async with ActorSystem() as system:
        reply = await ask(system, Evaluate(tenant="acme", query="q"))
        assert isinstance(reply, ContextFailure) and reply.status == 503
        assert reply.code == "no_planner"


async def test_a_tenant_whose_log_is_unreadable_is_refused_not_a_planner_crash(
    tmp_path: Path,
) -> None:
    """A tenant whose memory cannot be opened (here a file that is not a memory log; with
    PostgreSQL, a database that is down) answers every request with 503
    ``storage_unavailable``: the planner handling it is not restarted for it."""
    path = tenant_log_path(tmp_path / "memory", "acme")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a memory log at all")
    async with node(tmp_path) as (system, _):
        for request in (
            Evaluate(tenant="acme", query="anything"),
            Feedback(tenant="acme", session_id="s", query="anything", used_keys=("k",)),
        ):
            reply = await ask(system, request)
            assert isinstance(reply, ContextFailure), reply
            assert (reply.status, reply.code) == (503, "storage_unavailable")
        planners = system.resources["tree"].find("/root/planners").inspect()
        assert all(child["restarts"] == 0 for child in planners["children"]), planners
