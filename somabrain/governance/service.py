"""The node's governance state, shared with the edge: ``system.resources["governance"]``.

Why a service object next to the guardian actor: a policy decision is taken on every
remember and evaluate, and it only *reads* the active constitution. Asking the guardian for
each one would put an actor hop (and the guardian's mailbox) on every request's path; reading
an immutable snapshot costs nothing. So the split is:

* :class:`Governance` (this module) answers reads, synchronously: :meth:`Governance.decide`,
  :meth:`Governance.validate`, :meth:`Governance.version_info`. It holds one immutable
  :class:`ActiveConstitution` (constitution + compiled policies + its decision cache) and
  swaps it as a whole, so a reader sees either the old version or the new one, never a mix.
* the guardian actor (:mod:`.guardian`) owns every change: it loads and verifies versions,
  stores them, installs them here, and publishes revisions. One writer, in its mailbox order.

Fail closed: until a valid constitution is installed (or after the guardian found the
stored one invalid), :meth:`Governance.decide` raises :class:`GovernanceUnavailableError`
with the reason, :attr:`Governance.ready` is false, and the edge answers 503.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ._exceptions import ConstitutionError, GovernanceUnavailableError, PolicyError
from .constitution import VerifiedConstitution
from .policy import DEFAULT_CACHE_SIZE, Decision, PolicyEngine, PolicyInput, PolicyStatistics

__all__ = ["ActiveConstitution", "Governance"]

_VALIDATE_DEFAULTS: dict[str, Any] = {
    "action": "validate",
    "namespace": "default",
    "tags": [],
    "scopes": [],
    "content_size": 0,
}


class ActiveConstitution:
    """A verified constitution with its compiled policies. Immutable once built."""

    __slots__ = ("activated_at", "constitution", "engine")

    def __init__(self, constitution: VerifiedConstitution, engine: PolicyEngine) -> None:
        self.constitution = constitution
        self.engine = engine
        self.activated_at = time.time()

    @classmethod
    def build(
        cls, constitution: VerifiedConstitution, *, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> ActiveConstitution:
        """Compile the constitution's policies; a policy that does not compile refuses the
        whole document (``ConstitutionError("invalid_policy")``)."""
        doc = constitution.doc
        data = {
            "version": doc.version,
            "checksum": constitution.checksum,
            "policy": doc.policy,
            "articles": doc.articles,
        }
        try:
            engine = PolicyEngine(
                doc.policies,
                data,
                version=doc.version,
                checksum=constitution.checksum,
                cache_size=cache_size,
            )
        except PolicyError as exc:
            raise ConstitutionError("invalid_policy", f"version {doc.version}: {exc}") from None
        return cls(constitution, engine)


class Governance:
    """Reads of the active constitution and policy decisions; changed by the guardian."""

    def __init__(self, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.cache_size = cache_size
        self._active: ActiveConstitution | None = None
        self._history: tuple[VerifiedConstitution, ...] = ()
        self._reason = "the constitution guardian has not started"

    # ------------------------------------------------------------------ reads

    @property
    def ready(self) -> bool:
        return self._active is not None

    @property
    def reason(self) -> str:
        """Why the node is not governed (empty when it is)."""
        return "" if self._active is not None else self._reason

    @property
    def active(self) -> ActiveConstitution | None:
        return self._active

    @property
    def history(self) -> tuple[VerifiedConstitution, ...]:
        return self._history

    @property
    def checksum(self) -> str:
        """The active constitution's checksum (for bundles and audit events), or ``""``."""
        active = self._active
        return active.constitution.checksum if active is not None else ""

    def require(self) -> ActiveConstitution:
        active = self._active
        if active is None:
            raise GovernanceUnavailableError(self._reason)
        return active

    def decide(self, request: PolicyInput) -> Decision:
        """The policy decision for one request; raises when no constitution is active."""
        active = self._active
        if active is None:
            raise GovernanceUnavailableError(self._reason)
        return active.engine.decide(request)

    def validate(self, rego_input: Mapping[str, Any]) -> Decision:
        """Evaluate an arbitrary input (``POST /constitution/validate``), uncached. Fields the
        node always sends and the input leaves out get the node's defaults (namespace
        ``default``, no tags, no scopes, size 0), so a partial input is judged as the same
        request would be."""
        return self.require().engine.evaluate({**_VALIDATE_DEFAULTS, **rego_input})

    def statistics(self) -> PolicyStatistics | None:
        active = self._active
        return active.engine.statistics() if active is not None else None

    def version_info(self) -> dict[str, Any]:
        """``GET /constitution/version``: the active version, or why there is none."""
        active = self._active
        if active is None:
            return {"ready": False, "reason": self._reason, "history": []}
        return {
            "ready": True,
            **active.constitution.summary(),
            "activated_at": active.activated_at,
            "history": [{"version": c.version, "checksum": c.checksum} for c in self._history],
        }

    # ------------------------------------------------------------------ changes (guardian)

    def install(self, active: ActiveConstitution, history: Sequence[VerifiedConstitution]) -> None:
        self._history = tuple(history)
        self._active = active
        self._reason = ""

    def fail(self, reason: str) -> None:
        """No valid constitution: refuse every decision from now on, saying ``reason``."""
        self._active = None
        self._reason = reason
