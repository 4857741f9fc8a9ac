"""The per-tenant recall index: vectors, BM25 and per-slot columns, keyed by memory key.

Views (each gives a slot a score in [0, 1]; ``ranking`` combines them and documents the rule):

* ``semantic``: cosine of the query embedding with the memory embedding, clipped at 0
  (a negative cosine is "unrelated", not "anti-relevant");
* ``lexical``: BM25 of the query tokens over the content, divided by the highest BM25 among
  the eligible memories of this query (so the best lexical match scores 1; all 0 when no query
  term occurs);
* any extra ``ScoreView`` given at construction (the graph, recency and salience views of
  ``views.py`` plug in here; they can read the per-slot columns ``importance``,
  ``event_time``, ``created_at``, ``salience`` and the form features (``form.COLUMNS``),
  their ranges
  (``column_range``), the link graph ``index.graph``, and the built-in views' scores).

The weights are an argument of every search, so per-tenant adaptive weights need no change here.

Eligibility (namespace, expiry, ``RecallFilter``) is a boolean mask built before ranking, from
per-slot columns and attribute posting lists, so ``top_k`` is honoured after filtering.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

import msgspec
import numpy as np
import numpy.typing as npt

from ._growable import Growable
from ._steps import Steps, finish
from .bm25 import BM25Compacted, BM25Index
from .form import COLUMNS as FORM_COLUMNS
from .form import form_features
from .graph import LinkGraph
from .ranking import BUILTIN_VIEWS, IndexHit, RecallQuery, ScoreView, rank
from .search_protocol import ChangeFeed
from .types import Memory, RecallFilter
from .vector_index import Compacted, VectorIndex

__all__ = [
    "BUILTIN_VIEWS",
    "DEFAULT_WEIGHTS",
    "HybridIndex",
    "IndexCompaction",
    "IndexHit",
    "RecallQuery",
    "ScoreView",
    "validate_weights",
]

F32 = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]

# Tuned on LoCoMo turns with the built-in embedder (see benchmarks/recall.py --quality):
# BM25 is the sharper signal for hashing embeddings, which mostly add morphology and recall.
DEFAULT_WEIGHTS: Mapping[str, float] = {"semantic": 0.5, "lexical": 0.5}

_META_ENCODER = msgspec.json.Encoder(order="sorted")


def validate_weights(weights: Mapping[str, float], views: Sequence[str]) -> dict[str, float]:
    """Check that weights name known views, are finite and >= 0, and are not all zero."""
    out: dict[str, float] = {}
    for name, w in weights.items():
        if name not in views:
            raise ValueError(f"unknown view {name!r} in weights (known: {', '.join(views)})")
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weight of view {name!r} must be finite and >= 0, got {w}")
        out[name] = w
    if sum(out.values()) <= 0:
        raise ValueError("at least one view weight must be positive")
    return out


def _attr_key(field: str, value: Any) -> tuple[str, bytes] | None:
    try:
        return (field, _META_ENCODER.encode(value))
    except (TypeError, msgspec.EncodeError):
        return None


def _attributes(memory: Memory) -> list[tuple[str, bytes]]:
    """The filterable (field, encoded value) pairs of a memory."""
    attrs: list[tuple[str, bytes]] = [("t", t.encode("utf-8")) for t in memory.tags]
    if memory.session_id is not None:
        attrs.append(("s", memory.session_id.encode("utf-8")))
    for k, v in memory.meta.items():
        key = _attr_key("m:" + k, v)
        if key is not None:
            attrs.append(key)
    return attrs


class IndexCompaction(NamedTuple):
    """A ``HybridIndex`` without its tombstones (``HybridIndex.compacted``), built from the
    index at ``version``."""

    version: int
    vectors: Compacted
    lexical: BM25Compacted
    keys: list[str | None]
    slots: dict[str, int]
    ns: Growable
    expires: Growable
    cols: dict[str, Growable]
    attrs: dict[tuple[str, bytes], Growable]


class HybridIndex:
    """The per-tenant recall index: vectors + BM25 + filter columns, keyed by memory key."""

    def __init__(
        self,
        dim: int,
        *,
        views: Sequence[ScoreView] = (),
        k1: float = 1.2,
        b: float = 0.75,
        compact_ratio: float = 0.25,
        compact_min: int = 1024,
    ) -> None:
        self.vectors = VectorIndex(dim)
        self.lexical = BM25Index(k1, b)
        self._views = tuple(views)
        self.view_names: tuple[str, ...] = BUILTIN_VIEWS + tuple(v.name for v in self._views)
        if len(set(self.view_names)) != len(self.view_names):
            raise ValueError(f"duplicate view names: {self.view_names}")
        self._compact_ratio = compact_ratio
        self._compact_min = compact_min
        #: Compact as soon as enough slots are dead, in the call that killed them; an owner
        #: that compacts off the event loop itself turns this off (``TenantMemory``).
        self.auto_compact = True
        #: The tenant's link graph, for the graph view (``TenantMemory`` sets it).
        self.graph: LinkGraph | None = None
        self._keys: list[str | None] = []
        self._slots: dict[str, int] = {}
        self._ns_codes: dict[str, int] = {}
        self._ns = Growable(np.int32, 1024)
        self._expires = Growable(np.float64, 1024)
        self._n_expiring = 0
        self._cols: dict[str, Growable] = {
            "importance": Growable(np.float32, 1024),
            "created_at": Growable(np.float64, 1024),
            # ``occurred_at`` when known, else ``created_at``: the time recency measures from.
            "event_time": Growable(np.float64, 1024),
            # Salience strength from feedback (``TenantMemory.reinforce``); 0 until reinforced.
            "salience": Growable(np.float32, 1024),
            # The features of each memory's form (``form.FEATURES``), for the form view.
            **{name: Growable(np.float32, 1024) for name in FORM_COLUMNS},
        }
        self._attrs: dict[tuple[str, bytes], Growable] = {}
        # Bumped by every change to the columns; ``column_range`` caches per version.
        self._version = 0
        self._ranges: dict[str, tuple[int, float, float]] = {}
        #: Per-view state kept between searches, by view name (caches tagged with ``version``).
        self.view_state: dict[str, Any] = {}
        self._weights_seen: dict[tuple[tuple[str, float], ...], dict[str, float]] = {}
        #: Told every change, in order, when a replica of this index is kept (``search_offload``).
        self.feed: ChangeFeed | None = None

    # --- introspection -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    @property
    def size(self) -> int:
        """Slots in use, dead ones included (the length of every score array)."""
        return len(self._keys)

    @property
    def dim(self) -> int:
        return self.vectors.dim

    def slot_of(self, key: str) -> int | None:
        return self._slots.get(key)

    def key_of(self, slot: int) -> str | None:
        return self._keys[slot]

    def column(self, name: str) -> npt.NDArray[Any]:
        """Per-slot column (``importance``, ``created_at``, ``event_time`` (``occurred_at``
        when known, else ``created_at``), ``salience``)."""
        return self._cols[name].view()

    @property
    def version(self) -> int:
        """Changes whenever a memory is added or removed, a column changes, or slots move."""
        return self._version

    def column_range(self, name: str) -> tuple[float, float]:
        """(min, max) of a column over every slot, dead ones included, so bounds drawn from it
        hold for the live ones (NaN ignored; (inf, -inf) when empty). Cached until the next
        change: views use it for the score bounds of ``ranking``."""
        cached = self._ranges.get(name)
        if cached is not None and cached[0] == self._version:
            return cached[1], cached[2]
        col = self._cols[name].view()
        lo = float(np.nanmin(col, initial=math.inf))
        hi = float(np.nanmax(col, initial=-math.inf))
        self._ranges[name] = (self._version, lo, hi)
        return lo, hi

    def keys_of(self, slots: npt.NDArray[np.int64]) -> list[str]:
        """The keys of live ``slots``."""
        keys = self._keys
        return [key for slot in slots.tolist() if (key := keys[slot]) is not None]

    def set_salience(self, key: str, strength: float) -> bool:
        """Set the salience strength of ``key`` in place; False if the key is not indexed."""
        slot = self._slots.get(key)
        if slot is None:
            return False
        self._cols["salience"].view()[slot] = strength
        self._version += 1
        if self.feed is not None:
            self.feed.set_salience(key, strength)
        return True

    def vector_of(self, key: str) -> F32:
        return self.vectors.vector(self._slots[key])

    # --- mutation ------------------------------------------------------------------------

    def add(self, memory: Memory, vector: npt.ArrayLike, tokens: Sequence[str]) -> None:
        """Index ``memory`` (replacing an older version under the same key)."""
        self.add_batch([memory], np.asarray(vector, dtype=np.float32)[None, :], [tokens])

    def add_batch(
        self,
        memories: Sequence[Memory],
        vectors: npt.ArrayLike,
        tokens: Sequence[Sequence[str]],
    ) -> None:
        """Index many memories at once; keys must be distinct within the batch."""
        if len({m.key for m in memories}) != len(memories):
            raise ValueError("duplicate keys in one batch")
        if not memories:
            return
        arr = self.vectors.normalise(vectors)
        if arr.shape[0] != len(memories) or len(tokens) != len(memories):
            raise ValueError("memories, vectors and tokens must have the same length")
        for m in memories:
            if m.key in self._slots:
                self._remove_slot(self._slots.pop(m.key))
        slots = self.vectors.add(arr)
        lex_slots = self.lexical.add_batch(tokens)
        assert slots[0] == lex_slots[0] == len(self._keys), "index slot numbering diverged"
        for slot, m, toks in zip(slots.tolist(), memories, tokens, strict=True):
            self._keys.append(m.key)
            self._slots[m.key] = slot
            code = self._ns_codes.setdefault(m.namespace, len(self._ns_codes))
            self._ns.append(code)
            if m.expires_at is None:
                self._expires.append(math.inf)
            else:
                self._expires.append(m.expires_at)
                self._n_expiring += 1
            self._cols["importance"].append(m.importance)
            self._cols["created_at"].append(m.created_at)
            self._cols["event_time"].append(
                m.created_at if m.occurred_at is None else m.occurred_at
            )
            self._cols["salience"].append(0.0)
            for name, value in zip(FORM_COLUMNS, form_features(m.content, len(toks)), strict=True):
                self._cols[name].append(value)
            for attr in _attributes(m):
                postings = self._attrs.get(attr)
                if postings is None:
                    postings = self._attrs[attr] = Growable(np.int32)
                postings.append(slot)
        self._version += 1
        if self.feed is not None:
            self.feed.add(memories, arr)
        self._maybe_compact()

    def remove(self, key: str) -> bool:
        slot = self._slots.pop(key, None)
        if slot is None:
            return False
        self._remove_slot(slot)
        if self.feed is not None:
            self.feed.remove(key)
        self._maybe_compact()
        return True

    def _remove_slot(self, slot: int) -> None:
        self.vectors.remove(slot)
        self.lexical.remove(slot)
        self._keys[slot] = None
        self._version += 1
        if self._expires.view()[slot] != math.inf:
            self._n_expiring -= 1
            self._expires.view()[slot] = math.inf

    @property
    def compaction_due(self) -> bool:
        """Enough tombstones to squeeze out (``compact_ratio`` of the slots, ``compact_min``
        at least)."""
        dead = self.vectors.dead
        return dead >= self._compact_min and dead > self._compact_ratio * self.size

    def _maybe_compact(self) -> None:
        if self.auto_compact and self.compaction_due:
            self.compact()

    def compact(self) -> None:
        """Squeeze tombstoned slots out of every structure (slot numbers change)."""
        self.install(self.compacted())

    def compacted(self) -> IndexCompaction:
        """Every structure without its tombstones, built aside for ``install``. It reads the
        index and changes nothing, so an owner that must not pause for it (0.3 s to over 1 s
        at 50k memories of 384 dimensions here, with the vocabulary) runs it in a worker
        thread and goes on searching meanwhile, but makes no change until it is installed
        (``TenantMemory``)."""
        return finish(self.compacting())

    def compacting(self, rows: int = 1 << 30, postings: int = 1 << 62) -> Steps[IndexCompaction]:
        """``compacted`` in steps (``yield`` between two): ``rows`` dimensions of the vector
        matrix, or about ``postings`` postings (of terms, then of filter attributes), or the
        per-slot columns, in each. For an owner with one thread (the search worker) that
        searches between steps."""
        version = self._version
        vectors = yield from self.vectors.compacting(rows)
        remap = vectors.remap
        lexical = yield from self.lexical.compacting(remap, postings)
        keep = np.flatnonzero(remap >= 0)
        attrs: dict[tuple[str, bytes], Growable] = {}
        done = 0
        for attr, postings_of in self._attrs.items():
            new = remap[postings_of.view()]
            new = new[new >= 0]
            if new.shape[0]:
                attrs[attr] = Growable.of(new.astype(np.int32))
            done += len(postings_of) + 16
            if done >= postings:
                done = 0
                yield
        keys = [self._keys[i] for i in keep.tolist()]
        yield
        slots = {k: i for i, k in enumerate(keys) if k is not None}
        yield
        return IndexCompaction(
            version=version,
            vectors=vectors,
            lexical=lexical,
            keys=keys,
            slots=slots,
            ns=Growable.of(self._ns.view()[keep]),
            expires=Growable.of(self._expires.view()[keep]),
            cols={name: Growable.of(col.view()[keep]) for name, col in self._cols.items()},
            attrs=attrs,
        )

    def install(self, compaction: IndexCompaction) -> list[Any] | None:
        """Put a ``compacted`` index in place. Returns the replaced containers, for the
        owner to let go of in steps (``_steps.dropping``: freeing them is ~50 ms at 100k
        memories); None, and nothing changes, when the index changed since the compaction
        was built (its changes would be lost)."""
        if compaction.version != self._version:
            return None
        self.vectors.install(compaction.vectors)
        replaced = self.lexical.install(compaction.lexical)
        replaced += [self._keys, self._slots, self._attrs]
        self._keys, self._slots = compaction.keys, compaction.slots
        self._ns, self._expires = compaction.ns, compaction.expires
        self._cols, self._attrs = compaction.cols, compaction.attrs
        self._version += 1
        return replaced

    # --- search --------------------------------------------------------------------------

    def _postings_mask(self, attr: tuple[str, bytes] | None, n: int) -> Mask:
        mask = np.zeros(n, dtype=np.bool_)
        postings = self._attrs.get(attr) if attr is not None else None
        if postings is not None:
            mask[postings.view()] = True
        return mask

    def eligible(self, namespace: str | None, flt: RecallFilter | None, now: float) -> Mask:
        """The boolean mask of live memories that pass namespace, expiry and ``flt``
        (read-only: without a restriction it is the live mask itself, not a copy)."""
        n = self.size
        unrestricted = flt is None or flt.is_empty()
        if namespace is None and not self._n_expiring and unrestricted:
            return self.vectors.alive
        mask = self.vectors.alive.copy()
        if namespace is not None:
            code = self._ns_codes.get(namespace)
            if code is None:
                return np.zeros(n, dtype=np.bool_)
            mask &= self._ns.view() == code
        if self._n_expiring:
            mask &= self._expires.view() > now
        if flt is not None and not unrestricted:
            for tag in flt.tags:
                mask &= self._postings_mask(("t", tag.encode("utf-8")), n)
            if flt.any_tags:
                any_mask = np.zeros(n, dtype=np.bool_)
                for tag in flt.any_tags:
                    any_mask |= self._postings_mask(("t", tag.encode("utf-8")), n)
                mask &= any_mask
            if flt.session_id is not None:
                mask &= self._postings_mask(("s", flt.session_id.encode("utf-8")), n)
            for k, v in flt.meta.items():
                mask &= self._postings_mask(_attr_key("m:" + k, v), n)
            for excluded in flt.exclude_namespaces:
                code = self._ns_codes.get(excluded)
                if code is not None:
                    mask &= self._ns.view() != code
        return mask

    def _validated_weights(self, weights: Mapping[str, float]) -> dict[str, float]:
        """``validate_weights``, remembered: a tenant searches with a handful of weightings
        (its adapted weights change only on feedback), so most searches skip the checks."""
        key = tuple(weights.items())
        valid = self._weights_seen.get(key)
        if valid is None:
            valid = validate_weights(weights, self.view_names)
            if len(self._weights_seen) >= 64:
                self._weights_seen.clear()
            self._weights_seen[key] = valid
        return valid

    def search(
        self,
        vector: npt.ArrayLike,
        tokens: Sequence[str],
        top_k: int = 10,
        *,
        text: str = "",
        namespace: str | None = None,
        filter: RecallFilter | None = None,
        weights: Mapping[str, float] | None = None,
        now: float = 0.0,
        at: float | None = None,
        unit: bool = False,
        form: Mapping[str, float] | None = None,
    ) -> list[IndexHit]:
        """The ``top_k`` eligible memories by combined score, best first (see ``ranking``).

        ``now`` decides expiry; ``at`` is the time the query is about (default ``now``).
        ``unit``: ``vector`` is already a float32 unit vector of the index's dimension (an
        embedder's output), so it is used as given instead of validated and normalised.
        ``form``: the tenant's learned form model (``form.FormView``), if any."""
        w = self._validated_weights(DEFAULT_WEIGHTS if weights is None else weights)
        if top_k <= 0 or not self._slots:
            return []
        mask = self.eligible(namespace, filter, now)
        if not mask.any():
            return []
        return rank(
            self,
            self._views,
            mask,
            cast(F32, vector) if unit else self.vectors.normalise(vector)[0],
            tokens,
            top_k,
            text=text,
            namespace=namespace,
            flt=filter,
            weights=w,
            now=now,
            at=now if at is None else at,
            form=form or {},
        )
