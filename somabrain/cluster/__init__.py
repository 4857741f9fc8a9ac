"""Tenant-partitioned nodes over NATS (docs/cluster.md).

``settings``   the ``[cluster]`` config section
``ownership``  which member owns a tenant: rendezvous hashing (pure)
``wire``       requests, replies and errors as they cross between members
``router``     ``ClusterRouter``: serves this member's tenants, asks the owner of the others
"""

from __future__ import annotations

from .errors import ClusterError, OwnerUnavailableError, RemoteError
from .ownership import owner
from .router import CLUSTER_RESOURCE, ClusterRouter, joined
from .settings import ClusterSettings

__all__ = [
    "CLUSTER_RESOURCE",
    "ClusterError",
    "ClusterRouter",
    "ClusterSettings",
    "OwnerUnavailableError",
    "RemoteError",
    "joined",
    "owner",
]
