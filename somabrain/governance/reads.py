"""Memories leave the node only from namespaces their reader may read.

A search that names no namespace covers all of the tenant's, reserved ones (``system``, ``_``)
included, and a memory is fetched, linked or forgotten by its key alone: the namespace rules
that govern a remember must govern these too, or a token without the ``admin`` scope reads and
deletes what only an admin may write. The policies decide each namespace of a search's results
as the request made in it (``governance.http.refused_namespaces``, decisions cached by the
engine). When one is refused, the search runs again without it
(``RecallFilter.exclude_namespaces``), so the reader still gets ``top_k`` results when there are
that many it may read, rather than fewer; in the common case (nothing refused) this costs a
cached decision per namespace of the results, and no second search.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import msgspec

from ..memory.types import RecallFilter

__all__ = ["MAX_SEARCHES", "search_readable"]

#: Searches of one request at most: each excludes at least one more namespace, and what is
#: still refused after the last is left out of its results by the caller.
MAX_SEARCHES = 4

Result = TypeVar("Result")


def excluding(filters: RecallFilter | None, namespaces: Iterable[str]) -> RecallFilter:
    """``filters`` that also exclude ``namespaces``."""
    base = filters if filters is not None else RecallFilter()
    excluded = tuple(sorted({*base.exclude_namespaces, *namespaces}))
    return msgspec.structs.replace(base, exclude_namespaces=excluded)


async def search_readable(
    search: Callable[[RecallFilter | None], Awaitable[Result]],
    filters: RecallFilter | None,
    namespaces_of: Callable[[Result], Iterable[str]],
    refused: Callable[[Iterable[str]], frozenset[str]],
) -> tuple[Result, frozenset[str]]:
    """``search(filters)``, again without the namespaces ``refused`` finds in its results
    (``namespaces_of``) until none is, at most ``MAX_SEARCHES`` times. Returns the last
    results and every namespace refused: the caller leaves out results still in one."""
    excluded: frozenset[str] = frozenset()
    for _ in range(MAX_SEARCHES - 1):
        result = await search(filters)
        found = refused(namespaces_of(result))
        if not found:
            return result, excluded
        excluded |= found
        filters = excluding(filters, excluded)
    result = await search(filters)
    return result, excluded | refused(namespaces_of(result))
