"""The edge actor in-process, on both backends: it serves, a kill is followed by a restart on
the same port, and a graceful stop lets the in-flight request finish."""

from __future__ import annotations

import asyncio
import errno
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
from somabrain.edge.actor import _listen, edge_state
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


async def test_a_kill_answers_the_request_in_flight_with_a_retryable_503(tmp_path: Path) -> None:
    """A killed edge cancels the requests it was handling (asyncio: Hypercorn cancels its
    connection tasks on the way out; trio: the kill's cancel scope). The agent gets a 503 with
    Retry-After on a connection that closes, not Hypercorn's bare 500."""
    entered = anyio.Event()
    async with edge_node(tmp_path) as (system, tree, url):
        app = edge_state(system).app
        assert app is not None

        async def stuck(request: Any) -> Any:
            entered.set()
            await anyio.sleep_forever()

        app._handlers["healthz"] = stuck
        answers: list[httpx.Response] = []
        async with httpx.AsyncClient(base_url=url) as client, anyio.create_task_group() as tg:

            async def request() -> None:
                answers.append(await client.get("/healthz"))

            tg.start_soon(request)
            with anyio.fail_after(10):
                await entered.wait()
            assert tree.kill("/root/edge")
        [answer] = answers
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "unavailable"
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["connection"] == "close"
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await get(client, "/healthz")).status_code == 200  # the next incarnation


def hypercorn_lifespans() -> set[asyncio.Task[Any]]:
    return {
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "Lifespan.handle_lifespan"
    }


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_kill_leaves_no_server_task_behind(tmp_path: Path) -> None:
    """asyncio: Hypercorn runs the app's lifespan in a task of its own, outside our cancel
    scope, and its cleanup of that task is cut short by the kill's cancellation. The app's
    lifespan must end with the incarnation, or each kill leaves a task pending for good (until
    the garbage collector destroys it: 'Task was destroyed but it is pending!')."""
    async with edge_node(tmp_path) as (_, tree, url):
        killed: set[asyncio.Task[Any]] = set()  # held: the collector must not hide a leak
        for _ in range(3):
            lifespans = hypercorn_lifespans()
            assert len(lifespans) == 1
            killed |= lifespans
            assert tree.kill("/root/edge")
            async with httpx.AsyncClient(base_url=url) as client:
                assert (await get(client, "/healthz")).status_code == 200
        assert all(task.done() for task in killed)
        assert len(hypercorn_lifespans()) == 1  # the running incarnation's


def test_a_port_in_use_names_the_address() -> None:
    taken = _listen("127.0.0.1", 0, 8)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as refused:
            _listen("127.0.0.1", port, 8)
        assert refused.value.errno == errno.EADDRINUSE
        assert str(refused.value) == (
            f"[Errno {errno.EADDRINUSE}] cannot listen on 127.0.0.1:{port}: Address already in use"
        )
    finally:
        taken.close()
