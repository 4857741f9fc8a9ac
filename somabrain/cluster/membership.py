"""Who else is in the cluster, and whether they agree on who owns what.

Every member publishes a ``Hello`` (its name, its ``cluster.members``, their digest and an id
of its process) on ``soma.cluster.hello`` every ``HELLO_INTERVAL`` seconds, and at once when
it hears a member it had not heard before (so a member that joins learns of the others in one
round trip). From what it hears, each member knows:

* the members that are up (heard within ``SILENT_AFTER`` s) and those that are silent (down,
  or cut off from NATS);
* members whose list differs from its own: they hash tenants to other owners, so a tenant
  would be written on two members. The owner also refuses every call that carries another
  digest than its own (``router.py``), so a misconfigured member fails loudly;
* a node that is not in its list, and another process that uses its own name.

Each is logged when it starts (an error for a misconfiguration, a warning for a silent
member) and reported under ``cluster`` in ``/health``, which is ``degraded`` meanwhile.

With ``cluster.failover``, ``up`` is the list ownership is computed over: a silent member's
tenants go to the members that are up, and come back when it is heard again.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from .ownership import membership_digest
from .wire import Hello

__all__ = ["HELLO_INTERVAL", "HELLO_SUBJECT", "SILENT_AFTER", "Membership"]

logger = logging.getLogger("somabrain.cluster")

HELLO_SUBJECT = "soma.cluster.hello"
#: Seconds between two hellos of a member.
HELLO_INTERVAL = 2.0
#: A member not heard from for this long is reported silent.
SILENT_AFTER = 3 * HELLO_INTERVAL


@dataclass
class _Peer:
    members: list[str]
    digest: str
    instance: str
    seen: float  # monotonic


class Membership:
    """What this member heard of the others (module doc). Not thread-safe: one event loop."""

    def __init__(
        self,
        name: str,
        members: list[str],
        *,
        failover: bool = False,
        now: float | None = 0.0,
    ) -> None:
        self.name = name
        self.members = sorted(members)
        self.failover = failover
        #: When this member started listening (None: not yet, see ``listening``): a member
        #: not heard from yet counts as up until ``SILENT_AFTER`` from then (it may simply
        #: not have said hello yet).
        self.started = now
        self.digest = membership_digest(members)
        self.instance = secrets.token_hex(8)
        self._peers: dict[str, _Peer] = {}
        #: Members reported silent (logged once when they fall silent, once when back).
        self._silent = {m for m in self.members if m != name}
        #: Another process heard using this member's name: (its instance, when).
        self._twin: tuple[str, float] | None = None

    def listening(self, now: float) -> None:
        """This member hears the others from ``now`` on (it joined the cluster). Until then
        every member counts as up: one that waited long for NATS heard nobody yet, which
        says nothing about who is up."""
        self.started = now

    def hello(self) -> Hello:
        return Hello(
            member=self.name, members=self.members, digest=self.digest, instance=self.instance
        )

    def agrees(self, digest: str) -> bool:
        """Whether a call's digest is this member's (an empty one, from a member that does
        not send it, is not checked)."""
        return not digest or digest == self.digest

    def heard(self, hello: Hello, now: float) -> bool:
        """Record ``hello``; true when this member should answer with its own hello at once
        (the sender is new, restarted or changed its list)."""
        if hello.member == self.name:
            if hello.instance == self.instance:
                return False  # our own, echoed by the server
            new = self._twin is None or self._twin[0] != hello.instance
            if new:
                logger.error(
                    "another process uses this node's name %r in the cluster (instance %s):"
                    " two members with one name both answer its tenants' requests; give each"
                    " node its own node.name",
                    self.name,
                    hello.instance,
                )
            self._twin = (hello.instance, now)
            return new
        previous = self._peers.get(hello.member)
        self._peers[hello.member] = _Peer(hello.members, hello.digest, hello.instance, now)
        if hello.member in self._silent:
            self._silent.discard(hello.member)
            logger.info("cluster member %r is up", hello.member)
        if previous is not None and (previous.digest, previous.instance) == (
            hello.digest,
            hello.instance,
        ):
            return False
        if hello.member not in self.members:
            logger.error(
                "node %r is in the cluster but not in this node's cluster.members %s",
                hello.member,
                self.members,
            )
        elif hello.digest != self.digest:
            logger.error(
                "cluster member %r has cluster.members %s, this node %s: they disagree on who"
                " owns which tenant, and each refuses the other's requests; give every member"
                " the same list",
                hello.member,
                hello.members,
                self.members,
            )
        return True

    def tick(self, now: float) -> None:
        """Log the members that fell silent since the last tick."""
        for member in self.members:
            if member == self.name or member in self._silent:
                continue
            peer = self._peers.get(member)
            if peer is None or now - peer.seen > SILENT_AFTER:
                self._silent.add(member)
                logger.warning(
                    "cluster member %r not heard from for %g s: %s",
                    member,
                    SILENT_AFTER,
                    "its tenants move to the members that are up"
                    if self.failover
                    else "its tenants answer 503",
                )

    def up(self, now: float) -> list[str]:
        """The members that own tenants when failing over: this one, those heard within
        ``SILENT_AFTER``, and those not heard yet while this one is younger than that."""
        young = self.started is None or now - self.started <= SILENT_AFTER
        found = []
        for member in self.members:
            peer = self._peers.get(member)
            if (
                member == self.name
                or (peer is not None and now - peer.seen <= SILENT_AFTER)
                or (peer is None and young)
            ):
                found.append(member)
        return found

    def problems(self, now: float) -> list[str]:
        found: list[str] = []
        if self._twin is not None and now - self._twin[1] <= SILENT_AFTER:
            found.append(f"another process uses this node's name {self.name!r}")
        for member, peer in sorted(self._peers.items()):
            if now - peer.seen > SILENT_AFTER:
                continue
            if member not in self.members:
                found.append(f"node {member!r} is in the cluster but not in cluster.members")
            elif peer.digest != self.digest:
                found.append(
                    f"member {member!r} has other cluster.members: {peer.members} (here:"
                    f" {self.members})"
                )
        for member in self.members:
            heard = self._peers.get(member)
            if member != self.name and (heard is None or now - heard.seen > SILENT_AFTER):
                found.append(f"member {member!r} not heard from (down, or cut off from NATS)")
        return found

    def peers(self, now: float) -> dict[str, dict[str, Any]]:
        """Every member and every other node heard recently: when last heard, and whether
        it has this member's list."""
        report: dict[str, dict[str, Any]] = {}
        for member in sorted(set(self.members) | set(self._peers)):
            if member == self.name:
                continue
            peer = self._peers.get(member)
            if peer is None:
                report[member] = {"heard": False}
            elif member in self.members or now - peer.seen <= SILENT_AFTER:
                report[member] = {
                    "heard": True,
                    "seconds_ago": round(now - peer.seen, 1),
                    "up": now - peer.seen <= SILENT_AFTER,
                    "same_members": peer.digest == self.digest,
                }
        return report
