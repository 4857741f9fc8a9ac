"""HRR algebra: properties of bind/unbind/superpose, and recovery by cleanup."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from somabrain.context import hrr
from somabrain.context.hrr import (
    Projection,
    bind,
    cleanup,
    key_vector,
    normalise,
    recover,
    superpose,
    unbind,
)

dims = st.sampled_from([16, 64, 127, 256])
keys = st.text(min_size=1, max_size=20)
seeds = st.integers(0, 2**32 - 1)


def rand(dim: int, seed: int, n: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (dim,) if n is None else (n, dim)
    v = rng.standard_normal(shape)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@given(dims, seeds)
def test_bind_is_commutative_and_associative(dim: int, seed: int) -> None:
    a, b, c = rand(dim, seed, 3)
    assert np.allclose(bind(a, b), bind(b, a), atol=1e-9)
    assert np.allclose(bind(bind(a, b), c), bind(a, bind(b, c)), atol=1e-9)


@given(dims, seeds)
def test_bind_distributes_over_addition(dim: int, seed: int) -> None:
    a, b, c = rand(dim, seed, 3)
    assert np.allclose(bind(a, b + c), bind(a, b) + bind(a, c), atol=1e-9)


@given(keys, dims, seeds)
def test_unitary_key_unbinds_exactly_and_preserves_norm(key: str, dim: int, seed: int) -> None:
    k = key_vector(key, dim)
    v = rand(dim, seed)
    assert np.linalg.norm(k) == pytest.approx(1.0)
    bound = bind(k, v)
    assert np.linalg.norm(bound) == pytest.approx(1.0)
    assert np.allclose(unbind(bound, k), v, atol=1e-9)


@given(keys, dims)
def test_key_vectors_are_deterministic(key: str, dim: int) -> None:
    assert np.array_equal(key_vector(key, dim), key_vector(key, dim))
    assert not np.allclose(key_vector(key, dim), key_vector(key + "x", dim))


@given(st.lists(keys, min_size=1, max_size=8, unique=True), seeds)
def test_superpose_is_the_normalised_sum_of_bindings(names: list[str], seed: int) -> None:
    dim = 64
    vectors = rand(dim, seed, len(names))
    expected = normalise(
        sum(bind(key_vector(k, dim), v) for k, v in zip(names, vectors, strict=True))
    )
    assert np.allclose(superpose(names, vectors), expected, atol=1e-9)


# Derandomized: recovery is a matter of probability, not of algebra. At 20 memories, 1 in
# about 8,000 is missed (400 random draws of 20 among 2,000 random vectors had one miss), so a
# fresh random search failed a run now and then; these 25 fixed draws exercise the same path.
@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.integers(1, 20), seeds)
def test_unbind_and_cleanup_recover_every_memory(n: int, seed: int) -> None:
    """20 memories superposed in 1024 dims, cleaned up against 2,000: all recovered."""
    memories = rand(256, seed, 2000)
    chosen = np.random.default_rng(seed + 1).choice(2000, n, replace=False)
    names = [f"mem-{i}" for i in chosen]
    proj = Projection(256, 1024)
    residual = superpose(names, proj(memories[chosen]))
    for name, index in zip(names, chosen, strict=True):
        assert recover(residual, name, memories, proj)[0] == index


def test_a_wrong_key_recovers_nothing_in_particular() -> None:
    memories = rand(256, 7, 500)
    proj = Projection(256, 1024)
    residual = superpose(["a", "b"], proj(memories[:2]))
    _, right = recover(residual, "a", memories, proj)
    _, wrong = recover(residual, "zzz", memories, proj)
    assert right > 0.5 > wrong


def test_empty_superposition_and_errors() -> None:
    assert not superpose([], np.zeros((0, 8))).any()
    with pytest.raises(ValueError):
        superpose(["a"], np.zeros((2, 8)))
    with pytest.raises(ValueError):
        bind(np.zeros(4), np.zeros(5))
    with pytest.raises(ValueError):
        unbind(np.zeros(4), np.zeros(5))
    with pytest.raises(ValueError):
        key_vector("a", 1)
    with pytest.raises(ValueError):
        cleanup(np.zeros(4), np.zeros((0, 4)))
    with pytest.raises(ValueError):
        Projection(4, 8)(np.zeros(5))


def test_projection_is_seeded_and_identity_when_equal() -> None:
    v = rand(32, 3, 4)
    assert np.allclose(Projection(32, 32)(v), v)
    assert Projection(32, 32).identity and not Projection(32, 64).identity
    assert np.array_equal(Projection(32, 64)(v), Projection(32, 64)(v))
    assert np.allclose(np.linalg.norm(Projection(32, 64)(v), axis=1), 1.0)


def test_key_vectors_are_pinned() -> None:
    """The derivation is part of the contract (a client may unbind a stored residual vector
    with ``key_vector`` later, in another process or version): these values must not move."""
    assert np.allclose(
        key_vector("mem-1", 8),
        [-0.23391060825985321, -0.3458192823287638, -0.41684618669608264, 0.7146400454656572,
         -0.11709849026875085, -0.13146649294506602, -0.23214471477531332, -0.23735427019182734],
        atol=1e-12,
    )  # fmt: skip
    assert np.allclose(
        key_vector("mem-1", 7),
        [-0.12446926658268935, -0.6148464098107755, 0.020810337549990683, 0.5593237731845059,
         -0.3441446164973418, -0.0879979197597352, -0.40867589808395455],
        atol=1e-12,
    )  # fmt: skip


@given(st.lists(keys, min_size=0, max_size=12), st.sampled_from([16, 127, 1024]))
def test_key_spectra_are_the_keys_fourier_transforms_cached_or_not(
    names: list[str], dim: int
) -> None:
    """Batched, cached and uncached spectra agree, duplicates in one call included."""
    cold = hrr._compute_spectra(names, dim)
    first = hrr.key_spectra(names, dim)
    again = hrr.key_spectra(names[::-1], dim)[::-1]
    assert np.array_equal(first, cold) and np.array_equal(again, cold)
    for name, row in zip(names, first, strict=True):
        assert np.allclose(np.fft.rfft(key_vector(name, dim)), row, atol=1e-9)
        assert np.allclose(np.abs(row), 1.0)  # unitary
        assert row[0].imag == 0.0 and (dim % 2 or row[-1].imag == 0.0)  # Hermitian: real DC


def test_key_spectrum_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hrr, "SPECTRUM_CACHE_SIZE", 8)
    monkeypatch.setattr(hrr, "_spectra", hrr.OrderedDict())
    names = [f"bounded-{i}" for i in range(20)]
    spectra = hrr.key_spectra(names, 32)
    assert len(hrr._spectra) == 8
    assert list(hrr._spectra) == [(n, 32) for n in names[-8:]]  # the most recent kept
    assert np.array_equal(hrr.key_spectra(names[:3], 32), spectra[:3])  # recomputed alike
    assert list(hrr._spectra)[-3:] == [(n, 32) for n in names[:3]]


def test_key_vectors_are_nearly_orthogonal() -> None:
    """Random-phase unitary keys: inner products ~ N(0, 1/d), so 300 keys in 1024 dims stay
    within ~5 standard deviations of each other."""
    k = np.stack([key_vector(f"orth-{i}", 1024) for i in range(300)])
    gram = k @ k.T
    off = gram[~np.eye(300, dtype=bool)]
    assert np.abs(off).max() < 5.5 / np.sqrt(1024)
    assert abs(off.mean()) < 0.01 and off.std() == pytest.approx(1 / np.sqrt(1024), rel=0.1)
