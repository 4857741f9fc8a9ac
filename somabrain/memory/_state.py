"""The plain state of one tenant and the one set of rules that changes it.

Live writes (after their log append) and log replay (at open) go through the same ``store``,
``drop`` and graph operations, so a restart rebuilds exactly the state that was live. Nothing
here validates against the current state (a link may name a key forgotten meanwhile): the
checks belong to the API, before the record is written, and replay must never refuse what was
once accepted. The index is not part of this state: it is derived, and rebuilt in one batch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from .graph import LinkGraph
from .types import (
    ForgetRecord,
    Link,
    LinkRecord,
    LogRecord,
    Memory,
    ReinforceRecord,
    RememberRecord,
    UnlinkRecord,
)

__all__ = [
    "MAX_STRENGTH",
    "MemoryState",
    "Prepared",
    "content_key",
    "expired",
    "links_of",
]

#: Salience strength is clipped to [-MAX_STRENGTH, MAX_STRENGTH]: the salience view maps it
#: through a logistic, which is flat beyond ~8 anyway, and a bound keeps one tenant's feedback
#: loop from pinning a memory forever.
MAX_STRENGTH = 8.0

F32 = npt.NDArray[np.float32]


def content_key(namespace: str, content: str) -> str:
    """The key generated for a keyless memory: ``"m-"`` + 128-bit BLAKE2b of namespace+content."""
    digest = hashlib.blake2b(f"{namespace}\x00{content}".encode(), digest_size=16)
    return "m-" + digest.hexdigest()


def expired(m: Memory, now: float) -> bool:
    return m.expires_at is not None and m.expires_at <= now


def links_of(memory: Memory, key: str) -> tuple[Link, ...]:
    """The memory's outgoing links with ``from_key`` filled in; checks they are its own."""
    out = []
    for link in memory.links:
        if link.from_key not in ("", key):
            raise ValueError(f"link from {link.from_key!r} given in memory {key!r}")
        if not math.isfinite(link.weight):
            raise ValueError("link weight must be finite")
        out.append(msgspec.structs.replace(link, from_key=key) if not link.from_key else link)
    return tuple(out)


@dataclass(slots=True)
class Prepared:
    """A validated upsert: what is stored, its edges, its caller vector, what is logged."""

    memory: Memory  # as stored: links and vector stripped
    links: tuple[Link, ...]
    vector: F32 | None  # caller-supplied, or None: embedded from the content
    record: Memory  # as logged: links with from_key, vector included


class MemoryState:
    """Memories by key, the dedupe map, which keys carry caller vectors, the link graph and
    the salience strengths that feedback reinforced (absent = 0)."""

    def __init__(self) -> None:
        self.memories: dict[str, Memory] = {}
        self.graph = LinkGraph()
        self.user_vectors: set[str] = set()
        self.salience: dict[str, float] = {}
        # (namespace, content) -> key, or a tuple of keys in the rare case of explicit keys
        # sharing content. Strings and tuples, not lists: 100k lists would all be tracked by
        # the cyclic GC and lengthen every full collection.
        self._by_content: dict[tuple[str, str], str | tuple[str, ...]] = {}

    def keys_with(self, namespace: str, content: str) -> tuple[str, ...]:
        held = self._by_content.get((namespace, content), ())
        return (held,) if isinstance(held, str) else held

    def store(self, p: Prepared) -> None:
        m = p.memory
        old = self.memories.get(m.key)
        if old is not None:
            self._forget_content(old)
        self.memories[m.key] = m
        ck = (m.namespace, m.content)
        held = self._by_content.get(ck)
        if held is None:
            self._by_content[ck] = m.key
        else:
            self._by_content[ck] = (held, m.key) if isinstance(held, str) else (*held, m.key)
        if p.vector is not None:
            self.user_vectors.add(m.key)
        else:
            self.user_vectors.discard(m.key)
        for link in p.links:
            self.graph.put(link)

    def _forget_content(self, m: Memory) -> None:
        ck = (m.namespace, m.content)
        rest = tuple(k for k in self.keys_with(*ck) if k != m.key)
        if not rest:
            self._by_content.pop(ck, None)
        else:
            self._by_content[ck] = rest[0] if len(rest) == 1 else rest

    def drop(self, key: str) -> bool:
        """Forget ``key`` and every edge touching it."""
        m = self.memories.pop(key, None)
        if m is None:
            return False
        self._forget_content(m)
        self.user_vectors.discard(key)
        self.salience.pop(key, None)
        self.graph.remove_node(key)
        return True

    def reinforce(self, keys: tuple[str, ...], amount: float) -> dict[str, float]:
        """Add ``amount`` to the strength of each known key; returns the new strengths."""
        out: dict[str, float] = {}
        for key in dict.fromkeys(keys):
            if key not in self.memories:
                continue
            value = self.salience.get(key, 0.0) + amount
            value = min(MAX_STRENGTH, max(-MAX_STRENGTH, value))
            if value == 0.0:
                self.salience.pop(key, None)
            else:
                self.salience[key] = value
            out[key] = value
        return out

    def replay(self, record: LogRecord, dim: int, vectors: dict[str, F32]) -> None:
        """Apply one log record; caller vectors of live memories are collected in ``vectors``
        (a vector of another dimension, from a former embedder, is dropped: the content is
        embedded again instead)."""
        match record:
            case RememberRecord(memory=m):
                vec = None
                if m.vector is not None and len(m.vector) == dim:
                    vec = np.asarray(m.vector, dtype=np.float32)
                    vectors[m.key] = vec
                else:
                    vectors.pop(m.key, None)
                stored = msgspec.structs.replace(m, links=(), vector=None)
                self.store(Prepared(memory=stored, links=m.links, vector=vec, record=m))
            case ForgetRecord(key=key):
                self.drop(key)
                vectors.pop(key, None)
            case LinkRecord(link=link):
                self.graph.put(link)
            case UnlinkRecord(from_key=f, to_key=t, rel=rel):
                self.graph.remove(f, t, rel)
            case ReinforceRecord(keys=keys, amount=amount):
                self.reinforce(keys, amount)

    def snapshot(self, now: float, vector_of: Callable[[str], F32]) -> list[LogRecord]:
        """The live state as log records (what compaction writes): memories, links, salience."""
        records: list[LogRecord] = []
        live: set[str] = set()
        for key, m in self.memories.items():
            if expired(m, now):
                continue
            if key in self.user_vectors:
                m = msgspec.structs.replace(m, vector=vector_of(key).tolist())
            records.append(RememberRecord(m))
            live.add(key)
        records.extend(
            LinkRecord(ln) for ln in self.graph if ln.from_key in live and ln.to_key in live
        )
        records.extend(
            ReinforceRecord((key,), value) for key, value in self.salience.items() if key in live
        )
        return records
