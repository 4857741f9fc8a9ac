"""Governance errors.

::

    SomaError (somabrain.actors)
    └── GovernanceError
        ├── ConstitutionError          a document is refused; .code says why, .failures which
        │                              signatures did not count
        ├── KeyFileError               a signer key file is missing, malformed or too open
        ├── PolicyError                a Rego module does not compile, or evaluation failed
        └── GovernanceUnavailableError no valid constitution is active: the node fails closed
                                       (HTTP 503 with the reason)
"""

from __future__ import annotations

from collections.abc import Sequence

from ..actors import SomaError

__all__ = [
    "ConstitutionError",
    "GovernanceError",
    "GovernanceUnavailableError",
    "KeyFileError",
    "PolicyError",
    "SignatureFailure",
]


class GovernanceError(SomaError):
    """Base class of the governance errors."""


class SignatureFailure:
    """Why one signature entry did not count: ``code`` is one of ``unknown_signer``,
    ``duplicate_signer``, ``wrong_checksum``, ``bad_signature``, ``malformed``."""

    __slots__ = ("code", "index", "message", "signer")

    def __init__(self, index: int, signer: str, code: str, message: str) -> None:
        self.index = index
        self.signer = signer
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"SignatureFailure({self.index}, {self.signer!r}, {self.code!r})"

    def __str__(self) -> str:
        return f"signature #{self.index} ({self.signer or '?'}): {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "signer": self.signer,
            "code": self.code,
            "message": self.message,
        }


class ConstitutionError(GovernanceError):
    """A constitution document is refused.

    ``code`` is stable and machine-readable: ``malformed``, ``invalid_field``,
    ``insufficient_signatures``, ``rotation_not_approved``, ``version_not_newer``,
    ``wrong_previous``, ``version_conflict``, ``genesis_mismatch``, ``invalid_policy``,
    ``missing``. ``failures`` lists the signature entries that did not count (with their
    reason), so that "2 of 3 valid signatures" also says which one failed and why.
    """

    def __init__(self, code: str, message: str, failures: Sequence[SignatureFailure] = ()) -> None:
        self.code = code
        self.failures = tuple(failures)
        detail = "; ".join(str(f) for f in self.failures)
        super().__init__(f"{message} ({detail})" if detail else message)
        self.reason = str(self)


class KeyFileError(GovernanceError):
    """A signer key file cannot be used."""


class PolicyError(GovernanceError):
    """A Rego module failed to compile or a policy evaluation failed."""


class GovernanceUnavailableError(GovernanceError):
    """No valid constitution is active, so nothing may be decided (fail closed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"no valid constitution: {reason}")
        self.reason = reason
