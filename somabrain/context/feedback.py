"""From a feedback to the adaptation's inputs. Pure.

A feedback says which memories the agent used (``used_keys``) for a query; the planner recalls
the query again with the tenant's current weights (recall is deterministic, so the agent saw
these memories unless memories or weights changed since) and splits the shown memories into
used and unused, whose view scores feed ``adaptation.adapt``. Used keys that are not among the
shown memories do not enter the weight update (the views did not rank them, so there is no pair
to learn from) but are reinforced all the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..memory.types import RecallHit

__all__ = ["reward_of", "salience_amount", "split_shown"]


def reward_of(utility: float | None, reward: float | None) -> float:
    """The feedback's reward in [-1, 1]: ``reward``, else ``utility``, else 1 (a feedback that
    names used memories and says nothing else is a success)."""
    value = reward if reward is not None else utility if utility is not None else 1.0
    if not math.isfinite(value):
        return 0.0
    return min(1.0, max(-1.0, float(value)))


def salience_amount(reward: float, per_feedback: float) -> float:
    """Salience strength added to each used memory: positive feedback reinforces, negative
    weakens."""
    return per_feedback * reward


def split_shown(
    hits: Sequence[RecallHit], used_keys: Sequence[str]
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """View scores of the shown memories the agent used, and of those it did not."""
    used = set(used_keys)
    pos = [h.views for h in hits if h.key in used]
    neg = [h.views for h in hits if h.key not in used]
    return pos, neg
