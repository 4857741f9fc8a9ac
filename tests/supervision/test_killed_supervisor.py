"""Regression: a killed supervisor's next incarnation starts its children again."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

from somabrain.actors import Actor, ActorSystem
from somabrain.supervision import SupervisionTree, SupervisorNode

pytestmark = pytest.mark.anyio


class Echo(Actor):
    async def receive(self, message: Any) -> Any:
        return message


def _tree(actor: str, **siblings: dict[str, Any]) -> SupervisorNode:
    """A root with supervisor ``sub`` over one ``actor``, beside ``siblings``."""
    sub = {"kind": "supervisor", "children": {actor: {"kind": "actor", "actor": f"x:{actor}"}}}
    return msgspec.convert(
        {"intensity": 5, "backoff": {"initial": 0.0}, "children": {"sub": sub, **siblings}},
        SupervisorNode,
    )


async def test_children_of_a_killed_supervisor_run_again() -> None:
    root = _tree("echo", tenants={"kind": "dynamic", "actor": "x:Echo"})
    async with ActorSystem() as system:
        tree = SupervisionTree(system, root, resolve=lambda _: Echo)
        await tree.start()
        echo = system.lookup("/root/sub/echo")
        assert echo is not None and await echo.ask(1) == 1
        dynamic = tree.find("/root/tenants")
        tenant = dynamic.ref("acme")  # type: ignore[union-attr]
        assert await tenant.ask(2) == 2
        assert tree.kill("/root/sub") and tree.kill("/root/tenants")
        # Messages sent during the restart wait in the mailboxes for the new incarnations.
        with anyio.fail_after(5):
            assert await echo.ask(3) == 3
            assert await tenant.ask(4) == 4
        assert tree.ready
        await tree.stop()


class Blocking(Actor):
    """``"block"`` holds the actor in a shielded wait (as an fsync would) until ``release``:
    a kill of its supervisor then waits for it, and the supervisor stays in its stopping
    state meanwhile."""

    entered: anyio.Event
    release: anyio.Event

    async def receive(self, message: Any) -> Any:
        if message == "block":
            with anyio.CancelScope(shield=True):
                Blocking.entered.set()
                await Blocking.release.wait()
        return message


async def test_a_killed_supervisor_stops_counting_as_running_at_once() -> None:
    """While a killed supervisor is still stopping its children, it is not running: the
    tree is not ready, and a second kill is refused rather than taken for a second restart."""
    Blocking.entered, Blocking.release = anyio.Event(), anyio.Event()
    root = _tree("blocking")
    async with ActorSystem() as system:
        tree = SupervisionTree(system, root, resolve=lambda _: Blocking)
        await tree.start()
        sub = tree.find("/root/sub")
        actor = system.lookup("/root/sub/blocking")
        assert sub is not None and actor is not None and sub.running and tree.ready
        restarts = sub.restarts
        with anyio.fail_after(5):
            await actor.tell("block")
            await Blocking.entered.wait()
        try:
            assert tree.kill("/root/sub")
            assert not sub.running
            assert not tree.ready
            assert not tree.kill("/root/sub"), "a stopping supervisor is not killed twice"
            await anyio.sleep(0.05)
            assert not sub.running, "still stopping: its child holds it"
        finally:  # a failed assertion must not leave the actor blocked for good
            Blocking.release.set()
        with anyio.fail_after(5):
            while not (sub.running and tree.ready):  # noqa: ASYNC110 (polls the tree)
                await anyio.sleep(0.01)
            assert sub.restarts == restarts + 1
            assert await actor.ask(1) == 1
        await tree.stop()
