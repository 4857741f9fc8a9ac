"""Exact vector index: top-k equals brute force, with deletes and compaction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from somabrain.memory import InvalidVectorError, VectorIndex
from somabrain.memory.vector_index import top_k

DIM = 8
finite = st.floats(-10, 10, allow_nan=False, width=32)


def brute_force(vectors: np.ndarray, alive: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Sorted best-first cosine scores of the live vectors (zero vectors score 0)."""
    norms = np.linalg.norm(vectors, axis=1)
    unit = np.divide(vectors, norms[:, None], out=np.zeros_like(vectors), where=norms[:, None] > 0)
    q = query / np.linalg.norm(query) if np.linalg.norm(query) > 0 else query
    sims = (unit @ q)[alive]
    return np.sort(sims)[::-1][:k]


@settings(max_examples=80, deadline=None)
@given(
    arrays(np.float32, st.tuples(st.integers(1, 40), st.just(DIM)), elements=finite),
    arrays(np.float32, DIM, elements=finite),
    st.integers(1, 12),
    st.data(),
)
def test_top_k_matches_brute_force(vectors, query, k, data) -> None:
    index = VectorIndex(DIM, capacity=4)  # small capacity: growth is exercised too
    index.add(vectors[: len(vectors) // 2])
    index.add(vectors[len(vectors) // 2 :])
    dead = data.draw(st.sets(st.integers(0, len(vectors) - 1)))
    for slot in dead:
        assert index.remove(slot)
    alive = np.ones(len(vectors), dtype=bool)
    alive[list(dead)] = False

    slots, scores = index.search(query, k)
    expected = brute_force(vectors.astype(np.float64), alive, query.astype(np.float64), k)
    assert len(slots) == len(expected)
    assert all(alive[s] for s in slots)
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    assert list(scores) == sorted(scores, reverse=True)

    if data.draw(st.booleans()):
        remap = index.compact()
        assert len(index) == index.size == int(alive.sum())
        _, scores2 = index.search(query, k)
        np.testing.assert_allclose(scores2, expected, atol=1e-4)
        old = np.flatnonzero(alive)
        assert (remap[old] == np.arange(len(old))).all()


def test_mask_restricts_and_ties_break_by_slot() -> None:
    index = VectorIndex(2)
    index.add([[1, 0], [1, 0], [0, 1], [1, 0]])
    slots, _ = index.search([1, 0], 2)
    assert slots.tolist() == [0, 1]
    mask = np.array([False, True, True, False])
    slots, _ = index.search([1, 0], 5, mask)
    assert slots.tolist() == [1, 2]


def test_top_k_edge_cases() -> None:
    assert top_k(np.array([], dtype=np.float32), 3).size == 0
    assert top_k(np.array([1.0, 2.0]), 0).size == 0
    assert top_k(np.array([1.0, 3.0, 2.0]), 10).tolist() == [1, 2, 0]


def test_remove_and_vector_access() -> None:
    index = VectorIndex(3)
    (slot,) = index.add([[3, 4, 0]])
    np.testing.assert_allclose(index.vector(int(slot)), [0.6, 0.8, 0.0], rtol=1e-6)
    assert index.remove(int(slot)) and not index.remove(int(slot))
    with pytest.raises(KeyError):
        index.vector(int(slot))
    assert len(index) == 0 and index.dead == 1
    assert index.scores([1, 0, 0]).tolist() == [0.0]


def test_views_are_read_only() -> None:
    index = VectorIndex(2)
    index.add([[1, 0]])
    with pytest.raises(ValueError):
        index.matrix[0, 0] = 5
    with pytest.raises(ValueError):
        index.alive[0] = False


@pytest.mark.parametrize(
    "bad",
    [
        [[1.0, 2.0]],
        [[1.0, float("nan"), 0.0]],
        [[float("inf"), 0.0, 0.0]],
        [[1e308, 0.0, 0.0]],  # finite, but infinite as float32: refused, no overflow warning
    ],
)
def test_invalid_vectors_are_refused(bad) -> None:
    index = VectorIndex(3)
    with pytest.raises(InvalidVectorError):
        index.add(bad)
    assert index.size == 0


def test_sparse_and_dense_queries_score_alike() -> None:
    rng = np.random.default_rng(5)
    index = VectorIndex(64)
    index.add(rng.standard_normal((300, 64)))
    index.remove(7)
    for nonzero in (1, 5, 19, 40, 64):  # below and above the sparse-query threshold
        q = np.zeros(64, dtype=np.float32)
        q[rng.choice(64, nonzero, replace=False)] = rng.standard_normal(nonzero)
        q /= np.linalg.norm(q)
        expected = np.array(index.matrix) @ q
        np.testing.assert_allclose(index.unit_scores(q), expected, rtol=1e-5, atol=1e-6)
        assert index.unit_scores(q)[7] == 0.0
    assert not index.unit_scores(np.zeros(64, dtype=np.float32)).any()


@settings(max_examples=150, deadline=None)
@given(
    arrays(np.float32, st.integers(1, 300), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0])),
    st.integers(1, 40),
)
def test_top_k_breaks_ties_by_lowest_index(scores, k) -> None:
    """Few distinct values, so the k-th score is almost always tied past the selection."""
    expected = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    assert top_k(scores, k).tolist() == expected


def test_a_grown_copy_adopted_later_holds_what_changed_meanwhile() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    index, twin = VectorIndex(8, capacity=32), VectorIndex(8, capacity=64)
    index.add(vectors[:20])
    twin.add(vectors[:20])
    grown = index.grown(5)  # made "elsewhere" from the 20 slots handed out
    index.add(vectors[20:30])  # meanwhile: adds (within capacity) and removes, before and after
    twin.add(vectors[20:30])
    for slot in (3, 25):
        index.remove(slot)
        twin.remove(slot)
    assert index.capacity == 32 and index.adopt(grown) and index.capacity == 64
    np.testing.assert_array_equal(index.matrix, twin.matrix)
    np.testing.assert_array_equal(index.alive, twin.alive)
    index.add(vectors[30:])  # no growth needed now: the room was made
    twin.add(vectors[30:])
    q = rng.standard_normal(8)
    assert index.search(q, 5)[0].tolist() == twin.search(q, 5)[0].tolist()
    assert not index.adopt(grown)  # once only


def test_a_grown_copy_is_refused_once_the_matrix_was_replaced() -> None:
    rng = np.random.default_rng(4)
    index = VectorIndex(4, capacity=8)
    index.add(rng.standard_normal((8, 4)))
    stale = index.grown(1)
    index.add(rng.standard_normal((1, 4)))  # grown by the add itself
    assert not index.adopt(stale) and index.size == 9
    index.remove(0)
    stale = index.grown(100)
    index.compact()  # renumbered: the copy's slots mean nothing now
    before = index.matrix.copy()
    assert not index.adopt(stale)
    np.testing.assert_array_equal(index.matrix, before)
