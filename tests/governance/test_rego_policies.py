"""Runs the Rego tests of ``policies/`` (every ``test_`` rule of every ``*_test.rego``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from somabrain.governance import PolicyError
from somabrain.governance.dev import default_policies_dir, read_policy_source
from somabrain.governance.policy import PolicyEngine, load_policy_dir

POLICIES = default_policies_dir()
_PACKAGE = re.compile(r"^package\s+([\w.]+)", re.MULTILINE)
_TEST_RULE = re.compile(r"^(test_\w+)\s+if\b", re.MULTILINE)


def rego_tests() -> list[tuple[str, str]]:
    found = []
    for path in sorted(POLICIES.glob("*_test.rego")):
        source = path.read_text("utf-8")
        match = _PACKAGE.search(source)
        assert match, f"{path.name} has no package"
        found += [
            (f"data.{match.group(1)}.{name}", path.name) for name in _TEST_RULE.findall(source)
        ]
    return found


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    modules, data = read_policy_source(POLICIES)
    modules.update(load_policy_dir(str(POLICIES), include_tests=True))
    return PolicyEngine(modules, {"version": 1, "checksum": "", "policy": data})


def test_the_policy_tests_are_found() -> None:
    assert len(rego_tests()) >= 10


@pytest.mark.parametrize(("rule", "source"), rego_tests())
def test_rego(engine: PolicyEngine, rule: str, source: str) -> None:
    assert engine.eval_rule(rule) is True, f"{source}: {rule} failed"


def test_a_false_rego_test_would_fail(engine: PolicyEngine) -> None:
    # a test rule whose body fails is undefined (None), which ``is True`` rejects
    denied = {"action": "remember", "tenant": "acme", "namespace": "_x", "tags": [],
              "scopes": [], "content_size": 1}  # fmt: skip
    assert engine.eval_rule("data.somabrain.policy.decision", denied)["allow"] is False
    with pytest.raises(PolicyError, match="not a valid rule path"):
        engine.eval_rule("data.somabrain.policy_test.no_such_rule")


def test_data_json_is_the_default_policy_data() -> None:
    _, data = read_policy_source(Path(POLICIES))
    assert set(data) >= {"tenants", "namespaces", "tags", "limits", "scopes", "directives"}
