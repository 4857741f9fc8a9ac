"""How deeply a JSON request body nests arrays and objects, and the edge's limit on it.

Free-form fields (``meta``, ``value``, ``filters``, ``metadata``, a policy's ``input``) take
any JSON, and msgspec decodes and encodes nested values recursively, within the interpreter's
recursion limit. Without a limit of our own, a body nested ~1000 deep fails to decode (a
``RecursionError``), and one a little shallower decodes, is stored, and then fails every time
it is encoded inside a larger document (a recall response wraps ``meta`` three levels deeper),
so one memory could break every recall of its tenant. A limit far below the interpreter's keeps
every accepted value encodable wherever it goes.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["MAX_DEPTH", "json_depth", "nests_too_deep"]

#: The deepest nesting of arrays and objects a request body may have (the body's own object
#: is level 1).
MAX_DEPTH = 64

# A JSON string (its escapes included): brackets inside strings do not nest.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_STEP = np.zeros(256, np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON document (0 for a scalar)."""
    structure = _STRING.sub(b"", raw)
    steps = _STEP[np.frombuffer(structure, np.uint8)]
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def nests_too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether a decoded JSON document nests deeper than ``limit``. Counting brackets first
    spares the scan for almost every body: it cannot nest deeper than it has brackets."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    return json_depth(raw) > limit
