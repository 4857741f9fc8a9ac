"""The MiniLM embedder (runs when the ``minilm`` extra is installed, else skipped).

When ``SOMA_EXTRAS`` lists ``minilm`` (``scripts/test`` sets it and installs the extra), the
extra is expected: these tests then run, and fail without it instead of skipping, so CI cannot
pass while silently leaving them out.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from somabrain.memory.minilm import MINILM_DIM, minilm_available

EXPECTED = "minilm" in os.environ.get("SOMA_EXTRAS", "").replace(" ", "").split(",")

pytestmark = pytest.mark.skipif(
    not EXPECTED and not minilm_available(),
    reason="the minilm extra is not installed (SOMA_EXTRAS=minilm installs it and requires it)",
)


def test_the_extra_is_installed_when_expected() -> None:
    assert minilm_available(), (
        "SOMA_EXTRAS lists minilm but the extra is not installed: "
        "pip install torch==2.13.0 && pip install -e '.[dev,minilm]'"
    )


@pytest.fixture(scope="module")
def model():
    from somabrain.memory.minilm import MiniLMEmbedder

    return MiniLMEmbedder()


def test_vectors_are_normalised_and_semantic(model) -> None:
    vecs = model.embed(["A cat sat on the mat.", "A kitten rested on the rug.", "Tax forms"])
    assert vecs.shape == (3, MINILM_DIM) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.2  # meaning, not shared words
    assert model.embed([]).shape == (0, MINILM_DIM)


def test_deterministic(model) -> None:
    a = model.embed(["the same sentence"])
    b = model.embed(["the same sentence", "another"])[:1]
    assert np.allclose(a, b, atol=1e-5)


@pytest.mark.anyio
async def test_shared_embedder_batches_minilm_off_the_loop() -> None:
    from somabrain.context.settings import EmbedderSettings
    from somabrain.memory.embedding import BatchingEmbedder, shared_embedder

    batcher = await shared_embedder({}, "minilm", EmbedderSettings())
    assert isinstance(batcher, BatchingEmbedder) and batcher.dim == MINILM_DIM
    out = await batcher.embed(["hello world"])
    assert out.shape == (1, MINILM_DIM)
