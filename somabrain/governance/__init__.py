"""Governance: the constitution (canonical JSON, SHA3-512 checksum, k-of-n Ed25519
signatures, rotation), Rego policy decisions, and the guardian actor.

The pure parts (:mod:`.canonical`, :mod:`.constitution`, :mod:`.signing`, :mod:`.policy`) do
no I/O; :mod:`.store` and :mod:`.dev` touch the disk; :mod:`.guardian` is the actor and
:mod:`.service` the read side the edge uses (``system.resources["governance"]``). See
``docs/governance.md``.
"""

from ._exceptions import (
    ConstitutionError,
    GovernanceError,
    GovernanceUnavailableError,
    KeyFileError,
    PolicyError,
    SignatureFailure,
)
from .canonical import canonical_json, checksum
from .constitution import (
    Document,
    SignedConstitution,
    VerifiedConstitution,
    draft,
    parse_signed,
    verify,
    verify_chain,
)
from .policy import Decision, PolicyEngine, PolicyInput
from .service import ActiveConstitution, Governance
from .settings import GovernanceSettings
from .signing import SignatureEntry, SignerKey

__all__ = [
    "ActiveConstitution",
    "ConstitutionError",
    "Decision",
    "Document",
    "Governance",
    "GovernanceError",
    "GovernanceSettings",
    "GovernanceUnavailableError",
    "KeyFileError",
    "PolicyEngine",
    "PolicyError",
    "PolicyInput",
    "SignatureEntry",
    "SignatureFailure",
    "SignedConstitution",
    "SignerKey",
    "VerifiedConstitution",
    "canonical_json",
    "checksum",
    "draft",
    "parse_signed",
    "verify",
    "verify_chain",
]
