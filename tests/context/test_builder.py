"""The bundle: memory weights, plan, working memory, residual vector, limits."""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from somabrain.context import ContextSettings, build_bundle, memory_weights, recover
from somabrain.context.builder import projection
from somabrain.memory import (
    MULTIVIEW_WEIGHTS,
    HashingEmbedder,
    Link,
    Memory,
    TenantMemory,
    multiview,
    tokenize,
)
from somabrain.memory.recall import context_recall
from somabrain.memory.working import WMItem, WorkingMemory

EMB = HashingEmbedder()
TEXTS = [
    "Caroline went to the LGBTQ support group on Monday",
    "Melanie painted a sunrise over the lake",
    "Caroline is researching adoption agencies",
    "Melanie's kids love the pottery class",
    "The charity race raised money for mental health",
    "Caroline gave a talk at the school about her journey",
]


def tenant() -> TenantMemory:
    tm = TenantMemory.in_memory("acme", embedder=EMB, views=multiview())
    mems = [Memory(key=f"m{i}", content=t) for i, t in enumerate(TEXTS)]
    mems[1] = Memory(key="m1", content=TEXTS[1], links=(Link(to_key="m0"),))
    anyio.run(tm.remember_batch, mems)
    return tm


def test_memory_weights_are_a_softmax() -> None:
    w = memory_weights([0.9, 0.5, 0.1], 0.1)
    assert sum(w) == pytest.approx(1.0) and w[0] > w[1] > w[2]
    assert memory_weights([], 0.1) == []
    assert memory_weights([0.5, 0.5], 1.0) == [0.5, 0.5]


def test_bundle_fields_and_residual_recovery() -> None:
    tm = tenant()
    settings = ContextSettings()
    wm = WorkingMemory()
    said = "we talked about Caroline's adoption plans"
    wm.add("s1", [WMItem("w1", said, EMB.embed([said])[0], frozenset(tokenize(said)), 1.0)])
    recall = context_recall(tm, wm, "What is Caroline researching?", 5,
                            weights=MULTIVIEW_WEIGHTS, session_id="s1")  # fmt: skip
    bundle = build_bundle("What is Caroline researching?", recall, MULTIVIEW_WEIGHTS, settings,
                          session_id="s1", trace_id="t-1")  # fmt: skip
    assert bundle.memories[0].key == "m2"
    assert sum(m.weight for m in bundle.memories) == pytest.approx(1.0)
    assert all(set(m.views) == set(MULTIVIEW_WEIGHTS) for m in bundle.memories)
    assert bundle.weights == dict(MULTIVIEW_WEIGHTS)
    assert [w.key for w in bundle.working_memory] == ["w1"]
    assert "Recent in this session:" in bundle.prompt and "adoption" in bundle.prompt
    assert bundle.constitution_checksum is None and bundle.policy is None
    assert bundle.trace_id == "t-1" and bundle.plan is not None and bundle.plan.selected
    assert len(bundle.residual_vector) == settings.limits.hrr_dim
    assert len(bundle.prompt) <= settings.limits.max_prompt_chars
    # every memory of the bundle is recovered from the residual vector by its key
    keys = list(tm.keys())
    matrix = np.stack([tm.index.vector_of(k) for k in keys])
    proj = projection(EMB.dim, settings.limits.hrr_dim)
    for m in bundle.memories:
        assert keys[recover(bundle.residual_vector, m.key, matrix, proj)[0]] == m.key


def test_empty_tenant_gives_an_empty_bundle() -> None:
    tm = TenantMemory.in_memory("acme", embedder=EMB, views=multiview())
    recall = context_recall(tm, None, "anything", 5)
    bundle = build_bundle("anything", recall, MULTIVIEW_WEIGHTS, ContextSettings())
    assert bundle.memories == [] and bundle.working_memory == []
    assert bundle.prompt == "Query: anything\n" and not any(bundle.residual_vector)


def test_limits_are_validated() -> None:
    import msgspec

    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"limits": {"hrr_dim": 8192, "max_vector_dim": 4096}}, ContextSettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"embedder": "bert"}, ContextSettings)
