"""Query-aware feedback: which memories helped which queries, as a recall view, kept durably.

A positive feedback (``POST /context/feedback`` naming ``used_keys``) says "for *this query*
*these memories* were used". Salience (``TenantMemory.reinforce``) keeps the second half only
and lifts those memories for every later query alike. This module keeps both halves:

* **associations**: each positive feedback stores ``(query, used keys)``; the ``association``
  view lifts, for a new query, the memories that helped the stored queries most similar to it
  ("memories that helped similar questions before");
* **co-use links**: memories used together in one feedback get a link ``rel = "co_used"``
  whose weight grows by ``co_use_weight`` with every such feedback (up to
  ``co_use_max_weight``); the graph view's walk follows it like any other link, so a query whose
  best hits include one of them reaches the others.

The ``association`` view. For a query ``q`` take the ``neighbours`` stored queries ``j`` most
similar to it (cosine of the embeddings, above ``min_similarity``), ``s_1`` the best cosine::

    a(m)     = max over those j whose used keys hold m of  (s_j / s_1) ** sharpness
    score(m) = a(m) * rel(m) / rel(best)

where ``rel`` is the semantic + lexical part of the search's score (weighted as in the search)
and ``best`` the query's best hit by it. So a memory is lifted in proportion to how relevant it
already is to *this* query: a memory that answered a similar question but shares nothing with
this one stays where it was.

Why these choices (measured on LoCoMo, ``benchmarks/locomo.py``, feedback on half of each
conversation's questions, recall@10 on the other half):

* relative similarity ``s_j / s_1``, not the raw cosine: cosines between questions of one
  tenant sit around 0.3 with the hashing embedder and 0.7 with MiniLM (they share names and
  phrasing), so any absolute scale fits one embedder only; the ranking among stored queries
  carries over;
* a lift proportional to relevance, not a constant: a constant lift (what salience does) moved
  memories used before into unrelated queries' results and gained nothing;
* the maximum over neighbours, not the sum: a memory used by many past queries is not more
  likely to answer this one;
* ``sharpness`` 2: MiniLM's question cosines are close together (the nearest five within a few
  hundredths), so the ratio alone barely tells them apart.

The view asks ``ranking`` to score exactly the lifted memories (``prepare``) and bounds every
other slot by 0, so it costs one product of the stored query embeddings with the query's,
never a pass over the tenant's memories.

Durability: a journal beside the tenant's memory log (``<log>.assoc``, the CRC-framed record
journal of ``_journal.py``, as working memory's), or, with ``memory.postgres_url``, rows of kind
``associations`` in the memory database (``pg_journal.py``), so that a node taking the tenant
over finds them. Only the query text and the keys are written; the query embeddings are
recomputed when the journal is opened, so the state follows a change of embedder. Each
association is made durable before the feedback that made it is acknowledged (``sync``: an
fsync of the file, or a commit that waits for the database's WAL flush). The journal is
rewritten compactly on open and when it grows past four times its last snapshot. Why not
records in the memory log: the same reasons as working memory's journal
(``working_journal.py``): it is learned state with its own bound (``capacity``, oldest dropped
first), and compaction of the memory log need not carry it. A forgotten memory is dropped from
every association (``discard``, journaled and flushed before the forget is acknowledged), so a
key written again later does not inherit what the old memory learned.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import anyio
import msgspec
import numpy as np
import numpy.typing as npt
from msgspec import Meta

from ._journal import Journal, JournalKind, Journals, open_journal
from .errors import LogError, UnknownMemoryError
from .log import tenant_log_path
from .ranking import F32, I64, Mask, RecallQuery, with_share

if TYPE_CHECKING:
    from .hybrid import HybridIndex
    from .search_protocol import ChangeFeed
    from .tenant import TenantMemory

__all__ = [
    "ASSOCIATION",
    "CO_USED",
    "AssociationSettings",
    "AssociationStore",
    "AssociationView",
    "FeedbackLearner",
    "association_journal_path",
    "with_association",
]

logger = logging.getLogger("somabrain.memory")

#: The view's name (in weights and in every hit's ``views``).
ASSOCIATION = "association"
#: The ``rel`` of co-use links.
CO_USED = "co_used"

MAGIC = b"SBASJ\x00\x00\x01"

Embed = Callable[[Sequence[str]], Awaitable[npt.NDArray[np.float32]]]


#: ``weight`` and ``neighbours`` per embedder, where the config leaves them unset. MiniLM's
#: question embeddings tell related questions apart better than the hashing embedder's, so
#: fewer neighbours with a smaller lift suffice: on LoCoMo (``benchmarks/locomo.py``, mean over
#: eight splits) MiniLM's adapted gain went from +0.010 to +0.016 with 3 and 0.4 (and a
#: stronger ``prior_pull``, ``adaptation.PRIOR_PULL``), while the hashing embedder's fell from
#: +0.013 to +0.010 with them: each keeps its own.
EMBEDDER_DEFAULTS: dict[str, tuple[float, int]] = {"builtin": (0.5, 5), "minilm": (0.4, 3)}


class AssociationSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Config section ``context.associations``. ``weight`` and ``neighbours`` left unset
    (None) are the embedder's (``EMBEDDER_DEFAULTS``, filled in by ``for_embedder``; the
    hashing embedder's until then)."""

    #: Default weight of the ``association`` view, as a fraction of the sum of the other
    #: views' default weights (then adapted per tenant like the others).
    weight: Annotated[float, Meta(ge=0)] | None = None
    #: Stored queries consulted per recall (the most similar ones).
    neighbours: Annotated[int, Meta(ge=1, le=100)] | None = None
    #: Stored queries less similar than this (cosine) are never consulted.
    min_similarity: Annotated[float, Meta(ge=-1, le=1)] = 0.0
    #: Exponent of the relative similarity ``s_j / s_1`` (larger: the nearest query counts more).
    sharpness: Annotated[float, Meta(ge=0)] = 2.0
    #: Associations kept per tenant; the oldest is dropped first.
    capacity: Annotated[int, Meta(ge=1)] = 4096
    #: Weight added to the co-use link of every pair of memories used in one feedback (0: none).
    co_use_weight: Annotated[float, Meta(ge=0)] = 1.0
    co_use_max_weight: Annotated[float, Meta(gt=0)] = 4.0
    #: Used keys of one feedback that get co-use links (the first ones; pairs grow as n^2).
    co_use_max_keys: Annotated[int, Meta(ge=2, le=64)] = 8

    @property
    def view_weight(self) -> float:
        return EMBEDDER_DEFAULTS["builtin"][0] if self.weight is None else self.weight

    @property
    def neighbour_count(self) -> int:
        return EMBEDDER_DEFAULTS["builtin"][1] if self.neighbours is None else self.neighbours

    def for_embedder(self, embedder: str) -> AssociationSettings:
        """These settings with what is unset taken from ``embedder``'s defaults."""
        weight, neighbours = EMBEDDER_DEFAULTS.get(embedder, EMBEDDER_DEFAULTS["builtin"])
        return msgspec.structs.replace(
            self,
            weight=weight if self.weight is None else self.weight,
            neighbours=neighbours if self.neighbours is None else self.neighbours,
        )


def with_association(weights: dict[str, float], fraction: float) -> dict[str, float]:
    """``weights`` plus the ``association`` view at ``fraction`` of their sum (unless they
    name it already, or ``fraction`` is 0)."""
    return with_share(weights, ASSOCIATION, fraction)


def association_journal_path(data_dir: str | os.PathLike[str], tenant: str) -> Path:
    """The association journal of ``tenant``, beside its memory log."""
    return tenant_log_path(data_dir, tenant).with_suffix(".assoc")


# ------------------------------------------------------------------------------ journal


class Associated(msgspec.Struct, frozen=True, tag=True, array_like=True):
    query: str
    keys: list[str]
    at: float


class Dissociated(msgspec.Struct, frozen=True, tag=True, array_like=True):
    key: str


Record = Associated | Dissociated
KIND: JournalKind[Record] = JournalKind(
    "associations", MAGIC, Record, what="association journal", synchronous=True
)

# ------------------------------------------------------------------------------ store


class AssociationStore:
    """A tenant's associations: a ring of ``capacity`` (query, unit embedding, used keys).

    ``in_memory`` keeps nothing durable; ``open`` replays (and then appends to) a journal.
    Changes are synchronous (``add``, ``discard``); ``sync`` makes them durable."""

    def __init__(self, dim: int, *, capacity: int = 4096) -> None:
        if dim < 1 or capacity < 1:
            raise ValueError("dim and capacity must be >= 1")
        self.dim = dim
        self.capacity = capacity
        #: Where the journal is (a path, or the database and tenant); None: in memory only.
        self.where: str | None = None
        self._vectors = np.zeros((capacity, dim), dtype=np.float32)
        self._queries: list[str] = []
        self._keys: list[tuple[str, ...]] = []
        self._at: list[float] = []
        self._next = 0  # the ring position the next association goes to (once full)
        self._emptied = 0  # entries whose keys were all forgotten
        self._journal: Journal[Record] | None = None
        #: Serialises read-modify-write of co-use link weights (``FeedbackLearner``).
        self.lock = anyio.Lock()
        #: Told every change, in order, when a replica is kept (``search_offload``).
        self.feed: ChangeFeed | None = None

    @classmethod
    def in_memory(cls, dim: int, *, capacity: int = 4096) -> AssociationStore:
        return cls(dim, capacity=capacity)

    @classmethod
    async def open(
        cls,
        where: str | os.PathLike[str] | Journals,
        dim: int,
        embed: Embed,
        *,
        capacity: int = 4096,
    ) -> AssociationStore:
        """A store replayed from its journal (``load``)."""
        store = cls(dim, capacity=capacity)
        await store.load(where, embed)
        return store

    async def load(self, where: str | os.PathLike[str] | Journals, embed: Embed) -> None:
        """Replay the journal (a file at ``where``, created if missing, or ``where``'s) into
        this empty store, embed its queries with ``embed``, rewrite it as a snapshot and
        journal from then on. An unreadable or unwritable journal is logged and the store
        stays in memory only (feedback must not fail because of it)."""
        if self._queries or self.where is not None:
            raise RuntimeError("load() needs an empty store without a journal")
        journal = open_journal(where, KIND, self._snapshot)
        self.where = journal.where
        try:
            records = await journal.read()
        except (OSError, LogError) as exc:
            logger.error("association journal %s unreadable, not durable: %r", self.where, exc)
            return
        entries: list[tuple[str, list[str], float]] = []
        for record in records:
            match record:
                case Associated(query=query, keys=keys, at=at):
                    entries.append((query, list(keys), at))
                case Dissociated(key=key):
                    for _, keys, _ in entries:
                        if key in keys:
                            keys.remove(key)
        # The ring's own order: the last ``capacity`` associations, then those left empty
        # by forgotten keys are dropped (they can lift nothing).
        entries = [e for e in entries[-self.capacity :] if e[1]]
        if entries:
            vectors = await embed([q for q, _, _ in entries])
            for (query, keys, at), vector in zip(entries, vectors, strict=True):
                self._put(query, np.asarray(vector, dtype=np.float32), tuple(keys), at)
        try:
            await journal.start()
        except (OSError, LogError) as exc:
            logger.error("association journal %s unwritable, not durable: %r", self.where, exc)
            return
        self._journal = journal

    def __len__(self) -> int:
        return len(self._queries)

    @property
    def durable(self) -> bool:
        return self._journal is not None and self._journal.durable

    def _ring_start(self) -> int:
        """The ring position of the oldest association."""
        return self._next if len(self._queries) == self.capacity else 0

    def _oldest_first(self) -> list[int]:
        n, start = len(self._queries), self._ring_start()
        return [(start + i) % n for i in range(n)]

    def snapshot(self) -> list[tuple[str, F32, tuple[str, ...], float]]:
        """(query, unit vector, keys, at) of every association, oldest first: ``restore``
        gives an empty store of the same capacity the same associations."""
        return [(self._queries[i], self._vectors[i].copy(), self._keys[i], self._at[i])
                for i in self._oldest_first()]  # fmt: skip

    def entries(self) -> list[tuple[str, tuple[str, ...]]]:
        """(query, keys) of every association, oldest first."""
        return [(self._queries[i], self._keys[i]) for i in self._oldest_first()]

    # --- changes ---------------------------------------------------------------------------

    def _put(
        self, query: str, vector: F32, keys: tuple[str, ...], at: float, unit: bool = False
    ) -> None:
        if not unit:
            norm = float(np.linalg.norm(vector))
            vector = vector / norm if norm > 0.0 else vector
        if len(self._queries) < self.capacity:
            i = len(self._queries)
            self._queries.append(query)
            self._keys.append(keys)
            self._at.append(at)
        else:
            i = self._next
            self._next = (i + 1) % self.capacity
            self._emptied -= not self._keys[i]
            self._queries[i], self._keys[i], self._at[i] = query, keys, at
        self._vectors[i] = vector

    def add(
        self, query: str, vector: npt.ArrayLike, keys: Sequence[str], at: float | None = None
    ) -> None:
        """Associate ``keys`` (the memories a feedback used) with ``query`` and its
        embedding ``vector``; written to the journal at once (``sync`` makes it durable)."""
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.dim:
            raise ValueError(f"vector has {vec.shape[0]} dimensions, the store {self.dim}")
        keys = tuple(dict.fromkeys(keys))
        if not keys or not np.isfinite(vec).all():
            return
        at = time.time() if at is None else at
        self._put(query, vec, keys, at)
        self._append(Associated(query, list(keys), at))
        if self.feed is not None:
            self.feed.associate(query, vec, keys, at)

    def restore(self, snapshot: Sequence[tuple[str, npt.ArrayLike, Sequence[str], float]]) -> None:
        """Fill this empty store with another's ``snapshot`` (a replica, ``search_worker``):
        the same unit vectors, bit for bit, and the entries whose keys were all forgotten too,
        since they still hold their place in the ring (``add`` would skip them, and the
        replica would then keep an entry the original dropped)."""
        if self._queries:
            raise RuntimeError("restore() needs an empty store")
        for query, vector, keys, at in snapshot[-self.capacity :]:
            self._put(query, np.asarray(vector, dtype=np.float32), tuple(keys), at, unit=True)
            self._emptied += not keys

    def discard(self, key: str) -> None:
        """Forget ``key`` in every association (its memory was forgotten)."""
        touched = False
        for i, keys in enumerate(self._keys):
            if key in keys:
                self._keys[i] = tuple(k for k in keys if k != key)
                self._emptied += not self._keys[i]
                touched = True
        if touched:
            self._append(Dissociated(key))
            if self.feed is not None:
                self.feed.dissociate(key)

    # --- reads -----------------------------------------------------------------------------

    def lifts(
        self,
        vector: npt.ArrayLike,
        neighbours: int = 5,
        min_similarity: float = 0.0,
        sharpness: float = 2.0,
    ) -> dict[str, float]:
        """``key -> a(key)`` for a unit query ``vector`` (the module docstring's ``a``)."""
        n = len(self._queries)
        if n == 0 or neighbours < 1:
            return {}
        sims = self._vectors[:n] @ np.asarray(vector, dtype=np.float32)
        if self._emptied:  # entries whose keys were all forgotten are nobody's neighbour
            sims[[i for i, keys in enumerate(self._keys) if not keys]] = -np.inf
        k = min(neighbours, n)
        best = np.argpartition(-sims, k - 1)[:k] if k < n else np.arange(n)
        if k < n:  # equal similarities at the cut: the newest entries, wherever the ring put
            kth = sims[best].min()  # them (a replica's ring starts elsewhere: same answer)
            tied = np.flatnonzero(sims == kth)
            if tied.shape[0] > 1:
                newest = tied[np.argsort(-((tied - self._ring_start()) % n), kind="stable")]
                best = np.concatenate([np.flatnonzero(sims > kth), newest])[:k]
        best = best[np.argsort(-sims[best], kind="stable")]
        floor = max(0.0, min_similarity)
        top = float(sims[best[0]])
        if not top > floor:
            return {}
        out: dict[str, float] = {}
        for j in best.tolist():
            s = float(sims[j])
            if not s > floor:
                break
            lift = (s / top) ** sharpness
            for key in self._keys[j]:
                if lift > out.get(key, 0.0):
                    out[key] = lift
        return out

    # --- the journal -----------------------------------------------------------------------

    def _snapshot(self) -> list[Record]:
        return [
            Associated(self._queries[i], list(self._keys[i]), self._at[i])
            for i in self._oldest_first()
            if self._keys[i]
        ]

    def _append(self, record: Record) -> None:
        """One record to the journal, in the order of the in-memory changes (no await)."""
        if self._journal is not None:
            self._journal.append(record)

    async def flush(self) -> None:
        """What was appended so far survives a kill of the process (``Journal.flush``)."""
        if self._journal is None:
            await anyio.lowlevel.checkpoint()
            return
        await self._journal.flush()

    async def sync(self) -> None:
        """What was appended so far survives a crash of the machine too (``Journal.sync``)."""
        if self._journal is None:
            await anyio.lowlevel.checkpoint()
            return
        await self._journal.sync()

    async def aclose(self) -> None:
        """Flush the journal and stop journaling (later changes stay in memory)."""
        if self._journal is not None:
            await self._journal.aclose()


# ------------------------------------------------------------------------------ the view


class AssociationView:
    """The ``association`` view (module docstring): a ``ScoreView`` over an
    ``AssociationStore``. It asks for the slots it lifts, and scores 0 everywhere else."""

    name = ASSOCIATION

    def __init__(
        self,
        store: AssociationStore,
        *,
        neighbours: int = 5,
        min_similarity: float = 0.0,
        sharpness: float = 2.0,
    ) -> None:
        if neighbours < 1:
            raise ValueError(f"neighbours must be >= 1, got {neighbours}")
        self.store = store
        self.neighbours = neighbours
        self.min_similarity = float(min_similarity)
        self.sharpness = float(sharpness)

    def prepare(self, index: HybridIndex, query: RecallQuery, eligible: Mask) -> I64:
        lifted = self._lifted(index, query, eligible)
        query.scratch[self.name] = lifted
        return np.fromiter(lifted, np.int64, len(lifted))

    def bound(self, index: HybridIndex, query: RecallQuery) -> float:
        return 0.0  # ``prepare`` returned every slot with a non-zero score

    def scores(self, index: HybridIndex, query: RecallQuery, slots: I64) -> F32:
        lifted: dict[int, float] | None = query.scratch.get(self.name)
        if lifted is None:  # not prepared (weight 0): scored for the hits' report only
            lifted = query.scratch[self.name] = self._lifted(index, query, None)
        if not lifted:
            return np.zeros(slots.shape[0], dtype=np.float32)
        get = lifted.get
        return np.fromiter((get(s, 0.0) for s in slots.tolist()), np.float32, slots.shape[0])

    def _lifted(
        self, index: HybridIndex, query: RecallQuery, eligible: Mask | None
    ) -> dict[int, float]:
        """Lifted eligible slot -> score."""
        if not len(self.store) or not query.ranked.shape[0]:
            return {}
        lifts = self.store.lifts(query.vector, self.neighbours, self.min_similarity, self.sharpness)
        slots: list[int] = []
        values: list[float] = []
        for key, lift in lifts.items():
            slot = index.slot_of(key)
            if slot is not None and (eligible is None or eligible[slot]):
                slots.append(slot)
                values.append(lift)
        if not slots:
            return {}
        at = np.asarray(slots, dtype=np.int64)
        rel = self._relevance(query, np.concatenate([query.ranked[:1], at]))
        best = float(rel[0])
        if not best > 0.0:
            return {}
        scores = np.minimum(1.0, np.asarray(values) * rel[1:] / best)
        return {s: float(v) for s, v in zip(slots, scores.tolist(), strict=True) if v > 0.0}

    @staticmethod
    def _relevance(query: RecallQuery, slots: I64) -> npt.NDArray[np.float64]:
        """The semantic + lexical part of the search's score at ``slots`` (unnormalised;
        both views alike when neither weighs anything, as ``ranking`` does)."""
        w_sem = query.weights.get("semantic", 0.0)
        w_lex = query.weights.get("lexical", 0.0)
        if w_sem <= 0.0 and w_lex <= 0.0:
            w_sem = w_lex = 1.0
        rel = np.zeros(slots.shape[0], dtype=np.float64)
        if w_sem > 0.0:
            rel += w_sem * query.views["semantic"][slots]
        if w_lex > 0.0:
            rel += w_lex * query.views["lexical"][slots]
        return rel


# ------------------------------------------------------------------------------ learning


class FeedbackLearner:
    """What a feedback teaches one tenant's memory: salience, associations, co-use links.

    The memory actor runs ``learn`` for every ``Reinforce`` message; the LoCoMo benchmark calls
    it directly, so both measure the same code."""

    def __init__(
        self,
        memory: TenantMemory,
        associations: AssociationStore | None,
        settings: AssociationSettings | None = None,
    ) -> None:
        self.memory = memory
        self.associations = associations
        self.settings = settings or AssociationSettings()
        self._lock = associations.lock if associations is not None else anyio.Lock()

    async def learn(
        self,
        keys: Sequence[str],
        amount: float,
        *,
        query: str | None = None,
        vector: npt.ArrayLike | None = None,
    ) -> dict[str, float]:
        """Reinforce ``keys`` by ``amount`` (durable); on positive feedback also associate the
        used memories with ``query`` (embedded as ``vector``) and link those used together.
        Returns the new salience strength of each reinforced key."""
        reinforced = await self.memory.reinforce(keys, amount)
        if amount <= 0.0 or not reinforced:
            return reinforced
        used = [k for k in dict.fromkeys(keys) if k in reinforced]
        store = self.associations
        if store is not None and query is not None and vector is not None:
            store.add(query, vector, used)
            await store.sync()
        if self.settings.co_use_weight > 0.0 and len(used) > 1:
            await self._link_co_used(used[: self.settings.co_use_max_keys])
        return reinforced

    async def _link_co_used(self, used: Sequence[str]) -> None:
        cfg = self.settings
        async with self._lock:  # no lost increment between concurrent feedbacks
            updates: list[tuple[str, str, float]] = []
            for a, b in itertools.combinations(sorted(used), 2):
                old = next(
                    (ln.weight for ln in self.memory.links_from(a) if ln.to_key == b
                     and ln.rel == CO_USED),
                    0.0,
                )  # fmt: skip
                new = min(cfg.co_use_max_weight, old + cfg.co_use_weight)
                if math.isfinite(new) and new != old:
                    updates.append((a, b, new))
            if updates:  # concurrent appends share the log's group commit
                async with anyio.create_task_group() as tg:
                    for a, b, weight in updates:
                        tg.start_soon(self._link, a, b, weight)

    async def _link(self, a: str, b: str, weight: float) -> None:
        # A memory forgotten since the feedback named it has nothing to link.
        with contextlib.suppress(UnknownMemoryError):
            await self.memory.link(a, b, CO_USED, weight)
