"""The tree from config: build, inspect, kill by path, and reload without collateral restarts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from somabrain.actors import Actor, ActorSystem
from somabrain.supervision import (
    SupervisionTree,
    VirtualClock,
    load_config,
)

from .helpers import Config, Recorder, settle

pytestmark = pytest.mark.anyio


TREE = """
[node]
mailbox_size = 64

[tree]
intensity = 5
backoff = { initial = 0.0 }

[tree.children.store]
kind = "actor"
actor = "test:Worker"

[tree.children.memory]
kind = "dynamic"
actor = "test:Worker"
idle_timeout = 0

[tree.children.planners]
kind = "pool"
actor = "test:Worker"
size = 2
mailbox_size = 16

[tree.children.edge]
kind = "actor"
actor = "test:Worker"
"""


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    path = tmp_path / "tree.toml"
    path.write_text(text)
    return load_config(Config, path, environ=environ or {})


def resolver(journal: list[str]) -> Callable[[str], Callable[[], Actor]]:
    def resolve(reference: str) -> Callable[[], Actor]:
        assert reference == "test:Worker"
        return lambda: Recorder(journal)

    return resolve


async def start_tree(system: ActorSystem, config: Config, journal: list[str]) -> SupervisionTree:
    tree = SupervisionTree(
        system, config.tree, config.node, clock=VirtualClock(), resolve=resolver(journal)
    )
    await tree.start()
    return tree


async def who(system: ActorSystem, path: str) -> Any:
    ref = system.lookup(path)
    assert ref is not None, path
    return await ref.ask("who")


async def test_the_tree_starts_in_order_and_can_be_inspected(tmp_path: Path) -> None:
    journal: list[str] = []
    async with ActorSystem() as system:
        tree = await start_tree(system, load(tmp_path, TREE), journal)
        assert journal == ["start store", "start planners-0", "start planners-1", "start edge"]
        assert tree.ready
        view = tree.inspect()
        assert view["path"] == "/root"
        assert [c["path"] for c in view["children"]] == [
            "/root/store",
            "/root/memory",
            "/root/planners",
            "/root/edge",
        ]
        planners = view["children"][2]
        assert [m["mailbox_capacity"] for m in planners["children"]] == [16, 16]
        store = view["children"][0]
        assert store["state"] == "running"
        assert store["mailbox_capacity"] == 64  # the node default
        assert {"restarts", "mailbox_depth"} <= store.keys()


async def test_kill_by_path_is_restarted_by_the_supervisor(tmp_path: Path) -> None:
    journal: list[str] = []
    async with ActorSystem() as system:
        tree = await start_tree(system, load(tmp_path, TREE), journal)
        memory = tree.find("/root/memory")
        assert memory is not None
        tenant = memory.ref("tenant-a")  # type: ignore[attr-defined]
        assert await tenant.ask("who") == ("tenant-a", 1)
        assert tree.kill("/root/memory/tenant-a")
        assert tree.kill("/root/edge")
        assert not tree.kill("/root/nothing")
        await settle()
        assert await tenant.ask("who") == ("tenant-a", 2)
        assert await who(system, "/root/edge") == ("edge", 2)
        assert tree.inspect()["children"][3]["restarts"] == 1
        assert await who(system, "/root/store") == ("store", 1)


async def test_reload_applies_changes_without_restarting_the_rest(tmp_path: Path) -> None:
    journal: list[str] = []
    async with ActorSystem() as system:
        tree = await start_tree(system, load(tmp_path, TREE), journal)
        tenant = tree.find("/root/memory").ref("t1")  # type: ignore[union-attr]
        await tenant.ask("who")
        journal.clear()
        new_text = (
            TREE.replace("intensity = 5", "intensity = 9")
            .replace("size = 2", "size = 4")
            .replace("mailbox_size = 16", "mailbox_size = 32")
            .replace("idle_timeout = 0", "idle_timeout = 0\nmailbox_size = 8")
            + '\n[tree.children.audit]\nkind = "actor"\nactor = "test:Worker"\n'
        )
        new = load(tmp_path, new_text, {"SOMA_NODE__MAILBOX_SIZE": "128"})
        changes = await tree.reload(new.tree, new.node)
        await settle()
        assert journal == ["start planners-2", "start planners-3", "start audit"]
        assert tree.root.spec.intensity == 9
        view = tree.inspect()
        pool = view["children"][2]
        assert [m["mailbox_capacity"] for m in pool["children"]] == [32] * 4
        assert view["children"][0]["mailbox_capacity"] == 128  # node default changed
        assert view["children"][1]["children"][0]["mailbox_capacity"] == 8
        # Nothing that already ran was restarted.
        for path in ("/root/store", "/root/planners/planners-0", "/root/edge"):
            assert (await who(system, path))[1] == 1
        assert await tenant.ask("who") == ("t1", 1)
        assert "/root: intensity 5 -> 9" in changes
        assert "/root/planners: pool size 2 -> 4" in changes
        assert "/root/audit: added" in changes

        # Shrinking and removing stop exactly the members that go away, last first.
        journal.clear()
        changes = await tree.reload(load(tmp_path, TREE.replace("size = 2", "size = 1")).tree)
        assert journal == ["stop audit", "stop planners-3", "stop planners-2", "stop planners-1"]
        assert system.lookup("/root/audit") is None
        assert "/root/audit: removed" in changes


async def test_killing_a_supervisor_restarts_its_whole_subtree(tmp_path: Path) -> None:
    journal: list[str] = []
    async with ActorSystem() as system:
        tree = await start_tree(system, load(tmp_path, TREE), journal)
        memory = tree.find("/root/memory")
        tenant = memory.ref("t1")  # type: ignore[union-attr]
        assert await tenant.ask("who") == ("t1", 1)
        assert tree.kill("/root/planners")
        assert tree.kill("/root/memory")
        await settle()
        assert await who(system, "/root/planners/planners-1") == ("planners-1", 2)
        assert await tenant.ask("who") == ("t1", 2)  # same ref, next incarnation
        assert await who(system, "/root/store") == ("store", 1)
        assert tree.ready
