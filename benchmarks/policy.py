"""Policy benchmark: Rego decisions per second, in process, with the decision cache on and off.

What it measures (one process, one run, interleaved repeats), all on the default policy set
(``policies/``, evaluated by regorus exactly as the node does):

* ``uncached``: ``PolicyEngine(cache_size=0).decide`` on distinct inputs: every decision is a
  full Rego evaluation (input conversion, evaluation, normalization into a ``Decision``).
* ``cached.repeating``: the node's default (a 4096-entry LRU) on a stream drawn from 512
  distinct inputs (agents repeat the same tenant/namespace/tags/size): nearly all hits.
* ``cached.mixed``: 90% of the stream from that pool, 10% never seen before.
* ``cached.unique``: every input new: the cache's worst case (a miss plus an insert/evict).
* ``governance.decide``: ``Governance.decide``, the edge's call, cache on, repeating stream.
* ``multi_rule``: the same checks written one rule per check over five modules (the usual
  Rego style), uncached: why ``policies/somabrain.rego`` computes its decision in one body.

Ratios: ``<measurement>_vs_50k`` = decisions/s / 50,000 (the target is >= 1 for the node's
default configuration, ``cached.repeating``); ``cache_speedup`` = cached.repeating /
uncached; ``single_rule_vs_multi_rule`` = uncached / multi_rule.

    python benchmarks/policy.py --quick --json /tmp/policy.json
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``somabrain`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    Measurement,
    Target,
    best_of,
    parse_args,
    print_ratios,
    print_results,
    ratio,
    write_json,
)
from somabrain.governance import Governance, PolicyEngine, PolicyInput, verify
from somabrain.governance.constitution import draft
from somabrain.governance.dev import default_policies_dir, read_policy_source
from somabrain.governance.policy import Decision
from somabrain.governance.service import ActiveConstitution
from somabrain.governance.signing import SignerKey

TARGET = 50_000.0
TARGETS = (Target("cached.repeating_vs_50k", 1.0),)

_TAGS = ("pii", "secret", "health", "project", "todo", "meeting", "x", "y", "malware")
_NAMESPACES = ("default", "default", "default", "notes", "work", "_system")


def inputs(count: int, seed: int, *, unique_from: int = 0) -> list[PolicyInput]:
    """Realistic inputs; sizes are log-uniform 10 B .. 400 kB (some over the limits)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        tags = tuple(rng.sample(_TAGS, rng.choice((0, 0, 1, 1, 2, 3))))
        size = int(10 ** rng.uniform(1, 5.6))
        if unique_from:
            size = unique_from + i  # guaranteed never seen before
        out.append(
            PolicyInput(
                action=rng.choice(("remember", "remember", "evaluate")),
                tenant=f"tenant-{rng.randrange(50)}",
                namespace=rng.choice(_NAMESPACES),
                tags=tags,
                scopes=("memory:write",) if rng.random() < 0.9 else ("admin",),
                content_size=size,
            )
        )
    return out


def _engine(modules: dict[str, str], data: dict[str, Any], cache_size: int) -> PolicyEngine:
    return PolicyEngine(
        modules, {"version": 1, "checksum": "", "policy": data}, cache_size=cache_size
    )


def _timed(decide: Callable[[PolicyInput], Decision], stream: Sequence[PolicyInput]) -> float:
    start = time.perf_counter()
    for request in stream:
        decide(request)
    return time.perf_counter() - start


MULTI_RULE = {
    "decision.rego": """package somabrain.policy
import rego.v1
decision := {"allow": count(deny) == 0, "deny": deny, "penalties": penalties,
  "tags": tags, "directives": directives}
directives contains d if some d in data.constitution.policy.directives.always
""",
    "tenants.rego": """package somabrain.policy
import rego.v1
deny contains sprintf("tenant %q is not on the tenant allowlist", [input.tenant]) if {
  not tenant_allowed
}
deny contains sprintf("tenant %q is denied by the constitution", [input.tenant]) if {
  input.tenant in data.constitution.policy.tenants.deny
}
tenant_allowed if "*" in data.constitution.policy.tenants.allow
tenant_allowed if input.tenant in data.constitution.policy.tenants.allow
""",
    "namespaces.rego": """package somabrain.policy
import rego.v1
namespace_rules := object.get(data.constitution.policy.namespaces.tenants, input.tenant,
  data.constitution.policy.namespaces["default"])
deny contains sprintf("namespace %q is not open", [input.namespace]) if not namespace_allowed
deny contains sprintf("namespace %q is reserved (prefix %q)", [input.namespace, p]) if {
  some p in namespace_rules.reserved_prefixes
  startswith(input.namespace, p)
  not data.constitution.policy.scopes.admin in input.scopes
}
namespace_allowed if "*" in namespace_rules.allow
namespace_allowed if input.namespace in namespace_rules.allow
""",
    "tags.rego": """package somabrain.policy
import rego.v1
deny contains sprintf("tag %q is blocked", [t]) if {
  some t in input.tags
  t in data.constitution.policy.tags.blocked
}
penalties[t] := w if {
  some t in input.tags
  w := data.constitution.policy.tags.sensitive[t]
}
tags contains "sensitive" if count(penalties) > 0
tags contains sprintf("sensitive:%s", [t]) if some t, _ in penalties
directives contains d if {
  count(penalties) > 0
  some d in data.constitution.policy.directives.sensitive
}
""",
    "limits.rego": """package somabrain.policy
import rego.v1
size_limits := object.union(data.constitution.policy.limits.max_content_bytes,
  object.get(data.constitution.policy.limits.tenants, input.tenant, {}))
max_content_bytes := object.get(size_limits, input.action, size_limits["default"])
deny contains msg if {
  input.content_size > max_content_bytes
  msg := sprintf("content of %d bytes exceeds %d", [input.content_size, max_content_bytes])
}
deny contains "too many tags" if count(input.tags) > data.constitution.policy.limits.max_tags
deny contains sprintf("%s needs %q", [input.action, s]) if {
  s := data.constitution.policy.scopes.required[input.action]
  not s in input.scopes
}
""",
}


def _governance(modules: dict[str, str], data: dict[str, Any]) -> Governance:
    key = SignerKey.from_seed("bench", b"\x01" * 32)
    signed = draft(signers=[key.public_entry()], threshold=1, policy=data, policies=modules)
    from somabrain.governance import checksum

    signed.signatures.append(key.sign(checksum(signed.document)))
    verified = verify(signed)
    governance = Governance()
    governance.install(ActiveConstitution.build(verified), [verified])
    return governance


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement")
    parser.add_argument("--count", type=int, default=None, help="decisions per repeat")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args((__doc__ or "").split("\n\n")[0], argv, configure=_configure)
    count = args.count or (20_000 if args.quick else 100_000)
    repeats = args.repeats or (3 if args.quick else 5)
    modules, data = read_policy_source(default_policies_dir())

    # agreement check first: the multi-rule variant decides alike (allow and penalties)
    sample = inputs(2_000, seed=7)
    single, multi = _engine(modules, data, 0), _engine(MULTI_RULE, data, 0)
    agree = sum(
        (a := single.decide(r)).allowed == (b := multi.decide(r)).allowed
        and a.penalties == b.penalties
        for r in sample
    ) / len(sample)
    allowed = sum(single.decide(r).allowed for r in sample) / len(sample)

    pool = inputs(512, seed=1)
    rng = random.Random(2)
    repeating = [rng.choice(pool) for _ in range(count)]
    fresh = iter(inputs(count * (repeats + 1), seed=3, unique_from=10_000_000))
    mixed = [rng.choice(pool) if rng.random() < 0.9 else next(fresh) for _ in range(count)]
    distinct = inputs(count, seed=4)

    measurements = {
        name: Measurement(name, count, unit="decisions/s", note=note)
        for name, note in (
            ("uncached", "every decision evaluated"),
            ("cached.repeating", "512 distinct inputs, LRU 4096 (node default)"),
            ("cached.mixed", "90% from the pool, 10% new"),
            ("cached.unique", "every input new: miss + insert"),
            ("governance.decide", "the edge's call, cache on"),
            ("multi_rule", "same checks, one rule per check, uncached"),
        )
    }
    uncached = _engine(modules, data, 0)
    multi = _engine(MULTI_RULE, data, 0)
    governance = _governance(modules, data)
    for _ in range(repeats):
        # fresh caches per repeat, warmed on the pool (a running node's steady state)
        cached = _engine(modules, data, 4096)
        for request in pool:
            cached.decide(request)
        streams = {
            "uncached": (uncached.decide, distinct),
            "cached.repeating": (cached.decide, repeating),
            "cached.mixed": (cached.decide, mixed),
            "cached.unique": (cached.decide, [next(fresh) for _ in range(count)]),
            "governance.decide": (governance.decide, repeating),
            "multi_rule": (multi.decide, distinct),
        }
        samples = {
            name: best_of(1, functools.partial(_timed, decide, stream))
            for name, (decide, stream) in streams.items()
        }
        for name, seconds in samples.items():
            measurements[name].samples.extend(seconds)

    print(
        f"policy set: {', '.join(sorted(modules))} ({len(data)} data sections); "
        f"{allowed:.0%} of sample inputs allowed; multi-rule variant agrees on {agree:.1%}"
    )
    print_results(measurements.values(), title="Policy decisions (in process, regorus)")
    ratios: dict[str, float | None] = {
        f"{name}_vs_50k": ratio(m.rate, TARGET) for name, m in measurements.items()
    }
    ratios["cache_speedup"] = ratio(
        measurements["cached.repeating"].rate, measurements["uncached"].rate
    )
    ratios["single_rule_vs_multi_rule"] = ratio(
        measurements["uncached"].rate, measurements["multi_rule"].rate
    )
    print_ratios(
        ratios,
        targets=TARGETS,
        explanations={
            "cached.repeating_vs_50k": "node default (cache on) vs the 50k/s target",
            "uncached_vs_50k": "every decision a full Rego evaluation",
            "cache_speedup": "cached.repeating / uncached",
            "single_rule_vs_multi_rule": "one-body decision vs one rule per check",
        },
    )
    if args.json is not None:
        write_json(
            args.json,
            "policy",
            {
                **measurements,
                "allowed_fraction": allowed,
                "multi_rule_agreement": agree,
                "count": count,
                "repeats": repeats,
            },
            ratios,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
