"""Which member of the cluster owns a tenant: rendezvous (highest random weight) hashing.

Every node computes the same answer from the same member list, with no coordination: each
(tenant, member) pair gets a pseudo-random weight and the member with the highest weight owns
the tenant. Why rendezvous rather than ``hash(tenant) % len(members)``: when a member leaves,
only the tenants it owned move (each to its second-highest member), and when one joins it
takes only the tenants for which it now scores highest; a modulo would reshuffle nearly all.
The order of ``members`` does not matter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["membership_digest", "owner", "weight"]


def weight(tenant: str, member: str) -> int:
    """The pair's weight: 64 bits of BLAKE2b over both names (length-prefixed, so that
    ("ab", "c") and ("a", "bc") differ)."""
    digest = hashlib.blake2b(digest_size=8, person=b"soma-owner")
    for part in (tenant.encode(), member.encode()):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return int.from_bytes(digest.digest(), "big")


def owner(tenant: str, members: Iterable[str]) -> str:
    """The member that owns ``tenant`` (ties, which need a 64-bit collision, go to the
    smallest name, so every node still agrees)."""
    best: tuple[int, str] | None = None
    for member in members:
        score = weight(tenant, member)
        if best is None or score > best[0] or (score == best[0] and member < best[1]):
            best = (score, member)
    if best is None:
        raise ValueError("a cluster needs at least one member")
    return best[1]


def membership_digest(members: Iterable[str]) -> str:
    """A short digest of the member list (its order does not matter): members that agree on
    ownership have the same one. The cluster compares it to find members configured apart."""
    digest = hashlib.blake2b(digest_size=8, person=b"soma-members")
    for member in sorted(set(members)):
        digest.update(len(member).to_bytes(4, "big"))
        digest.update(member.encode())
    return digest.hexdigest()
