"""Governance of a context bundle: the gate of /context/evaluate and the penalties."""

from __future__ import annotations

from typing import Any

import pytest

from somabrain.governance import Governance, verify
from somabrain.governance.http import (
    GovernanceRefusal,
    evaluate_input,
    govern,
    govern_bundle,
)
from somabrain.governance.service import ActiveConstitution
from tests.governance.helpers import make


def resources() -> dict[str, Any]:
    verified = verify(make())
    governance = Governance()
    governance.install(ActiveConstitution.build(verified), [verified])
    return {"governance": governance}


def test_evaluate_gate() -> None:
    res = resources()
    ok = govern(res, evaluate_input("acme", namespace="default", query="capital of France"))
    assert ok.allowed
    with pytest.raises(GovernanceRefusal) as exc:
        govern(res, evaluate_input("acme", namespace="default", query="q" * 20_000))
    assert exc.value.status == 403
    assert exc.value.message == "content of 20000 bytes exceeds the 16384-byte limit for evaluate"
    with pytest.raises(GovernanceRefusal) as exc:
        govern({}, evaluate_input("acme", namespace="default", query="q"))
    assert exc.value.status == 503 and exc.value.code == "not_governed"


def test_bundle_drops_blocked_memories_and_penalizes_sensitive_ones() -> None:
    res = resources()
    request = evaluate_input("acme", namespace="default", query="what do we know")
    result = govern_bundle(
        res, request, [("project",), ("pii", "project"), ("malware",), ()], [0.4, 0.3, 0.2, 0.1]
    )
    assert result.keep == [True, True, False, True]
    assert sum(result.weights) == pytest.approx(1.0)
    plain, sensitive, other = result.weights
    assert sensitive / plain == pytest.approx(0.3 * 0.65 / 0.4)
    assert other / plain == pytest.approx(0.1 / 0.4)
    assert result.policy == {
        "allowed": True,
        "penalties": {"pii": 0.35},
        "tags": ["sensitive", "sensitive:pii"],
        "directives": [
            "Some memories carry sensitive tags: use them to answer, but do not quote them "
            "verbatim or reveal them to other parties."
        ],
    }
    assert result.constitution_checksum == res["governance"].checksum


def test_bundle_without_memories() -> None:
    request = evaluate_input("acme", namespace="default", query="q")
    result = govern_bundle(resources(), request, [], [])
    assert result.keep == [] and result.weights == []
    assert result.policy["penalties"] == {}
