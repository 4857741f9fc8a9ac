"""BM25: a hand-computed example, and incremental updates equal a fresh build."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from somabrain.memory import BM25Index, tokenize

DOCS = [["cat", "sat", "mat"], ["cat", "cat", "dog"], ["dog", "bark"]]


def build(docs: list[list[str]]) -> BM25Index:
    index = BM25Index()
    for d in docs:
        index.add(d)
    return index


def test_hand_computed_scores() -> None:
    # N = 3, avgdl = 8/3, k1 = 1.2, b = 0.75.
    # "cat": df = 2, idf = ln(1 + (3 - 2 + 0.5) / (2 + 0.5)) = ln(1.6) = 0.470004
    # d0: tf 1, |d| 3: K = 1.2 * (0.25 + 0.75 * 3 / (8/3)) = 1.3125
    #     0.470004 * 1 * 2.2 / (1 + 1.3125) = 0.447139
    # d1: tf 2, |d| 3: 0.470004 * 2 * 2.2 / (2 + 1.3125) = 0.624307
    # "dog" in d2: tf 1, |d| 2: K = 1.2 * (0.25 + 0.75 * 2 / (8/3)) = 0.975
    #     0.470004 * 2.2 / 1.975 = 0.523548
    index = build(DOCS)
    assert index.avgdl == pytest.approx(8 / 3)
    assert index.idf("cat") == pytest.approx(0.470004, abs=1e-6)
    np.testing.assert_allclose(index.scores(["cat"]), [0.447139, 0.624307, 0.0], atol=1e-5)
    np.testing.assert_allclose(
        index.scores(["cat", "dog"]), [0.447139, 0.624307 + 0.447139, 0.523548], atol=1e-5
    )


def test_query_terms_count_once_and_unknown_terms_score_nothing() -> None:
    index = build(DOCS)
    np.testing.assert_array_equal(index.scores(["cat", "cat"]), index.scores(["cat"]))
    assert not index.scores(["unicorn"]).any()
    assert not index.scores([]).any()
    assert BM25Index().scores(["cat"]).shape == (0,)


def test_common_term_idf_is_never_negative() -> None:
    index = build([["x"], ["x"], ["x", "y"]])
    assert index.idf("x") > 0
    assert (index.scores(["x"]) > 0).all()


def test_remove_equals_never_added_and_compact_keeps_scores() -> None:
    index = build(DOCS)
    assert index.remove(0)
    assert not index.remove(0)
    assert not index.remove(99)
    fresh = build(DOCS[1:])
    got = index.scores(["cat", "dog", "bark"])
    assert got[0] == 0.0
    np.testing.assert_allclose(got[1:], fresh.scores(["cat", "dog", "bark"]), rtol=1e-6)
    assert index.df("cat") == 1 and len(index) == 2 and index.dead == 1
    remap = index.compact()
    assert remap.tolist() == [-1, 0, 1]
    assert index.size == 2 and index.dead == 0
    np.testing.assert_allclose(
        index.scores(["cat", "dog", "bark"]), fresh.scores(["cat", "dog", "bark"]), rtol=1e-6
    )


def test_compact_rejects_a_foreign_remap() -> None:
    index = build(DOCS)
    index.remove(1)
    with pytest.raises(ValueError):
        index.compact(np.array([0, 1, 2]))


words = st.sampled_from(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(words, max_size=6), min_size=1, max_size=12),
    st.lists(words, min_size=1, max_size=3),
    st.data(),
)
def test_batch_and_incremental_agree(docs: list[list[str]], query: list[str], data) -> None:
    one = build(docs)
    batch = BM25Index()
    batch.add_batch(docs)
    np.testing.assert_allclose(batch.scores(query), one.scores(query), rtol=1e-6)
    # Remove a random subset: equals an index built from the survivors only.
    gone = data.draw(st.sets(st.integers(0, len(docs) - 1)))
    for i in gone:
        batch.remove(i)
    survivors = [d for i, d in enumerate(docs) if i not in gone]
    fresh = build(survivors)
    got = batch.scores(query)
    keep = [i for i in range(len(docs)) if i not in gone]
    np.testing.assert_allclose(got[keep], fresh.scores(query), rtol=1e-5, atol=1e-6)
    assert not got[sorted(gone)].any()


def test_tokenizer() -> None:
    assert tokenize("When did Caroline go to the LGBTQ support-group?") == [
        "caroline",
        "go",
        "lgbtq",
        "support",
        "group",
    ]
    assert tokenize("Straße STRASSE") == ["strasse", "strasse"]
    assert tokenize("") == []
