"""What the constitution guardian answers: ``ask`` its ref, or request ``soma.gov.<op>``.

Requests and replies are frozen msgspec Structs (tagged, so they cross NATS unchanged).
Refusals that are part of the protocol (a document that fails verification) come back as a
:class:`LoadResult` with ``accepted=False``, not as exceptions.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .policy import Decision, PolicyInput

__all__ = [
    "REVISIONS_SUBJECT",
    "SUBJECT_PREFIX",
    "Check",
    "Decision",
    "GetVersion",
    "GuardianRequest",
    "Load",
    "LoadResult",
    "Revision",
    "Validate",
    "VersionInfo",
]

#: Each accepted version is published here (bridged to the Kafka topic of the same name).
REVISIONS_SUBJECT = "soma.constitution.revisions"
#: The guardian answers requests on ``soma.gov.check``, ``.validate``, ``.load``, ``.version``.
SUBJECT_PREFIX = "soma.gov"


class Check(msgspec.Struct, frozen=True, tag="gov.check"):
    """Decide one request (same answer as ``Governance.decide``, through the mailbox)."""

    input: PolicyInput


class Validate(msgspec.Struct, frozen=True, tag="gov.validate"):
    """Evaluate an arbitrary policy input; replies with a :class:`Decision`."""

    input: dict[str, Any]


class Load(msgspec.Struct, frozen=True, tag="gov.load"):
    """Verify a signed constitution (JSON bytes or decoded) and, if valid, make it active."""

    document: Any
    source: str = "api"


class GetVersion(msgspec.Struct, frozen=True, tag="gov.version"):
    pass


GuardianRequest = Check | Validate | Load | GetVersion


class LoadResult(msgspec.Struct, frozen=True, kw_only=True, tag="gov.load_result"):
    accepted: bool
    version: int | None = None
    checksum: str | None = None
    #: ``ConstitutionError.code`` when refused (``insufficient_signatures``...).
    code: str | None = None
    reason: str | None = None
    #: The signature entries that did not count: ``{index, signer, code, message}``.
    failures: list[dict[str, Any]] = []
    #: True when the document was already the active version (nothing changed).
    unchanged: bool = False
    #: The audit event of the load (when the node has an audit log).
    audit_id: str | None = None


class VersionInfo(msgspec.Struct, frozen=True, kw_only=True, tag="gov.version_info"):
    ready: bool
    reason: str = ""
    version: int | None = None
    checksum: str | None = None
    previous: str | None = None
    threshold: int | None = None
    signers: list[str] = []
    signed_by: list[str] = []
    policies: list[str] = []
    history: list[dict[str, Any]] = []


class Revision(msgspec.Struct, frozen=True, kw_only=True, tag="gov.revision"):
    """Published on :data:`REVISIONS_SUBJECT` when a version becomes active."""

    version: int
    checksum: str
    previous: str | None
    threshold: int
    signers: list[str]
    signed_by: list[str]
    #: ``bootstrap`` (dev constitution created), ``start`` (loaded from the store), ``api``...
    source: str
    node: str
    activated_at: float
