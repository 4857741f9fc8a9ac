"""A 1-D numpy array that grows by doubling, with O(1) amortised append.

The indexes keep their per-slot columns and their postings in these so that a query reads a
zero-copy view (``view()``) instead of converting Python lists on every search.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Growable"]


class Growable:
    """Append-only 1-D buffer of a fixed dtype (a compaction builds new ones, ``of``)."""

    __slots__ = ("_buf", "_n")

    def __init__(self, dtype: npt.DTypeLike, capacity: int = 4, fill: Any = 0) -> None:
        self._buf: npt.NDArray[Any] = np.full(max(capacity, 1), fill, dtype=dtype)
        self._n = 0

    @classmethod
    def of(cls, values: npt.NDArray[Any]) -> Growable:
        """A new buffer holding ``values`` (an array it takes over, not a copy)."""
        out = cls.__new__(cls)
        out._buf = values if values.shape[0] else np.empty(4, dtype=values.dtype)
        out._n = values.shape[0]
        return out

    def __len__(self) -> int:
        return self._n

    def _reserve(self, extra: int) -> None:
        need = self._n + extra
        if need > self._buf.shape[0]:
            cap = max(need, 2 * self._buf.shape[0])
            grown = np.empty(cap, dtype=self._buf.dtype)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown

    def append(self, value: Any) -> None:
        self._reserve(1)
        self._buf[self._n] = value
        self._n += 1

    def extend(self, values: npt.ArrayLike) -> None:
        arr = np.asarray(values, dtype=self._buf.dtype)
        self._reserve(arr.shape[0])
        self._buf[self._n : self._n + arr.shape[0]] = arr
        self._n += arr.shape[0]

    def view(self) -> npt.NDArray[Any]:
        """The live prefix; valid until the next append (which may reallocate)."""
        return self._buf[: self._n]
