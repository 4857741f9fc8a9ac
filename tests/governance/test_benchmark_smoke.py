"""``benchmarks/policy.py`` runs with tiny counts and writes the common JSON shape."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import policy


def test_policy_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "policy.json"
    assert policy.main(["--quick", "--count", "300", "--repeats", "1", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["benchmark"] == "policy"
    assert document["results"]["multi_rule_agreement"] == 1.0
    for name in ("uncached", "cached.repeating", "cached.unique", "governance.decide"):
        assert document["results"][name]["rate"] > 0
    assert {"cache_speedup", "cached.repeating_vs_50k", "single_rule_vs_multi_rule"} <= set(
        document["ratios"]
    )
