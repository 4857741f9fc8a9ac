"""``search_readable``: searches again around the namespaces the policies refuse."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import pytest

from somabrain.governance.reads import MAX_SEARCHES, excluding, search_readable
from somabrain.memory.types import RecallFilter

pytestmark = pytest.mark.anyio

#: (key, namespace), best first.
RANKED = [("a", "system"), ("b", "_ops"), ("c", "default"), ("d", "system"), ("e", "notes")]

Hits = list[tuple[str, str]]
Search = Callable[[RecallFilter | None], Awaitable[Hits]]


def searcher(top_k: int) -> tuple[list[RecallFilter | None], Search]:
    """A search of ``RANKED`` that honours the excluded namespaces, and the filters it got."""
    seen: list[RecallFilter | None] = []

    async def search(filters: RecallFilter | None) -> Hits:
        seen.append(filters)
        excluded = set(filters.exclude_namespaces) if filters is not None else set()
        return [hit for hit in RANKED if hit[1] not in excluded][:top_k]

    return seen, search


def refusing(*closed: str) -> Callable[[Iterable[str]], frozenset[str]]:
    def refused(namespaces: Iterable[str]) -> frozenset[str]:
        return frozenset(ns for ns in namespaces if ns in closed)

    return refused


def namespaces(hits: Hits) -> Iterable[str]:
    return (ns for _, ns in hits)


async def test_nothing_refused_is_one_search() -> None:
    seen, search = searcher(3)
    hits, refused = await search_readable(search, None, namespaces, refusing())
    assert hits == RANKED[:3] and refused == frozenset() and seen == [None]


async def test_refused_namespaces_are_searched_around_keeping_top_k_and_the_filters() -> None:
    seen, search = searcher(2)
    flt = RecallFilter(tags=("t",))
    hits, refused = await search_readable(search, flt, namespaces, refusing("system", "_ops"))
    assert [key for key, _ in hits] == ["c", "e"]
    assert refused == {"system", "_ops"}
    assert seen == [flt, excluding(flt, ["_ops", "system"])]  # both found in the first results
    assert seen[-1] is not None and seen[-1].tags == ("t",)


async def test_searches_are_bounded_and_the_last_results_name_what_is_still_refused() -> None:
    seen, search = searcher(1)  # one namespace found per search
    closed = refusing("system", "_ops", "default", "notes")
    hits, refused = await search_readable(search, None, namespaces, closed)
    assert len(seen) == MAX_SEARCHES
    assert {ns for _, ns in hits} <= refused  # the caller leaves them out
    assert refused == {"system", "_ops", "default", "notes"}
