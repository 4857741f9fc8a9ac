"""The planner: utility, constraints, determinism, redundancy."""

from __future__ import annotations

import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.planner import baseline_plan
from somabrain.context.planner import (
    Candidate,
    Plan,
    PlannerSettings,
    _line,
    plan,
    render_prompt,
    shorten,
)


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


# ------------------------------------------------------------------ the same plans as the oracle
#
# ``plan`` keeps its figures from move to move and reuses buffers to go faster; the climb it
# performs is the one written below, plainly (every move's figures recomputed), which it must
# reproduce exactly: same memories and levels, prompt, iterations and variants, and the same
# utility and coverage (ties between moves included, so bit for bit in practice).

# The climb as it was written before (every move's figures recomputed), kept once: it is also
# the planner benchmark's baseline.
oracle_plan = baseline_plan


_WORDS = ("we", "went", "to", "the", "lake", "Caroline", "adoption", "café", "pottery", "x" * 30)
_SPACES = (" ", " ", " ", " ", "  ", "\t", "\n", "\u00a0", "\u3000")


@st.composite
def planner_inputs(draw: st.DrawFn) -> tuple[list[Candidate], object, dict[str, object]]:
    """Candidates, a similarity matrix and the limits and settings, over the whole range."""
    n = draw(st.integers(0, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    weight_kind = draw(st.sampled_from(["random", "zeros", "ties", "all_zero"]))
    weights = {
        "random": rng.random(n),
        "zeros": rng.random(n) * (rng.random(n) < 0.6),
        "ties": rng.choice([0.0, 0.25, 0.5], n),
        "all_zero": np.zeros(n),
    }[weight_kind]
    text_kind = draw(st.sampled_from(["words", "messy", "equal"]))
    spaces = _SPACES if text_kind == "messy" else (" ",)
    texts = []
    for i in range(n):
        words = rng.choice(_WORDS, size=int(rng.integers(0, 60)))
        text = "".join(str(word) + str(rng.choice(spaces)) for word in words)
        texts.append("memory number 1 " + "w " * 40 if text_kind == "equal" else text.strip(" "))
        if text_kind == "messy" and i % 3 == 0:
            texts[-1] = " " + texts[-1] + "\n"
    sections = draw(st.sampled_from([("memories",), ("memories", "working_memory"),
                                     ("working_memory", "other", "memories")]))  # fmt: skip
    candidates = [
        Candidate(f"k{i}", texts[i], float(weights[i]), str(rng.choice(sections))) for i in range(n)
    ]
    sim_kind = draw(st.sampled_from(["none", "cosine", "uniform", "ties", "duplicates"]))
    similarity: object = None
    if sim_kind == "cosine":
        v = rng.standard_normal((n, 8)) + rng.standard_normal(8)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        similarity = v @ v.T
    elif sim_kind == "uniform":  # not symmetric, negative and above 1: clipped
        similarity = rng.uniform(-0.5, 1.3, (n, n))
    elif sim_kind == "ties":
        similarity = rng.choice([-0.2, 0.0, 0.3, 0.6, 1.0], (n, n))
    elif sim_kind == "duplicates":  # groups of identical memories
        group = rng.integers(0, max(1, n // 3), n)
        similarity = np.where(group[:, None] == group[None, :], 1.0, 0.4)
        similarity = similarity.tolist()
    options = {
        "max_prompt_chars": draw(st.sampled_from([1, 40, 120, 400, 1500, 8000, 100_000])),
        "max_memories": draw(st.sampled_from([0, 1, 2, 5, 50])),
        "settings": PlannerSettings(
            length_penalty=draw(st.sampled_from([0.0, 0.15, 1.0, 5.0, -0.1])),
            count_penalty=draw(st.sampled_from([0.0, 0.05, 0.5])),
            short_value=draw(st.sampled_from([0.6, 0.0, 1.0, 1.5, -0.3])),
            short_chars=draw(st.sampled_from([1, 30, 160])),
            max_iterations=draw(st.sampled_from([0, 1, 3, 64])),
        ),
    }
    return candidates, similarity, options


def _same_plan(a: Plan, b: Plan) -> None:
    assert (a.selected, a.prompt, a.iterations, a.variants) == (
        b.selected,
        b.prompt,
        b.iterations,
        b.variants,
    )
    assert abs(a.utility - b.utility) <= 1e-12 and abs(a.coverage - b.coverage) <= 1e-12


@settings(max_examples=400, deadline=None, derandomize=True)
@given(planner_inputs())
def test_plans_are_those_of_the_oracle(inputs: tuple[list[Candidate], object, dict]) -> None:
    candidates, similarity, options = inputs
    _same_plan(
        plan("what now?", candidates, similarity, **options),  # type: ignore[arg-type]
        oracle_plan("what now?", candidates, similarity, **options),  # type: ignore[arg-type]
    )


def test_plans_are_those_of_the_oracle_on_bundle_like_inputs() -> None:
    # What /context/evaluate plans: 20-25 candidates, softmax weights, cosines of 0.1-0.8.
    rng = np.random.default_rng(5)
    for case in range(60):
        n = int(rng.integers(20, 26))
        weights = np.exp(rng.uniform(0.3, 0.7, n) / 0.1)
        candidates = [
            Candidate(f"k{i}", " ".join(rng.choice(_WORDS[:-1], int(rng.integers(5, 50)))),
                      float(weights[i]), "memories" if i < n - 5 else "working_memory")
            for i in range(n)
        ]  # fmt: skip
        v = rng.standard_normal((n, 64)) + 0.9 * rng.standard_normal(64)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        chars, memories = (8000, 50) if case % 2 else (1500, 8)
        options = {"max_prompt_chars": chars, "max_memories": memories}
        _same_plan(
            plan("q", candidates, v @ v.T, **options),  # type: ignore[arg-type]
            oracle_plan("q", candidates, v @ v.T, **options),  # type: ignore[arg-type]
        )


def test_lines_collapse_every_kind_of_whitespace() -> None:
    # ``_line`` skips the split when the text is printable with no double, leading or trailing
    # space: that is right only if no whitespace character but the space is printable.
    spaces = [c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()]
    assert [c for c in spaces if c.isprintable()] == [" "]
    for space in spaces:
        for text in (f"a{space}b", f"{space}a", f"a{space}", f"a {space}b", space, ""):
            assert _line(text) == "- " + " ".join(text.split()) + "\n"  # the former rule
    assert _line("a  b") == "- a b\n" and _line("plain words") == "- plain words\n"


def test_ties_go_to_the_lowest_candidate_then_level() -> None:
    # Weights 1/3 and 2/3 (exactly twice as much) and short_value 0.5: adding k0 in full and
    # k1 short cover exactly alike and cost the same length; k1 in full costs far more.
    long = "word " * 100
    short_len = len(shorten(long, 40))
    c = [Candidate("k0", "x" * short_len, 1.0), Candidate("k1", long, 2.0)]
    options = {"max_prompt_chars": 2000, "max_memories": 5}
    cfg = PlannerSettings(length_penalty=5.0, count_penalty=0.0, short_value=0.5, short_chars=40,
                          max_iterations=1)  # fmt: skip
    first = plan("q", c, None, settings=cfg, **options)  # type: ignore[arg-type]
    assert first.selected == [("k0", "full")]
    _same_plan(first, oracle_plan("q", c, None, settings=cfg, **options))  # type: ignore[arg-type]


def test_length_limit_exactly_at_a_line() -> None:
    # Limits around the exact length of each prompt: a move that reaches the limit is allowed,
    # one character more is not.
    c = [
        Candidate("a", "alpha " * 30, 0.5, "working_memory"),  # the longest line, longest header
        Candidate("b", "beta", 0.3),
        Candidate("w", "said just now " * 4, 0.2, "working_memory"),
    ]
    for parts in ([0], [1], [0, 1], [2], [0, 2], [0, 1, 2]):
        exact = len(render_prompt("q", [(c[i].section, c[i].content) for i in parts]))
        for limit in range(exact - 2, exact + 3):
            for memories in (1, 2, 3):
                options = {"max_prompt_chars": limit, "max_memories": memories}
                cfg = PlannerSettings(length_penalty=0.01, short_chars=60)
                p = plan("q", c, None, settings=cfg, **options)  # type: ignore[arg-type]
                assert len(p.prompt) <= limit and len(p.selected) <= memories
                again = oracle_plan("q", c, None, settings=cfg, **options)  # type: ignore[arg-type]
                _same_plan(p, again)
