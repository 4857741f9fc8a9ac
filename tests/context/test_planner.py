"""The planner: utility, constraints, determinism, redundancy."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from somabrain.context.planner import Candidate, PlannerSettings, plan, render_prompt, shorten


def cands(*weights: float, length: int = 40) -> list[Candidate]:
    return [Candidate(f"k{i}", f"memory {i} " + "x" * length, w) for i, w in enumerate(weights)]


def test_empty_and_basic_prompt() -> None:
    p = plan("why?", [], None, max_prompt_chars=500, max_memories=5)
    assert p.prompt == "Query: why?\n" and p.selected == []
    p = plan("why?", cands(0.6, 0.4), None, max_prompt_chars=500, max_memories=5)
    assert [k for k, _ in p.selected] == ["k0", "k1"]
    assert p.prompt.startswith("Relevant memories:\n- memory 0") and p.prompt.endswith(
        "Query: why?\n"
    )
    assert p.coverage > 0.99 and p.iterations == 2


def test_limits_are_never_exceeded() -> None:
    c = cands(*([0.1] * 10), length=200)
    p = plan("q", c, None, max_prompt_chars=600, max_memories=10)
    assert len(p.prompt) <= 600 and p.selected
    p = plan("q", c, None, max_prompt_chars=10_000, max_memories=3)
    assert len(p.selected) <= 3


def test_short_level_used_when_full_does_not_fit() -> None:
    c = [Candidate("a", "word " * 200, 1.0)]
    p = plan("q", c, None, max_prompt_chars=300, max_memories=5,
             settings=PlannerSettings(short_chars=100))  # fmt: skip
    assert p.selected == [("a", "short")] and len(p.prompt) <= 300


def test_penalties_drop_low_weight_memories() -> None:
    c = cands(0.97, 0.01, 0.01, 0.01, length=300)
    p = plan("q", c, None, max_prompt_chars=2000, max_memories=10,
             settings=PlannerSettings(length_penalty=1.0, count_penalty=0.5))  # fmt: skip
    assert [k for k, _ in p.selected] == ["k0"]


def test_near_duplicates_are_not_both_chosen() -> None:
    c = cands(0.4, 0.4, 0.2, length=100)
    sim = np.eye(3)
    sim[0, 1] = sim[1, 0] = 0.99  # k1 repeats k0
    p = plan("q", c, sim, max_prompt_chars=2000, max_memories=10,
             settings=PlannerSettings(length_penalty=0.3))  # fmt: skip
    chosen = {k for k, _ in p.selected}
    assert "k2" in chosen and len(chosen & {"k0", "k1"}) == 1


def test_working_memory_section_is_rendered_after_memories() -> None:
    c = [Candidate("a", "long term", 0.5), Candidate("w", "just said", 0.5, "working_memory")]
    p = plan("q", c, None, max_prompt_chars=1000, max_memories=5)
    assert p.prompt.index("Relevant memories:") < p.prompt.index("Recent in this session:")


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1), st.integers(0, 400)), min_size=1, max_size=12),
    st.integers(80, 3000),
    st.integers(1, 12),
)
def test_deterministic_within_limits_and_not_worse_than_empty(items, max_chars, max_n) -> None:
    c = [Candidate(f"k{i}", "w " * n, w) for i, (w, n) in enumerate(items)]
    rng = np.random.default_rng(len(items))
    v = rng.standard_normal((len(c), 8))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    first = plan("question", c, v @ v.T, max_prompt_chars=max_chars, max_memories=max_n)
    second = plan("question", c, v @ v.T, max_prompt_chars=max_chars, max_memories=max_n)
    assert first == second
    assert len(first.prompt) <= max(max_chars, len(render_prompt("question", [])))
    assert len(first.selected) <= max_n
    assert first.utility >= plan("question", [], None, max_prompt_chars=max_chars,
                                 max_memories=max_n).utility - 1e-9  # fmt: skip
    # The figures the climb carried from move to move are those of the plan it returns.
    if first.selected:
        cfg = PlannerSettings()
        f = {"short": cfg.short_value, "full": 1.0}
        sim = np.clip(v @ v.T, 0, 1)
        np.fill_diagonal(sim, 1.0)
        w = np.array([c_.weight for c_ in c])
        w = w / w.sum() if w.sum() > 0 else np.full(len(c), 1.0 / len(c))
        index = {c_.key: i for i, c_ in enumerate(c)}
        chosen = [(index[key], f[level]) for key, level in first.selected]
        coverage = sum(w[i] * max(sim[i, j] * fj for j, fj in chosen) for i in range(len(c)))
        assert abs(first.coverage - coverage) < 1e-9
        utility = (coverage - cfg.length_penalty * len(first.prompt) / max_chars
                   - cfg.count_penalty * len(first.selected) / max_n)  # fmt: skip
        assert abs(first.utility - utility) < 1e-9


def test_shorten() -> None:
    assert shorten("short", 10) == "short"
    out = shorten("one two three four five six", 15)
    assert len(out) <= 15 and out.endswith("…")
