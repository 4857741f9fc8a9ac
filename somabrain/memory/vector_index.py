"""Exact cosine-similarity vector index over a growable float32 matrix.

Why exact and not an ANN graph: at the sizes one tenant holds on one node (up to a few 100k
memories) a single BLAS matrix-vector product costs ~3 ms per 100k x 256 on one core and has
perfect recall, no build step and trivial deletes. Vectors are L2-normalised on insert so that
cosine is a plain dot product.

Why the matrix is stored dimension-major (``dim x capacity``: one contiguous row per embedding
dimension, one column per slot): a query that is sparse, as the built-in hashing embedder's are
(a few words light up 15-60 of 256 dimensions), only needs the rows of its non-zero
dimensions. Gathering those rows and multiplying costs ~1.2 us per non-zero dimension at 10k
memories, against ~110 us for the full product, and gives the same dot products (only the
summation order differs). Dense queries (a sentence model's) use the full product, which BLAS
runs as fast on this layout as on the row-major one.

Slots are stable integers handed out in insertion order; deletes are tombstones (the row is
zeroed and marked dead), so other structures (the BM25 postings, the hybrid index's columns)
can share slot numbers. ``compact`` squeezes the tombstones out and returns the renumbering.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ._steps import Steps, finish
from .errors import InvalidVectorError

__all__ = ["Compacted", "Grown", "VectorIndex", "top_k"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

#: A query with at most this fraction of non-zero dimensions is scored on those rows only
#: (measured: the sparse product wins up to ~90 of 256 non-zero dimensions).
SPARSE_QUERY_FRACTION = 0.3


def top_k(scores: npt.NDArray[Any], k: int, mask: npt.NDArray[np.bool_] | None = None) -> I64:
    """Indices of the ``k`` highest ``scores`` (where ``mask``), best first.

    ``partition`` finds the k-th highest value in O(n) (on values: half the time of
    ``argpartition`` at 10k slots), one comparison collects the entries at or above it, and
    only those are sorted. Ties break towards the lower index, so results are deterministic.
    ``scores`` is not modified.
    """
    n = scores.shape[0]
    if k <= 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    if mask is not None:
        eligible = np.flatnonzero(mask)
        if eligible.shape[0] <= k:
            sub = scores[eligible]
            order = np.lexsort((eligible, -sub))
            return eligible[order].astype(np.int64)
        # Penalise ineligible entries instead of gathering: cheaper for dense masks.
        work = np.where(mask, scores, -np.inf)
    else:
        work = scores
    if k >= n:
        cand = np.arange(n, dtype=np.int64)
    else:
        kth = np.partition(work, n - k)[n - k]
        # ``nonzero()[0]`` on these 1-D arrays: ``flatnonzero`` adds two wrapper calls.
        cand = (work >= kth).nonzero()[0]
        if cand.shape[0] > k:  # entries tied with the k-th score: keep the lowest indices
            above = np.flatnonzero(work > kth)
            tied = np.flatnonzero(work == kth)[: k - above.shape[0]]
            cand = np.concatenate((above, tied))
        cand = cand.astype(np.int64, copy=False)
    order = np.lexsort((cand, -work[cand]))
    return cand[order]


class Grown(NamedTuple):
    """A larger copy of a ``VectorIndex``'s matrix (``VectorIndex.grown``): its first ``n``
    slots copied from ``source``."""

    matrix: F32
    source: F32
    n: int


class Compacted(NamedTuple):
    """A ``VectorIndex``'s matrix without its tombstones (``VectorIndex.compacted``): its
    first ``size`` slots are the live ones, renumbered as ``remap[old] = new`` (-1: dead)."""

    matrix: F32
    remap: I64
    size: int


class VectorIndex:
    """Exact cosine top-k over unit vectors, with tombstone deletes and compaction.

    Growing the matrix copies it (the capacity doubles: amortised O(1) per add). A large copy
    takes long (0.4 s at 65k slots of 256 or 384 dimensions here, most of it the first touch
    of the new memory), so an owner that must not pause that long makes the copy elsewhere:
    ``grown`` in a worker thread, then ``adopt`` (see ``TenantMemory``).
    """

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self._dim = dim
        # Dimension-major: ``_matrix[d, slot]`` (see the module docstring).
        self._matrix: F32 = np.zeros((dim, max(capacity, 1)), dtype=np.float32)
        self._alive: npt.NDArray[np.bool_] = np.zeros(max(capacity, 1), dtype=np.bool_)
        self._n = 0
        self._dead = 0

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def size(self) -> int:
        """Slots handed out so far, dead ones included."""
        return self._n

    @property
    def capacity(self) -> int:
        """Slots the matrix holds before it must grow."""
        return int(self._matrix.shape[1])

    @property
    def dead(self) -> int:
        """Tombstoned slots not yet compacted away."""
        return self._dead

    def __len__(self) -> int:
        """Live vectors."""
        return self._n - self._dead

    @property
    def alive(self) -> npt.NDArray[np.bool_]:
        """Read-only view: ``alive[slot]`` for every slot handed out."""
        view = self._alive[: self._n]
        view.flags.writeable = False
        return view

    @property
    def matrix(self) -> F32:
        """Read-only ``(size, dim)`` view of the vectors, one row per slot (unit vectors; dead
        rows are zero). Not C-contiguous: ``np.array`` it for a compact copy."""
        view = self._matrix[:, : self._n].T
        view.flags.writeable = False
        return view

    def normalise(self, vectors: npt.ArrayLike) -> F32:
        """Validate and L2-normalise a batch (or one vector) into a fresh (m, dim) array."""
        # A component beyond float32's range becomes infinity in the cast: refused below with
        # NaN and infinity (as a refusal, not an overflow warning).
        with np.errstate(over="ignore"):
            arr = np.array(vectors, dtype=np.float32, ndmin=2, copy=True)
        if arr.ndim != 2 or arr.shape[1] != self._dim:
            raise InvalidVectorError(self._dim, f"got shape {np.shape(vectors)}")
        if not np.isfinite(arr).all():
            raise InvalidVectorError(self._dim, "contains NaN, infinity or a value beyond float32")
        # float64 accumulation: tiny float32 components would underflow when squared.
        norms = np.sqrt(np.einsum("ij,ij->i", arr, arr, dtype=np.float64))[:, None]
        np.divide(arr, norms, out=arr, where=norms > 0)
        return arr

    def reserve(self, extra: int) -> None:
        """Room for ``extra`` more slots, so that a batch added in parts grows the matrix once
        (the search worker builds a replica in chunks)."""
        if self._n + extra > self.capacity:
            self.adopt(self.grown(extra))

    def _larger(self, extra: int) -> F32:
        """An empty matrix for ``extra`` more slots than are handed out, doubled at least."""
        cap = max(self._n + extra, 2 * self.capacity)
        return np.zeros((self._dim, cap), dtype=np.float32)

    def grown(self, extra: int) -> Grown:
        """A copy of the matrix with room for ``extra`` more slots than are handed out now
        (doubled at least), for ``adopt``. Made to run in another thread while the owner goes
        on: it reads only the slots handed out when it starts, which an ``add`` never writes
        (a ``remove`` may zero one meanwhile: ``adopt`` zeroes it in the copy too)."""
        source, n = self._matrix, self._n
        matrix = self._larger(extra)
        matrix[:, :n] = source[:, :n]
        return Grown(matrix, source, n)

    def adopt(self, grown: Grown) -> bool:
        """Install a ``grown`` copy, brought up to date: the slots added since it was made
        are copied and every dead slot is zeroed. False, and nothing changes, when the matrix
        was replaced meanwhile (grown by an ``add``, compacted) or is already as large."""
        if grown.source is not self._matrix or grown.matrix.shape[1] <= self._matrix.shape[1]:
            return False
        matrix, n0, n = grown.matrix, grown.n, self._n
        matrix[:, n0:n] = self._matrix[:, n0:n]
        dead = np.flatnonzero(~self._alive[:n0])
        if dead.shape[0]:
            matrix[:, dead] = 0.0
        alive = np.zeros(matrix.shape[1], dtype=np.bool_)
        alive[:n] = self._alive[:n]
        self._matrix, self._alive = matrix, alive
        return True

    def growing(self, rows: int) -> Steps[None]:
        """``grown`` then ``adopt``, copying ``rows`` dimensions per step (``next``), for an
        owner with one thread (the search worker): it goes on adding, removing and searching
        between two steps. Stops early, adopting nothing, if the matrix is replaced meanwhile
        (an ``add`` that found no room, a compaction). By dimensions, not slots: most of the
        cost is the first touch of the new memory (whole huge pages of it), and a dimension's
        row is one contiguous stretch of it."""
        source, n = self._matrix, self._n
        matrix = self._larger(0)
        for start in range(0, self._dim, rows):
            if source is not self._matrix:
                return
            matrix[start : start + rows, :n] = source[start : start + rows, :n]
            yield
        self.adopt(Grown(matrix, source, n))

    def add(self, vectors: npt.ArrayLike) -> I64:
        """Append a batch of vectors (normalised here); returns their new slots."""
        arr = self.normalise(vectors)
        m = arr.shape[0]
        self.reserve(m)
        start = self._n
        self._matrix[:, start : start + m] = arr.T
        self._alive[start : start + m] = True
        self._n += m
        return np.arange(start, start + m, dtype=np.int64)

    def remove(self, slot: int) -> bool:
        """Tombstone ``slot``; False if it was already dead or never handed out."""
        if not 0 <= slot < self._n or not self._alive[slot]:
            return False
        self._alive[slot] = False
        self._matrix[:, slot] = 0.0  # a dead slot scores 0 without consulting the mask
        self._dead += 1
        return True

    def vector(self, slot: int) -> F32:
        """A copy of the (unit) vector stored at a live ``slot``."""
        if not 0 <= slot < self._n or not self._alive[slot]:
            raise KeyError(slot)
        row: F32 = self._matrix[:, slot].copy()
        return row

    def scores(self, query: npt.ArrayLike) -> F32:
        """Cosine of ``query`` with every slot (dead slots: 0). A fresh, writable array."""
        return self.unit_scores(self.normalise(query)[0])

    def unit_scores(self, q: F32) -> F32:
        """``scores`` for a query already normalised (a 1-D float32 array of length ``dim``)."""
        n = self._n
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        nonzero = q.nonzero()[0]  # 1-D: ``flatnonzero``'s ravel is a wasted call
        if nonzero.shape[0] <= SPARSE_QUERY_FRACTION * self._dim:
            if nonzero.shape[0] == 0:
                return np.zeros(n, dtype=np.float32)
            sims: F32 = np.dot(q[nonzero], self._matrix[nonzero, :n])
        else:
            sims = np.dot(q, self._matrix[:, :n])
        return sims

    def search(
        self, query: npt.ArrayLike, k: int, mask: npt.NDArray[np.bool_] | None = None
    ) -> tuple[I64, F32]:
        """The ``k`` live slots most similar to ``query`` (restricted to ``mask``), best first."""
        sims = self.scores(query)
        eligible = self._alive[: self._n] if mask is None else mask & self._alive[: self._n]
        slots = top_k(sims, k, eligible)
        return slots, sims[slots]

    def compact(self) -> I64:
        """Drop tombstones; returns ``remap`` with ``remap[old] = new`` (-1 for dead slots)."""
        compaction = self.compacted()
        self.install(compaction)
        return compaction.remap

    def compacted(self) -> Compacted:
        """The matrix without its tombstones, for ``install``: reads the index, changes
        nothing, so it may run in another thread while the owner searches (not while it
        adds or removes)."""
        return finish(self.compacting(self._dim))

    def compacting(self, rows: int) -> Steps[Compacted]:
        """``compacted`` in steps of ``rows`` dimensions (``yield`` between two), for an
        owner with one thread (the search worker) that searches between steps and makes no
        change until the compaction is installed."""
        alive = self._alive[: self._n]
        remap = np.full(self._n, -1, dtype=np.int64)
        keep = np.flatnonzero(alive)
        remap[keep] = np.arange(keep.shape[0], dtype=np.int64)
        m = keep.shape[0]
        matrix = np.zeros((self._dim, max(1024, int(m * 1.25))), dtype=np.float32)
        for start in range(0, self._dim, rows):
            stop = min(start + rows, self._dim)
            np.take(self._matrix[start:stop], keep, axis=1, out=matrix[start:stop, :m])
            if stop < self._dim:
                yield
        return Compacted(matrix, remap, m)

    def install(self, compaction: Compacted) -> None:
        """Replace the matrix by a ``compacted`` one (slot numbers change as its ``remap``
        says)."""
        m = compaction.size
        alive = np.zeros(compaction.matrix.shape[1], dtype=np.bool_)
        alive[:m] = True
        self._matrix, self._alive = compaction.matrix, alive
        self._n, self._dead = m, 0
