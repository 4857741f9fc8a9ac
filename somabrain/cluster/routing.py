"""Asking a tenant's memory actor wherever it lives: the one call the edge, the planners and
the router share.

Without ``[cluster]`` (no router in ``system.resources``) every tenant is this node's; with
one, a tenant another member owns is asked over NATS (``ClusterRouter.ask_owner``), whose
errors come back as the same exception types. This module imports no nats-py: a single node
never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..actors import ActorStoppedError
from ..memory.messages import MemoryRequest, ask_memory
from .settings import CLUSTER_RESOURCE

if TYPE_CHECKING:
    from .router import ClusterRouter

__all__ = ["MEMORY_SUPERVISOR", "ask_local", "ask_tenant"]

#: Where the SomaBrain tree runs the tenants' memory actors (``[tree.children.memory]``).
MEMORY_SUPERVISOR = "/root/memory"


async def ask_local(system: Any, tenant: str, message: MemoryRequest, timeout: float) -> Any:
    """Ask this node's memory actor of ``tenant`` (started on first use). Raises
    ``ActorStoppedError`` when the memory supervisor is not running, ``MaxChildrenError``
    when it holds as many tenants as it may."""
    tree = system.resources.get("tree")
    runner = tree.find(MEMORY_SUPERVISOR) if tree is not None else None
    if runner is None or not hasattr(runner, "ref"):
        raise ActorStoppedError(MEMORY_SUPERVISOR, "is not running")
    return await ask_memory(runner.ref(tenant), message, timeout)


async def ask_tenant(system: Any, tenant: str, message: MemoryRequest, timeout: float) -> Any:
    """The reply of ``tenant``'s memory actor: this node's, or its owner's in a cluster
    (``OwnerUnavailableError`` when the owner does not answer)."""
    cluster: ClusterRouter | None = system.resources.get(CLUSTER_RESOURCE)
    if cluster is not None and not cluster.owns(tenant):
        return await cluster.ask_owner(tenant, message, timeout)
    return await ask_local(system, tenant, message, timeout)
