"""The running supervision tree: built from config, inspected, killed into, reloaded.

Reload compares the old and new config node by node and applies only what changed:
supervisor settings (strategy, intensity, period, backoff) and actor settings (restart type,
shutdown, mailbox capacity and overflow policy) are changed in place; pools grow or shrink at
their end; dynamic supervisors take a new idle timeout and resize the mailboxes of their live
children. A child whose kind or actor changed is replaced; new children start after their
siblings; removed ones stop. Everything else keeps running untouched.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..actors import Actor, ActorState, ActorSystem, OverflowPolicy
from ._children import Child, Runner, _CellRunner
from .clock import Clock, SystemClock
from .config import (
    ActorNode,
    BackoffConfig,
    ChildNode,
    DynamicNode,
    NodeSettings,
    PoolNode,
    SupervisorNode,
)
from .dynamic import DynamicSupervisor
from .spec import (
    BRUTAL_KILL,
    ActorSpec,
    Backoff,
    ChildSpec,
    DynamicSpec,
    Restart,
    Shutdown,
    Strategy,
    SupervisorSpec,
)
from .supervisor import Supervisor

__all__ = ["ActorResolver", "SupervisionTree", "import_actor", "inspected_nodes"]

ActorResolver = Callable[[str], Callable[[], Actor]]


def import_actor(reference: str) -> Callable[[], Actor]:
    """Resolve ``"package.module:Name"`` to the actor class (or zero-argument factory)."""
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"actor reference {reference!r} must look like 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"actor reference {reference!r}: cannot import {module_name}") from exc
    try:
        factory: Callable[[], Actor] = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"actor reference {reference!r}: {module_name} has no {attr}") from None
    return factory


def _backoff(config: BackoffConfig) -> Backoff:
    return Backoff(config.initial, config.max, config.multiplier, config.jitter)


def _shutdown(value: float | str) -> Shutdown:
    return BRUTAL_KILL if value == BRUTAL_KILL else float(value)


class SupervisionTree:
    """Builds the tree from config under ``system``, then runs, inspects and reloads it."""

    def __init__(
        self,
        system: ActorSystem,
        root: SupervisorNode,
        node: NodeSettings | None = None,
        *,
        root_name: str = "root",
        clock: Clock | None = None,
        rng: random.Random | None = None,
        resolve: ActorResolver = import_actor,
    ) -> None:
        self.system = system
        self.node = node or NodeSettings()
        self.config = root
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.resolve = resolve
        spec = self._supervisor_spec(root_name, root)
        self.root = Supervisor(system, spec, f"/{root_name}", clock=self.clock, rng=self.rng)

    # ------------------------------------------------------------------ config -> specs

    def _mailbox(self, size: int | None, overflow: str | None) -> tuple[int, OverflowPolicy]:
        return size or self.node.mailbox_size, OverflowPolicy(overflow or self.node.overflow)

    def _actor_spec(
        self, name: str, node: ActorNode | PoolNode | DynamicNode, restart: str
    ) -> ActorSpec:
        size, overflow = self._mailbox(node.mailbox_size, node.overflow)
        return ActorSpec(
            name=name,
            factory=self.resolve(node.actor),
            restart=Restart(restart),
            shutdown=_shutdown(node.shutdown),
            mailbox_size=size,
            overflow=overflow,
        )

    def _supervisor_spec(self, name: str, node: SupervisorNode) -> SupervisorSpec:
        return SupervisorSpec(
            name=name,
            children=[self.child_spec(n, c) for n, c in node.children.items()],
            strategy=Strategy(node.strategy),
            intensity=node.intensity,
            period=node.period,
            backoff=_backoff(node.backoff),
            restart=Restart(node.restart),
            shutdown=_shutdown(node.shutdown),
        )

    def child_spec(self, name: str, node: ChildNode) -> ChildSpec:
        if isinstance(node, ActorNode):
            return self._actor_spec(name, node, node.restart)
        if isinstance(node, PoolNode):
            return SupervisorSpec(
                name=name,
                strategy=Strategy(node.strategy),
                intensity=node.intensity,
                period=node.period,
                backoff=_backoff(node.backoff),
                restart=Restart(node.restart),
                shutdown=_shutdown(node.shutdown),
                pool_template=self._actor_spec(name, node, "permanent"),
                pool_size=node.size,
            )
        if isinstance(node, DynamicNode):
            return DynamicSpec(
                name=name,
                template=self._actor_spec(name, node, node.child_restart),
                intensity=node.intensity,
                period=node.period,
                backoff=_backoff(node.backoff),
                restart=Restart(node.restart),
                shutdown=_shutdown(node.shutdown),
                idle_timeout=node.idle_timeout,
                max_children=node.max_children,
            )
        return self._supervisor_spec(name, node)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the whole tree; raises if a child fails to start."""
        await self.root.start_as_root()

    async def stop(self) -> None:
        self.system.remove_root(self.root)
        await self.root.stop()

    @property
    def ready(self) -> bool:
        """True when every runner in the tree is running."""
        return _all_running(self.root)

    # ------------------------------------------------------------------ inspection and chaos

    def inspect(self) -> dict[str, Any]:
        return self.root.inspect()

    def find(self, path: str) -> Runner | None:
        path = path.rstrip("/") or "/"
        node: Runner = self.root
        if path == node.path:
            return node
        while isinstance(node, Supervisor):
            for child in node.children:
                child_path = child.runner.path
                if path == child_path:
                    return child.runner
                if path.startswith(child_path + "/"):
                    node = child.runner
                    break
            else:
                return None
        return None

    @staticmethod
    def can_kill(runner: Runner) -> bool:
        """Whether a kill of ``runner`` is accepted: it runs and has finished starting.

        A kill is refused while the runner restarts: waiting for its backoff, ending a killed
        incarnation, or still in its start (an actor's ``on_start``, a supervisor starting its
        children), where ``running`` is already true. Such a kill would only cut a restart
        short, and a start interrupted on purpose is not a failure worth a restart. (Its
        supervisor copes if one happens anyway, through ``runner.kill()``: a child killed while
        starting is a failed child, restarted and counted like any other.)"""
        return runner.running and runner.state is not ActorState.STARTING

    def kill(self, path: str) -> bool:
        """Kill the actor or supervisor at ``path`` (its supervisor restarts it); False when
        there is none or it is not running (see :meth:`can_kill`)."""
        runner = self.find(path)
        if runner is None or not self.can_kill(runner):
            return False
        runner.kill()
        return True

    # ------------------------------------------------------------------ reload

    async def reload(self, root: SupervisorNode, node: NodeSettings | None = None) -> list[str]:
        """Apply the changes between the running config and ``root``; returns what changed."""
        changes: list[str] = []
        old_node, self.node = self.node, node or self.node
        node_changed = old_node != self.node
        await self._reload_supervisor(self.root, self.config, root, changes, node_changed)
        self.config = root
        return changes

    async def _reload_supervisor(
        self,
        sup: Supervisor,
        old: SupervisorNode,
        new: SupervisorNode,
        changes: list[str],
        node_changed: bool,
    ) -> None:
        self._reload_settings(sup, old, new, changes)
        for name in [n for n in old.children if n not in new.children]:
            await sup.remove_child(name)
            changes.append(f"{sup.path}/{name}: removed")
        for name, new_child in new.children.items():
            old_child = old.children.get(name)
            if old_child is None:
                await sup.add_child(self.child_spec(name, new_child))
                changes.append(f"{sup.path}/{name}: added")
                continue
            if type(old_child) is not type(new_child) or (
                getattr(old_child, "actor", None) != getattr(new_child, "actor", None)
            ):
                await sup.remove_child(name)
                await sup.add_child(self.child_spec(name, new_child))
                changes.append(f"{sup.path}/{name}: replaced")
                continue
            if old_child == new_child and not node_changed:
                continue
            child = sup.child(name)
            assert child is not None
            await self._reload_child(child, old_child, new_child, changes, node_changed)

    def _reload_settings(
        self,
        sup: Supervisor,
        old: SupervisorNode | PoolNode | DynamicNode,
        new: SupervisorNode | PoolNode | DynamicNode,
        changes: list[str],
    ) -> None:
        spec = sup.spec
        for attr in ("intensity", "period"):
            if getattr(old, attr) != getattr(new, attr):
                setattr(spec, attr, getattr(new, attr))
                changes.append(f"{sup.path}: {attr} {getattr(old, attr)} -> {getattr(new, attr)}")
        if not isinstance(new, DynamicNode) and old.strategy != new.strategy:  # type: ignore[union-attr]
            spec.strategy = Strategy(new.strategy)
            changes.append(f"{sup.path}: strategy -> {new.strategy}")
        if old.backoff != new.backoff:
            spec.backoff = _backoff(new.backoff)
            changes.append(f"{sup.path}: backoff changed")

    async def _reload_child(
        self,
        child: Child,
        old: ChildNode,
        new: ChildNode,
        changes: list[str],
        node_changed: bool,
    ) -> None:
        spec = child.spec
        if old.restart != new.restart and not isinstance(new, DynamicNode | PoolNode):
            spec.restart = Restart(new.restart)
        spec.shutdown = _shutdown(new.shutdown)
        runner = child.runner
        if isinstance(new, ActorNode):
            assert isinstance(runner, _CellRunner) and isinstance(spec, ActorSpec)
            self._reload_mailbox(runner, spec, new, changes)
        elif isinstance(new, SupervisorNode):
            assert isinstance(runner, Supervisor) and isinstance(old, SupervisorNode)
            await self._reload_supervisor(runner, old, new, changes, node_changed)
        elif isinstance(new, PoolNode):
            assert isinstance(runner, Supervisor) and isinstance(old, PoolNode)
            self._reload_settings(runner, old, new, changes)
            template = runner.spec.pool_template
            assert template is not None
            for member in runner.children:
                assert isinstance(member.runner, _CellRunner)
                assert isinstance(member.spec, ActorSpec)
                self._reload_mailbox(member.runner, member.spec, new, changes)
            template.mailbox_size, template.overflow = self._mailbox(new.mailbox_size, new.overflow)
            if len(runner.children) != new.size:
                await runner.resize_pool(new.size)
                changes.append(f"{runner.path}: pool size {old.size} -> {new.size}")
        elif isinstance(new, DynamicNode):
            assert isinstance(runner, DynamicSupervisor) and isinstance(old, DynamicNode)
            self._reload_settings(runner, old, new, changes)
            dspec = runner.dynamic_spec
            if old.idle_timeout != new.idle_timeout:
                runner.set_idle_timeout(new.idle_timeout)
                changes.append(f"{runner.path}: idle_timeout -> {new.idle_timeout:g}")
            dspec.max_children = new.max_children
            dspec.template.restart = Restart(new.child_restart)
            dspec.template.mailbox_size, dspec.template.overflow = self._mailbox(
                new.mailbox_size, new.overflow
            )
            for member in runner.children:
                assert isinstance(member.runner, _CellRunner)
                assert isinstance(member.spec, ActorSpec)
                self._reload_mailbox(member.runner, member.spec, new, changes)

    def _reload_mailbox(
        self,
        runner: _CellRunner,
        spec: ActorSpec,
        node: ActorNode | PoolNode | DynamicNode,
        changes: list[str],
    ) -> None:
        size, overflow = self._mailbox(node.mailbox_size, node.overflow)
        mailbox = runner.cell.mailbox
        if mailbox.capacity != size:
            changes.append(f"{runner.path}: mailbox_size {mailbox.capacity} -> {size}")
            mailbox.resize(size)
        if mailbox.overflow_policy is not overflow:
            changes.append(f"{runner.path}: overflow -> {overflow.value}")
            mailbox.overflow_policy = overflow
        spec.mailbox_size, spec.overflow = size, overflow


def _all_running(runner: Runner) -> bool:
    if not runner.running:
        return False
    if isinstance(runner, Supervisor):
        return all(
            _all_running(child.runner)
            for child in runner.children
            if child.running or child.spec.restart is Restart.PERMANENT
        )
    return True


def inspected_nodes(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every node of a ``SupervisionTree.inspect()`` result, depth first, ``node`` first."""
    yield node
    for child in node.get("children", ()):
        yield from inspected_nodes(child)
