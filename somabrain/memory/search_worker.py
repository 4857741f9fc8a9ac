"""The search worker process: read replicas of tenants' recall indexes, searched off the node.

Why a process: a recall at 10k memories is ~150 us of numpy and Python on the event loop,
as much again as Hypercorn spends on the request itself, and one Python process runs on one
core whatever the machine has. The worker holds a replica of each large tenant's
``HybridIndex`` (vectors, BM25, columns, link graph, associations) and runs the whole ranking
there, so the node's loop only encodes the query and decodes the hits.

Protocol (``search_protocol``): frames on stdin, answers on stdout. Changes to a replica
arrive in the order the node applied them, on the same pipe as the searches, so a search
sees every change applied before it was sent (read-your-writes). The worker is stateless
beyond its replicas: the node rebuilds them after a restart.

Building a replica takes ~0.4 s at 20k memories and seconds at 100k (tokenising, BM25
postings, columns, the link graph), and frames are read in order on one pipe: built in one go,
it would hold up every other tenant's search queued behind the ``Open``. So an ``Open`` starts
a build that ``Worker.step`` advances ``BUILD_CHUNK`` memories (or links, or salience
strengths) at a time, and ``serve`` alternates: the frames that arrived, then one step. Other
tenants' frames are answered between two steps (~10 ms apart). The tenant's own changes that
arrive meanwhile are queued and applied, in order, once its snapshot is in, before ``Opened``;
a search of it is answered ``Failed`` without dropping it (the node searches locally and keeps
the replica), so no search ever sees the replica without a change sent before it.

Two more pieces of upkeep go in steps between other frames: doubling a replica's vector
matrix ahead of need (``Replica.grow_step``), and squeezing its tombstones out
(``_Compaction``, ``HybridIndex.compacting``), which renumbers every slot: the tenant's
changes that arrive meanwhile are queued until the compaction is installed, and a search
behind a queued change is answered ``Failed`` (searched in the node), as during a build.

Why steps rather than a builder thread: the worker's state stays on one thread (no locks, no
hand-over of a finished replica, no wake-up pipe), a build can be driven step by step in a
test, and the pause it imposes on other searches is one step, where a thread would share the
GIL on the interpreter's terms (a 5 ms switch interval, and none at all inside a C call that
keeps it, as msgspec's decoding of an ``Open`` does from start to end). That decoding still
happens in one go, as the frame arrives, so a large snapshot comes in frames of a few
thousand memories (``Open.parts`` says how many follow, ``search_offload.pack_snapshot``),
and the node lets other frames pass between them: ~1 ms of decoding each, where one frame of
100k memories (384 dimensions) took ~0.3 s.

Besides searches, the worker runs the pure functions named in ``FUNCTIONS`` for the node
(``Call``, answered by ``Returned``): work that needs no replica but costs the event loop as
much as a search, such as planning a context bundle (``somabrain.context.offload``). They are
imported when the worker starts, so that the first call is not the one that waits for it.

    python -m somabrain.memory.search_worker
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import select
import signal
import sys
import traceback
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from ._steps import Steps, dropping
from .associations import AssociationStore
from .embedder import HashingEmbedder
from .graph import LinkGraph
from .hybrid import HybridIndex, IndexCompaction
from .search_protocol import (
    Add,
    Associate,
    Call,
    Close,
    Dissociate,
    Failed,
    Hits,
    Link_,
    Open,
    Opened,
    Remove,
    Request,
    Response,
    Returned,
    Search,
    SetSalience,
    Unlink_,
    frames,
    pack,
)
from .text import tokenize
from .types import Memory
from .views import build_views

__all__ = ["BUILD_CHUNK", "FUNCTIONS", "Replica", "Worker", "main", "serve"]

F32 = npt.NDArray[np.float32]

#: Memories (or links, or salience strengths, or memories of queued changes) per build step:
#: ~10 ms of work, the longest a build makes another tenant's search wait.
BUILD_CHUNK = 400
#: A built replica's vector matrix of at least this many slots, once this full, is doubled
#: ahead of need, ``GROW_ROWS`` of its dimensions copied per step: doubled by the ``Add`` that
#: found it full, a 65k-slot matrix held every tenant's searches ~0.4 s.
GROW_IN_STEPS = 16384
GROW_AHEAD = 0.75
GROW_ROWS = 16
#: Dimensions of the vector matrix, or postings (BM25, filter attributes), per step of a
#: replica's compaction: squeezing its tombstones out in one go held every tenant's searches
#: 0.3 s to over 1 s at 50k memories (384 dimensions, with the vocabulary), 1.4-1.9 s at 100k
#: (``benchmarks/compaction.py``).
COMPACT_ROWS = 16
COMPACT_POSTINGS = 1 << 13
#: Items of the replaced structures let go of per step after a compaction (``dropping``).
COMPACT_DROP = 8192
#: Bytes read at most between two build steps (a snapshot's part, ``SNAPSHOT_FRAME``
#: memories, is ~3 MB at 384 dimensions).
READ_PER_STEP = 16 << 20
_DONE = object()  # what ``next`` answers for work in steps that is over

#: What a ``Call`` may name: ``function -> (module, attribute)``, a ``bytes -> bytes`` function
#: (its own encoding both ways). Only these: the names come from a pipe, not from code.
FUNCTIONS: dict[str, tuple[str, str]] = {
    "context.bundle": ("somabrain.context.offload", "build_packed"),
}


class Replica:
    """One tenant's read replica: built from an ``Open`` frame (``load``), changed by the
    others (``apply``)."""

    def __init__(self, spec: Open) -> None:
        """An empty replica with ``spec``'s settings; ``load(spec)`` fills it."""
        self.associations: AssociationStore | None = None
        if spec.views.association is not None:
            capacity = spec.views.association.capacity
            self.associations = AssociationStore.in_memory(spec.dim, capacity=capacity)
        views = build_views(spec.views, self.associations)
        self.dim = spec.dim
        self.embedder = HashingEmbedder(**spec.hashing) if spec.hashing is not None else None
        self.index = HybridIndex(spec.dim, views=views)
        self.index.auto_compact = False  # in steps, by the worker (``_Compaction``)
        self.index.graph = self.graph = LinkGraph()
        #: The vector matrix being doubled ahead of need (``GROW_IN_STEPS``), a step at a time.
        self.growth: Steps[None] | None = None

    def load(self, spec: Open, chunk: int = BUILD_CHUNK) -> Iterator[None]:
        """Fill the replica from the snapshot, pausing (``yield``) after every ``chunk``."""
        memories, n = spec.memories, len(spec.memories)
        # Half as much again as the snapshot: the ``Add``s that follow find room, and the
        # matrix is doubled ahead of need (``GROW_AHEAD``) only once they filled some of it.
        self.index.vectors.reserve(max(n, spec.size) * 3 // 2)
        if n:
            vectors = np.frombuffer(spec.vectors, dtype=np.float32).reshape(n, self.dim)
        for i in range(0, n, chunk):
            self._add(memories[i : i + chunk], vectors[i : i + chunk])
            yield
        for i in range(0, len(spec.links), chunk):
            for link in spec.links[i : i + chunk]:
                self.graph.put(link)
            yield
        salience = list(spec.salience.items())  # after the memories: it needs their slots
        for i in range(0, len(salience), chunk):
            for key, strength in salience[i : i + chunk]:
                self.index.set_salience(key, strength)
            yield
        if self.associations is not None:  # a bounded ring: one step
            self.associations.restore([
                (a.query, np.frombuffer(a.vector, dtype=np.float32), a.keys, a.at)
                for a in spec.associations
            ])  # fmt: skip

    def _add(self, memories: list[Memory], vectors: F32) -> None:
        if memories:
            tokens = [tokenize(m.content) for m in memories]
            self.index.add_batch(memories, vectors, tokens)

    @property
    def grow_due(self) -> bool:
        """The vector matrix is large and full enough to be doubled ahead of need."""
        v = self.index.vectors
        return v.capacity >= GROW_IN_STEPS and v.size >= GROW_AHEAD * v.capacity

    def grow_step(self) -> bool:
        """One step of doubling the vector matrix ahead of need; False once it is done."""
        if self.growth is None:
            self.growth = self.index.vectors.growing(GROW_ROWS)
        if next(self.growth, _DONE) is _DONE:
            self.growth = None
            return False
        return True

    def _associate(self, a: Associate) -> None:
        if self.associations is not None:
            vector = np.frombuffer(a.vector, dtype=np.float32)
            self.associations.add(a.query, vector, a.keys, a.at)

    def apply(self, frame: Request) -> None:
        """A change, as the node applied it to its own index."""
        match frame:
            case Add(memories=memories, vectors=raw):
                if memories:
                    vectors = np.frombuffer(raw, dtype=np.float32).reshape(len(memories), self.dim)
                    self._add(memories, vectors)
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
            weights=s.weights, now=s.now, at=s.at, unit=not s.vector, form=s.form,
        )  # fmt: skip
        return Hits(s.id, hits)


def _apply_queued(replica: Replica, queued: deque[Request], chunk: int) -> None:
    """The changes queued for ``replica``, in arrival order, about ``chunk`` memories' worth
    (at least one change: the queue drains however large a frame is)."""
    budget = chunk
    while queued and budget > 0:
        frame = queued.popleft()
        replica.apply(frame)
        budget -= len(frame.memories) if isinstance(frame, Add) else 1


class _Build:
    """A replica being built: the rest of its snapshot (the ``Open``'s, then the ``parts``
    frames that follow it), and the changes sent after it."""

    __slots__ = ("loaded", "parts", "queued", "replica", "steps")

    def __init__(self, spec: Open, chunk: int) -> None:
        self.replica = Replica(spec)
        self.steps = self.replica.load(spec, chunk)
        self.loaded = False  # the ``Open``'s own part is in
        self.queued: deque[Request] = deque()
        self.parts = spec.parts  # still to arrive

    @property
    def waiting(self) -> bool:
        """Nothing to do until more of the snapshot arrives."""
        return self.loaded and not self.queued and self.parts > 0

    def queue(self, frame: Request) -> None:
        self.queued.append(frame)
        if self.parts:
            self.parts -= 1

    def step(self, chunk: int) -> bool:
        """One chunk of work; True once the snapshot is in and every queued change applied."""
        if not self.loaded:
            for _ in self.steps:
                return False
            self.loaded = True
        _apply_queued(self.replica, self.queued, chunk)
        return not self.queued and not self.parts


class _Compaction:
    """A built replica's index being compacted in steps (``HybridIndex.compacting``), and
    the changes sent meanwhile: applied, in order, once the compaction is installed."""

    __slots__ = ("queued", "replica", "steps")

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.steps: Steps[IndexCompaction] | None = replica.index.compacting(
            COMPACT_ROWS, COMPACT_POSTINGS
        )
        self.queued: deque[Request] = deque()

    def step(self, chunk: int, garbage: deque[Steps[None]]) -> bool:
        """One step; True once the compaction is installed and the queued changes applied.
        What the compaction replaced goes to ``garbage``, to be let go of in steps."""
        if self.steps is not None:
            try:
                next(self.steps)
                return False
            except StopIteration as done:
                self.steps = None
                replaced = self.replica.index.install(done.value)  # nothing changed meanwhile
                if replaced:
                    garbage.append(dropping(replaced, COMPACT_DROP))
        _apply_queued(self.replica, self.queued, chunk)
        return not self.queued


class Worker:
    """The worker's replicas: ``handle`` a frame, ``step`` the builds in progress.

    A replica number is either built (``replicas``), being built (``building``, oldest
    first, one step at a time) or unknown; an ``Open`` of a number already known replaces
    it, and a ``Close`` forgets it, built or not."""

    def __init__(self, chunk: int = BUILD_CHUNK, *, freeze: bool = False) -> None:
        self.chunk = chunk
        #: Freeze what is alive (``gc.freeze``) once a replica is built or its compaction
        #: installed (``serve`` does; off by default, for a worker inside another process).
        self.freeze = freeze
        self.replicas: dict[int, Replica] = {}
        self.building: dict[int, _Build] = {}
        #: Built replicas whose vector matrix is being doubled ahead of need.
        self.growing: dict[int, Replica] = {}
        #: Built replicas whose index is being compacted (their changes wait meanwhile).
        self.compacting: dict[int, _Compaction] = {}
        #: What compactions replaced, let go of a step at a time.
        self.garbage: deque[Steps[None]] = deque()
        self._functions: dict[str, Callable[[bytes], bytes]] = {}

    def function(self, name: str) -> Callable[[bytes], bytes]:
        """The function ``FUNCTIONS`` names ``name`` (imported on first use)."""
        function = self._functions.get(name)
        if function is None:
            if name not in FUNCTIONS:
                raise ValueError(f"no function {name!r}")
            module, attribute = FUNCTIONS[name]
            function = self._functions[name] = getattr(importlib.import_module(module), attribute)
        return function

    def call(self, frame: Call) -> Returned:
        return Returned(frame.id, self.function(frame.function)(frame.payload))

    def handle(self, frame: Request) -> Response | None:
        """Apply one frame; its answer, if it has one now (``Opened`` comes from ``step``)."""
        try:
            match frame:
                case Search(replica=rid):
                    replica = self.replicas.get(rid)
                    compaction = self.compacting.get(rid)
                    if compaction is not None and compaction.queued:  # changes not applied
                        return Failed(frame.id, f"replica {rid} is being compacted")
                    if replica is not None:
                        return replica.search(frame)
                    if rid in self.building:  # not dropped: searchable once built
                        return Failed(frame.id, f"replica {rid} is still being built")
                    return Failed(frame.id, f"no replica {rid}", rid)
                case Open(replica=rid):
                    self._forget(rid)
                    self.building[rid] = _Build(frame, self.chunk)
                case Close(replica=rid):
                    self._forget(rid)
                case Call():
                    return self.call(frame)
                case _:
                    build = self.building.get(frame.replica)
                    compaction = self.compacting.get(frame.replica)
                    if build is not None:  # applied after the snapshot, before ``Opened``
                        build.queue(frame)
                    elif compaction is not None:  # applied once the compaction is in
                        compaction.queued.append(frame)
                    elif (target := self.replicas.get(frame.replica)) is not None:
                        target.apply(frame)
                        self._upkeep(frame.replica, target, isinstance(frame, Add))
        except Exception as exc:  # one bad frame must not take every replica down
            if isinstance(frame, Call):  # a bug of the function's: say where, to the log
                traceback.print_exception(exc, file=sys.stderr)
            if isinstance(frame, Search | Call):
                return Failed(frame.id, repr(exc))
            return self._dropped(frame.replica, exc)
        return None

    def _upkeep(self, rid: int, replica: Replica, added: bool = False) -> None:
        """Start what the last changes made due: compacting the replica's index (enough
        tombstones), or, after an ``Add``, doubling its vector matrix ahead of need."""
        if replica.index.compaction_due:
            self.growing.pop(rid, None)  # the compaction replaces the matrix anyway
            self.compacting.setdefault(rid, _Compaction(replica))
        elif added and replica.grow_due:
            self.growing.setdefault(rid, replica)

    @property
    def building_now(self) -> bool:
        """A build has work to do (not only parts of its snapshot to wait for), or a
        replica's index is being compacted or its matrix doubled."""
        return (
            bool(self.growing)
            or bool(self.compacting)
            or bool(self.garbage)
            or any(not b.waiting for b in self.building.values())
        )

    def step(self) -> Response | None:
        """Advance the oldest build that has work by one chunk: ``Opened`` when it is done,
        ``Failed`` when it failed (as the ``Open`` of a snapshot that cannot be built). With
        no build to advance, a step of compacting a replica's index, else of doubling a
        replica's matrix, else of letting go of what a compaction replaced."""
        rid, build = next(
            ((rid, b) for rid, b in self.building.items() if not b.waiting), (0, None)
        )
        if build is None:
            if self.compacting:
                rid, compaction = next(iter(self.compacting.items()))
                try:
                    if compaction.step(self.chunk, self.garbage):
                        del self.compacting[rid]
                        self._upkeep(rid, compaction.replica)
                        self._settled()
                except Exception as exc:
                    return self._dropped(rid, exc)
            elif self.growing:
                rid, replica = next(iter(self.growing.items()))
                if not replica.grow_step():
                    del self.growing[rid]
            elif self.garbage and next(self.garbage[0], _DONE) is _DONE:
                self.garbage.popleft()
            return None
        try:
            if not build.step(self.chunk):
                return None
        except Exception as exc:
            return self._dropped(rid, exc)
        del self.building[rid]
        self.replicas[rid] = build.replica
        self._upkeep(rid, build.replica)
        self._settled()
        return Opened(rid)

    def _settled(self) -> None:
        # A built or compacted replica's objects (a few per memory) live as long as it does:
        # kept out of every later full collection, which scanned them all (~20-35 ms in a
        # step at 50k memories), and a compaction's new containers would bring that back
        # once per compaction. Reference counts still free them, and what the compaction
        # replaced, when they go (a replica holds no reference cycles).
        if self.freeze:
            gc.freeze()

    def _forget(self, rid: int) -> None:
        self.replicas.pop(rid, None)
        self.building.pop(rid, None)
        self.growing.pop(rid, None)
        self.compacting.pop(rid, None)

    def _dropped(self, rid: int, exc: Exception) -> Failed:
        # A change that did not apply: the replica is no longer exact. Drop it and say so,
        # so that the node searches locally and opens a new one.
        traceback.print_exception(exc, file=sys.stderr)
        self._forget(rid)
        return Failed(0, f"replica dropped: {exc!r}", rid)


def serve(read_fd: int = 0, write_fd: int = 1, chunk: int = BUILD_CHUNK) -> None:
    """Answer frames from ``read_fd`` on ``write_fd`` until end of file."""
    worker = Worker(chunk, freeze=True)
    for name in FUNCTIONS:  # now, not in the first call's answer (~50 ms of imports)
        worker.function(name)
    buffer = bytearray()
    while True:
        # While a build is in progress, read only what has arrived: the build goes on when
        # nothing did, and one step follows each read, so neither starves the other. A read
        # takes all that arrives meanwhile, up to ``READ_PER_STEP``: the pipe holds 64 KiB,
        # and a step per 64 KiB made a frame behind a snapshot's part wait ~50 steps.
        if not worker.building_now or _readable(read_fd):
            got = 0
            while True:
                data = os.read(read_fd, 1 << 20)
                if not data:
                    return
                buffer += data
                got += len(data)
                if got >= READ_PER_STEP or not _readable(read_fd):
                    break
            for frame in frames(buffer):
                answer = worker.handle(frame)
                if answer is not None:  # at once: the node works on it while the next is searched
                    _write_all(write_fd, pack(answer))
        answer = worker.step()
        if answer is not None:
            _write_all(write_fd, pack(answer))


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main() -> int:
    # The node stops us (it closes our pipe, or kills us), not a signal meant for it: we run
    # in a session of our own, but a service manager may still signal every process of the
    # node's cgroup, and a worker dying first would be seen by a node not yet stopping as a
    # crash to restart from. A node killed outright closes the pipe too: we read its end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(BrokenPipeError):  # the node is gone: nothing of ours to save
        serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
