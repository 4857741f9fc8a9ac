"""The feedback step (``apply_feedback``) against a real tenant memory, as the planner runs it
through the memory actor and the LoCoMo benchmark runs it directly."""

from __future__ import annotations

from typing import Any

import pytest

from somabrain.context.adaptation import AdaptationStore
from somabrain.context.feedback import apply_feedback, shown_forms, shown_top_k
from somabrain.memory import HashingEmbedder, Memory, RecallHit, TenantMemory, multiview, tokenize
from somabrain.memory.associations import (
    ASSOCIATION,
    CO_USED,
    AssociationStore,
    AssociationView,
    FeedbackLearner,
    with_association,
)
from somabrain.memory.form import FORM, FormView, form_features, learn, with_form
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


def test_shown_forms() -> None:
    contents = {"a": "Caroline: I went to Paris on 7 May", "b": "Wow!", "c": "did you go?"}
    hits = [RecallHit(key=k, score=1.0, views={}, memory=Memory(key=k, content=c))
            for k, c in contents.items()]  # fmt: skip
    used, unused = shown_forms(hits, ["b", "zz"])
    features = {k: form_features(c, len(tokenize(c))) for k, c in contents.items()}
    assert used == [features["b"]]
    assert unused == [features["a"], features["c"]]
    assert shown_forms(hits, []) == ([], list(features.values()))


async def test_a_feedback_sends_the_form_model_and_learns_from_the_shown_memories() -> None:
    """The recall of what was shown carries the tenant's form model; the model then takes a
    step towards the form of the memories the agent used (here: the long ones)."""
    memory = TenantMemory.in_memory("acme", embedder=EMB, views=[*multiview(), FormView()],
                                    clock=lambda: 0.0)  # fmt: skip
    await memory.remember_batch([
        Memory(key="long1", content="Melanie took the kids camping by the lake for a week in "
                                    "July and they hiked every day"),
        Memory(key="long2", content="the kids went camping with Melanie near the mountains "
                                    "and roasted marshmallows by the fire at night"),
        Memory(key="short1", content="kids camping?"),
        Memory(key="short2", content="Camping, wow!"),
        Memory(key="short3", content="the kids"),
    ])  # fmt: skip
    adaptation = AdaptationStore(None, with_form(dict(MULTIVIEW_WEIGHTS), 0.2))
    seen: list[Any] = []
    shown: list[list[RecallHit]] = []

    async def ask(message: Any) -> Any:
        seen.append(message)
        if isinstance(message, ContextRecall):
            found = context_recall(memory, None, message.query, message.top_k,
                                   weights=message.weights, wm_top_k=0,
                                   form=message.form)  # fmt: skip
            shown.append(found.hits)
            return found
        assert isinstance(message, Reinforce)
        return await memory.reinforce(message.keys, message.amount)

    rate = adaptation.settings.form_rate
    await apply_feedback(adaptation, "acme", ask, query="kids camping", used_keys=["long1"],
                         utility=0.8)  # fmt: skip
    assert isinstance(seen[0], ContextRecall) and seen[0].form is None  # nothing learned yet
    assert {h.key for h in shown[0]} == {"long1", "long2", "short1", "short2", "short3"}
    assert all(h.views[FORM] == 0.5 for h in shown[0])
    first = adaptation.form("acme")
    assert first is not None and first["words"] > 0.0
    assert first == learn({}, *shown_forms(shown[0], ["long1"]), reward=0.8, rate=rate)

    # the next feedback's recall carries that model, and ranks by it
    seen.clear()
    await apply_feedback(adaptation, "acme", ask, query="kids camping", used_keys=["long2"])
    assert isinstance(seen[0], ContextRecall) and seen[0].form == first
    views = {h.key: h.views[FORM] for h in shown[1]}
    assert views["long1"] > 0.5 and views["long2"] > 0.5 and views["short3"] < 0.5
    second = adaptation.form("acme")
    assert second == learn(first, *shown_forms(shown[1], ["long2"]), reward=1.0, rate=rate)
    assert second is not None and second["words"] > first["words"]

    # a negative reward, or nothing used among the memories shown: the model stays
    await apply_feedback(adaptation, "acme", ask, query="kids camping", used_keys=["short1"],
                         reward=-1.0)  # fmt: skip
    await apply_feedback(adaptation, "acme", ask, query="kids camping", used_keys=["nowhere"])
    assert adaptation.form("acme") == second
    assert adaptation.get("acme").feedback == 4
