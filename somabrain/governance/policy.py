"""Rego policy evaluation, in process (regorus), with a small decision cache.

A :class:`PolicyEngine` is built once per constitution: it compiles the constitution's Rego
modules and loads ``data.constitution`` (``version``, ``checksum``, ``policy``,
``articles``). :meth:`PolicyEngine.decide` evaluates ``data.somabrain.policy.decision`` for
one :class:`PolicyInput` and returns a :class:`Decision`.

The decision cache
------------------
A decision depends only on the input and the constitution, and an engine belongs to exactly
one constitution, so decisions can be cached by input without ever going stale: a new
constitution means a new engine and an empty cache. The cache is a bounded LRU keyed by the
input's fields (``content_size`` included: a policy may compare it with anything). Inputs
that repeat (the same tenant, namespace and tags at the same size) are answered in well
under a microsecond; ``benchmarks/policy.py`` measures both paths. ``cache_size=0`` turns
it off.

Missing or malformed decisions fail closed: a policy that produces no decision, or one
whose ``allow`` is not a boolean, refuses the request with an explanation saying so.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import regorus

from ._exceptions import PolicyError

__all__ = [
    "DECISION_RULE",
    "Decision",
    "PolicyEngine",
    "PolicyInput",
    "PolicyStatistics",
    "load_policy_dir",
]

DECISION_RULE = "data.somabrain.policy.decision"
DECISION_PACKAGE = "data.somabrain.policy"
DEFAULT_CACHE_SIZE = 4096


class PolicyInput(msgspec.Struct, frozen=True, kw_only=True):
    """What the node tells the policies about one request (``input`` in Rego)."""

    action: str
    tenant: str
    namespace: str = "default"
    tags: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    content_size: int = 0

    def to_rego(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "tenant": self.tenant,
            "namespace": self.namespace,
            "tags": list(self.tags),
            "scopes": list(self.scopes),
            "content_size": self.content_size,
        }


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """A policy decision. Shared by every request the cache answers with it: read-only.

    ``policy_field()`` is what goes into a bundle's ``policy``; ``audit_fields()`` into the
    audit event.
    """

    allowed: bool
    reasons: tuple[str, ...] = ()
    penalties: dict[str, float] = {}
    tags: tuple[str, ...] = ()
    directives: tuple[str, ...] = ()
    constitution_version: int = 0
    constitution_checksum: str = ""

    @property
    def explain(self) -> str:
        """The reasons, for people: why a request was refused (or ``"allowed"``)."""
        if self.allowed:
            return "allowed"
        return "; ".join(self.reasons) or "denied by policy"

    def policy_field(self) -> dict[str, Any]:
        """``{allowed, penalties, tags, directives}``: the bundle's ``policy`` field."""
        return {
            "allowed": self.allowed,
            "penalties": dict(self.penalties),
            "tags": list(self.tags),
            "directives": list(self.directives),
        }

    def audit_fields(self) -> dict[str, Any]:
        """The decision for an audit event (``somabrain.audit.AuditDraft``): ``decision``,
        ``reason``, ``constitution_checksum`` and scalar ``attributes`` (the audit schema
        holds no floats, so penalties are written as ``tag=weight`` text)."""
        return {
            "decision": "allow" if self.allowed else "deny",
            "reason": "" if self.allowed else self.explain,
            "constitution_checksum": self.constitution_checksum,
            "attributes": {
                "policy.constitution_version": self.constitution_version,
                "policy.tags": ",".join(self.tags),
                "policy.penalties": ",".join(f"{t}={w:g}" for t, w in self.penalties.items()),
            },
        }


class PolicyStatistics(msgspec.Struct, frozen=True):
    evaluations: int
    cache_hits: int
    cache_size: int
    cache_capacity: int


_BACKTRACE = re.compile(r"\n\s*Stack backtrace:.*", re.DOTALL)


def _clean_error(exc: BaseException) -> str:
    """regorus errors carry a Rust backtrace when RUST_BACKTRACE is set: keep the message."""
    return _BACKTRACE.sub("", str(exc)).strip()


_COLLECTIONS = (set, frozenset, list, tuple)


def _strings(value: Any) -> tuple[str, ...]:
    if not value or not isinstance(value, _COLLECTIONS):
        return ()
    return tuple(sorted(str(v) for v in value))


# regorus engines are bound to the thread that created them: dropping one on another thread
# panics in its destructor. The cyclic garbage collector may free an engine's owner on any
# thread (an actor system is one big cycle), so an engine collected on a foreign thread is
# parked here instead and dropped by its own thread the next time that thread builds one.
_ORPHANS: dict[int, list[Any]] = {}
_ORPHANS_LOCK = threading.RLock()


def _drain_orphans() -> None:
    with _ORPHANS_LOCK:
        orphans = _ORPHANS.pop(threading.get_ident(), None)
    del orphans  # dropped here, on the thread that created them


class PolicyEngine:
    """Compiled Rego modules plus the constitution's data; evaluates decisions.

    Use an engine from the thread that built it (the node's event loop): regorus engines
    cannot move between threads.
    """

    _engine: Any = None
    _owner = 0

    def __init__(
        self,
        modules: Mapping[str, str],
        data: Mapping[str, Any],
        *,
        version: int = 0,
        checksum: str = "",
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if not modules:
            raise PolicyError("no Rego modules: a constitution needs its policies")
        _drain_orphans()
        self._owner = threading.get_ident()
        engine = regorus.Engine()
        for name, source in sorted(modules.items()):
            try:
                engine.add_policy(name, source)
            except RuntimeError as exc:
                raise PolicyError(f"policy {name} does not compile: {_clean_error(exc)}") from None
        packages = set(engine.get_packages())
        if DECISION_PACKAGE not in packages:
            raise PolicyError(
                f"no module declares package somabrain.policy (found {sorted(packages)}): "
                f"the node evaluates {DECISION_RULE}"
            )
        try:
            engine.set_input({})
            engine.eval_rule(DECISION_RULE)
        except RuntimeError as exc:
            if "not a valid rule path" in str(exc):
                raise PolicyError(
                    f"package somabrain.policy defines no rule 'decision' ({DECISION_RULE})"
                ) from None
            # any other error here comes from the empty probe input, not from the modules
        try:
            engine.add_data({"constitution": dict(data)})
        except RuntimeError as exc:
            raise PolicyError(f"policy data rejected: {_clean_error(exc)}") from None
        self._engine = engine
        self.version = version
        self.checksum = checksum
        self._capacity = max(0, cache_size)
        self._cache: OrderedDict[PolicyInput, Decision] = OrderedDict()
        self._evaluations = 0
        self._hits = 0

    def __del__(self) -> None:
        engine = self._engine
        if engine is None:
            return
        try:
            if threading.get_ident() != self._owner:
                with _ORPHANS_LOCK:
                    _ORPHANS.setdefault(self._owner, []).append(engine)
        except Exception:  # interpreter shutdown: nothing left to protect
            pass

    def statistics(self) -> PolicyStatistics:
        return PolicyStatistics(self._evaluations, self._hits, len(self._cache), self._capacity)

    def clear_cache(self) -> None:
        self._cache.clear()

    def decide(self, request: PolicyInput) -> Decision:
        """The decision for ``request``, from the cache when it was taken before."""
        cache = self._cache
        decision = cache.get(request)
        if decision is not None:
            self._hits += 1
            cache.move_to_end(request)
            return decision
        decision = self.evaluate(request.to_rego())
        if self._capacity:
            cache[request] = decision
            if len(cache) > self._capacity:
                cache.popitem(last=False)
        return decision

    def evaluate(self, rego_input: Mapping[str, Any]) -> Decision:
        """Evaluate an arbitrary input (``POST /constitution/validate``), never cached."""
        self._evaluations += 1
        engine = self._engine
        try:
            engine.set_input(dict(rego_input))
            raw = engine.eval_rule(DECISION_RULE)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise PolicyError(f"policy evaluation failed: {_clean_error(exc)}") from None
        return self._decision(raw)

    def _decision(self, raw: Any) -> Decision:
        version, checksum = self.version, self.checksum
        if not isinstance(raw, dict):
            return Decision(
                allowed=False,
                reasons=(f"the policies produced no decision ({DECISION_RULE} is undefined)",),
                constitution_version=version,
                constitution_checksum=checksum,
            )
        allow = raw.get("allow")
        reasons = _strings(raw.get("deny"))
        if not isinstance(allow, bool):
            allow = False
            reasons = (*reasons, "the policy decision has no boolean 'allow'")
        elif allow and reasons:
            allow = False  # a policy that lists reasons to deny does not allow
        penalties: dict[str, float] = {}
        raw_penalties = raw.get("penalties")
        if raw_penalties and isinstance(raw_penalties, dict):
            for tag, weight in raw_penalties.items():
                if isinstance(weight, int | float) and not isinstance(weight, bool):
                    penalties[str(tag)] = min(1.0, max(0.0, float(weight)))
        return Decision(
            allowed=allow,
            reasons=reasons,
            penalties=penalties,
            tags=_strings(raw.get("tags")),
            directives=_strings(raw.get("directives")),
            constitution_version=version,
            constitution_checksum=checksum,
        )

    def eval_rule(self, rule: str, rego_input: Mapping[str, Any] | None = None) -> Any:
        """Evaluate any rule (tests of the policies use this for their ``test_`` rules)."""
        try:
            if rego_input is not None:
                self._engine.set_input(dict(rego_input))
            return self._engine.eval_rule(rule)
        except RuntimeError as exc:
            raise PolicyError(_clean_error(exc)) from None


def load_policy_dir(directory: str, *, include_tests: bool = False) -> dict[str, str]:
    """The ``*.rego`` modules of a directory by file name (``*_test.rego`` left out)."""
    modules: dict[str, str] = {}
    for path in sorted(Path(directory).glob("*.rego")):
        if path.name.endswith("_test.rego") and not include_tests:
            continue
        modules[path.name] = path.read_text("utf-8")
    return modules
