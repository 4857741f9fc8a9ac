"""Exponentiated-gradient adaptation and its durable per-tenant store."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from somabrain.context.adaptation import AdaptationSettings, AdaptationStore, adapt
from somabrain.context.feedback import reward_of, salience_amount, split_shown
from somabrain.memory import LogUnavailableError
from somabrain.memory.form import FEATURES, form_features, learn
from somabrain.memory.pg_log import PostgresStates, close_postgres_logs
from tests.servers import PostgresServer, free_port

W = {"semantic": 0.3, "lexical": 0.3, "graph": 0.3, "recency": 0.05, "salience": 0.05}
views = st.dictionaries(st.sampled_from(list(W)), st.floats(0, 1), min_size=5, max_size=5)


def test_weights_move_towards_the_view_that_ranked_the_used_memory() -> None:
    used = [{"semantic": 0.2, "lexical": 0.9, "graph": 0.1, "recency": 0.0, "salience": 0.5}]
    unused = [{"semantic": 0.8, "lexical": 0.1, "graph": 0.1, "recency": 0.0, "salience": 0.5}]
    u = adapt(W, used, unused)
    assert u.applied and u.pairs == 1
    assert u.weights_after["lexical"] > W["lexical"] and u.weights_after["semantic"] < W["semantic"]
    assert sum(u.weights_after.values()) == pytest.approx(1.0)


@given(st.lists(views, min_size=1, max_size=4), st.lists(views, min_size=1, max_size=4),
       st.floats(0, 1), st.integers(0, 1000))  # fmt: skip
def test_update_stays_on_the_floored_simplex_with_bounded_steps(pos, neg, reward, step) -> None:
    cfg = AdaptationSettings(min_weight=0.02, max_learning_rate=1.0)
    u = adapt(W, pos, neg, reward=reward, step=step, settings=cfg)
    after = u.weights_after
    assert sum(after.values()) == pytest.approx(1.0)
    assert all(v >= 0.02 - 1e-12 and math.isfinite(v) for v in after.values())
    assert u.learning_rate <= 1.0
    # one step moves each weight by at most a factor exp(rate * |g|), |g| <= 1 / tau
    for name in W:
        assert after[name] <= 1.0


def test_no_update_without_a_pair_or_a_reward() -> None:
    v = {n: 0.5 for n in W}
    assert not adapt(W, [], [v]).applied
    assert not adapt(W, [v], []).applied
    assert not adapt(W, [v], [v], reward=0.0).applied
    assert not adapt(W, [v], [v], reward=float("nan")).applied


def test_the_prior_pulls_each_update_towards_the_defaults() -> None:
    used = [{"semantic": 0.2, "lexical": 0.9, "graph": 0.1, "recency": 0.0, "salience": 0.5}]
    unused = [{"semantic": 0.8, "lexical": 0.1, "graph": 0.1, "recency": 0.0, "salience": 0.5}]
    free = adapt(W, used, unused, settings=AdaptationSettings(prior_pull=0.0), prior=W)
    pulled = adapt(W, used, unused, settings=AdaptationSettings(prior_pull=0.5), prior=W)
    home = adapt(W, used, unused, settings=AdaptationSettings(prior_pull=1.0), prior=W)
    assert W["lexical"] < pulled.weights_after["lexical"] < free.weights_after["lexical"]
    # the pulled weights are the geometric mean of the free step and the prior
    ratio = pulled.weights_after["lexical"] / pulled.weights_after["semantic"]
    free_ratio = free.weights_after["lexical"] / free.weights_after["semantic"]
    assert ratio == pytest.approx(math.sqrt(free_ratio * W["lexical"] / W["semantic"]))
    assert home.weights_after == pytest.approx(W)
    # a view the prior does not name keeps its share; without a prior nothing is pulled
    w6 = W | {"association": 0.5}
    pos = [u | {"association": 1.0} for u in used]
    neg = [u | {"association": 0.0} for u in unused]
    only = adapt(w6, pos, neg, settings=AdaptationSettings(prior_pull=1.0), prior=W)
    after = only.weights_after
    assert after["lexical"] / after["semantic"] == pytest.approx(W["lexical"] / W["semantic"])
    assert after["association"] > 0.5 / 1.5
    assert adapt(W, used, unused, prior=None).weights_after == free.weights_after


def test_feedback_helpers() -> None:
    assert reward_of(None, None) == 1.0
    assert reward_of(0.3, None) == 0.3 and reward_of(0.3, -2.0) == -1.0
    assert reward_of(float("inf"), None) == 0.0
    assert salience_amount(-0.5, 2.0) == -1.0


async def _roundtrip(tmp_path: Path) -> None:
    store = AdaptationStore(tmp_path, W)
    assert store.weights("acme") == W
    hi = {n: 0.0 for n in W} | {"graph": 1.0}
    lo = {n: 0.0 for n in W} | {"semantic": 1.0}
    u = store.record("acme", [hi], [lo], reward=1.0, now=5.0)
    assert u.applied and u.weights_after["graph"] > W["graph"]
    await store.save("acme")
    again = AdaptationStore(tmp_path, W | {"semantic": 0.3})
    state = again.get("acme")
    assert state.weights == u.weights_after and state.updates == 1 and state.feedback == 1
    assert len(state.history) == 1 and state.history[0].at == 5.0
    assert again.weights("other") == W  # tenants are separate
    again.reset("acme")
    await again.save("acme")
    assert AdaptationStore(tmp_path, W).get("acme").updates == 0


@pytest.mark.anyio
async def test_state_survives_a_restart_and_reset(tmp_path: Path) -> None:
    await _roundtrip(tmp_path)


def test_corrupt_state_file_falls_back_to_defaults(tmp_path: Path) -> None:
    store = AdaptationStore(tmp_path, W)
    store.record("acme", [{"graph": 1.0}], [{"semantic": 1.0}])
    anyio.run(store.save, "acme")
    [path] = tmp_path.glob("*.json")
    path.write_text("{not json")
    fresh = AdaptationStore(tmp_path, W)
    assert fresh.weights("acme") == W
    assert list(tmp_path.glob("*.corrupt-*"))
    json.loads(json.dumps(fresh.weights("acme")))


def test_history_is_bounded_and_disabled_adaptation_changes_nothing() -> None:
    store = AdaptationStore(None, W, AdaptationSettings(history_size=3, enabled=False))
    for _ in range(5):
        u = store.record("t", [{"graph": 1.0}], [{"semantic": 1.0}])
        assert not u.applied
    state = store.get("t")
    assert len(state.history) == 3 and state.feedback == 5 and state.weights == W
    anyio.run(store.save, "t")  # no directory: nothing to write


def test_split_shown() -> None:
    from somabrain.memory import Memory, RecallHit

    hits = [RecallHit(key=k, score=1.0, views={"x": float(i)}, memory=Memory(content=k))
            for i, k in enumerate("abc")]  # fmt: skip
    pos, neg = split_shown(hits, ["b", "zz"])
    assert pos == [{"x": 1.0}] and neg == [{"x": 0.0}, {"x": 2.0}]


#: Form features (``memory.form``) of a long used memory and of two short unused ones.
LONG_FORM = form_features("Caroline: I went to a support group on 7 May and it helped", 7)
SHORT_FORMS = [form_features("Wow, cool!", 2), form_features("Really?", 1)]


@pytest.mark.anyio
async def test_the_form_model_is_learned_kept_and_reset(tmp_path: Path) -> None:
    store = AdaptationStore(tmp_path, W)
    assert store.form("acme") is None and store.get("acme").form == {}  # nothing learned yet
    hi = {n: 0.0 for n in W} | {"graph": 1.0}
    lo = {n: 0.0 for n in W} | {"semantic": 1.0}
    store.record("acme", [hi], [lo], reward=0.8, forms=([LONG_FORM], SHORT_FORMS))
    form = store.form("acme")
    assert form is not None and set(form) == set(FEATURES)
    assert form["words"] > 0.0 and form["question"] < 0.0 and form["number"] > 0.0
    rate = store.settings.form_rate
    assert form == learn({}, [LONG_FORM], SHORT_FORMS, reward=0.8, rate=rate)
    form["words"] = 99.0  # a copy: the state is not changed through it
    assert store.get("acme").form["words"] != 99.0
    learned = store.get("acme").form
    # a feedback without a pair of forms (or without a positive reward) leaves the model
    store.record("acme", [hi], [lo])
    store.record("acme", [hi], [lo], forms=([LONG_FORM], []))
    store.record("acme", [hi], [lo], forms=([], SHORT_FORMS))
    store.record("acme", [hi], [lo], reward=-1.0, forms=([LONG_FORM], SHORT_FORMS))
    assert store.get("acme").form == learned and store.get("acme").feedback == 5
    # a second step starts from the first
    store.record("acme", [hi], [lo], forms=([LONG_FORM], SHORT_FORMS))
    second = learn(learned, [LONG_FORM], SHORT_FORMS, reward=1.0, rate=rate)
    assert store.get("acme").form == second != learned
    assert store.form("other") is None  # tenants are separate

    await store.save("acme")
    again = AdaptationStore(tmp_path, W)
    assert again.form("acme") == second
    assert again.get("acme").feedback == 6
    assert again.reset("acme").form == {}
    assert again.form("acme") is None
    await again.save("acme")
    assert AdaptationStore(tmp_path, W).form("acme") is None


def test_no_form_is_learned_with_adaptation_off_or_a_zero_rate() -> None:
    for settings in (AdaptationSettings(enabled=False), AdaptationSettings(form_rate=0.0)):
        store = AdaptationStore(None, W, settings)
        store.record("t", [{"graph": 1.0}], [{"semantic": 1.0}], forms=([LONG_FORM], SHORT_FORMS))
        assert store.form("t") is None and store.get("t").feedback == 1
    faster = AdaptationStore(None, W, AdaptationSettings(form_rate=0.1))
    slower = AdaptationStore(None, W, AdaptationSettings(form_rate=0.05))
    for store in (faster, slower):
        store.record("t", [{"graph": 1.0}], [{"semantic": 1.0}], forms=([LONG_FORM], SHORT_FORMS))
    fast, slow = faster.form("t"), slower.form("t")
    assert fast is not None and slow is not None
    assert fast["words"] == pytest.approx(2 * slow["words"])  # from zero: the step is linear


USED = [{"semantic": 0.2, "lexical": 0.9, "graph": 0.1, "recency": 0.0, "salience": 0.5}]
UNUSED = [{"semantic": 0.8, "lexical": 0.1, "graph": 0.1, "recency": 0.0, "salience": 0.5}]


@pytest.mark.integration
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # asyncpg
async def test_states_in_postgres_are_shared_by_stores_on_one_database(
    postgres_server: PostgresServer, anyio_backend: str
) -> None:
    """Two nodes' stores on one database (a cluster member standing in for another): what one
    learned and saved, the other loads; a store that forgot a tenant loads it again."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    nodes = [{}, {}]  # each node's resources: its own pool to the database
    a, b = (
        AdaptationStore(None, W, backend=PostgresStates(r, postgres_server.url, "adaptation"))
        for r in nodes
    )
    try:
        await a.ensure(tenant)
        a.record(tenant, USED, UNUSED, forms=([LONG_FORM], SHORT_FORMS))
        await a.save(tenant)
        await b.ensure(tenant)
        assert b.weights(tenant) == a.weights(tenant) != W
        assert b.form(tenant) == a.form(tenant) is not None
        assert b.get(tenant).feedback == 1
        b.record(tenant, USED, UNUSED)
        await b.save(tenant)
        a.forget(tenant)  # it moved to b, and comes back with what b learned
        await a.ensure(tenant)
        assert a.get(tenant).feedback == 2 and a.weights(tenant) == b.weights(tenant)
    finally:
        for resources in nodes:
            await close_postgres_logs(resources)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_unreachable_state_database_serves_the_defaults_without_keeping_them(
    anyio_backend: str,
) -> None:
    url = f"postgresql://soma@127.0.0.1:{free_port()}/postgres"
    resources: dict[str, object] = {}
    store = AdaptationStore(
        None, W, backend=PostgresStates(resources, url, "adaptation", timeout=2.0)
    )
    await store.ensure("acme")
    assert store.weights("acme") == W
    assert "acme" not in store._states  # the next request tries the database again
    store.reset("acme")
    with pytest.raises(LogUnavailableError):
        await store.save("acme")
