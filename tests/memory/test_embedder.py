"""The built-in embedder: deterministic, normalised, and similar texts land close."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from somabrain.memory import DEFAULT_DIM, Embedder, HashingEmbedder

TEXTS = [
    "Caroline went to the LGBTQ support group yesterday.",
    "Melanie painted a sunrise over the lake in 2022.",
    "",
    "the and of",  # stopwords only
    "Ünïcödé wörds — and emoji 🎨 are fine",
]


def test_satisfies_protocol_and_default_dim() -> None:
    emb = HashingEmbedder()
    assert isinstance(emb, Embedder)
    assert emb.dim == DEFAULT_DIM == 256


def test_shape_dtype_and_unit_norm() -> None:
    vecs = HashingEmbedder().embed(TEXTS)
    assert vecs.shape == (len(TEXTS), 256)
    assert vecs.dtype == np.float32
    assert vecs.flags.c_contiguous
    norms = np.linalg.norm(vecs, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 4]], 1.0, rtol=1e-5)
    # No features at all: the zero vector, never NaN.
    assert not vecs[2].any() and not vecs[3].any()


def test_empty_batch() -> None:
    assert HashingEmbedder().embed([]).shape == (0, 256)


def test_deterministic_across_instances_batches_and_cache_clears() -> None:
    a = HashingEmbedder().embed(TEXTS)
    b = np.vstack([HashingEmbedder(cache_size=1).embed([t]) for t in TEXTS])
    np.testing.assert_array_equal(a, b)


def test_deterministic_across_processes() -> None:
    """No dependence on Python's per-process hash salt (PYTHONHASHSEED)."""
    code = (
        "import sys, numpy as np; from somabrain.memory import HashingEmbedder;"
        f"sys.stdout.write(HashingEmbedder().embed({TEXTS!r}).tobytes().hex())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    ).stdout
    assert bytes.fromhex(out) == HashingEmbedder().embed(TEXTS).tobytes()


def test_seed_changes_the_space() -> None:
    a = HashingEmbedder().embed(TEXTS[:1])
    b = HashingEmbedder(seed="other").embed(TEXTS[:1])
    assert not np.array_equal(a, b)


def test_morphology_and_overlap_bring_texts_closer() -> None:
    v = HashingEmbedder().embed(
        ["she is painting a sunrise", "she painted the sunrise", "quarterly tax report filed"]
    )
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.3


def test_rejects_tiny_dimensions() -> None:
    with pytest.raises(ValueError):
        HashingEmbedder(dim=4)
    with pytest.raises(ValueError):
        HashingEmbedder(char_ngram=1)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=8))
def test_any_text_gives_unit_or_zero_rows(texts: list[str]) -> None:
    vecs = HashingEmbedder(dim=64).embed(texts)
    assert np.isfinite(vecs).all()
    norms = np.linalg.norm(vecs, axis=1)
    assert np.all((np.abs(norms - 1.0) < 1e-4) | (norms == 0.0))
