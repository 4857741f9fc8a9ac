"""Hybrid index: per-view scores, the combination rule, filters and pluggable views."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from somabrain.memory import (
    HashingEmbedder,
    HybridIndex,
    Memory,
    RecallFilter,
    RecallQuery,
    tokenize,
)

EMB = HashingEmbedder(dim=64)


def mem(key: str, content: str, **kw) -> Memory:
    return Memory(key=key, content=content, **kw)


def build(*memories: Memory, **kw) -> HybridIndex:
    index = HybridIndex(EMB.dim, **kw)
    index.add_batch(
        memories, EMB.embed([m.content for m in memories]), [tokenize(m.content) for m in memories]
    )
    return index


def search(index: HybridIndex, query: str, k: int = 10, **kw):
    return index.search(EMB.embed([query])[0], tokenize(query), k, text=query, **kw)


CORPUS = (
    mem("cat", "the cat sat on the mat", tags=("pets", "home"), meta={"kind": "note", "n": 1}),
    mem("dog", "the dog barked at the cat", tags=("pets",), meta={"kind": "log"}),
    mem("tax", "quarterly tax report", namespace="work", session_id="s1", meta={"kind": "note"}),
)


def test_views_and_default_combination() -> None:
    index = build(*CORPUS)
    hits = search(index, "cat")
    assert [h.key for h in hits][:2] == ["cat", "dog"]
    for h in hits:
        assert set(h.views) == {"semantic", "lexical"}
        assert 0.0 <= h.views["semantic"] <= 1.0 and 0.0 <= h.views["lexical"] <= 1.0
        assert h.score == pytest.approx(0.5 * h.views["semantic"] + 0.5 * h.views["lexical"])
    assert max(h.views["lexical"] for h in hits) == pytest.approx(1.0)


def test_weights_are_normalised_and_missing_views_weigh_zero() -> None:
    index = build(*CORPUS)
    hits = search(index, "cat", weights={"lexical": 3.0})
    for h in hits:
        assert h.score == pytest.approx(h.views["lexical"])
        assert "semantic" in h.views  # still reported


@pytest.mark.parametrize(
    "weights",
    [{"graph": 1.0}, {"semantic": -1.0}, {"semantic": 0.0}, {"semantic": math.nan}, {}],
)
def test_bad_weights(weights) -> None:
    with pytest.raises(ValueError):
        search(build(*CORPUS), "cat", weights=weights)


def test_zero_signal_returns_nothing() -> None:
    assert search(build(*CORPUS), "the of and") == []
    assert search(HybridIndex(EMB.dim), "cat") == []
    assert search(build(*CORPUS), "cat", k=0) == []


def test_namespace_and_filters() -> None:
    index = build(*CORPUS)
    assert [h.key for h in search(index, "report", namespace="work")] == ["tax"]
    assert search(index, "cat", namespace="work") == []
    assert search(index, "cat", namespace="nope") == []

    def keys(flt: RecallFilter, q: str = "cat dog tax report") -> set[str]:
        return {h.key for h in search(index, q, filter=flt)}

    assert keys(RecallFilter(tags=("pets",))) == {"cat", "dog"}
    assert keys(RecallFilter(tags=("pets", "home"))) == {"cat"}
    assert keys(RecallFilter(any_tags=("home", "nope"))) == {"cat"}
    assert keys(RecallFilter(meta={"kind": "note"})) == {"cat", "tax"}
    assert keys(RecallFilter(meta={"kind": "note", "n": 1})) == {"cat"}
    assert keys(RecallFilter(meta={"n": 1.0})) == set()  # JSON equality: 1 != 1.0
    assert keys(RecallFilter(meta={"n": True})) == set()
    assert keys(RecallFilter(session_id="s1")) == {"tax"}
    assert keys(RecallFilter(tags=("unknown",))) == set()
    assert keys(RecallFilter(exclude_namespaces=("work",))) == {"cat", "dog"}
    assert keys(RecallFilter(exclude_namespaces=("default", "nope"))) == {"tax"}
    assert keys(RecallFilter(meta={"kind": "note"}, exclude_namespaces=("work",))) == {"cat"}


def test_filter_from_mapping() -> None:
    flt = RecallFilter.from_mapping({"tags": "pets", "kind": "note", "meta": {"n": 1}})
    assert flt == RecallFilter(tags=("pets",), meta={"n": 1, "kind": "note"})
    assert RecallFilter.from_mapping({}).is_empty()


@pytest.mark.parametrize("meta", ["ab", [1], [["a", 1]], 5, True])
def test_filter_from_mapping_refuses_a_meta_that_is_not_an_object(meta: object) -> None:
    """Also beside flat keys, which are merged into ``meta``: the refusal names ``meta``."""
    for filters in ({"meta": meta}, {"meta": meta, "kind": "note"}):
        with pytest.raises(msgspec.ValidationError, match=r"at `\$\.meta`"):
            RecallFilter.from_mapping(filters)


def test_top_k_applies_after_filtering() -> None:
    memories = [
        mem(f"k{i}", f"apple number {i}", tags=("odd",) if i % 2 else ()) for i in range(50)
    ]
    index = build(*memories)
    hits = search(index, "apple", k=5, filter=RecallFilter(tags=("odd",)))
    assert len(hits) == 5 and all(int(h.key[1:]) % 2 for h in hits)


def test_expiry_hides_memories() -> None:
    index = build(mem("a", "apple pie", expires_at=100.0), mem("b", "apple tart"))
    assert {h.key for h in search(index, "apple", now=50.0)} == {"a", "b"}
    assert {h.key for h in search(index, "apple", now=100.0)} == {"b"}


def test_upsert_replaces_and_remove_deletes() -> None:
    index = build(*CORPUS)
    index.add(mem("cat", "a parrot"), EMB.embed(["a parrot"])[0], tokenize("a parrot"))
    assert len(index) == 3 and index.size == 4
    assert "cat" not in {h.key for h in search(index, "mat")}
    assert search(index, "parrot")[0].key == "cat"
    assert index.remove("cat") and not index.remove("cat")
    assert "cat" not in index and len(index) == 2


def test_compaction_keeps_results() -> None:
    memories = [
        mem(f"k{i}", f"word{i % 7} shared text {i}", tags=(f"t{i % 3}",)) for i in range(40)
    ]
    index = build(*memories, compact_min=5, compact_ratio=0.25)
    flt = RecallFilter(tags=("t1",))
    for i in range(0, 40, 2):
        index.remove(f"k{i}")
    assert index.vectors.dead < 20  # compaction ran along the way
    before = search(index, "word3 shared", filter=flt)
    index.compact()
    assert index.size == len(index) == 20
    after = search(index, "word3 shared", filter=flt)
    assert [(h.key, round(h.score, 5)) for h in before] == [
        (h.key, round(h.score, 5)) for h in after
    ]
    assert all(int(h.key[1:]) % 3 == 1 for h in after)


def test_a_compaction_built_aside_changes_nothing_until_installed() -> None:
    memories = [
        mem(f"k{i}", f"word{i % 7} shared text {i}", tags=(f"t{i % 3}",), namespace=f"n{i % 2}")
        for i in range(40)
    ]
    index = build(*memories, compact_min=5, compact_ratio=0.25)
    index.auto_compact = False  # as ``TenantMemory`` has it: compaction is its call
    for i in range(0, 40, 2):
        index.remove(f"k{i}")
    assert index.compaction_due and index.vectors.dead == 20
    flt = RecallFilter(tags=("t1",))
    before = search(index, "word3 shared", filter=flt)
    version = index.version
    compaction = index.compacted()
    assert index.vectors.dead == 20 and index.size == 40 and index.version == version
    assert search(index, "word3 shared", filter=flt) == before  # searched meanwhile
    assert index.install(compaction)
    assert index.size == len(index) == 20 and not index.compaction_due
    after = search(index, "word3 shared", filter=flt)
    assert [(h.key, round(h.score, 5)) for h in before] == [
        (h.key, round(h.score, 5)) for h in after
    ]
    assert [h.key for h in search(index, "shared text", k=40, namespace="n1")] == [
        h.key for h in search(build(*memories[1::2]), "shared text", k=40, namespace="n1")
    ]
    # Built before a change, it would lose that change: refused, and nothing moves.
    stale = index.compacted()
    index.remove("k1")
    assert not index.install(stale)
    assert index.size == 20 and "k1" not in index and index.slot_of("k3") == 1


def test_batch_rejects_duplicate_keys_and_length_mismatch() -> None:
    index = HybridIndex(EMB.dim)
    with pytest.raises(ValueError):
        index.add_batch([mem("a", "x"), mem("a", "y")], EMB.embed(["x", "y"]), [["x"], ["y"]])
    with pytest.raises(ValueError):
        index.add_batch([mem("a", "x")], EMB.embed(["x", "y"]), [["x"]])
    assert len(index) == 0


class ImportanceView:
    """A stand-in for the salience view: reads the per-slot ``importance`` column."""

    name = "salience"

    def prepare(self, index: HybridIndex, query: RecallQuery, eligible: np.ndarray) -> np.ndarray:
        return np.empty(0, dtype=np.int64)

    def bound(self, index: HybridIndex, query: RecallQuery) -> float:
        return index.column_range("importance")[1]

    def scores(self, index: HybridIndex, query: RecallQuery, slots: np.ndarray) -> np.ndarray:
        assert isinstance(query.text, str) and query.vector.shape == (index.dim,)
        return index.column("importance")[slots].astype(np.float32)


def test_pluggable_view() -> None:
    index = build(
        mem("low", "apple", importance=0.1),
        mem("high", "apple", importance=0.9),
        views=[ImportanceView()],
    )
    plain = search(index, "apple")
    assert "salience" in plain[0].views
    hits = search(index, "apple", weights={"semantic": 1, "lexical": 1, "salience": 2})
    assert hits[0].key == "high"
    assert hits[0].views["salience"] == pytest.approx(0.9)
    with pytest.raises(ValueError):
        HybridIndex(8, views=[ImportanceView(), ImportanceView()])
