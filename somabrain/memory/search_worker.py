"""The search worker process: read replicas of tenants' recall indexes, searched off the node.

Why a process: a recall at 10k memories is ~150 us of numpy and Python on the event loop,
as much again as Hypercorn spends on the request itself, and one Python process runs on one
core whatever the machine has. The worker holds a replica of each large tenant's
``HybridIndex`` (vectors, BM25, columns, link graph, associations) and runs the whole ranking
there, so the node's loop only encodes the query and decodes the hits.

Protocol (``search_protocol``): frames on stdin, answers on stdout. Changes to a replica
arrive in the order the node applied them, on the same pipe as the searches, so a search
sees every change applied before it was sent (read-your-writes). The worker is
single-threaded and stateless beyond its replicas: the node rebuilds them after a restart.

    python -m somabrain.memory.search_worker
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback

import numpy as np
import numpy.typing as npt

from .associations import AssociationStore
from .embedder import HashingEmbedder
from .graph import LinkGraph
from .hybrid import HybridIndex
from .search_protocol import (
    Add,
    Associate,
    Close,
    Dissociate,
    Failed,
    Hits,
    Link_,
    Open,
    Opened,
    Remove,
    Request,
    Search,
    SetSalience,
    Unlink_,
    frames,
    pack,
)
from .text import tokenize
from .types import Memory
from .views import build_views

__all__ = ["Replica", "main", "serve"]

F32 = npt.NDArray[np.float32]


class Replica:
    """One tenant's read replica (built from an ``Open`` frame, changed by the others)."""

    def __init__(self, spec: Open) -> None:
        self.associations: AssociationStore | None = None
        if spec.views.association is not None:
            capacity = spec.views.association.capacity
            self.associations = AssociationStore.in_memory(spec.dim, capacity=capacity)
        views = build_views(spec.views, self.associations)
        self.dim = spec.dim
        self.embedder = HashingEmbedder(**spec.hashing) if spec.hashing is not None else None
        self.index = HybridIndex(spec.dim, views=views)
        self.index.graph = self.graph = LinkGraph()
        self._add(spec.memories, spec.vectors)
        for link in spec.links:
            self.graph.put(link)
        for key, strength in spec.salience.items():
            self.index.set_salience(key, strength)
        if self.associations is not None:
            self.associations.restore([
                (a.query, np.frombuffer(a.vector, dtype=np.float32), a.keys, a.at)
                for a in spec.associations
            ])  # fmt: skip

    def _add(self, memories: list[Memory], raw: bytes) -> None:
        if memories:
            vectors = np.frombuffer(raw, dtype=np.float32).reshape(len(memories), self.dim)
            tokens = [tokenize(m.content) for m in memories]
            self.index.add_batch(memories, vectors, tokens)

    def _associate(self, a: Associate) -> None:
        if self.associations is not None:
            vector = np.frombuffer(a.vector, dtype=np.float32)
            self.associations.add(a.query, vector, a.keys, a.at)

    def apply(self, frame: Request) -> None:
        """A change, as the node applied it to its own index."""
        match frame:
            case Add(memories=memories, vectors=raw):
                self._add(memories, raw)
            case Remove(key=key):
                self.index.remove(key)
            case SetSalience(key=key, strength=strength):
                self.index.set_salience(key, strength)
            case Link_(link=link):
                self.graph.put(link)
            case Unlink_(from_key=f, to_key=t, rel=rel):
                self.graph.remove(f, t, rel)
            case Associate():
                self._associate(frame)
            case Dissociate(key=key):
                if self.associations is not None:
                    self.associations.discard(key)

    def search(self, s: Search) -> Hits:
        tokens = tokenize(s.text)
        vector: F32
        if s.vector:
            vector = np.frombuffer(s.vector, dtype=np.float32)
        elif self.embedder is not None:
            vector = self.embedder.embed_tokens([tokens])[0]
        else:
            raise ValueError("a search without a vector needs a replica with an embedder")
        hits = self.index.search(
            vector, tokens, s.top_k, text=s.text, namespace=s.namespace, filter=s.filter,
            weights=s.weights, now=s.now, at=s.at, unit=not s.vector,
        )  # fmt: skip
        return Hits(s.id, hits)


def handle(replicas: dict[int, Replica], frame: Request) -> Hits | Failed | Opened | None:
    """Apply one frame; its answer, if it has one."""
    try:
        match frame:
            case Search(replica=rid):
                replica = replicas.get(rid)
                if replica is None:
                    return Failed(frame.id, f"no replica {rid}", rid)
                return replica.search(frame)
            case Open(replica=rid):
                replicas[rid] = Replica(frame)
                return Opened(rid)
            case Close(replica=rid):
                replicas.pop(rid, None)
            case _:
                target = replicas.get(frame.replica)
                if target is not None:
                    target.apply(frame)
    except Exception as exc:  # one bad frame must not take every replica down
        if isinstance(frame, Search):
            return Failed(frame.id, repr(exc))
        # A change that did not apply: the replica is no longer exact. Drop it and say so,
        # so that the node searches locally and opens a new one.
        traceback.print_exc(file=sys.stderr)
        replicas.pop(frame.replica, None)
        return Failed(0, f"replica dropped: {exc!r}", frame.replica)
    return None


def serve(read_fd: int = 0, write_fd: int = 1) -> None:
    """Answer frames from ``read_fd`` on ``write_fd`` until end of file."""
    replicas: dict[int, Replica] = {}
    buffer = bytearray()
    while chunk := os.read(read_fd, 1 << 20):
        buffer += chunk
        for frame in frames(buffer):
            answer = handle(replicas, frame)
            if answer is not None:  # at once: the node works on it while the next is searched
                _write_all(write_fd, pack(answer))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main() -> int:
    # The node stopped or killed us: nothing of ours to save.
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
