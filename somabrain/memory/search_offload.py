"""The node's side of the search worker: replicas kept in step, searches sent, hits received.

Why: a recall over 10k memories is ~150 us of numpy and Python, as much as Hypercorn spends
on the whole request, and a Python process computes on one core however many the machine
has. ``SearchOffload`` runs one worker process (``search_worker``) per node; the memory actor
of a large tenant keeps a replica of its index there and sends its searches to it, so the
node's event loop only encodes the query and decodes the hits (measured: ~1.5x the recall
requests per second over HTTP at 10k memories on 2 cores, ``benchmarks/edge.py``).

Consistency. ``open_replica`` sends a snapshot of the tenant's index, link graph, salience
and associations, then attaches a ``ReplicaFeed`` as the ``feed`` of each: every change they
apply afterwards is sent too, in the order applied, on the same pipe as the searches. So a
search sees every change applied before it was sent; an acknowledged remember is always in
the next recall. Until the worker confirms the snapshot (``ready``), searches stay local.

A large snapshot is packed in a thread: at 100k memories of 256 dimensions, packing the
117 MB frame (the vectors made row-major, the msgpack) held the event loop ~120 ms in one go;
in a thread, the loop's longest pause is ~65 ms. The snapshot itself is taken on the loop, at
the instant the feed is attached (the loop goes on changing the index meanwhile): copies that
only the thread reads then (~50 ms at that size, more when the process first touches that much
memory; ``TenantMemory.replica_snapshot``). The feed holds the changes that follow until the
snapshot is sent, and a replica closed before that is never sent at all. The snapshot goes
in parts (``pack_snapshot``), the next once the pipe has taken the last, so that the other
tenants' frames pass between them (the worker decodes a frame in one go: a single frame of
100k memories was ~0.3 s of it).

Failure. The worker holds copies only: if it dies, drops a replica or answers with an error,
each pending search runs locally instead (the node's own index is always complete) and the
offload restarts the worker after ``RESTART_PAUSE``; the actors open new replicas on their
next search. A replica is one incarnation of one tenant's index (its number is never reused),
so changes meant for an older incarnation can never land in a newer one.

Calls. ``call`` hands the worker a pure function's input (``search_worker.FUNCTIONS``) and
gets its output back, the same way as a search, failures included: the caller then runs the
function itself. The context planners build their bundles so (``somabrain.context.offload``).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import numpy as np
import numpy.typing as npt

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
    Returned,
    Search,
    SetSalience,
    Unlink_,
    ViewParams,
    pack,
    read_responses,
)
from .types import Link, Memory

__all__ = ["OffloadUnavailable", "ReplicaFeed", "SearchOffload"]

logger = logging.getLogger("somabrain.memory.offload")

#: Seconds between a worker's death and its restart; doubled (up to ``MAX_RESTART_PAUSE``)
#: while workers die within ``STABLE_AFTER`` seconds of their start (one that cannot start,
#: say, is retried without flooding the log).
RESTART_PAUSE = 1.0
MAX_RESTART_PAUSE = 30.0
STABLE_AFTER = 30.0
#: A search unanswered this long runs in the node instead, and searches stay in the node for
#: as long again: the worker builds replicas in short steps between searches, but anything
#: else that holds it up (a huge snapshot to read, a stuck worker) holds up every search.
STALL_AFTER = 0.5
#: Snapshots of at least this many memories are packed in a thread, off the event loop (a
#: smaller one costs less than the hop to a thread and back).
PACK_IN_THREAD = 5000
#: Memories per frame of a snapshot: the ``Open`` carries the first ones, ``Add`` frames the
#: rest, so the worker decodes a large snapshot in pieces between its other tenants' searches
#: (one frame is decoded in one go: ~0.3 s for 100k memories of 384 dimensions, ~1 ms for
#: one of these), and builds one such frame per step (``search_worker.BUILD_CHUNK``).
SNAPSHOT_FRAME = 400
#: Bytes the pipe to the worker holds (``F_SETPIPE_SZ``; 1 MiB is Linux's default limit for
#: an unprivileged process): about one part of a snapshot.
PIPE_SIZE = 1 << 20

F32 = npt.NDArray[np.float32]

#: Called once per search (or call) with the hits (the returned payload), or with the error
#: that sends it back to the node.
Callback = Callable[[Any, BaseException | None], None]


class OffloadUnavailable(Exception):
    """The worker cannot answer this search: search locally."""


class SearchOffload:
    """One search worker process and the replicas in it (``run`` keeps it running)."""

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        restart_pause: float = RESTART_PAUSE,
        max_restart_pause: float = MAX_RESTART_PAUSE,
    ) -> None:
        self._command = list(command or [sys.executable, "-m", "somabrain.memory.search_worker"])
        self._restart_pause = restart_pause
        self._max_restart_pause = max_restart_pause
        # What ``send`` could not write yet (the pipe was full), from ``_out_at`` on: an offset
        # rather than deleting what was written, so a 100 MB snapshot is not moved per write.
        self._out = bytearray()
        self._out_at = 0
        self._wake = anyio.Event()
        #: Set while ``_out`` is empty (everything sent is in the pipe): a large snapshot's
        #: next part waits for it, so that what was sent meanwhile goes first.
        self._drained = anyio.Event()
        self._drained.set()
        # Pending searches by id, in the order sent, with the time each was sent.
        self._pending: dict[int, tuple[Callback, float]] = {}
        self._stalled_until = -math.inf
        self._feeds: dict[int, ReplicaFeed] = {}
        self._ids = itertools.count(1)
        self._replica_ids = itertools.count(1)
        #: Bumped at every worker start: a replica opened in an older worker is gone.
        self.generation = 0
        #: Worker starts so far (restarts are ``starts - 1``).
        self.starts = 0
        #: Searches the worker answered, and those sent back to the node to run locally.
        self.answered = 0
        self.failed_over = 0
        #: Calls the worker answered (failed calls count in ``failed_over``).
        self.calls = 0
        self._process: anyio.abc.Process | None = None
        self._fd = self._from_worker = -1  # our ends of the pipes to and from the worker
        self._tasks: anyio.abc.TaskGroup | None = None  # the running worker's
        self._closed = False

    @property
    def running(self) -> bool:
        return self._process is not None and not self._closed

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def health(self) -> dict[str, Any]:
        """The ``search_worker`` component of ``/health``."""
        return {
            "running": self.running,
            "pid": self.pid,
            "starts": self.starts,
            "replicas": len(self._feeds),
            "searches": self.answered,
            "calls": self.calls,
            "failovers": self.failed_over,
        }

    def metrics(self) -> list[tuple[str, str, str, list[tuple[dict[str, str], float]]]]:
        """Prometheus families for ``/metrics`` (see ``somabrain.edge.metrics``)."""
        return [
            ("soma_search_worker_searches_total", "counter",
             "Recalls answered by the search worker process.", [({}, self.answered)]),
            ("soma_search_worker_calls_total", "counter",
             "Functions run by the search worker for the node (context bundles).",
             [({}, self.calls)]),
            ("soma_search_worker_failovers_total", "counter",
             "Recalls and calls sent to the search worker that ran locally instead.",
             [({}, self.failed_over)]),
            ("soma_search_worker_starts_total", "counter",
             "Search worker processes started (restarts are starts - 1).", [({}, self.starts)]),
            ("soma_search_worker_replicas", "gauge",
             "Tenant index replicas held by the search worker.", [({}, len(self._feeds))]),
        ]  # fmt: skip

    # --- the node's task ------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep a worker running until ``close`` or cancellation; ``started`` once the first
        worker runs."""
        pause = self._restart_pause
        while not self._closed:
            started = anyio.current_time()
            try:
                await self._run_once(task_status)
                task_status = anyio.TASK_STATUS_IGNORED
            except OSError as exc:
                logger.error("search worker failed to start: %r", exc)
            except Exception:  # a bug or a garbled frame: a new worker, never a dead node
                logger.exception("search worker connection failed")
            if self._closed:
                break
            stable = anyio.current_time() - started >= STABLE_AFTER
            pause = self._restart_pause if stable else pause
            await anyio.sleep(pause)
            pause = min(pause * 2, self._max_restart_pause)

    async def _run_once(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        # Our own pipes, non-blocking on our side: a search is written at once from the
        # actor (one system call, no task switch) and read when the loop says it is readable.
        to_worker, self._fd = os.pipe()
        with contextlib.suppress(AttributeError, OSError):  # Linux; else the default 64 KiB
            # The worker reads what arrived between two build steps: with 64 KiB at a time,
            # a snapshot's part held up the frames behind it for dozens of steps.
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._from_worker, from_worker = os.pipe()
        try:
            # A session of its own: Ctrl-C at a terminal, or a stop signal sent to the node's
            # process group, is the node's to handle (it closes the worker when it stops); a
            # worker still importing when one came printed a KeyboardInterrupt trace.
            process = await anyio.open_process(
                self._command,
                stdin=to_worker,
                stdout=from_worker,
                stderr=None,
                start_new_session=True,
            )
        except BaseException:
            for fd in (self._fd, self._from_worker):
                os.close(fd)
            raise
        finally:
            os.close(to_worker)
            os.close(from_worker)
        os.set_blocking(self._fd, False)
        os.set_blocking(self._from_worker, False)
        self.generation += 1
        self.starts += 1
        self._out.clear()
        self._out_at = 0
        self._drained.set()
        self._process = process
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                self._tasks = tg
                tg.start_soon(self._write, tg.cancel_scope)
                tg.start_soon(self._watch_stalls)
                await self._read()
                tg.cancel_scope.cancel()
        finally:
            self._process = self._tasks = None
            self._drained.set()  # nothing more goes to this worker: no part waits for it
            self._lost("the search worker stopped")
            os.close(self._fd)
            os.close(self._from_worker)
            self._fd = self._from_worker = -1
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.aclose()
            if not self._closed:
                logger.error("search worker exited (code %s): restarting", process.returncode)

    async def _write(self, scope: anyio.CancelScope) -> None:
        """Write what ``send`` could not (the pipe was full)."""
        try:
            while True:
                if self._out_at >= len(self._out):
                    self._out.clear()
                    self._out_at = 0
                    self._drained.set()
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    continue
                await anyio.wait_writable(self._fd)
                with (
                    memoryview(self._out) as view,
                    view[self._out_at :] as rest,
                    contextlib.suppress(BlockingIOError),
                ):
                    self._out_at += os.write(self._fd, rest)
        except OSError:
            scope.cancel()  # the worker is gone: the reader sees the end too

    async def _read(self) -> None:
        buffer = bytearray()
        pending, feeds = self._pending, self._feeds
        fd = self._from_worker
        while True:
            await anyio.wait_readable(fd)
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                return
            buffer += chunk
            for response in read_responses(buffer):
                if isinstance(response, Hits):
                    entry = pending.pop(response.id, None)
                    if entry is not None:
                        self.answered += 1
                        entry[0](response.hits, None)
                elif isinstance(response, Returned):
                    entry = pending.pop(response.id, None)
                    if entry is not None:
                        self.calls += 1
                        entry[0](response.payload, None)
                elif isinstance(response, Opened):
                    feed = feeds.get(response.replica)
                    if feed is not None:
                        feed.ready = True
                else:
                    self._failed(response)

    def _failed(self, failure: Failed) -> None:
        if failure.replica:  # the worker dropped it: changes may be missing
            feed = self._feeds.pop(failure.replica, None)
            if feed is not None:
                feed.broken = True
                logger.error("search replica %d dropped: %s", failure.replica, failure.error)
        entry = self._pending.pop(failure.id, None)
        if entry is not None:
            self.failed_over += 1
            entry[0](None, OffloadUnavailable(failure.error))

    def _lost(self, why: str) -> None:
        """The worker is gone: every replica with it, and every pending search fails over."""
        feeds, self._feeds = self._feeds, {}
        for feed in feeds.values():
            feed.broken = True
        pending, self._pending = self._pending, {}
        self.failed_over += len(pending)
        for callback, _ in pending.values():
            callback(None, OffloadUnavailable(why))

    async def _watch_stalls(self) -> None:
        """Fail over the searches the worker has not answered within ``STALL_AFTER``."""
        while True:
            await anyio.sleep(STALL_AFTER / 4)
            pending, now = self._pending, time.monotonic()
            overdue = []
            for qid, (_, sent) in pending.items():  # oldest first
                if now - sent < STALL_AFTER:
                    break
                overdue.append(qid)
            if overdue:
                self._stalled_until = now + STALL_AFTER
                self.failed_over += len(overdue)
                for qid in overdue:
                    pending.pop(qid)[0](None, OffloadUnavailable("the search worker is busy"))

    @property
    def stalled(self) -> bool:
        """The worker left a search unanswered for ``STALL_AFTER`` moments ago."""
        return time.monotonic() < self._stalled_until

    async def close(self) -> None:
        """Stop the worker for good (``run`` returns)."""
        self._closed = True
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
        self._wake.set()
        self._drained.set()
        await anyio.lowlevel.checkpoint()

    # --- what the memory actors call ------------------------------------------------------

    def send(self, frame: Any) -> None:
        self._send_packed(pack(frame))

    def _send_packed(self, data: bytearray) -> None:
        if self._out_at < len(self._out) or self._process is None:
            self._out += data  # behind what waits already
        else:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                written = 0
            except OSError:  # the worker died: the reader sees it and fails everything over
                return
            if written == len(data):
                return
            # Nothing else waits: the frame becomes the buffer (a snapshot is not copied).
            self._out, self._out_at = data, written
        if self._drained.is_set():  # something waits to be written now
            self._drained = anyio.Event()
        self._wake.set()

    def open_replica(
        self,
        dim: int,
        views: ViewParams,
        *,
        memories: list[Memory],
        vectors: F32,
        links: list[Link],
        salience: dict[str, float],
        associations: Sequence[tuple[str, F32, tuple[str, ...], float]] = (),
        hashing: dict[str, Any] | None = None,
    ) -> ReplicaFeed:
        """Send a snapshot; the returned feed sends the changes that follow it, and searches
        once it is ``ready``. Raises ``OffloadUnavailable`` when no worker runs.

        The snapshot must be the caller's own copies (a large one is packed in a thread
        while the caller goes on changing its index); ``vectors`` may be any (n, dim) view.
        """
        if not self.running:
            raise OffloadUnavailable("no search worker running")
        rid = next(self._replica_ids)
        feed = self._feeds[rid] = ReplicaFeed(self, rid)

        def packed() -> list[bytearray]:
            return pack_snapshot(rid, dim, views, hashing, memories, vectors, links, salience,
                                 associations, SNAPSHOT_FRAME)  # fmt: skip

        if len(memories) < PACK_IN_THREAD or self._tasks is None:
            for part in packed():
                self._send_packed(part)
        else:
            feed.held = []
            self._tasks.start_soon(self._send_open, feed, packed)
        return feed

    async def _send_open(self, feed: ReplicaFeed, packed: Callable[[], list[bytearray]]) -> None:
        """Pack a snapshot in a thread, send it a part at a time (what other replicas send
        meanwhile goes between two parts), then the changes its feed held meanwhile."""
        try:
            parts: list[bytearray] = await anyio.to_thread.run_sync(packed)
        except Exception:  # this replica's snapshot, not the worker: it stays local
            logger.exception("search replica %d: the snapshot could not be packed", feed.replica)
            self._feeds.pop(feed.replica, None)
            feed.broken, parts = True, []
        generation = self.generation
        for i, part in enumerate(parts):
            if i:
                await self._drained.wait()
            if feed.broken:  # closed meanwhile, or the worker is gone
                if i and self.generation == generation and self.running:
                    self.send(Close(feed.replica))  # the worker has a part: it forgets it
                break
            self._send_packed(part)
        held, feed.held = feed.held or [], None
        if feed.broken:  # or closed meanwhile: the worker never hears more of it
            return
        for frame in held:
            self.send(frame)

    def search(self, replica: int, callback: Callback, fields: dict[str, Any]) -> None:
        qid = next(self._ids)
        self._pending[qid] = (callback, time.monotonic())
        self.send(Search(qid, replica, **fields))

    def call(self, function: str, payload: bytes, callback: Callback) -> None:
        """Run ``function`` (a name in ``search_worker.FUNCTIONS``) on ``payload`` in the
        worker: ``callback`` gets what it returned, or ``OffloadUnavailable`` (the worker is
        not running, is stalled, died, or the function raised)."""
        if not self.running or self.stalled:
            callback(None, OffloadUnavailable("the search worker is not available"))
            return
        qid = next(self._ids)
        self._pending[qid] = (callback, time.monotonic())
        self.send(Call(qid, function, payload))

    def close_replica(self, replica: int) -> None:
        feed = self._feeds.pop(replica, None)
        if feed is not None and feed.held is None and self.running:  # its Open went
            self.send(Close(replica))


def pack_snapshot(
    replica: int,
    dim: int,
    views: ViewParams,
    hashing: dict[str, Any] | None,
    memories: list[Memory],
    vectors: F32,
    links: list[Link],
    salience: dict[str, float],
    associations: Sequence[tuple[str, F32, tuple[str, ...], float]],
    per_frame: int = SNAPSHOT_FRAME,
) -> list[bytearray]:
    """A snapshot as parts to send one after the other: an ``Open`` with the first
    ``per_frame`` memories, the links, the associations and the salience of its own memories;
    an ``Add`` per ``per_frame`` memories more; then a ``SetSalience`` for each strength of
    theirs (a strength needs its memory in the index), ``per_frame`` frames to a part. The
    ``Open`` counts the frames that follow (``parts``); the worker applies them once its
    snapshot is in, before it answers ``Opened``: the replica is whole before its first
    search, as from one frame."""
    rows = np.asarray(vectors, np.float32)  # row-major
    head = memories[:per_frame]
    own = {m.key for m in head}
    parts = [
        pack(Add(replica, memories[i : i + per_frame], rows[i : i + per_frame].tobytes()))
        for i in range(per_frame, len(memories), per_frame)
    ]
    frames = len(parts)
    rest = [(k, v) for k, v in salience.items() if k not in own]
    for i in range(0, len(rest), per_frame):  # small frames: sent ``per_frame`` at a time
        part = bytearray()
        for key, strength in rest[i : i + per_frame]:
            part += pack(SetSalience(replica, key, strength))
        parts.append(part)
    frames += len(rest)
    first = pack(Open(
        replica, dim, views, hashing, head, rows[:per_frame].tobytes(), links,
        {k: v for k, v in salience.items() if k in own},
        [Associate(replica, q, np.asarray(v, np.float32).tobytes(), k, at)
         for q, v, k, at in associations],
        frames, len(memories),
    ))  # fmt: skip
    return [first, *parts]


class ReplicaFeed:
    """One replica: the ``ChangeFeed`` of the tenant's index, graph and associations, and the
    way its searches go. ``usable`` says whether a search can go now."""

    __slots__ = ("broken", "held", "offload", "ready", "replica")

    def __init__(self, offload: SearchOffload, replica: int) -> None:
        self.offload, self.replica = offload, replica
        self.ready = False  # the worker built the snapshot
        self.broken = False  # the worker is gone or dropped the replica: open a new one
        #: The changes that wait for the snapshot to be packed and sent (None: it was).
        self.held: list[Any] | None = None

    @property
    def usable(self) -> bool:
        return self.ready and not self.broken and not self.offload.stalled

    def _send(self, frame: Any) -> None:
        if self.held is not None:
            self.held.append(frame)
        elif not self.broken:
            self.offload.send(frame)

    def add(self, memories: Sequence[Memory], vectors: F32) -> None:
        raw = np.ascontiguousarray(vectors, dtype=np.float32).tobytes()
        self._send(Add(self.replica, list(memories), raw))

    def remove(self, key: str) -> None:
        self._send(Remove(self.replica, key))

    def set_salience(self, key: str, strength: float) -> None:
        self._send(SetSalience(self.replica, key, strength))

    def link(self, link: Link) -> None:
        self._send(Link_(self.replica, link))

    def unlink(self, from_key: str, to_key: str, rel: str) -> None:
        self._send(Unlink_(self.replica, from_key, to_key, rel))

    def associate(self, query: str, vector: F32, keys: tuple[str, ...], at: float) -> None:
        raw = np.asarray(vector, dtype=np.float32).tobytes()
        self._send(Associate(self.replica, query, raw, keys, at))

    def dissociate(self, key: str) -> None:
        self._send(Dissociate(self.replica, key))

    def search(self, callback: Callback, **fields: Any) -> None:
        """Send a search (``Search``'s fields but ``id`` and ``replica``); ``callback`` gets
        the hits, or ``OffloadUnavailable``."""
        if not self.usable:
            callback(None, OffloadUnavailable("the replica is not usable"))
            return
        self.offload.search(self.replica, callback, fields)

    def close(self) -> None:
        self.broken = True
        self.offload.close_replica(self.replica)
