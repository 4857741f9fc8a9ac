"""Planner benchmark: prompt plans per second, the planner against a frozen copy of its former
implementation, on the inputs ``POST /context/evaluate`` gives it.

What it measures (one process, interleaved repeats): ``somabrain.context.planner.plan`` and
``baseline_plan`` below (the planner as it was before its per-move numpy calls were cut down:
recomputed top-2 coverage, masks and length changes every move) on the same inputs:

* ``default``: 20-25 candidates (15-20 long-term memories, 5 working-memory items) with the
  bundle's softmax weights, LoCoMo turns as texts (``--data``; seeded synthetic sentences of
  similar lengths when the file is missing) and cosine similarities between 0.1 and 0.8 like
  MiniLM's between turns of one conversation; the default limits (8000 characters, 50
  memories), so the climb stops when the penalties outweigh the coverage (~15 moves).
* ``tight``: the same inputs under 1500 characters and 8 memories: the limits bind.

Every plan of both is compared first (selected keys and levels, prompt, iterations, variants,
utility and coverage): the benchmark fails if one differs. Ratios: ``<workload>_vs_baseline`` =
plans/s of the planner / plans/s of the baseline (target >= 2 for ``default``).

    python benchmarks/planner.py --quick --json /tmp/planner.json
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``somabrain`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    Measurement,
    Target,
    best_of,
    parse_args,
    print_ratios,
    print_results,
    ratio,
    write_json,
)
from benchmarks.embedding import DEFAULT_DATA, corpus
from somabrain.context.planner import (
    LEVELS,
    Candidate,
    Plan,
    PlannerSettings,
    plan,
    shorten,
)

__all__ = ["BENCHMARK", "TARGETS", "Workload", "baseline_plan", "main", "workload"]

BENCHMARK = "planner"
TARGETS = (Target("default_vs_baseline", 2.0),)
LIMITS = {"default": (8000, 50), "tight": (1500, 8)}
_EPS = 1e-9

#: One plan's input: query, candidates, similarity matrix.
Workload = list[tuple[str, list[Candidate], npt.NDArray[np.float64]]]


def workload(texts: Sequence[str], count: int, seed: int) -> Workload:
    """``count`` planner inputs like the bundle builder's (module docstring)."""
    rng = np.random.default_rng(seed)
    out: Workload = []
    for p in range(count):
        n = int(rng.integers(20, 26))
        picked = rng.choice(len(texts), size=n, replace=False)
        scores = np.sort(rng.uniform(0.3, 0.7, n - 5))[::-1]
        weights = np.exp(scores / 0.1)  # the bundle's softmax at its default temperature 0.1
        weights = 0.75 * weights / weights.sum()
        wm = rng.uniform(0.2, 1.0, 5)
        weights = np.concatenate([weights, 0.25 * wm / wm.sum()])  # working memory's share
        candidates = [
            Candidate(f"m{p}-{i}", texts[k], float(weights[i]),
                      "memories" if i < n - 5 else "working_memory")
            for i, k in enumerate(picked)
        ]  # fmt: skip
        # Unit vectors around a shared direction: cosines of 0.1-0.8, a few near-duplicates.
        vectors = rng.standard_normal((n, 64)) + 0.9 * rng.standard_normal(64)
        twins = rng.choice(n, size=4, replace=False)
        vectors[twins[2:]] = vectors[twins[:2]] + 0.3 * rng.standard_normal((2, 64))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        similarity = vectors @ vectors.T
        out.append((f"what did speaker {p} say about it?", candidates, similarity))
    return out


def _run(planner: Callable[..., Plan], inputs: Workload, limits: tuple[int, int]) -> float:
    chars, memories = limits
    start = time.perf_counter()
    for query, candidates, similarity in inputs:
        planner(query, candidates, similarity, max_prompt_chars=chars, max_memories=memories)
    return time.perf_counter() - start


def _same(a: Plan, b: Plan) -> bool:
    return (
        (a.prompt, a.selected, a.iterations, a.variants)
        == (b.prompt, b.selected, b.iterations, b.variants)
        and math.isclose(a.utility, b.utility, rel_tol=0, abs_tol=1e-12)
        and math.isclose(a.coverage, b.coverage, rel_tol=0, abs_tol=1e-12)
    )


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement")
    parser.add_argument("--count", type=int, default=None, help="plans per repeat")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LoCoMo JSON file")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args((__doc__ or "").split("\n\n")[0], argv, configure=_configure)
    count = args.count or (300 if args.quick else 2000)
    repeats = args.repeats or (5 if args.quick else 9)
    texts, source = corpus(args.data, 4 * 25 * 25, seed=11)
    inputs = workload(texts, count, seed=3)
    iterations: dict[str, float] = {}
    for name, (chars, memories) in LIMITS.items():
        plans = [plan(q, c, s, max_prompt_chars=chars, max_memories=memories) for q, c, s in inputs]
        old = [
            baseline_plan(q, c, s, max_prompt_chars=chars, max_memories=memories)
            for q, c, s in inputs
        ]
        differ = sum(not _same(a, b) for a, b in zip(plans, old, strict=True))
        if differ:
            print(f"{name}: {differ} of {count} plans differ from the baseline's", file=sys.stderr)
            return 1
        iterations[name] = sum(p.iterations for p in plans) / count

    measurements: dict[str, Measurement] = {}
    for name, limits in LIMITS.items():
        note = f"{limits[0]} chars, {limits[1]} memories, ~{iterations[name]:.0f} moves"
        for side in ("planner", "baseline"):
            key = f"{name}.{side}"
            measurements[key] = Measurement(key, count, unit="plans/s", note=note)
    for _ in range(repeats):  # interleaved: a noisy moment hits both sides alike
        for name, limits in LIMITS.items():
            for side, planner in (("planner", plan), ("baseline", baseline_plan)):
                samples = best_of(1, lambda: _run(planner, inputs, limits))  # noqa: B023
                measurements[f"{name}.{side}"].samples.extend(samples)

    print(f"{count} plans of 20-25 candidates; texts: {source}; every plan equal to the baseline's")
    print_results(measurements.values(), title="Prompt plans (in process)")
    ratios: dict[str, float | None] = {
        f"{name}_vs_baseline": ratio(
            measurements[f"{name}.planner"].rate, measurements[f"{name}.baseline"].rate
        )
        for name in LIMITS
    }
    medians = {
        f"{name}_vs_baseline": ratio(
            measurements[f"{name}.planner"].median_rate,
            measurements[f"{name}.baseline"].median_rate,
        )
        for name in LIMITS
    }
    print_ratios(
        ratios,
        targets=TARGETS,
        medians=medians,
        explanations={
            "default_vs_baseline": "plans/s over the former implementation, default limits",
            "tight_vs_baseline": "the same under 1500 characters and 8 memories",
        },
    )
    if args.json is not None:
        write_json(
            args.json,
            BENCHMARK,
            measurements,
            ratios,
            {"texts": source, "count": count, "repeats": repeats, "moves": iterations},
        )
    return 0


# ------------------------------------------------------------------------------ the baseline


_BASELINE_HEADERS = {"memories": "Relevant memories:", "working_memory": "Recent in this session:"}


def _baseline_line(text: str) -> str:
    return "- " + " ".join(text.split()) + "\n"


def _baseline_render(query: str, parts: Sequence[tuple[str, str]]) -> str:
    out = []
    for section in _BASELINE_HEADERS:
        lines = [_baseline_line(text) for s, text in parts if s == section]
        if lines:
            out.append(_BASELINE_HEADERS[section] + "\n" + "".join(lines) + "\n")
    out.append(f"Query: {query}\n")
    return "".join(out)


def baseline_plan(
    query: str,
    candidates: Sequence[Candidate],
    similarity: npt.ArrayLike | None,
    *,
    max_prompt_chars: int,
    max_memories: int,
    settings: PlannerSettings | None = None,
) -> Plan:
    """``somabrain.context.planner.plan`` before it was tuned (kept frozen: the baseline)."""
    cfg = settings or PlannerSettings()
    n = len(candidates)
    base = _baseline_render(query, [])
    if n == 0 or len(base) > max_prompt_chars:
        empty = -cfg.length_penalty * len(base) / max_prompt_chars
        return Plan(
            prompt=base[:max_prompt_chars],
            selected=[],
            utility=empty,
            coverage=0.0,
            iterations=0,
            variants=0,
        )
    w = np.array([max(0.0, c.weight) for c in candidates], dtype=np.float64)
    w = w / w.sum() if w.sum() > 0 else np.full(n, 1.0 / n)
    sim = np.eye(n) if similarity is None else np.clip(np.asarray(similarity, np.float64), 0, 1)
    np.fill_diagonal(sim, 1.0)
    value = np.array([0.0, cfg.short_value, 1.0])
    texts = [("", shorten(c.content, cfg.short_chars), c.content) for c in candidates]
    # Length of a memory's line at each level; a section header costs its length once.
    cost = np.array([[0.0, len(_baseline_line(t[1])), len(_baseline_line(t[2]))] for t in texts])
    sections = sorted({c.section for c in candidates})
    sec_index = np.array([sections.index(c.section) for c in candidates])
    sec_cost = np.array([len(_BASELINE_HEADERS.get(s, s)) + 2 for s in sections], dtype=np.float64)
    len_scale = cfg.length_penalty / max_prompt_chars
    count_scale = cfg.count_penalty / max(1, max_memories)

    level = np.zeros(n, dtype=np.int64)
    rows = np.arange(n)
    sec_onehot = (sec_index[None, :] == np.arange(len(sections))[:, None]).astype(np.float64)
    iterations = variants = 0

    def score(levels: npt.NDArray[np.int64]) -> tuple[float, float, float]:
        coverage = float(w @ (sim * value[levels][None, :]).max(axis=1))
        counts = sec_onehot @ (levels > 0)
        length = len(base) + float(cost[rows, levels].sum()) + float(sec_cost @ (counts > 0))
        total = coverage - len_scale * length - count_scale * np.count_nonzero(levels)
        return total, coverage, length

    # What no move changes, computed once: each column of ``sim`` at each level, whether a
    # level puts a memory in the prompt, and the header cost of each candidate's section.
    sim_at_level = value[:, None, None] * sim[None, :, :]  # (level, i, j)
    now_in = (np.arange(3) > 0)[None, :]
    header = sec_cost[sec_index][:, None]
    current, coverage, length = score(level)
    while iterations < cfg.max_iterations:
        # Coverage of row i by every column but j: the row's best, or its second best when
        # j is the best. Then each move (j -> lv) is one column swap, scored for all at once.
        contrib = sim * value[level][None, :]
        top2 = np.partition(contrib, n - 2, axis=1)[:, n - 2] if n > 1 else np.zeros(n)
        arg1 = contrib.argmax(axis=1)
        top1 = contrib[rows, arg1]
        without = np.where(arg1[:, None] == rows[None, :], top2[:, None], top1[:, None])
        cov = (w @ np.maximum(without[None, :, :], sim_at_level)).T  # (n candidates, 3 levels)
        inside = level > 0
        counts = sec_onehot @ inside
        was_in = inside[:, None]
        own = counts[sec_index][:, None]  # members of j's section now
        # A section's header is paid by its first member and freed with its last.
        d_sec = (now_in & ~was_in & (own == 0)).astype(np.float64)
        d_sec -= ~now_in & was_in & (own == 1)
        d_len = cost - cost[rows, level][:, None] + d_sec * header
        d_count: npt.NDArray[np.float64] = now_in - was_in.astype(np.float64)
        members = np.count_nonzero(inside)
        total = cov - len_scale * (length + d_len) - count_scale * (members + d_count)
        allowed = length + d_len <= max_prompt_chars
        allowed[rows, level] = False
        if members >= max_memories:
            allowed &= ~(now_in & ~was_in)
        variants += int(np.count_nonzero(allowed))
        if not allowed.any():
            break
        masked = np.where(allowed, total, -np.inf)
        flat = int(np.argmax(masked))  # first maximum: lowest (candidate, level)
        j, lv = divmod(flat, 3)
        if masked[j, lv] <= current + _EPS:
            break
        level[j] = lv
        # The move's own figures: scoring the new variant from scratch gives the same ones.
        current, coverage, length = float(total[j, lv]), float(cov[j, lv]), length + d_len[j, lv]
        iterations += 1
    order = sorted((j for j in range(n) if level[j] > 0), key=lambda j: (sec_index[j], -w[j], j))
    parts = [(candidates[j].section, texts[j][level[j]]) for j in order]
    return Plan(
        prompt=_baseline_render(query, parts),
        selected=[(candidates[j].key, LEVELS[level[j]]) for j in order],
        utility=float(current),
        coverage=float(coverage),
        iterations=iterations,
        variants=variants,
    )


if __name__ == "__main__":
    sys.exit(main())
