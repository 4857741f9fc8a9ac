"""The link graph of one tenant: directed, typed, weighted edges between memory keys.

Edges are keyed by ``(from_key, to_key, rel)``; putting an existing edge updates its weight.
The store itself never checks that the end points exist: the API validates when a link is
made, and replaying the log must apply exactly what was applied live, whatever was forgotten in
between. ``remove_node`` drops every edge touching a key (what forgetting a memory does).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from .types import Link

if TYPE_CHECKING:
    from .search_protocol import ChangeFeed

__all__ = ["LinkGraph"]


class LinkGraph:
    """Adjacency in both directions, so that forgetting a memory is O(its degree)."""

    def __init__(self) -> None:
        self._out: dict[str, dict[tuple[str, str], Link]] = {}
        self._in: dict[str, set[tuple[str, str]]] = {}
        self._count = 0
        #: Told every change, in order, when a replica is kept (``search_offload``).
        self.feed: ChangeFeed | None = None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Link]:
        for edges in self._out.values():
            yield from edges.values()

    def put(self, link: Link) -> None:
        edges = self._out.setdefault(link.from_key, {})
        if (link.to_key, link.rel) not in edges:
            self._count += 1
            self._in.setdefault(link.to_key, set()).add((link.from_key, link.rel))
        edges[(link.to_key, link.rel)] = link
        if self.feed is not None:
            self.feed.link(link)

    def remove(self, from_key: str, to_key: str, rel: str) -> bool:
        edges = self._out.get(from_key)
        if edges is None or edges.pop((to_key, rel), None) is None:
            return False
        if not edges:
            del self._out[from_key]
        incoming = self._in[to_key]
        incoming.discard((from_key, rel))
        if not incoming:
            del self._in[to_key]
        self._count -= 1
        if self.feed is not None:
            self.feed.unlink(from_key, to_key, rel)
        return True

    def remove_node(self, key: str) -> int:
        """Drop every edge from or to ``key``; returns how many."""
        removed = 0
        for to_key, rel in list(self._out.get(key, {})):
            removed += self.remove(key, to_key, rel)
        for from_key, rel in list(self._in.get(key, ())):
            removed += self.remove(from_key, key, rel)
        return removed

    def outgoing(self, key: str) -> list[Link]:
        return list(self._out.get(key, {}).values())

    def incoming(self, key: str) -> list[Link]:
        return [self._out[f][(key, rel)] for f, rel in self._in.get(key, ())]

    def neighbours(self, key: str) -> list[tuple[str, float]]:
        """Keys linked to ``key`` in either direction, with the edge weight, positive weights
        only (the graph view walks links as undirected proximity)."""
        out = [(ln.to_key, ln.weight) for ln in self._out.get(key, {}).values() if ln.weight > 0]
        for f, rel in self._in.get(key, ()):
            w = self._out[f][(key, rel)].weight
            if w > 0:
                out.append((f, w))
        return out

    def get(self, from_key: str, to_key: str, rel: str) -> Link | None:
        return self._out.get(from_key, {}).get((to_key, rel))
