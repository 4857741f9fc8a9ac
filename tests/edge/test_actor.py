"""The edge actor in-process, on both backends: it serves, a kill is followed by a restart on
the same port, and a graceful stop lets the in-flight request finish."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import msgspec
import pytest

from somabrain import config as soma_config
from somabrain.actors import ActorSystem
from somabrain.edge.actor import edge_state
from somabrain.edge.auth import Authenticator
from somabrain.supervision import SupervisionTree, SupervisorNode

pytestmark = pytest.mark.anyio

TREE = {
    "intensity": 10,
    "backoff": {"initial": 0.0},
    "children": {"edge": {"kind": "actor", "actor": "somabrain.edge.actor:EdgeActor"}},
}


@asynccontextmanager
async def edge_node(tmp_path: Path) -> AsyncIterator[tuple[ActorSystem, SupervisionTree, str]]:
    cfg = soma_config.load(environ={})
    cfg = msgspec.structs.replace(
        cfg,
        tree=msgspec.convert(TREE, SupervisorNode),
        edge=msgspec.structs.replace(cfg.edge, port=0, graceful_timeout=5.0),
    )
    async with ActorSystem() as system:
        system.resources.update(
            config=cfg, data_dir=tmp_path, auth=Authenticator(cfg.auth, tmp_path)
        )
        tree = SupervisionTree(system, cfg.tree, cfg.node)
        system.resources["tree"] = tree
        await tree.start()
        try:
            yield system, tree, system.resources["edge.url"]
        finally:
            await tree.stop()


async def get(client: httpx.AsyncClient, path: str, attempts: int = 500) -> httpx.Response:
    """GET, retrying refused connections while the edge restarts (bounded)."""
    for _ in range(attempts):
        try:
            return await client.get(path)
        except httpx.TransportError:
            await anyio.sleep(0.01)
    raise AssertionError(f"{path} never answered")


async def test_serves_and_comes_back_after_a_kill(tmp_path: Path) -> None:
    async with edge_node(tmp_path) as (system, tree, url):
        port = edge_state(system).port
        metrics = edge_state(system).metrics
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
        for _ in range(2):
            assert tree.kill("/root/edge")
            async with httpx.AsyncClient(base_url=url) as client:
                assert (await get(client, "/healthz")).status_code == 200
        assert edge_state(system).port == port  # the same port every time
        cell = system.cell("/root/edge")
        assert cell is not None and cell.incarnation == 3
        assert edge_state(system).metrics is metrics  # counters outlive restarts
    # (checked once every request task has finished: under trio, a response's bookkeeping
    # may run after the client already has it)
    assert metrics.request_count("healthz", "GET", 200) >= 3


async def test_graceful_stop_finishes_the_request_in_flight(tmp_path: Path) -> None:
    gate = anyio.Event()
    entered = anyio.Event()
    async with edge_node(tmp_path) as (system, tree, url):
        app = edge_state(system).app
        assert app is not None

        async def slow(request: Any) -> Any:
            entered.set()
            await gate.wait()
            return app.json({"status": "ok"})

        app._handlers["healthz"] = slow
        results: list[int] = []
        async with httpx.AsyncClient(base_url=url) as client, anyio.create_task_group() as tg:

            async def request() -> None:
                results.append((await client.get("/healthz")).status_code)

            tg.start_soon(request)
            await entered.wait()
            tg.start_soon(tree.stop)  # stops accepting, waits for the request in flight
            with anyio.fail_after(10):
                while not app.closing:  # the edge's on_stop has begun
                    await anyio.lowlevel.checkpoint()
            gate.set()
        assert results == [200]
        assert app.closing
