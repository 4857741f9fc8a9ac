"""From a feedback to what it changes: the adaptation's inputs, and the one feedback step.

A feedback says which memories the agent used (``used_keys``) for a query; the planner recalls
the query again with the tenant's current weights (recall is deterministic, so the agent saw
these memories unless memories or weights changed since) and splits the shown memories into
used and unused, whose view scores feed ``adaptation.adapt``. Used keys that are not among the
shown memories do not enter the weight update (the views did not rank them, so there is no pair
to learn from) but are reinforced all the same. The tenant's memory actor then reinforces the
used memories, associates them with the query and links those used together
(``somabrain.memory.associations.FeedbackLearner``). Used keys the tenant does not hold (never
remembered, or forgotten or expired since the bundle), or that are in a namespace closed to the
caller, change nothing and are reported back (``unknown_keys``, decided by the planner before
this step): the feedback still applies to the others.

``apply_feedback`` is that step, with the tenant's memory reached through ``ask`` (a
``ContextRecall`` and a ``Reinforce`` message): the planner passes its memory-actor round trip,
the LoCoMo benchmark a direct call, so both run the same code. The other functions are pure.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..memory.form import form_features
from ..memory.messages import ContextRecall, Reinforce
from ..memory.text import tokenize
from ..memory.types import RecallHit
from .adaptation import AdaptationStore, Update

__all__ = [
    "apply_feedback",
    "reward_of",
    "salience_amount",
    "shown_forms",
    "shown_top_k",
    "split_shown",
]


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


def shown_top_k(used: int, default_top_k: int) -> int:
    """How many memories the feedback's recall treats as shown: the default bundle size, or
    more when the agent says it used more (at most 100)."""
    return max(default_top_k, min(used, 100))


def split_shown(
    hits: Sequence[RecallHit], used_keys: Sequence[str]
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """View scores of the shown memories the agent used, and of those it did not."""
    used = set(used_keys)
    pos = [h.views for h in hits if h.key in used]
    neg = [h.views for h in hits if h.key not in used]
    return pos, neg


def shown_forms(
    hits: Sequence[RecallHit], used_keys: Sequence[str]
) -> tuple[list[tuple[float, ...]], list[tuple[float, ...]]]:
    """Form features (``memory.form``) of the shown memories the agent used, and of those it
    did not."""
    used = set(used_keys)
    pos: list[tuple[float, ...]] = []
    neg: list[tuple[float, ...]] = []
    for h in hits:
        content = h.memory.content
        (pos if h.key in used else neg).append(form_features(content, len(tokenize(content))))
    return pos, neg


async def apply_feedback(
    store: AdaptationStore,
    tenant: str,
    ask: Callable[[Any], Awaitable[Any]],
    *,
    query: str,
    used_keys: Sequence[str],
    utility: float | None = None,
    reward: float | None = None,
    default_top_k: int = 10,
    reinforce: float = 1.0,
    namespace: str | None = None,
    at: float | None = None,
    session_id: str | None = None,
) -> tuple[Update, dict[str, float]]:
    """One feedback: recall what was shown, adapt the weights, reinforce and associate the
    used memories. Returns the weight update and the reinforced keys' new strengths. The
    adaptation state is changed in memory; the caller saves it (``store.save``)."""
    weights = store.weights(tenant)
    recall = await ask(
        ContextRecall(
            query=query,
            top_k=shown_top_k(len(used_keys), default_top_k),
            namespace=namespace,
            weights=weights,
            at=at,
            wm_top_k=0,
            form=store.form(tenant),
        )
    )
    value = reward_of(utility, reward)
    used, unused = split_shown(recall.hits, used_keys)
    update = store.record(tenant, used, unused, reward=value,
                          forms=shown_forms(recall.hits, used_keys))  # fmt: skip
    reinforced: dict[str, float] = {}
    amount = salience_amount(value, reinforce)
    if used_keys and amount:
        reinforced = await ask(
            Reinforce(keys=tuple(used_keys), amount=amount, session_id=session_id, query=query)
        )
    return update, reinforced
