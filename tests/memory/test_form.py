"""The form view: a memory's form features, the per-tenant model learned from feedback, and the
view that scores every memory by that model."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from somabrain.memory import HashingEmbedder, HybridIndex, Memory, TenantMemory, tokenize
from somabrain.memory.form import FEATURES, FORM, FormView, form_features, learn

EMB = HashingEmbedder(dim=64)
pytestmark = pytest.mark.anyio

#: Weights with the form view, and the same without it.
WITH_FORM = {"semantic": 1.0, "lexical": 1.0, FORM: 1.0}
WITHOUT_FORM = {"semantic": 1.0, "lexical": 1.0}
LONG = {"words": 1.0}  # a model that favours long memories


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # computation only: one backend is enough


def features(content: str) -> dict[str, float]:
    """The named form features of ``content``, as the index computes them."""
    values = form_features(content, len(tokenize(content)))
    assert len(values) == len(FEATURES)
    return dict(zip(FEATURES, values, strict=True))


def expected_scores(contents: Mapping[str, str], model: Mapping[str, float]) -> dict[str, float]:
    """The reference: sigmoid of each memory's ``model . features``, standardised over the
    memories given (the live ones)."""
    logits = {
        key: sum(model.get(name, 0.0) * value for name, value in features(text).items())
        for key, text in contents.items()
    }
    values = np.array(list(logits.values()))
    mean, spread = float(values.mean()), float(values.std())
    if spread <= 1e-9:
        return dict.fromkeys(logits, 0.5)
    return {k: 1.0 / (1.0 + math.exp(-(v - mean) / spread)) for k, v in logits.items()}


def tm() -> TenantMemory:
    return TenantMemory.in_memory("acme", embedder=EMB, views=(FormView(),))


def form_of(
    memory: TenantMemory, query: str, model: Mapping[str, float] | None
) -> dict[str, float]:
    """Every memory's form score in a recall of all of them."""
    hits = memory.recall(query, top_k=100, weights=WITH_FORM, form=model)
    return {h.key: h.views[FORM] for h in hits}


# ------------------------------------------------------------------------------ features


def test_a_question_sets_the_question_feature_and_an_exclamation_its_own() -> None:
    asked, told = features("Did you go to the lake?"), features("We went to the lake.")
    assert asked["question"] > 0.0 and told["question"] == 0.0
    assert asked["exclamation"] == told["exclamation"] == 0.0
    assert features("Wow, that's cool!")["exclamation"] > 0.0


def test_a_digit_sets_the_number_feature() -> None:
    assert features("She ran 5 miles in May")["number"] > 0.0
    assert features("She ran five miles in May")["number"] == 0.0
    assert features("the 2nd of June")["number"] > 0.0  # a digit inside a word counts


def test_the_counts_grow_with_length() -> None:
    short, long = features("painted a lake"), features("painted a lake at sunrise with her kids")
    assert long["words"] > short["words"] > 0.0
    assert long["content_words"] > short["content_words"] > 0.0
    # the content-word count is the one given (the index's lexical tokens), not recounted
    assert form_features("a b c", 5)[1] > form_features("a b c", 1)[1] > form_features("", 0)[1]
    assert form_features("", 0)[:2] == (0.0, 0.0)
    # stopwords count as words only
    assert features("it is the one")["content_words"] < features("it is the one")["words"]


def test_names_are_the_share_of_capitalised_words_after_the_first() -> None:
    assert features("Caroline went home early")["names"] == 0.0  # the first word is left out
    some, more = features("she met Melanie in town"), features("she met Melanie in Paris")
    assert more["names"] > some["names"] > 0.0
    assert more["names"] == pytest.approx(2 * some["names"])  # 2 of 5 words against 1 of 5
    # a share: the same names in a longer text weigh less
    assert features("she met Melanie in town after lunch today")["names"] < some["names"]


def test_first_person_is_the_share_of_first_person_words() -> None:
    mine = features("I told my sister about me")
    assert mine["first_person"] > 0.0
    assert features("she told her sister about him")["first_person"] == 0.0
    # case does not matter, and a share falls with length
    assert features("MY dog")["first_person"] == features("my dog")["first_person"]
    assert features("my dog and cat")["first_person"] < features("my dog")["first_person"]


# ------------------------------------------------------------------------------ learning

USED = [form_features("Caroline: I went to a LGBTQ support group on 7 May, it was great", 9)]
UNUSED = [form_features("Melanie: Wow, that's cool!", 3), form_features("Really?", 1)]


def test_no_pair_or_no_positive_reward_leaves_the_model_unchanged() -> None:
    model = {name: 0.1 * i for i, name in enumerate(FEATURES)}
    for used, unused, reward, rate in [
        ([], UNUSED, 1.0, 0.1),
        (USED, [], 1.0, 0.1),
        (USED, UNUSED, 0.0, 0.1),
        (USED, UNUSED, -1.0, 0.1),
        (USED, UNUSED, math.nan, 0.1),
        (USED, UNUSED, 1.0, 0.0),
        (USED, UNUSED, 1.0, -0.1),
    ]:
        after = learn(model, used, unused, reward=reward, rate=rate)
        assert after == model and after is not model
    # a model missing features (or empty) comes back with every feature, at 0
    assert learn({}, [], UNUSED, reward=1.0, rate=0.1) == dict.fromkeys(FEATURES, 0.0)


def test_a_step_moves_the_model_towards_the_used_memories_form() -> None:
    after = learn({}, USED, UNUSED, reward=1.0, rate=0.1)
    assert set(after) == set(FEATURES)
    assert after["words"] > 0.0 and after["content_words"] > 0.0  # used: longer
    assert after["number"] > 0.0 and after["first_person"] > 0.0  # used: 7 May, I
    assert after["question"] < 0.0 and after["exclamation"] < 0.0  # unused: ? and !
    # from zero every pair's slope is 1/2: the step is rate * r * mean(d) / 2
    d = np.array([np.subtract(u, n) for u in USED for n in UNUSED])
    assert list(after.values()) == pytest.approx(list(0.1 * 0.5 * d.mean(axis=0)))
    # the model now ranks the used memory's form above the unused ones
    m = np.array(list(after.values()))
    assert all(m @ np.array(USED[0]) > m @ np.array(n) for n in UNUSED)


def test_the_reward_scales_the_step_and_is_clipped_to_one() -> None:
    full = learn({}, USED, UNUSED, reward=1.0, rate=0.1)
    half = learn({}, USED, UNUSED, reward=0.5, rate=0.1)
    assert list(half.values()) == pytest.approx([v / 2 for v in full.values()])
    assert learn({}, USED, UNUSED, reward=7.0, rate=0.1) == full
    double = learn({}, USED, UNUSED, reward=1.0, rate=0.2)
    assert list(double.values()) == pytest.approx([2 * v for v in full.values()])


def test_steps_shrink_as_the_model_agrees_with_the_feedback() -> None:
    """The logistic loss: a pair the model already orders well pushes less."""
    model: dict[str, float] = {}
    steps = []
    for _ in range(30):
        after = learn(model, USED, UNUSED, reward=1.0, rate=0.5)
        steps.append(math.dist(list(after.values()), [model.get(n, 0.0) for n in FEATURES]))
        model = after
    assert all(b < a for a, b in itertools.pairwise(steps))


def test_learn_is_pure() -> None:
    model = {"words": 0.3, "question": -0.2}
    used = [list(USED[0])]
    unused = [list(u) for u in UNUSED]
    copies = (dict(model), [list(u) for u in used], [list(u) for u in unused])
    after = learn(model, used, unused, reward=1.0, rate=0.1)
    assert after != model
    assert (model, used, unused) == copies


# ------------------------------------------------------------------------------ the view


CONTENTS = {
    "short": "kayak trip",
    "medium": "Caroline: the kayak trip was on 3 June",
    "long": "Melanie: I took the kids on a kayak trip down the river, my first in years",
    "question": "kayak trip?",
}


async def remembered(contents: Mapping[str, str] = CONTENTS) -> TenantMemory:
    memory = tm()
    await memory.remember_batch([Memory(key=k, content=c) for k, c in contents.items()])
    return memory


async def test_without_a_model_every_memory_scores_a_half_and_the_ranking_is_unchanged() -> None:
    memory = await remembered()
    without = [h.key for h in memory.recall("kayak trip", weights=WITHOUT_FORM)]
    assert len(without) == len(CONTENTS)
    for model in (None, {}, dict.fromkeys(FEATURES, 0.0)):
        hits = memory.recall("kayak trip", weights=WITH_FORM, form=model)
        assert [h.key for h in hits] == without
        assert all(h.views[FORM] == 0.5 for h in hits)
    # the view is reported at a half with weight 0 too
    assert all(h.views[FORM] == 0.5 for h in memory.recall("kayak", weights=WITHOUT_FORM))


def index_of_twins(contents: Sequence[str]) -> HybridIndex:
    """An index whose memories have one vector and one set of lexical tokens, and differ in
    content only: equally relevant to every query, but for their form."""
    index = HybridIndex(EMB.dim, views=(FormView(),))
    tokens = ["kayak", "trip"]
    vector = EMB.embed(["kayak trip"])[0]
    index.add_batch(
        [Memory(key=f"m{i}", content=c) for i, c in enumerate(contents)],
        np.stack([vector] * len(contents)),
        [tokens] * len(contents),
    )
    return index


def test_a_model_for_long_memories_lifts_a_long_memory_over_an_equally_relevant_short_one() -> None:
    index = index_of_twins(["kayak trip", "we took the kayak trip down the long river at dawn"])
    vector = EMB.embed(["kayak trip"])[0]

    def search(form: Mapping[str, float] | None) -> list[tuple[str, float, float]]:
        hits = index.search(vector, ["kayak", "trip"], weights=WITH_FORM, form=form)
        return [(h.key, h.score, h.views[FORM]) for h in hits]

    plain = search(None)
    assert [k for k, _, _ in plain] == ["m0", "m1"]  # a tie: the first slot first
    assert plain[0][1] == plain[1][1]
    lifted = search(LONG)
    assert [k for k, _, _ in lifted] == ["m1", "m0"]
    (_, long_score, long_form), (_, short_score, short_form) = lifted
    assert long_form > 0.5 > short_form and long_score > short_score
    # the opposite model: the short one first
    assert [k for k, _, _ in search({"words": -1.0})] == ["m0", "m1"]


async def test_scores_are_the_standardised_sigmoid_of_the_model_and_in_unit_range() -> None:
    memory = await remembered()
    rng = random.Random(7)
    for model in [LONG, {"question": 2.0, "words": -0.5},
                  {n: rng.uniform(-50, 50) for n in FEATURES}, {"names": 1e6}]:  # fmt: skip
        got = form_of(memory, "kayak trip", model)
        assert got == pytest.approx(expected_scores(CONTENTS, model), abs=1e-5), model
        assert all(0.0 <= v <= 1.0 for v in got.values())
    got = form_of(memory, "kayak trip", LONG)
    assert got["long"] > got["medium"] > got["short"]
    assert got["long"] > 0.5 > got["short"]


async def test_a_model_change_is_not_answered_from_the_cached_column() -> None:
    memory = await remembered()
    longer, shorter = form_of(memory, "kayak", LONG), form_of(memory, "kayak", {"words": -1.0})
    assert longer["long"] > 0.5 > shorter["long"]
    assert form_of(memory, "kayak", LONG) == longer  # and back
    assert set(form_of(memory, "kayak", None).values()) == {0.5}


async def test_recalls_without_a_model_do_not_evict_the_models_column() -> None:
    memory = await remembered()
    view = next(v for v in memory.index._views if isinstance(v, FormView))
    column = view._column(memory.index, LONG)[0]
    view._column(memory.index, {})  # a plain recall between two context recalls
    assert view._column(memory.index, LONG)[0] is column  # not computed again
    assert not np.array_equal(view._column(memory.index, {})[0], column)


async def test_a_memory_added_or_changed_is_scored_and_standardised_with_the_others() -> None:
    contents = dict(CONTENTS)
    memory = await remembered(contents)
    before = form_of(memory, "kayak", LONG)
    contents["longest"] = (
        "Caroline: we paddled the kayak for hours and hours along the coast, past the old "
        "harbour, the lighthouse and the cliffs, until the sun went down behind the islands"
    )
    await memory.remember(Memory(key="longest", content=contents["longest"]))
    after = form_of(memory, "kayak", LONG)
    assert after == pytest.approx(expected_scores(contents, LONG), abs=1e-5)
    assert after["long"] < before["long"]  # no longer the longest
    # a memory remembered again under its key with a new content: its new form counts
    contents["short"] = contents["longest"] + " and back again the next morning at dawn"
    await memory.remember(Memory(key="short", content=contents["short"]))
    again = form_of(memory, "kayak", LONG)
    assert again == pytest.approx(expected_scores(contents, LONG), abs=1e-5)
    assert max(again, key=again.__getitem__) == "short"


async def test_forgotten_memories_are_left_out_of_the_standardisation() -> None:
    contents = {"a": "kayak trip", "b": "kayak boat", "c": CONTENTS["long"]}
    memory = await remembered(contents)
    got = form_of(memory, "kayak", LONG)
    assert got["c"] > 0.5 > got["a"] == got["b"]
    await memory.forget("c")
    # the two left have the same form: no spread among the live memories, a half each
    assert form_of(memory, "kayak", LONG) == {"a": 0.5, "b": 0.5}
    # and with many memories forgotten (and the index compacted), the live ones' scores are
    # their own standardisation, in [0, 1]
    extra = {f"x{i}": " ".join(["kayak"] * (1 + i)) + "!" * (i % 2) for i in range(40)}
    await memory.remember_batch([Memory(key=k, content=c) for k, c in extra.items()])
    live = {"a": contents["a"], "b": contents["b"]} | extra
    for i in range(0, 40, 3):
        await memory.forget(f"x{i}")
        del live[f"x{i}"]
    model = {"words": 2.0, "exclamation": -1.0}
    got = form_of(memory, "kayak", model)
    assert got == pytest.approx(expected_scores(live, model), abs=1e-5)
    memory.index.compact()
    assert form_of(memory, "kayak", model) == pytest.approx(got, abs=1e-6)
    assert all(0.0 <= v <= 1.0 for v in got.values())


async def test_candidate_pruning_keeps_the_exact_top_k_with_a_strong_form_view() -> None:
    """The view scores every memory but asks for none in ``prepare``: its bound must still
    let pruning find the memories the form lifts from far down the base ranking."""
    rng = random.Random(11)
    words = ["kayak", "river", "harbour", "lamp", "garden", "violin", "stone", "cloud"]
    memory = tm()
    await memory.remember_batch([
        Memory(key=f"m{i}", content=" ".join(rng.choices(words, k=rng.randint(1, 30))))
        for i in range(300)
    ])  # fmt: skip
    weights = {"semantic": 1.0, "lexical": 1.0, FORM: 3.0}
    for query in ("kayak", "river lamp", "cloud violin stone"):
        full = memory.recall(query, top_k=300, weights=weights, form=LONG)
        for k in (1, 3, 10):
            top = memory.recall(query, top_k=k, weights=weights, form=LONG)
            assert [h.key for h in top] == [h.key for h in full[:k]], (query, k)
