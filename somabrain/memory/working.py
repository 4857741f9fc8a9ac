"""Working memory: a bounded ring buffer of recent items per session, searched by relevance.

What enters a session's buffer: the memories remembered with that ``session_id``, and the
memories an agent reported as used in that session (context feedback). The newest entry of a
key replaces its older one. A buffer keeps its ``capacity`` newest items; a tenant keeps at most
``max_sessions`` buffers and drops the least recently touched one beyond that. This class holds
it in memory only; ``working_journal.DurableWorkingMemory`` (what the memory actor uses) journals
its keys so that it survives a restart.

Search is query-aware: items are ranked by

    score = (1 - recency_weight) * (semantic + lexical) / 2 + recency_weight * recency

with ``semantic`` the cosine of the query and item embeddings (clipped at 0), ``lexical`` the
fraction of the query's tokens the item contains, and ``recency`` = (position + 1) / size (1 for
the newest item), and only the ``top_k`` best are returned, never the buffer wholesale.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = ["WMHit", "WMItem", "WorkingMemory", "WorkingMemoryStatistics"]

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class WMItem:
    key: str
    content: str
    vector: F32  # unit norm (or zero)
    tokens: frozenset[str]
    at: float


class WMHit(msgspec.Struct, frozen=True, kw_only=True):
    """One working-memory result: the item, its score and the parts of the score."""

    key: str
    content: str
    score: float
    views: dict[str, float]
    at: float


class WorkingMemoryStatistics(msgspec.Struct, frozen=True, kw_only=True):
    sessions: int
    items: int
    capacity: int
    max_sessions: int


class WorkingMemory:
    """Per-session ring buffers of one tenant (see the module docstring)."""

    def __init__(
        self, capacity: int = 32, *, max_sessions: int = 1024, recency_weight: float = 0.2
    ) -> None:
        if capacity < 1 or max_sessions < 1:
            raise ValueError("capacity and max_sessions must be >= 1")
        if not 0.0 <= recency_weight <= 1.0:
            raise ValueError(f"recency_weight must be in [0, 1], got {recency_weight}")
        self.capacity = capacity
        self.max_sessions = max_sessions
        self.recency_weight = recency_weight
        # session -> (key -> item), oldest first; sessions least recently touched first.
        self._sessions: OrderedDict[str, OrderedDict[str, WMItem]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(b) for b in self._sessions.values())

    def sessions(self) -> list[str]:
        return list(self._sessions)

    def items(self, session: str) -> list[WMItem]:
        """The session's items, oldest first."""
        return list(self._sessions.get(session, {}).values())

    def add(self, session: str, items: Iterable[WMItem]) -> None:
        buffer = self._sessions.get(session)
        if buffer is None:
            buffer = self._sessions[session] = OrderedDict()
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(session)
        for item in items:
            buffer.pop(item.key, None)
            buffer[item.key] = item
            while len(buffer) > self.capacity:
                buffer.popitem(last=False)

    def discard(self, key: str) -> None:
        """Forget ``key`` in every session (the memory was deleted)."""
        for buffer in self._sessions.values():
            buffer.pop(key, None)

    def clear(self, session: str) -> bool:
        return self._sessions.pop(session, None) is not None

    def search(
        self, session: str, vector: npt.ArrayLike, tokens: Sequence[str], top_k: int = 5
    ) -> list[WMHit]:
        """The ``top_k`` items of ``session`` ranked by score (module docstring), best first;
        ties go to the newer item."""
        buffer = self._sessions.get(session)
        if not buffer or top_k <= 0:
            return []
        items = list(buffer.values())
        n = len(items)
        q = np.asarray(vector, dtype=np.float32)
        norm = float(np.linalg.norm(q))
        matrix = np.stack([it.vector for it in items])
        if matrix.shape[1] != q.shape[0]:
            raise ValueError(f"query vector of dimension {q.shape[0]}, items {matrix.shape[1]}")
        semantic = np.maximum(matrix @ (q / norm), 0.0) if norm > 0 else np.zeros(n)
        query_tokens = set(tokens)
        rw = self.recency_weight
        hits: list[tuple[float, int, WMHit]] = []
        for i, item in enumerate(items):
            sem = min(1.0, float(semantic[i]))
            lex = len(query_tokens & item.tokens) / len(query_tokens) if query_tokens else 0.0
            rec = (i + 1) / n
            score = (1.0 - rw) * (sem + lex) / 2.0 + rw * rec
            views = {"semantic": sem, "lexical": lex, "recency": rec}
            hits.append(
                (
                    score,
                    i,
                    WMHit(key=item.key, content=item.content, score=score, views=views, at=item.at),
                )
            )
        hits.sort(key=lambda h: (-h[0], -h[1]))
        return [h[2] for h in hits[:top_k]]

    def statistics(self) -> WorkingMemoryStatistics:
        return WorkingMemoryStatistics(
            sessions=len(self._sessions),
            items=len(self),
            capacity=self.capacity,
            max_sessions=self.max_sessions,
        )
