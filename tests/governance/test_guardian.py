"""The guardian actor in a real tree: dev bootstrap, loads, rotation, fail closed, the bus."""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

from somabrain import config as soma_config
from somabrain.actors import ActorRef, ActorSystem
from somabrain.governance import Governance, GovernanceSettings, GovernanceUnavailableError
from somabrain.governance.dev import default_policies_dir
from somabrain.governance.messages import (
    REVISIONS_SUBJECT,
    Check,
    GetVersion,
    Load,
    LoadResult,
    Revision,
    Validate,
    VersionInfo,
)
from somabrain.governance.policy import Decision, PolicyInput
from somabrain.governance.store import read_history
from somabrain.supervision import SupervisionTree, SupervisorNode
from tests.governance.helpers import genesis, keys, make, sign

pytestmark = pytest.mark.anyio

TREE = {
    "children": {
        "guardian": {"kind": "actor", "actor": "somabrain.governance.guardian:GuardianActor"}
    }
}


class Node:
    def __init__(self, system: ActorSystem, tree: SupervisionTree) -> None:
        self.system = system
        self.tree = tree
        self.revisions: list[Revision] = []

    @property
    def governance(self) -> Governance:
        governance = self.system.resources["governance"]
        assert isinstance(governance, Governance)
        return governance

    @property
    def guardian(self) -> ActorRef:
        ref = self.system.lookup("/root/guardian")
        assert ref is not None
        return ref

    async def load(self, document: Any) -> LoadResult:
        result = await self.guardian.ask(Load(msgspec.to_builtins(document)))
        assert isinstance(result, LoadResult)
        return result


@asynccontextmanager
async def node(
    data_dir: Path, tree: dict[str, Any] = TREE, **governance: Any
) -> AsyncIterator[Node]:
    cfg = soma_config.load(environ={})
    cfg = msgspec.structs.replace(
        cfg,
        tree=msgspec.convert(tree, SupervisorNode),
        governance=GovernanceSettings(**governance),
    )
    async with ActorSystem() as system:
        system.resources.update(config=cfg, data_dir=data_dir)
        running = Node(system, SupervisionTree(system, cfg.tree, cfg.node))
        subscription = await system.bus.subscribe(REVISIONS_SUBJECT)

        async def collect() -> None:
            async for msg in subscription:
                running.revisions.append(msg.data)

        system.start_soon(collect)
        await running.tree.start()
        try:
            yield running
        finally:
            await running.tree.stop()
            await subscription.unsubscribe()


async def settle() -> None:
    for _ in range(10):
        await anyio.lowlevel.checkpoint()


async def test_dev_node_bootstraps_a_signed_constitution(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with node(tmp_path) as n:
        await settle()
        assert n.governance.ready
        info = n.governance.version_info()
        assert info["version"] == 1 and info["signers"] == ["dev"] and info["threshold"] == 1
        assert [r.source for r in n.revisions] == ["bootstrap"]
        decision = n.governance.decide(PolicyInput(action="remember", tenant="acme"))
        assert decision.allowed
        assert decision.constitution_checksum == info["checksum"]
    out = capsys.readouterr().out
    assert "created a dev signer" in out and "dev constitution" in out
    key = tmp_path / "constitution" / "dev-signer.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(read_history(tmp_path / "constitution")) == 1

    # the next start loads it (nothing new is signed) ...
    async with node(tmp_path) as n:
        await settle()
        assert n.governance.version_info()["version"] == 1
        assert [r.source for r in n.revisions] == ["start"]
    assert "created" not in capsys.readouterr().out


async def test_dev_policy_changes_become_a_new_version(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(default_policies_dir(), policies)
    async with node(tmp_path / "data", policies_dir=str(policies)) as n:
        first = n.governance.checksum
    data = json.loads((policies / "data.json").read_text())
    data["tenants"]["deny"] = ["mallory"]
    (policies / "data.json").write_text(json.dumps(data))
    async with node(tmp_path / "data", policies_dir=str(policies)) as n:
        info = n.governance.version_info()
        assert info["version"] == 2 and info["previous"] == first
        denied = n.governance.decide(PolicyInput(action="remember", tenant="mallory"))
        assert not denied.allowed
        assert denied.explain == 'tenant "mallory" is denied by the constitution'


async def test_without_a_constitution_the_node_fails_closed(tmp_path: Path) -> None:
    async with node(tmp_path, bootstrap="none") as n:
        governance = n.governance
        assert not governance.ready
        assert "no constitution" in governance.reason
        with pytest.raises(GovernanceUnavailableError, match="no valid constitution"):
            governance.decide(PolicyInput(action="remember", tenant="acme"))
        info = await n.guardian.ask(GetVersion())
        assert isinstance(info, VersionInfo) and not info.ready

        # publishing version 1 makes it governed
        result = await n.load(make("abc", 2))
        assert result.accepted and result.version == 1
        assert governance.ready and governance.version_info()["signers"] == ["a", "b", "c"]
        again = await n.load(make("abc", 2))
        assert again.accepted and again.unchanged
        await settle()
        assert [r.source for r in n.revisions] == ["api"]


async def test_loads_are_verified_and_refusals_say_why(tmp_path: Path) -> None:
    v1 = genesis()
    async with node(tmp_path, bootstrap="none") as n:
        assert (await n.load(v1.signed())).accepted

        short = await n.load(make("abc", 2, sign_with="a", previous=v1))
        assert not short.accepted and short.code == "insufficient_signatures"
        assert short.reason is not None and "1 valid signature(s) of the 2" in short.reason

        usurpers = await n.load(make("def", 2, sign_with="def", previous=v1))
        assert not usurpers.accepted and usurpers.code == "rotation_not_approved"
        assert [f["code"] for f in usurpers.failures] == ["unknown_signer"] * 3

        broken = make(previous=v1, policies={"bad.rego": "package somabrain.policy\nx := {"})
        refused = await n.load(broken)
        assert not refused.accepted and refused.code == "invalid_policy"

        rotated = sign(make("def", 2, sign_with="def", previous=v1), keys("ab"))
        accepted = await n.load(rotated)
        assert accepted.accepted and accepted.version == 2
        assert n.governance.version_info()["signers"] == ["d", "e", "f"]
        assert n.governance.version_info()["history"][0]["checksum"] == v1.checksum

    # the history survives a restart and is verified again as a chain
    async with node(tmp_path, bootstrap="none") as n:
        assert n.governance.version_info()["version"] == 2


async def test_a_tampered_history_fails_closed(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        assert n.governance.ready
    [stored] = (tmp_path / "constitution").glob("v000001-*.json")
    document = json.loads(stored.read_text())
    document["document"]["policy"]["tenants"]["allow"] = ["mallory"]
    stored.write_text(json.dumps(document))
    async with node(tmp_path) as n:
        assert not n.governance.ready
        assert "insufficient_signatures" not in n.governance.reason  # the message, not the code
        assert "valid signature(s)" in n.governance.reason
        refused = await n.load(make())
        assert not refused.accepted and refused.code == "history_invalid"


async def test_genesis_pin(tmp_path: Path) -> None:
    v1 = genesis()
    async with node(tmp_path, bootstrap="none", genesis="0" * 128) as n:
        refused = await n.load(v1.signed())
        assert not refused.accepted and refused.code == "genesis_mismatch"
    async with node(tmp_path, bootstrap="none", genesis=v1.checksum) as n:
        assert (await n.load(v1.signed())).accepted


async def test_guardian_answers_asks_and_bus_requests(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        decision = await n.guardian.ask(
            Check(PolicyInput(action="remember", tenant="acme", tags=("malware",)))
        )
        assert isinstance(decision, Decision) and not decision.allowed
        validated = await n.guardian.ask(Validate({"action": "evaluate", "tenant": "acme"}))
        assert isinstance(validated, Decision) and validated.allowed
        validated = await n.guardian.ask(Validate({"tenant": "acme", "namespace": "_sys"}))
        assert not validated.allowed and "reserved" in validated.explain
        reply = await n.system.bus.request("soma.gov.version", GetVersion(), timeout=5)
        assert isinstance(reply.data, VersionInfo) and reply.data.version == 1
        reply = await n.system.bus.request(
            "soma.gov.check", Check(PolicyInput(action="remember", tenant="acme")), timeout=5
        )
        assert isinstance(reply.data, Decision) and reply.data.allowed


async def test_loads_and_refusals_are_audited(tmp_path: Path) -> None:
    audit = {"kind": "actor", "actor": "somabrain.audit.writer:AuditWriter"}
    tree = {"children": {"audit": audit, **TREE["children"]}}
    async with node(tmp_path, tree, bootstrap="none") as n:
        v1 = genesis()
        accepted = await n.load(v1.signed())
        assert accepted.accepted and accepted.audit_id
        refused = await n.load(make("def", 2, sign_with="def", previous=v1))
        assert not refused.accepted
    spooled = "".join(
        path.read_text(errors="replace")
        for path in (tmp_path / "audit").rglob("*")
        if path.is_file()
    )
    assert accepted.audit_id in spooled
    assert '"action":"constitution.load"' in spooled
    assert '"decision":"deny"' in spooled and "rotation_not_approved" in spooled
