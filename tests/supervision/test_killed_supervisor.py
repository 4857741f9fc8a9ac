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


async def test_children_of_a_killed_supervisor_run_again() -> None:
    root = msgspec.convert(
        {
            "intensity": 5,
            "backoff": {"initial": 0.0},
            "children": {
                "sub": {
                    "kind": "supervisor",
                    "children": {"echo": {"kind": "actor", "actor": "x:Echo"}},
                },
                "tenants": {"kind": "dynamic", "actor": "x:Echo"},
            },
        },
        SupervisorNode,
    )
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
