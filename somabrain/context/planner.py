"""The prompt planner: pick which memories go into the prompt, and how much of each, by
hill-climbing a utility. Pure logic, deterministic for the same input.

A *variant* of the prompt gives each candidate memory a level: left out, ``short`` (its first
``short_chars`` characters, cut at a word) or ``full``. Its utility is

    U(S) = sum_i w_i * max_{j in S} sim(i, j) * f(level_j)
           - length_penalty * chars(prompt(S)) / max_prompt_chars
           - count_penalty  * |S| / max_memories

where ``w`` are the candidates' weights (summing to 1), ``sim`` the cosine of their embeddings
clipped to [0, 1] (1 on the diagonal) and ``f`` is 1 for ``full`` and ``short_value`` for
``short``. The first term is *weighted coverage*: a candidate counts as covered by the most
similar memory in the prompt, so a near-duplicate of a chosen memory adds little and the
planner spends the length budget on different facts. Coverage is monotone submodular, so a
greedy climb is within (1 - 1/e) of the best variant, and the penalties stop it from adding
memories that cost more length than they cover. Variants over ``max_prompt_chars`` or
``max_memories`` are never considered.

The climb is steepest ascent from the empty prompt: every iteration scores every move (change
one candidate's level, including removing it) and takes the best if it improves U by more than
``1e-9``; ties go to the lower (candidate, level) so the result is deterministic. It stops at a
local optimum or after ``max_iterations``. Moves are scored in one vectorised pass each, and the
chosen move's figures become the current ones (no rescoring). At 20-25 candidates the cost is
the number of numpy calls per move, not their arithmetic, so the climb keeps what a move does
not change (the coverage columns, the length and count changes, work buffers) and updates it:
a plan of about 20 moves takes ~0.28 ms on the reference machine, 2.6x less than rescoring
everything each move (``benchmarks/planner.py``, which keeps that version as its baseline, as
``tests/context/test_planner.py`` keeps it as the oracle the plans must equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = [
    "LEVELS",
    "Candidate",
    "Plan",
    "PlannerSettings",
    "plan",
    "render_prompt",
    "shorten",
]

LEVELS = ("omit", "short", "full")
_EPS = 1e-9


class PlannerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The utility's constants (config section ``context.planner``)."""

    length_penalty: float = 0.15
    count_penalty: float = 0.05
    short_value: float = 0.6
    short_chars: int = 160
    max_iterations: int = 64


class Candidate(NamedTuple):
    key: str
    content: str
    weight: float
    section: str = "memories"  # "memories" (long-term) or "working_memory"


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    prompt: str
    #: ``(key, level)`` of every memory in the prompt, in prompt order.
    selected: list[tuple[str, str]]
    utility: float
    coverage: float
    iterations: int
    variants: int  # utility evaluations (moves scored)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: max(1, limit - 1)]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


# The length change of a move (j -> lv) is ``cost[j, lv] - cost[j, level] + header_moves *
# header[j]``; ``header_moves`` depends on j's level now, the number of members of j's section
# now (0, 1, 2 or more) and lv: a section's header is paid by its first member and freed with
# its last. Staying at the current level is not a move: an infinite length puts it over every
# limit (``_STAY``). The count change depends on whether j is in the prompt and lv.
_LEVEL, _OWN, _NEW = np.ix_(range(3), range(3), range(3))
_HEADER_MOVES = ((_NEW > 0) & (_LEVEL == 0) & (_OWN == 0)).astype(np.float64)
_HEADER_MOVES -= (_NEW == 0) & (_LEVEL > 0) & (_OWN == 1)
_STAY = np.where(_NEW == _LEVEL, np.inf, 0.0)
_COUNT_MOVES = np.array([[0.0, 1.0, 1.0], [-1.0, 0.0, 0.0]])

_HEADERS = {"memories": "Relevant memories:", "working_memory": "Recent in this session:"}


def _line(text: str) -> str:
    return "- " + (text if _normal(text) else " ".join(text.split())) + "\n"


def _normal(text: str) -> bool:
    """Whether ``" ".join(text.split()) == text``: most memories have no whitespace to
    collapse, and checking that costs less than splitting (space is the only printable
    whitespace character)."""
    return text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " "


def render_prompt(query: str, parts: Sequence[tuple[str, str]]) -> str:
    """The prompt for ``(section, text)`` parts: a block per section, then the query."""
    return _render(query, [(section, _line(text)) for section, text in parts])


def _render(query: str, lines: Sequence[tuple[str, str]]) -> str:
    out = []
    for section in _HEADERS:
        block = [line for s, line in lines if s == section]
        if block:
            out.append(_HEADERS[section] + "\n" + "".join(block) + "\n")
    out.append(f"Query: {query}\n")
    return "".join(out)


def plan(
    query: str,
    candidates: Sequence[Candidate],
    similarity: npt.ArrayLike | None,
    *,
    max_prompt_chars: int,
    max_memories: int,
    settings: PlannerSettings | None = None,
) -> Plan:
    """The best prompt variant found by hill-climbing (module docstring).

    ``similarity``: the (n, n) cosine matrix of the candidates (None: all distinct)."""
    cfg = settings or PlannerSettings()
    n = len(candidates)
    base = render_prompt(query, [])
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
    sections = sorted({c.section for c in candidates})
    sec_of = [sections.index(c.section) for c in candidates]
    sec_cost = [len(_HEADERS.get(s, s)) + 2 for s in sections]
    # Each memory's line at each level (left out: none) and its length.
    lines: list[tuple[str, str, str]] = []
    cost: list[float] = []
    for c in candidates:
        normal = _normal(c.content)
        full = "- " + (c.content if normal else " ".join(c.content.split())) + "\n"
        short = shorten(c.content, cfg.short_chars)
        if short is c.content:
            short = full
        elif normal:  # a prefix of a normal text, cut after a word, is normal too
            short = "- " + short + "\n"
        else:
            short = _line(short)
        lines.append(("", short, full))
        cost += (0.0, len(short), len(full))
    costs = np.array(cost).reshape(n, 3)
    header = np.array([sec_cost[s] for s in sec_of], dtype=np.float64)[:, None, None, None]
    # (j, level now, members of j's section now, lv): the length change of the move.
    len_table = costs[:, None, None, :] - costs[:, :, None, None] + _HEADER_MOVES * header + _STAY
    # No move adds more than a line and a header: under this length no move is over the limit.
    roomy = max_prompt_chars - max(cost) - max(sec_cost)
    len_scale = cfg.length_penalty / max_prompt_chars
    count_scale = cfg.count_penalty / max(1, max_memories)
    # An infinite length scores -inf (refused) only when the length penalty is positive;
    # otherwise the refused moves are masked explicitly.
    mask_always = not len_scale > 0

    # Every figure below is computed with the same floating-point operations as scoring each
    # move from scratch, so the results (and ties) are exactly those of a plain climb.
    level = [0] * n
    counts = [0] * len(sections)
    # The moves' figures for the current variant, (level, candidate) like ``cov`` below.
    d_len = np.ascontiguousarray(len_table[:, 0, 0, :].T)
    d_count = np.repeat(_COUNT_MOVES[0][:, None], n, axis=1)
    members = iterations = variants = 0
    length = float(len(base))
    coverage = 0.0
    current = coverage - len_scale * length - count_scale * members

    # Coverage of row i by every column but j: the row's best, or its second best when j is
    # the best. Then each move (j -> lv) is one column swap, scored for all at once. Only the
    # moved column of ``contrib`` changes per move, and the buffers are reused: with 20-25
    # candidates the cost is the number of numpy calls, not their arithmetic.
    sim_at_level = value[:, None, None] * sim[None, :, :]  # (level, i, j)
    contrib = sim_at_level[0].copy()  # sim * value[level[j]] for each column j
    rows = np.arange(n)
    top1 = contrib[:, 0]
    top2 = np.zeros(n)
    ordered = np.empty((n, n))
    without = np.empty((n, n))
    covered = np.empty((3, n, n))
    while iterations < cfg.max_iterations:
        arg1 = contrib.argmax(axis=1)
        if n > 1:  # (numpy's vectorised sort is quicker than a partition at these sizes)
            ordered[...] = contrib
            ordered.sort(axis=1)
            top1, top2 = ordered[:, n - 1], ordered[:, n - 2]
        without[...] = top1[:, None]
        without[rows, arg1] = top2
        np.maximum(without, sim_at_level, out=covered)
        cov = w @ covered  # (3 levels, n candidates)
        new_len = d_len + length
        over = None
        if mask_always or members >= max_memories or length > roomy:
            if members >= max_memories:
                new_len[1:, [lv == 0 for lv in level]] = np.inf  # no more adds
            over = new_len > max_prompt_chars
            refused = int(np.count_nonzero(over))
            if refused == 3 * n:
                break
            new_len[over] = 0.0  # masked below (and 0 * inf would be nan)
        else:
            refused = n  # the non-moves, at an infinite length and a utility of -inf
        variants += 3 * n - refused
        total = cov - len_scale * new_len
        total -= count_scale * (members + d_count)
        if over is not None:
            total[over] = -np.inf
        flat = int(total.T.argmax())  # first maximum: lowest (candidate, level)
        j, lv = divmod(flat, 3)
        best = float(total[lv, j])
        if best <= current + _EPS:
            break
        # The move's own figures: scoring the new variant from scratch gives the same ones.
        current, coverage, length = best, float(cov[lv, j]), length + float(d_len[lv, j])
        iterations += 1
        was, level[j] = level[j], lv
        contrib[:, j] = sim_at_level[lv, :, j]
        s = sec_of[j]
        before = counts[s]
        if (was > 0) != (lv > 0):
            step = 1 if lv > 0 else -1
            counts[s] += step
            members += step
            d_count[:, j] = _COUNT_MOVES[int(lv > 0)]
        own = min(counts[s], 2)
        if min(before, 2) != own:  # a header is paid or freed: every move of the section
            mates = [k for k in range(n) if sec_of[k] == s]
            d_len[:, mates] = len_table[mates, [level[k] for k in mates], own].T
        else:
            d_len[:, j] = len_table[j, lv, own]
    order = sorted((j for j in range(n) if level[j] > 0), key=lambda j: (sec_of[j], -w[j], j))
    return Plan(
        prompt=_render(query, [(candidates[j].section, lines[j][level[j]]) for j in order]),
        selected=[(candidates[j].key, LEVELS[level[j]]) for j in order],
        utility=float(current),
        coverage=float(coverage),
        iterations=iterations,
        variants=variants,
    )
