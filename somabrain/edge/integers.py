"""The integers a request body may carry: those msgpack can encode.

JSON numbers have no size limit and msgspec decodes any integer into a Python ``int``, but
every body that is stored or sent on (the memory log, the bus between the edge and the
planners, the search worker) is encoded as msgpack, which holds integers from -2^63 to
2^64 - 1 only. A larger one in a free-form field (``meta``, ``value``, ``filters``,
``metadata``) or in an unbounded ``int`` field would decode, then fail the encoding with an
``OverflowError`` deep in the write path (a 500, and the memory not stored). The edge refuses
it at decoding instead, with a 422 naming the field, before anything is written.

Finding one is cheap: an integer outside the range has at least 19 digits, so a body without
a run of 19 digits (almost every body) is not walked at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = ["INT_MAX", "INT_MIN", "WideInt", "find_wide_int"]

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1

# 2^63 has 19 digits: every integer with fewer fits.
_LONG_DIGIT_RUN = re.compile(rb"\d{19}")


@dataclass(frozen=True, slots=True)
class WideInt:
    """An integer msgpack cannot encode. ``field``: the request field that holds it (a
    free-form field is named as a whole: ``meta``, ``items[2].value``); ``location``: where
    it is inside that field (``meta.n``, ``items[2].value.list[0]``)."""

    field: str
    location: str


def find_wide_int(raw: bytes, body: Any) -> WideInt | None:
    """The first integer of the decoded ``body`` outside [INT_MIN, INT_MAX], if any (``raw``
    is the body's JSON, scanned first so that most bodies are not walked)."""
    if _LONG_DIGIT_RUN.search(raw) is None:
        return None
    return _walk(body, "", "")


def _walk(value: Any, field: str, location: str) -> WideInt | None:
    # Recursive: the edge refuses bodies nested deeper than nesting.MAX_DEPTH before this runs.
    if type(value) is int:
        return None if INT_MIN <= value <= INT_MAX else WideInt(field, location)
    if isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            path = f"{location}.{name}" if location else name
            found = _walk(getattr(value, name), path, path)
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            found = _walk(item, field, f"{location}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _walk(item, field, f"{location}[{i}]")
            if found is not None:
                return found
    return None
