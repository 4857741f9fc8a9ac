"""The feedback step (``apply_feedback``) against a real tenant memory, as the planner runs it
through the memory actor and the LoCoMo benchmark runs it directly."""

from __future__ import annotations

from typing import Any

import pytest

from somabrain.context.adaptation import AdaptationStore
from somabrain.context.feedback import apply_feedback, shown_top_k
from somabrain.memory import HashingEmbedder, Memory, TenantMemory, multiview
from somabrain.memory.associations import (
    ASSOCIATION,
    CO_USED,
    AssociationStore,
    AssociationView,
    FeedbackLearner,
    with_association,
)
from somabrain.memory.messages import ContextRecall, Reinforce
from somabrain.memory.recall import context_recall
from somabrain.memory.views import MULTIVIEW_WEIGHTS

pytestmark = pytest.mark.anyio
EMB = HashingEmbedder(dim=64)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_shown_top_k() -> None:
    assert shown_top_k(0, 10) == 10 and shown_top_k(30, 10) == 30 and shown_top_k(500, 10) == 100


async def test_a_feedback_adapts_reinforces_associates_and_links() -> None:
    store = AssociationStore.in_memory(EMB.dim)
    views = [*multiview(), AssociationView(store)]
    memory = TenantMemory.in_memory("acme", embedder=EMB, views=views, clock=lambda: 0.0)
    await memory.remember_batch([
        Memory(key="a", content="Melanie took the kids camping in the mountains"),
        Memory(key="b", content="Melanie: the kids roasted marshmallows by the fire"),
        Memory(key="c", content="Caroline painted a lake at sunrise"),
    ])  # fmt: skip
    learner = FeedbackLearner(memory, store)
    defaults = with_association(dict(MULTIVIEW_WEIGHTS), 0.5)
    adaptation = AdaptationStore(None, defaults)
    seen: list[Any] = []

    async def ask(message: Any) -> Any:
        seen.append(message)
        if isinstance(message, ContextRecall):
            return context_recall(memory, None, message.query, message.top_k,
                                  weights=message.weights, wm_top_k=0)  # fmt: skip
        assert isinstance(message, Reinforce)
        vector = EMB.embed([message.query])[0] if message.query else None
        return await learner.learn(message.keys, message.amount, query=message.query,
                                   vector=vector)  # fmt: skip

    query = "what did Melanie do with the kids"
    update, reinforced = await apply_feedback(
        adaptation, "acme", ask, query=query, used_keys=["a", "b"], utility=0.5
    )
    assert isinstance(seen[0], ContextRecall) and seen[0].top_k == 10
    assert seen[0].weights == defaults
    assert seen[1] == Reinforce(keys=("a", "b"), amount=0.5, query=query)
    assert update.applied and adaptation.get("acme").feedback == 1
    assert reinforced == {"a": 0.5, "b": 0.5}
    assert store.entries() == [(query, ("a", "b"))]
    assert [ln.rel for ln in memory.links()] == [CO_USED]
    hits = memory.recall("Melanie kids", 3, weights=adaptation.weights("acme"))
    assert {h.key for h in hits if h.views[ASSOCIATION] > 0} == {"a", "b"}

    # negative feedback: weights may move, salience falls, nothing is associated or linked
    seen.clear()
    _, reinforced = await apply_feedback(
        adaptation, "acme", ask, query="Caroline", used_keys=["c"], reward=-1.0
    )
    assert reinforced == {"c": -1.0} and len(store) == 1 and len(list(memory.links())) == 1
    # nothing used: no reinforcement message at all
    seen.clear()
    await apply_feedback(adaptation, "acme", ask, query="Caroline", used_keys=[])
    assert len(seen) == 1 and adaptation.get("acme").feedback == 3
