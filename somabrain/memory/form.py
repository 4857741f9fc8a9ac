"""The ``form`` view: which *kind* of memory a tenant's feedback uses, learned, as a recall view.

Salience lifts the memories feedback named; associations lift them for queries like the one
that used them. Neither says anything about the memories feedback has not named yet. Yet the
memories agents use tend to look alike: on LoCoMo the turns questions are about are longer
than the others, carry numbers and names, and are seldom questions themselves ("Caroline: I
went to a LGBTQ support group yesterday" against "Melanie: Wow, that's cool!"). The form view
learns that per tenant, from the memories' form alone:

* every memory gets a small feature vector ``form_features`` of its content (``FEATURES``:
  word and content-word counts, whether it asks or exclaims, numbers, capitalised words,
  first-person words), computed once when it is indexed (per-slot columns of the index);
* the tenant's model is a weight per feature, learned from feedback by the planner
  (``learn``): for every (used, shown-but-unused) pair of a feedback, a step of the logistic
  ranking loss on their feature difference, ``m <- m + rate * r * mean sigmoid(-m . d) * d``.
  It starts at zero and is kept with the tenant's adaptation state (``context.adaptation``);
* a recall carries the model (``RecallQuery.form``), and the view scores every memory
  ``sigmoid(z)``, ``z`` its ``m . f`` standardised over the tenant's live memories. Only the
  model's direction matters, so the view's spread (and with it what its weight means) does not
  grow with the number of feedbacks. A zero model scores every memory 0.5: no change in ranking.

Measured on LoCoMo (``benchmarks/locomo.py``, feedback on half of each conversation's
questions, recall@10 on the other half): the documented figures are in ``docs/context.md``.
Why form and not the embedding: a model over the 384 embedding dimensions learned from ~100
feedbacks per tenant did not generalise as well (about a third of the gain), and the form
features cost seven floats per memory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .ranking import F32, I64, Mask, RecallQuery, with_share

if TYPE_CHECKING:
    from .hybrid import HybridIndex

__all__ = ["FEATURES", "FORM", "FormView", "form_features", "learn", "with_form"]

#: The view's name (in weights and in every hit's ``views``).
FORM = "form"

#: The features, in order. Each is scaled to vary by about one unit across ordinary text, so
#: that one learning rate suits them all.
FEATURES = (
    "words",  # log(1 + words)
    "content_words",  # log(1 + words that are not stopwords)
    "question",  # it asks something ("?")
    "number",  # it holds a digit
    "names",  # share of capitalised words after the first
    "exclamation",  # it exclaims ("!")
    "first_person",  # share of "I", "me", "my", "mine", "myself"
)

#: The per-slot columns of ``HybridIndex`` that hold them.
COLUMNS = tuple(f"form.{name}" for name in FEATURES)

_WORD = re.compile(r"\w+")
_FIRST_PERSON = re.compile(r"\b(?:i|me|my|mine|myself)\b", re.IGNORECASE)
_DIGIT = re.compile(r"\d")
_COUNT_SCALE = 1.0 / 0.7
_FLAG_SCALE = 2.5
_SHARE_SCALE = 8.0
_NO_SLOTS = np.empty(0, dtype=np.int64)  # the view adds no candidates


def form_features(content: str, content_words: int) -> tuple[float, ...]:
    """The features of a memory's ``content`` (``content_words``: its lexical tokens)."""
    words = _WORD.findall(content)
    n = len(words)
    capitalised = sum(1 for w in words[1:] if w[0].isupper())
    first_person = len(_FIRST_PERSON.findall(content))
    return (
        math.log1p(n) * _COUNT_SCALE,
        math.log1p(content_words) * _COUNT_SCALE,
        _FLAG_SCALE if "?" in content else 0.0,
        _FLAG_SCALE if _DIGIT.search(content) else 0.0,
        _SHARE_SCALE * capitalised / (1 + n),
        _FLAG_SCALE if "!" in content else 0.0,
        _SHARE_SCALE * first_person / (1 + n),
    )


def learn(
    model: Mapping[str, float],
    used: Sequence[Sequence[float]],
    unused: Sequence[Sequence[float]],
    *,
    reward: float,
    rate: float,
) -> dict[str, float]:
    """One feedback's step (module docstring): the features of the used and of the
    shown-but-unused memories, the reward clipped to [0, 1]. Pure: returns the new model over
    ``FEATURES`` (``model``'s values, a missing feature 0, when there is no pair or no positive
    reward)."""
    r = min(1.0, max(0.0, reward)) if math.isfinite(reward) else 0.0
    m = np.array([float(model.get(name, 0.0)) for name in FEATURES])
    if not used or not unused or r == 0.0 or rate <= 0.0:
        return dict(zip(FEATURES, m.tolist(), strict=True))
    pos = np.asarray(used, dtype=np.float64)
    neg = np.asarray(unused, dtype=np.float64)
    d = (pos[:, None, :] - neg[None, :, :]).reshape(-1, len(FEATURES))
    slope = 0.5 * (1.0 - np.tanh((d @ m) / 2.0))  # sigmoid(-m . d), without overflow
    m = m + rate * r * (slope[:, None] * d).mean(axis=0)
    return dict(zip(FEATURES, m.tolist(), strict=True))


def with_form(weights: dict[str, float], fraction: float) -> dict[str, float]:
    """``weights`` plus the ``form`` view at ``fraction`` of their sum (unless they name it
    already, or ``fraction`` is 0)."""
    return with_share(weights, FORM, fraction)


class FormView:
    """``sigmoid`` of the query's form model over each memory's features, standardised."""

    name = FORM

    def prepare(self, index: HybridIndex, query: RecallQuery, eligible: Mask) -> I64:
        return _NO_SLOTS

    def bound(self, index: HybridIndex, query: RecallQuery) -> float:
        return self._column(index, query.form)[1]

    def scores(self, index: HybridIndex, query: RecallQuery, slots: I64) -> F32:
        scores: F32 = self._column(index, query.form)[0][slots]
        return scores

    def _column(self, index: HybridIndex, model: Mapping[str, float]) -> tuple[F32, float]:
        """Every slot's score and their maximum, kept until the index or the model changes
        (a tenant's model changes only on feedback). Recalls without a model (plain
        ``/memory/recall``) keep a cache entry of their own, so that they do not evict the
        tenant's model's between two context recalls."""
        coefficients = tuple(float(model.get(name, 0.0)) for name in FEATURES)
        slot = self.name if any(coefficients) else f"{self.name}.none"
        cached = index.view_state.get(slot)
        if cached is not None and cached[0] == index.version and cached[1] == coefficients:
            return cached[2], cached[3]
        column = _scores(index, coefficients)
        top = float(column.max(initial=0.0))
        index.view_state[slot] = (index.version, coefficients, column, top)
        return column, top


def _scores(index: HybridIndex, coefficients: tuple[float, ...]) -> F32:
    n = index.size
    logit = np.zeros(n, dtype=np.float64)
    for name, c in zip(COLUMNS, coefficients, strict=True):
        if c:
            logit += c * index.column(name).astype(np.float64)
    alive: npt.NDArray[np.bool_] = index.vectors.alive
    live = logit[alive]
    spread = float(live.std()) if live.shape[0] else 0.0
    if not (spread > 1e-9 and math.isfinite(spread)):
        return np.full(n, 0.5, dtype=np.float32)
    z = (logit - float(live.mean())) / spread
    column: F32 = (0.5 * (1.0 + np.tanh(z / 2.0))).astype(np.float32)  # sigmoid(z)
    return column
