"""The policy engine: decisions, the decision cache, and failing closed."""

from __future__ import annotations

import gc
import sys
import threading
from typing import Any

import pytest

from somabrain.governance import Governance, GovernanceUnavailableError, PolicyError, verify
from somabrain.governance import policy as policy_module
from somabrain.governance.http import evaluate_input, penalize
from somabrain.governance.policy import PolicyEngine, PolicyInput
from somabrain.governance.service import ActiveConstitution
from tests.governance.helpers import DATA, MODULES, make


def engine(
    modules: dict[str, str] | None = None, cache_size: int = 16, **data: Any
) -> PolicyEngine:
    return PolicyEngine(
        MODULES if modules is None else modules,
        {"version": 3, "checksum": "c" * 128, "policy": {**DATA, **data}},
        version=3,
        checksum="c" * 128,
        cache_size=cache_size,
    )


def test_decision_fields() -> None:
    decision = engine().decide(PolicyInput(action="remember", tenant="acme", tags=("pii",)))
    assert decision.allowed and decision.explain == "allowed"
    assert decision.penalties == {"pii": 0.35}
    assert decision.tags == ("sensitive", "sensitive:pii")
    assert len(decision.directives) == 1
    assert (decision.constitution_version, decision.constitution_checksum) == (3, "c" * 128)
    assert decision.policy_field() == {
        "allowed": True,
        "penalties": {"pii": 0.35},
        "tags": ["sensitive", "sensitive:pii"],
        "directives": list(decision.directives),
    }
    audit = decision.audit_fields()
    assert audit["decision"] == "allow" and audit["attributes"]["policy.penalties"] == "pii=0.35"


def test_denial_explains_every_reason_in_order() -> None:
    decision = engine().decide(
        PolicyInput(action="remember", tenant="acme", tags=("malware",), content_size=10**7)
    )
    assert not decision.allowed
    assert decision.explain == (
        "content of 10000000 bytes exceeds the 262144-byte limit for remember; "
        'tag "malware" is blocked by the constitution'
    )
    assert decision.audit_fields()["decision"] == "deny"


def test_the_cache_answers_repeated_inputs() -> None:
    policy = engine(cache_size=2)
    a = PolicyInput(action="remember", tenant="a")
    b = PolicyInput(action="remember", tenant="b")
    c = PolicyInput(action="remember", tenant="c")
    first = policy.decide(a)
    assert policy.decide(a) is first
    policy.decide(b)
    policy.decide(c)  # evicts a (least recently used)
    stats = policy.statistics()
    assert (stats.evaluations, stats.cache_hits, stats.cache_size) == (3, 1, 2)
    policy.decide(a)
    assert policy.statistics().evaluations == 4
    uncached = engine(cache_size=0)
    uncached.decide(a)
    uncached.decide(a)
    assert uncached.statistics().evaluations == 2 and uncached.statistics().cache_size == 0


def test_cache_keys_include_every_field() -> None:
    policy = engine()
    small = policy.decide(PolicyInput(action="remember", tenant="a", content_size=10))
    big = policy.decide(PolicyInput(action="remember", tenant="a", content_size=10**7))
    assert small.allowed and not big.allowed


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        ({}, "no Rego modules"),
        ({"x.rego": "package other\nimport rego.v1\nx := 1\n"}, "package somabrain.policy"),
        ({"x.rego": "package somabrain.policy\nx := {"}, "x.rego does not compile"),
        ({"x.rego": "package somabrain.policy\nimport rego.v1\nx := 1\n"}, "no rule 'decision'"),
    ],
)
def test_bad_modules_are_refused(modules: dict[str, str], message: str) -> None:
    with pytest.raises(PolicyError, match=message) as exc:
        engine(modules)
    assert "Stack backtrace" not in str(exc.value)


@pytest.mark.parametrize(
    ("rego", "reason"),
    [
        ("decision := 1 if input.never\n", "the policies produced no decision"),
        ('decision := {"allow": "yes"}\n', "has no boolean 'allow'"),
        ('decision := {"allow": true, "deny": {"but no"}}\n', "but no"),
    ],
)
def test_malformed_decisions_fail_closed(rego: str, reason: str) -> None:
    source = "package somabrain.policy\nimport rego.v1\n" + rego
    decision = engine({"p.rego": source}).decide(PolicyInput(action="remember", tenant="a"))
    assert not decision.allowed
    assert reason in decision.explain


def test_penalties_are_clamped_to_unit_interval() -> None:
    source = (
        "package somabrain.policy\nimport rego.v1\n"
        'decision := {"allow": true, "penalties": {"a": 7, "b": -1, "c": "x"}}\n'
    )
    decision = engine({"p.rego": source}).decide(PolicyInput(action="x", tenant="a"))
    assert decision.penalties == {"a": 1.0, "b": 0.0}


def test_governance_fails_closed_until_installed() -> None:
    governance = Governance()
    request = PolicyInput(action="remember", tenant="acme")
    assert not governance.ready and "has not started" in governance.reason
    with pytest.raises(GovernanceUnavailableError):
        governance.decide(request)
    with pytest.raises(GovernanceUnavailableError):
        governance.validate({})
    assert governance.version_info()["ready"] is False
    verified = verify(make())
    governance.install(ActiveConstitution.build(verified), [verified])
    assert governance.ready and governance.reason == ""
    assert governance.decide(request).allowed
    assert governance.checksum == verified.checksum
    assert governance.statistics() is not None
    governance.fail("tampered")
    assert not governance.ready and governance.reason == "tampered"
    with pytest.raises(GovernanceUnavailableError, match="tampered"):
        governance.decide(request)


def test_penalties_scale_memory_weights_and_keep_the_total() -> None:
    weights = [0.5, 0.3, 0.2]
    tags = [("pii",), (), ("secret", "pii")]
    out = penalize(weights, tags, {"pii": 0.35, "secret": 0.5})
    assert sum(out) == pytest.approx(1.0)
    assert out[0] / out[1] == pytest.approx(0.5 * 0.65 / 0.3)
    assert out[2] / out[1] == pytest.approx(0.2 * 0.5 / 0.3)
    assert penalize(weights, tags, {}) == weights
    assert penalize([1.0], [("x",)], {"x": 1.0}) == [0.0]


def test_evaluate_input_measures_the_query_in_bytes() -> None:
    request = evaluate_input("acme", namespace="default", query="été", scopes={"b", "a"})
    assert (request.action, request.content_size, request.scopes) == ("evaluate", 5, ("a", "b"))


def test_an_engine_collected_on_another_thread_is_dropped_on_its_own() -> None:
    # regorus engines panic when dropped on a foreign thread; the cyclic GC may run anywhere
    class Holder:
        pass

    unraisable: list[BaseException | None] = []
    hook, sys.unraisablehook = sys.unraisablehook, lambda u: unraisable.append(u.exc_value)
    try:
        gc.collect()  # earlier tests' garbage, collected here (on its own thread)
        holder = Holder()
        holder.cycle = holder  # type: ignore[attr-defined]
        holder.engine = engine()  # type: ignore[attr-defined]
        del holder
        collector = threading.Thread(target=gc.collect)
        collector.start()
        collector.join()
        assert len(policy_module._ORPHANS.get(threading.get_ident(), [])) >= 1
        engine()  # building an engine drops this thread's orphans, here
        assert threading.get_ident() not in policy_module._ORPHANS
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert unraisable == []
