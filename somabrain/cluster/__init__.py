"""Tenant-partitioned nodes over NATS (docs/cluster.md).

``settings``   the ``[cluster]`` config section
``ownership``  which member owns a tenant: rendezvous hashing (pure)
``wire``       requests, replies and errors as they cross between members
``router``     ``ClusterRouter``: serves this member's tenants, asks the owner of the others
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ClusterError,
    JoinTimeoutError,
    OwnerUnavailableError,
    PayloadTooLargeError,
    RemoteError,
)
from .ownership import owner
from .settings import CLUSTER_RESOURCE, ClusterSettings

if TYPE_CHECKING:
    from .router import ClusterRouter, cluster_member

__all__ = [
    "CLUSTER_RESOURCE",
    "ClusterError",
    "ClusterRouter",
    "ClusterSettings",
    "JoinTimeoutError",
    "OwnerUnavailableError",
    "PayloadTooLargeError",
    "RemoteError",
    "cluster_member",
    "owner",
]


def __getattr__(name: str) -> Any:
    # The router is imported on first use: it imports nats-py (~0.25 s), which only a node
    # in a cluster needs; the edge and the planners need just the names above.
    if name in ("ClusterRouter", "cluster_member"):
        from . import router

        return getattr(router, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
