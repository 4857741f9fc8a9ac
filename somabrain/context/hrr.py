"""Holographic reduced representations: bind, superpose, unbind, clean up.

Plate's HRR with circular convolution computed by FFT (O(d log d) instead of O(d^2)):

    bind(a, b)   = irfft(rfft(a) * rfft(b))          circular convolution  a (*) b
    unbind(c, a) = irfft(rfft(c) * conj(rfft(a)))    circular correlation: a's approximate inverse

A context bundle's ``residual_vector`` is ``normalise(sum_i bind(key_i, v_i))`` over the selected
memories, where ``v_i`` is the memory's (unit) embedding and ``key_i = key_vector(memory key)``.
Unbinding it with ``key_i`` gives ``v_i`` plus crosstalk from the other terms; *cleanup* (the
nearest memory vector by cosine among the tenant's memories) turns that noisy vector back into
the memory.

Why unitary keys: ``key_vector`` draws a vector whose every Fourier coefficient has magnitude 1
(random phases). For such keys correlation is the exact inverse of convolution
(``unbind(bind(k, v), k) == v`` up to rounding), binding preserves norms and bound terms are
nearly orthogonal, so the only noise left is the crosstalk of the other memories: about
``sqrt((n - 1) / d)`` per component for ``n`` memories in ``d`` dimensions. With 20 memories in
256 dimensions the right memory's cosine is ~``1 / sqrt(n)`` = 0.22 against ~0.06 for a random
one, which is why cleanup recovers it.

Keys are derived from the memory key (BLAKE2b-seeded phases from splitmix64, computed for all
of a bundle's keys in one vectorised pass), so anyone holding the residual vector and a key can
recover the memory without the bundle; the same key always gives the same vector, on every
platform (integer arithmetic only, up to the table of unit complex numbers the phases index).

Why a higher HRR dimension than the embeddings': crosstalk falls with the dimension. Measured
on the 2,760 LoCoMo turns embedded by the built-in embedder (256 dims), cleanup found the right
turn for 46% of 20 superposed memories at d = 256, 86% at 512 and 100% at 1024 (10 memories:
91%, 100%, 100%). So embeddings are mapped to the HRR dimension (1024 by default) by
``Projection``: zero-padding, an exact isometry that costs nothing. Binding with a unitary key
spreads each term's energy over all ``d`` dimensions, so the crosstalk that lands in the
embedding's own coordinates is only ``d_emb / d`` of it: the same gain as a Gaussian random
projection (measured alike: 100% for 20 memories), without a 256 x 1024 matrix product per
bundle. Cleanup keeps the first ``d_emb`` coordinates of the unbound vector (the transpose) and
compares in the embedding space. Only an embedding larger than the HRR dimension takes a seeded
Gaussian projection (Johnson-Lindenstrauss).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

__all__ = [
    "Projection",
    "bind",
    "cleanup",
    "key_vector",
    "normalise",
    "recover",
    "superpose",
    "unbind",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def _seed(text: str, salt: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=salt.encode()[:16])
    return int.from_bytes(digest.digest(), "little")


#: splitmix64's constants (Steele, Lea, Flood 2014): the increment (the golden ratio) and the
#: two multipliers of its output mix.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
#: Key spectra kept (1024 dims: 8 KB each, so at most ~135 MB). A miss costs ~10 us per key
#: in a batch of 10 here, against ~90 us for a seeded numpy generator per key.
SPECTRUM_CACHE_SIZE = 16_384
_spectra: OrderedDict[tuple[str, int], npt.NDArray[np.complex128]] = OrderedDict()
_spectra_lock = threading.Lock()


#: Phases are multiples of 2 pi / 2**14 (a table lookup: 2**14 angles are as good as
#: continuous ones for HRR, and a sin and cos per coefficient cost 30x more).
_PHASE_BITS = 14


@lru_cache(maxsize=1)
def _unit_circle() -> npt.NDArray[np.complex128]:
    table: npt.NDArray[np.complex128] = np.exp(
        2j * np.pi * np.arange(2**_PHASE_BITS) / 2**_PHASE_BITS
    )
    return table


def _splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's output function, elementwise (uint64 arithmetic wraps, as it must)."""
    z = (x ^ (x >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _compute_spectra(keys: Sequence[str], dim: int) -> npt.NDArray[np.complex128]:
    """The unitary spectra of ``keys``, one row each, all at once: the phases of key ``k`` are
    the top bits of the splitmix64 stream seeded by BLAKE2b(k); DC and Nyquist terms take a
    sign from its lowest bit (Hermitian symmetry: they must be real)."""
    n = dim // 2 + 1
    seeds = np.array([_seed(k, "soma-hrr-key") for k in keys], dtype=np.uint64)
    steps = np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN
    bits = _splitmix64(seeds[:, None] + steps[None, :])
    spectra: npt.NDArray[np.complex128] = _unit_circle()[bits >> np.uint64(64 - _PHASE_BITS)]
    sign = np.where(bits & np.uint64(1), 1.0, -1.0)
    spectra[:, 0] = sign[:, 0]
    if dim % 2 == 0:
        spectra[:, -1] = sign[:, -1]
    return spectra


def key_spectra(keys: Sequence[str], dim: int) -> npt.NDArray[np.complex128]:
    """``rfft(key_vector(k, dim))`` for every key, one row each (cached, misses batched)."""
    out = np.empty((len(keys), dim // 2 + 1), dtype=np.complex128)
    missing: list[int] = []
    with _spectra_lock:
        for i, key in enumerate(keys):
            found = _spectra.get((key, dim))
            if found is None:
                missing.append(i)
            else:
                _spectra.move_to_end((key, dim))
                out[i] = found
    if missing:
        computed = _compute_spectra([keys[i] for i in missing], dim)
        out[missing] = computed
        with _spectra_lock:
            for i, row in zip(missing, computed, strict=True):
                own = row.copy()  # a view would keep the whole batch alive while cached
                own.flags.writeable = False
                _spectra[(keys[i], dim)] = own
            while len(_spectra) > SPECTRUM_CACHE_SIZE:
                _spectra.popitem(last=False)
    return out


def key_vector(key: str, dim: int) -> F64:
    """The unitary role vector of ``key`` (norm 1, every Fourier magnitude 1). Deterministic."""
    if dim < 2:
        raise ValueError(f"HRR dimension must be >= 2, got {dim}")
    return np.fft.irfft(key_spectra([key], dim)[0], n=dim)


def normalise(v: npt.ArrayLike) -> F64:
    arr = np.asarray(v, dtype=np.float64)
    norm = float(np.linalg.norm(arr))
    return arr / norm if norm > 0 else arr


def bind(a: npt.ArrayLike, b: npt.ArrayLike) -> F64:
    """Circular convolution of two vectors of one dimension."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"bind needs two vectors of one shape, got {a.shape} and {b.shape}")
    return np.fft.irfft(np.fft.rfft(a) * np.fft.rfft(b), n=a.shape[0])


def unbind(c: npt.ArrayLike, a: npt.ArrayLike) -> F64:
    """Circular correlation: recovers ``b`` from ``bind(a, b)`` (exactly for a unitary ``a``)."""
    c = np.asarray(c, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    if a.shape != c.shape or a.ndim != 1:
        raise ValueError(f"unbind needs two vectors of one shape, got {c.shape} and {a.shape}")
    return np.fft.irfft(np.fft.rfft(c) * np.conj(np.fft.rfft(a)), n=a.shape[0])


def superpose(keys: Sequence[str], vectors: npt.ArrayLike) -> F64:
    """``normalise(sum_i bind(key_vector(keys[i]), vectors[i]))``: one FFT per row, batched.

    An empty selection gives the zero vector of the vectors' dimension."""
    arr = np.asarray(vectors, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != len(keys):
        raise ValueError(f"need one vector per key, got {arr.shape} for {len(keys)} keys")
    dim = arr.shape[1]
    if not keys:
        return np.zeros(dim)
    spectra = key_spectra(keys, dim)
    total = (np.fft.rfft(arr, axis=1) * spectra).sum(axis=0)
    return normalise(np.fft.irfft(total, n=dim))


def cleanup(noisy: npt.ArrayLike, candidates: npt.ArrayLike) -> tuple[int, float]:
    """The row of ``candidates`` most similar (cosine) to ``noisy``, and that cosine."""
    cand = np.asarray(candidates, dtype=np.float64)
    if cand.ndim != 2 or cand.shape[0] == 0:
        raise ValueError("cleanup needs a non-empty (n, dim) matrix of candidates")
    norms = np.linalg.norm(cand, axis=1)
    sims = cand @ normalise(noisy) / np.where(norms > 0, norms, 1.0)
    best = int(np.argmax(sims))
    return best, float(sims[best])


class Projection:
    """From ``src`` to ``dst`` dimensions: the identity when equal, zero-padding when ``src`` is
    smaller, else a fixed Gaussian projection (seeded: identical in every process). Rows are
    re-normalised after mapping."""

    def __init__(self, src: int, dst: int, seed: str = "soma-hrr-projection") -> None:
        if src < 1 or dst < 2:
            raise ValueError(f"bad projection {src} -> {dst}")
        self.src = src
        self.dst = dst
        self._matrix: F64 | None = None
        if src > dst:
            rng = np.random.default_rng(_seed(f"{src}x{dst}", seed))
            self._matrix = rng.standard_normal((src, dst)) / np.sqrt(dst)

    @property
    def identity(self) -> bool:
        return self.src == self.dst

    def back(self, vectors: npt.ArrayLike) -> F64:
        """Map HRR-space vectors back to the source space (the transpose, not an inverse: it
        keeps the component that lies in the projection's range, which is what cosine
        against source vectors measures)."""
        arr = np.asarray(vectors, dtype=np.float64)
        if self._matrix is not None:
            return arr @ self._matrix.T
        return arr[..., : self.src]

    def __call__(self, vectors: npt.ArrayLike) -> F64:
        arr = np.asarray(vectors, dtype=np.float64)
        if arr.shape[-1] != self.src:
            raise ValueError(f"expected vectors of dimension {self.src}, got {arr.shape}")
        if self._matrix is not None:
            arr = arr @ self._matrix
        elif self.dst > self.src:
            padded = np.zeros((*arr.shape[:-1], self.dst))
            padded[..., : self.src] = arr
            arr = padded
        norms = np.linalg.norm(arr, axis=-1, keepdims=True)
        out: F64 = np.divide(arr, norms, out=np.zeros_like(arr), where=norms > 0)
        return out


def recover(
    residual: npt.ArrayLike, key: str, candidates: npt.ArrayLike, projection: Projection
) -> tuple[int, float]:
    """Unbind ``residual`` with ``key`` and clean up against ``candidates`` (the tenant's
    memory vectors, in the embedding space): the best row and its cosine."""
    res = np.asarray(residual, dtype=np.float64)
    noisy = unbind(res, key_vector(key, res.shape[0]))
    return cleanup(projection.back(noisy), candidates)
