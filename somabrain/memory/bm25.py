"""Incremental Okapi BM25 over memory contents.

Scoring (Robertson/Sparck Jones, with the non-negative IDF Lucene uses so that a term found in
more than half the corpus never subtracts score)::

    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
    score(d, q) = sum over distinct t in q of
                  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

with k1 = 1.2, b = 0.75, N the number of live documents and avgdl their mean length in tokens
(after stopword removal). Query terms count once each: agents' queries repeat words by accident
more often than for emphasis.

Layout, for speed: one inverted posting list per term, each a pair of growable numpy arrays
(slots, term frequencies). A query gathers each query term's postings and accumulates into a
dense score array with one vectorised expression per term: no Python loop over documents.

Each query term's contribution to every document containing it (idf times the saturated term
frequency) depends only on the index's statistics, so it is cached per term until the next
change to the index: a read-mostly tenant pays one gather-and-add per query term. The cache is
dropped whole on any add, remove or compaction (N and avgdl move with every one), which keeps
it exact, and bounded in terms.

Deletes are tombstones: ``df``, ``N`` and ``avgdl`` are corrected at once (so scores equal those
of an index that never held the document), while the dead postings stay until ``compact``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ._growable import Growable
from ._steps import Steps, finish

__all__ = ["BM25Compacted", "BM25Index"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

#: Terms whose contribution arrays are kept between changes to the index.
_CACHED_TERMS = 8192


class BM25Compacted(NamedTuple):
    """A ``BM25Index``'s postings without dead documents (``BM25Index.compacted``)."""

    remap: I64
    post_slots: list[Growable]
    post_tf: list[Growable]
    doclen: Growable
    doc_terms: list[npt.NDArray[np.int32]]


class BM25Index:
    """Okapi BM25 with incremental add/remove; documents are pre-tokenized term lists."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        if k1 < 0 or not 0.0 <= b <= 1.0:
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1 = float(k1)
        self.b = float(b)
        self._term_ids: dict[str, int] = {}
        self._post_slots: list[Growable] = []
        self._post_tf: list[Growable] = []
        self._df: list[int] = []
        self._doclen = Growable(np.float32, 1024)
        self._alive = Growable(np.bool_, 1024)
        self._doc_terms: list[npt.NDArray[np.int32]] = []
        self._n_alive = 0
        self._total_len = 0.0
        # term id -> (posting slots, contribution of the term to each), until the next change.
        self._contrib: dict[int, tuple[npt.NDArray[np.int32], F32]] = {}

    # --- introspection -------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Slots handed out so far, dead ones included."""
        return len(self._doc_terms)

    @property
    def dead(self) -> int:
        return self.size - self._n_alive

    def __len__(self) -> int:
        return self._n_alive

    @property
    def avgdl(self) -> float:
        return self._total_len / self._n_alive if self._n_alive else 0.0

    @property
    def vocabulary_size(self) -> int:
        return len(self._term_ids)

    def df(self, term: str) -> int:
        """Live documents containing ``term``."""
        tid = self._term_ids.get(term)
        return 0 if tid is None else self._df[tid]

    def idf(self, term: str) -> float:
        df = self.df(term)
        n = self._n_alive
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    # --- mutation ------------------------------------------------------------------------

    def _term_id(self, term: str) -> int:
        tid = self._term_ids.get(term)
        if tid is None:
            tid = len(self._post_slots)
            self._term_ids[term] = tid
            self._post_slots.append(Growable(np.int32))
            self._post_tf.append(Growable(np.float32))
            self._df.append(0)
        return tid

    def add(self, tokens: Sequence[str]) -> int:
        """Index one document; returns its slot."""
        slot = self.size
        counts = Counter(tokens)
        tids = np.empty(len(counts), dtype=np.int32)
        for i, (term, tf) in enumerate(counts.items()):
            tid = self._term_id(term)
            tids[i] = tid
            self._post_slots[tid].append(slot)
            self._post_tf[tid].append(tf)
            self._df[tid] += 1
        self._finish_doc(tids, len(tokens))
        return slot

    def add_batch(self, docs: Iterable[Sequence[str]]) -> I64:
        """Index many documents; postings are appended per term, not per (term, document)."""
        first = self.size
        all_tids: list[int] = []
        all_slots: list[int] = []
        all_tf: list[int] = []
        slot = first
        for tokens in docs:
            counts = Counter(tokens)
            tids = np.fromiter((self._term_id(t) for t in counts), np.int32, len(counts))
            all_tids.extend(tids.tolist())
            all_slots.extend([slot] * len(counts))
            all_tf.extend(counts.values())
            self._finish_doc(tids, len(tokens))
            slot += 1
        if all_tids:
            tid_arr = np.asarray(all_tids, dtype=np.int64)
            order = np.argsort(tid_arr, kind="stable")  # stable: slots stay ascending per term
            tid_sorted = tid_arr[order]
            slots_sorted = np.asarray(all_slots, dtype=np.int32)[order]
            tf_sorted = np.asarray(all_tf, dtype=np.float32)[order]
            bounds = np.flatnonzero(np.diff(tid_sorted)) + 1
            starts = np.concatenate(([0], bounds))
            ends = np.concatenate((bounds, [tid_sorted.shape[0]]))
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                tid = int(tid_sorted[s])
                self._post_slots[tid].extend(slots_sorted[s:e])
                self._post_tf[tid].extend(tf_sorted[s:e])
                self._df[tid] += e - s
        return np.arange(first, slot, dtype=np.int64)

    def _finish_doc(self, tids: npt.NDArray[np.int32], length: int) -> None:
        self._contrib.clear()
        self._doc_terms.append(tids)
        self._doclen.append(length)
        self._alive.append(True)
        self._n_alive += 1
        self._total_len += length

    def remove(self, slot: int) -> bool:
        """Tombstone ``slot``; statistics are corrected now, postings dropped at compaction."""
        if not 0 <= slot < self.size or not self._alive.view()[slot]:
            return False
        self._alive.view()[slot] = False
        self._contrib.clear()
        for tid in self._doc_terms[slot].tolist():
            self._df[tid] -= 1
        self._n_alive -= 1
        self._total_len -= float(self._doclen.view()[slot])
        self._doc_terms[slot] = np.empty(0, dtype=np.int32)
        return True

    def compact(self, remap: I64 | None = None) -> I64:
        """Drop dead postings and renumber slots; returns (or applies) ``remap[old] = new``.

        Pass the vector index's ``remap`` to keep both numbered alike (their live sets agree).
        """
        compaction = self.compacted(remap)
        self.install(compaction)
        return compaction.remap

    def compacted(self, remap: I64 | None = None) -> BM25Compacted:
        """What ``compact`` installs, built aside: reads the index and changes nothing, so it
        may run in another thread while the owner searches (not while it adds or removes)."""
        return finish(self.compacting(remap))

    def compacting(self, remap: I64 | None = None, postings: int = 1 << 62) -> Steps[BM25Compacted]:
        """``compacted`` in steps of about ``postings`` postings (``yield`` between two)."""
        alive = self._alive.view()
        if remap is None:
            remap = np.full(self.size, -1, dtype=np.int64)
            keep = np.flatnonzero(alive)
            remap[keep] = np.arange(keep.shape[0], dtype=np.int64)
        else:
            keep = np.flatnonzero(remap >= 0)
            if not np.array_equal(keep, np.flatnonzero(alive)):
                raise ValueError("remap does not match this index's live documents")
        post_slots: list[Growable] = []
        post_tf: list[Growable] = []
        done = 0
        for slots, tfs in zip(self._post_slots, self._post_tf, strict=True):
            new = remap[slots.view()]
            ok = new >= 0
            post_slots.append(Growable.of(new[ok].astype(np.int32)))
            post_tf.append(Growable.of(tfs.view()[ok]))
            done += len(slots) + 16  # a term costs as much as a few postings
            if done >= postings:
                done = 0
                yield
        doc_terms = [self._doc_terms[i] for i in keep.tolist()]
        yield
        return BM25Compacted(
            remap, post_slots, post_tf, Growable.of(self._doclen.view()[keep]), doc_terms
        )

    def install(self, compaction: BM25Compacted) -> list[Any]:
        """Replace the postings by ``compacted`` ones (slots renumbered by its ``remap``);
        returns the replaced containers (``_steps.dropping``)."""
        replaced: list[Any] = [self._post_slots, self._post_tf, self._doc_terms]
        self._contrib.clear()
        self._post_slots, self._post_tf = compaction.post_slots, compaction.post_tf
        self._doclen = compaction.doclen
        self._alive = Growable.of(np.ones(len(compaction.doc_terms), dtype=np.bool_))
        self._doc_terms = compaction.doc_terms
        return replaced

    # --- scoring -------------------------------------------------------------------------

    def scores(self, query_tokens: Iterable[str]) -> F32:
        """BM25 of the query against every slot (dead slots score 0); fresh writable array."""
        n_slots = self.size
        acc = np.zeros(n_slots, dtype=np.float32)
        if self._n_alive == 0:
            return acc
        matched = False
        for term in dict.fromkeys(query_tokens):
            tid = self._term_ids.get(term)
            if tid is None or self._df[tid] == 0:
                continue
            slots, contribution = self._contrib.get(tid) or self._contribution(tid)
            acc[slots] += contribution
            matched = True
        if matched and self.dead:
            acc[~self._alive.view()] = 0.0
        return acc

    def _contribution(self, tid: int) -> tuple[npt.NDArray[np.int32], F32]:
        """The term's BM25 contribution to each document of its postings (then cached)."""
        k1, b = self.k1, self.b
        n = self._n_alive
        df = self._df[tid]
        idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
        avgdl = self._total_len / n
        slots = self._post_slots[tid].view()
        tf = self._post_tf[tid].view()
        if avgdl > 0:
            norm = self._doclen.view()[slots] * np.float32(k1 * b / avgdl)
            norm += np.float32(k1 * (1.0 - b))
        else:
            norm = np.full(tf.shape, k1 * (1.0 - b), dtype=np.float32)
        contribution: F32 = tf * np.float32(idf * (k1 + 1.0)) / (tf + norm)
        if len(self._contrib) >= _CACHED_TERMS:
            self._contrib.clear()
        self._contrib[tid] = (slots, contribution)
        return slots, contribution
