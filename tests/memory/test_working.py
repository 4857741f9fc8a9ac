"""Working memory: bounded per-session ring buffers, ranked by relevance."""

from __future__ import annotations

import pytest

from somabrain.memory import HashingEmbedder, tokenize
from somabrain.memory.working import WMItem, WorkingMemory

EMB = HashingEmbedder(dim=64)


def item(key: str, text: str, at: float = 0.0) -> WMItem:
    return WMItem(key, text, EMB.embed([text])[0], frozenset(tokenize(text)), at)


def search(wm: WorkingMemory, session: str, query: str, k: int = 5):
    return wm.search(session, EMB.embed([query])[0], tokenize(query), k)


def test_ring_buffer_is_bounded_and_refreshes_keys() -> None:
    wm = WorkingMemory(capacity=3)
    wm.add("s", [item(f"k{i}", f"text {i}") for i in range(5)])
    assert [it.key for it in wm.items("s")] == ["k2", "k3", "k4"]
    wm.add("s", [item("k2", "text 2 again")])
    assert [it.key for it in wm.items("s")] == ["k3", "k4", "k2"]
    assert wm.items("other") == [] and len(wm) == 3


def test_sessions_are_bounded_least_recently_touched_first() -> None:
    wm = WorkingMemory(capacity=2, max_sessions=2)
    wm.add("a", [item("1", "x")])
    wm.add("b", [item("2", "y")])
    wm.add("a", [item("3", "z")])  # touches a
    wm.add("c", [item("4", "w")])  # evicts b
    assert wm.sessions() == ["a", "c"]
    assert wm.statistics().sessions == 2 and wm.clear("a") and not wm.clear("a")


def test_search_is_query_aware_not_wholesale() -> None:
    wm = WorkingMemory(capacity=10)
    wm.add("s", [item("pets", "my dog likes the park"), item("tax", "the tax form is due"),
                 item("food", "we cooked pasta tonight")])  # fmt: skip
    hits = search(wm, "s", "when is the tax form due?", k=2)
    assert hits[0].key == "tax" and len(hits) == 2
    assert set(hits[0].views) == {"semantic", "lexical", "recency"}
    assert hits[0].views["lexical"] == pytest.approx(1.0)
    assert search(wm, "nope", "tax") == [] and search(wm, "s", "tax", k=0) == []


def test_recency_breaks_ties_and_discard_forgets() -> None:
    wm = WorkingMemory(capacity=10)
    wm.add("s", [item("a", "same words"), item("b", "same words")])
    assert [h.key for h in search(wm, "s", "same words")] == ["b", "a"]
    wm.discard("b")
    assert [h.key for h in search(wm, "s", "same words")] == ["a"]


def test_parameters_are_validated() -> None:
    with pytest.raises(ValueError):
        WorkingMemory(capacity=0)
    with pytest.raises(ValueError):
        WorkingMemory(recency_weight=2.0)
    wm = WorkingMemory()
    wm.add("s", [item("a", "x")])
    with pytest.raises(ValueError):
        wm.search("s", [1.0, 0.0], ["x"])
