"""The ``[cluster]`` config section (merged into ``somabrain.config.SomaConfig``)."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from msgspec import Meta

from .._urls import check_server_url

#: Where a node in a cluster puts its ``ClusterRouter`` in ``system.resources`` (absent
#: without a cluster).
CLUSTER_RESOURCE = "cluster"

__all__ = ["ClusterSettings", "valid_member_name"]

# A member's name is one token of the subjects it serves (``soma.node.<name>.memory``), so it
# may not hold the separator or the wildcards.
_MEMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: The schemes nats-py connects with.
_NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def valid_member_name(name: str) -> bool:
    return bool(_MEMBER.match(name))


class ClusterSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Tenant-partitioned nodes over NATS (``somabrain.cluster``, docs/cluster.md).

    ``nats_url`` empty (the default) is the single-process node: no NATS connection, every
    tenant is served here. Set, the node connects to it and serves only the tenants that
    ``members`` hashes to it (``node.name`` must be one of them); the others are asked of
    their owner.
    """

    nats_url: str = ""
    members: list[str] = msgspec.field(default_factory=list)
    #: Seconds a node waits for another member's answer before it answers 503 ``unavailable``.
    request_timeout: Annotated[float, Meta(gt=0)] = 10.0
    #: Seconds a starting member waits for NATS to answer before it exits with an error; 0
    #: (the default): it waits for as long as it takes, as a service started before its
    #: NATS server should. Its edge answers 503 meanwhile (docs/cluster.md).
    connect_timeout: Annotated[float, Meta(ge=0)] = 0.0
    #: A member not heard from for ``membership.SILENT_AFTER`` seconds loses its tenants to
    #: the members that are up (each to its next owner by rendezvous), and gets them back
    #: when it is heard again. Needs the tenants' memories in a database every member reaches
    #: (``memory.postgres_url``): with files, the member taking over would start them empty.
    failover: bool = False

    def __post_init__(self) -> None:
        if self.nats_url:
            check_server_url(self.nats_url, "nats_url", _NATS_SCHEMES, "nats://127.0.0.1:4222")
        for name in self.members:
            if not valid_member_name(name):
                raise ValueError(
                    f"members: {name!r} is not a node name (1-64 of [A-Za-z0-9_-], starting"
                    " with a letter or digit)"
                )
        if len(set(self.members)) != len(self.members):
            raise ValueError("members: a node is named twice")
        if self.nats_url and not self.members:
            raise ValueError("members: a cluster (nats_url set) needs its list of nodes")

    @property
    def enabled(self) -> bool:
        return bool(self.nats_url)
