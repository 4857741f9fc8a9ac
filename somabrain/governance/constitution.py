"""The constitution: a signed JSON document, its verification and the rules of rotation.

A *signed constitution* (the file format, and the body of ``POST /constitution/load``)::

    {
      "document": {
        "format": "somabrain.constitution/1",
        "version": 2,                       # >= 1, strictly increasing
        "previous": "<checksum of v1>",     # null for the first version (the genesis)
        "issued_at": "2025-01-01T00:00:00Z",  # optional, informative
        "signers": [{"id": "alice", "public_key": "<64 hex>"}, ...],
        "threshold": 2,                     # k: signatures needed, 1 <= k <= n
        "policy": {...},                    # data for the Rego policies (data.constitution.policy)
        "policies": {"tenants.rego": "package ..."},   # the Rego modules themselves
        "articles": ...                     # free-form: principles, notes
      },
      "signatures": [{"signer": "alice", "checksum": "<128 hex>", "signature": "<128 hex>"}]
    }

The checksum is ``SHA3-512(JCS(document))`` (:mod:`.canonical`); signatures are detached, so
adding one does not change what the others signed. The Rego modules are part of the signed
document on purpose: a policy that was not approved by the quorum cannot run.

Rules (:func:`verify`):

1. a document counts only with at least ``threshold`` valid signatures from distinct members
   of its own ``signers``; an entry from an unknown signer, a second entry from the same
   signer, an entry over another checksum or a signature that does not verify does not
   count, and the refusal lists each such entry with its reason;
2. a successor of an active version must have a higher ``version`` and name the active
   version's checksum as ``previous``;
3. a successor that changes the signer set or the threshold (a *rotation*) must also carry
   ``threshold`` valid signatures of the *previous* version's signers: the new signers
   cannot appoint themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ._exceptions import ConstitutionError, SignatureFailure
from .canonical import CanonicalJSONError, canonical_json, checksum
from .signing import SIGNER_ID_PATTERN, SignatureEntry, verify_signature

__all__ = [
    "FORMAT",
    "Document",
    "SignedConstitution",
    "SignerEntry",
    "VerifiedConstitution",
    "count_signatures",
    "draft",
    "parse_signed",
    "same_signers",
    "verify",
    "verify_chain",
]

FORMAT = "somabrain.constitution/1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")


class SignerEntry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: Annotated[str, Meta(pattern=SIGNER_ID_PATTERN.pattern)]
    public_key: Annotated[str, Meta(pattern=_HEX64.pattern)]


class Document(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The signed part of a constitution, validated (the checksum covers the raw JSON)."""

    format: Literal["somabrain.constitution/1"]
    version: Annotated[int, Meta(ge=1, le=2**53 - 1)]
    signers: Annotated[list[SignerEntry], Meta(min_length=1, max_length=256)]
    threshold: Annotated[int, Meta(ge=1)]
    previous: Annotated[str, Meta(pattern=_HEX128.pattern)] | None = None
    issued_at: str | None = None
    policy: dict[str, Any] = {}
    policies: dict[str, str] = {}
    articles: Any = None


class SignedConstitution(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The file and wire format: the raw document plus detached signatures."""

    document: dict[str, Any]
    signatures: list[SignatureEntry] = []


class VerifiedConstitution:
    """A document that passed :func:`verify`: what the node runs on."""

    __slots__ = ("checksum", "doc", "document", "signatures", "signed_by")

    def __init__(
        self,
        document: dict[str, Any],
        doc: Document,
        checksum: str,
        signatures: Sequence[SignatureEntry],
        signed_by: Sequence[str],
    ) -> None:
        self.document = document
        self.doc = doc
        self.checksum = checksum
        self.signatures = tuple(signatures)
        #: The signer ids whose signatures counted, in the order they appear.
        self.signed_by = tuple(signed_by)

    @property
    def version(self) -> int:
        return self.doc.version

    def __repr__(self) -> str:
        return f"VerifiedConstitution(version={self.version}, checksum={self.checksum[:16]}...)"

    def signed(self) -> SignedConstitution:
        return SignedConstitution(document=self.document, signatures=list(self.signatures))

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "checksum": self.checksum,
            "previous": self.doc.previous,
            "issued_at": self.doc.issued_at,
            "threshold": self.doc.threshold,
            "signers": [s.id for s in self.doc.signers],
            "signed_by": list(self.signed_by),
            "policies": sorted(self.doc.policies),
        }


# ------------------------------------------------------------------------------ parsing

_signed_decoder = msgspec.json.Decoder(SignedConstitution)


def parse_signed(data: bytes | str | Mapping[str, Any]) -> SignedConstitution:
    """A signed constitution from JSON bytes/text or an already decoded object."""
    try:
        if isinstance(data, bytes | str):
            return _signed_decoder.decode(data)
        return msgspec.convert(data, SignedConstitution)
    except msgspec.ValidationError as exc:
        raise ConstitutionError("malformed", f"not a signed constitution: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConstitutionError("malformed", f"not JSON: {exc}") from None


def _parse_document(document: Mapping[str, Any]) -> tuple[Document, str]:
    try:
        doc = msgspec.convert(document, Document)
        digest = checksum(document)
    except msgspec.ValidationError as exc:
        raise ConstitutionError("invalid_field", f"invalid constitution document: {exc}") from None
    except CanonicalJSONError as exc:
        raise ConstitutionError("invalid_field", f"document has no canonical form: {exc}") from None
    ids = [s.id for s in doc.signers]
    if len(set(ids)) != len(ids):
        raise ConstitutionError("invalid_field", "signer ids must be distinct - at `$.signers`")
    if len({s.public_key for s in doc.signers}) != len(ids):
        raise ConstitutionError("invalid_field", "a public key appears twice - at `$.signers`")
    if doc.threshold > len(ids):
        raise ConstitutionError(
            "invalid_field",
            f"threshold {doc.threshold} exceeds the {len(ids)} signers - at `$.threshold`",
        )
    if doc.version == 1 and doc.previous is not None:
        raise ConstitutionError("invalid_field", "version 1 has no previous - at `$.previous`")
    if doc.version > 1 and doc.previous is None:
        raise ConstitutionError(
            "invalid_field", f"version {doc.version} must name its previous - at `$.previous`"
        )
    return doc, digest


# ------------------------------------------------------------------------------ signatures


def count_signatures(
    digest: str, signatures: Iterable[SignatureEntry], signers: Iterable[SignerEntry]
) -> tuple[list[str], list[SignatureFailure]]:
    """Which signer ids validly signed ``digest``, and why each other entry did not count."""
    keys = {s.id: s.public_key for s in signers}
    valid: list[str] = []
    failures: list[SignatureFailure] = []
    seen: set[str] = set()
    for index, entry in enumerate(signatures):
        signer = entry.signer
        if signer not in keys:
            failures.append(
                SignatureFailure(index, signer, "unknown_signer", f"{signer!r} is not a signer")
            )
        elif signer in seen:
            failures.append(
                SignatureFailure(
                    index, signer, "duplicate_signer", f"{signer!r} already signed: counted once"
                )
            )
        elif entry.checksum != digest:
            failures.append(
                SignatureFailure(
                    index,
                    signer,
                    "wrong_checksum",
                    f"signs checksum {entry.checksum[:16]}..., the document's is {digest[:16]}...",
                )
            )
        elif not _HEX128.fullmatch(entry.signature):
            failures.append(
                SignatureFailure(index, signer, "malformed", "signature must be 128 hex digits")
            )
        elif not verify_signature(keys[signer], digest, entry.signature):
            failures.append(
                SignatureFailure(
                    index, signer, "bad_signature", "does not verify under the signer's key"
                )
            )
        else:
            seen.add(signer)
            valid.append(signer)
    return valid, failures


def same_signers(a: Document, b: Document) -> bool:
    """Same threshold and the same set of (id, public key)?"""
    return a.threshold == b.threshold and {(s.id, s.public_key) for s in a.signers} == {
        (s.id, s.public_key) for s in b.signers
    }


def verify(
    signed: SignedConstitution | Mapping[str, Any] | bytes | str,
    *,
    previous: VerifiedConstitution | None = None,
) -> VerifiedConstitution:
    """Verify a signed constitution, as a successor of ``previous`` when one is given.

    Raises :class:`ConstitutionError` with the reason (and, for signatures, which entries
    failed). Pure: no I/O, no clock.
    """
    if not isinstance(signed, SignedConstitution):
        signed = parse_signed(signed)
    doc, digest = _parse_document(signed.document)
    if previous is not None:
        if doc.version <= previous.version:
            code = "version_conflict" if doc.version == previous.version else "version_not_newer"
            raise ConstitutionError(
                code,
                f"version {doc.version} is not newer than the active version {previous.version}",
            )
        if doc.previous != previous.checksum:
            raise ConstitutionError(
                "wrong_previous",
                f"previous must be the active version's checksum {previous.checksum[:16]}..., "
                f"got {(doc.previous or 'null')[:16]}",
            )
    valid, failures = count_signatures(digest, signed.signatures, doc.signers)
    if len(valid) < doc.threshold:
        raise ConstitutionError(
            "insufficient_signatures",
            f"version {doc.version} has {len(valid)} valid signature(s) of the "
            f"{doc.threshold} required from its {len(doc.signers)} signers",
            failures,
        )
    if previous is not None and not same_signers(doc, previous.doc):
        approved, prev_failures = count_signatures(digest, signed.signatures, previous.doc.signers)
        if len(approved) < previous.doc.threshold:
            raise ConstitutionError(
                "rotation_not_approved",
                f"version {doc.version} changes the signers or the threshold and needs "
                f"{previous.doc.threshold} signature(s) of version {previous.version}'s "
                f"signers, has {len(approved)}",
                prev_failures,
            )
    return VerifiedConstitution(signed.document, doc, digest, signed.signatures, valid)


def verify_chain(
    history: Iterable[SignedConstitution], *, genesis: str | None = None
) -> list[VerifiedConstitution]:
    """Verify versions in order, each as the successor of the one before; the first must be
    version 1 and, when ``genesis`` is given, have that checksum (the trust anchor)."""
    verified: list[VerifiedConstitution] = []
    for signed in history:
        current = verify(signed, previous=verified[-1] if verified else None)
        if not verified:
            if current.version != 1:
                raise ConstitutionError(
                    "wrong_previous", f"history starts at version {current.version}, not 1"
                )
            if genesis and current.checksum != genesis:
                raise ConstitutionError(
                    "genesis_mismatch",
                    f"version 1 has checksum {current.checksum[:16]}..., the configured "
                    f"genesis is {genesis[:16]}...",
                )
        verified.append(current)
    return verified


def draft(
    *,
    signers: Sequence[Mapping[str, str]],
    threshold: int,
    policy: Mapping[str, Any] | None = None,
    policies: Mapping[str, str] | None = None,
    articles: Any = None,
    previous: VerifiedConstitution | None = None,
    issued_at: str | None = None,
) -> SignedConstitution:
    """A new unsigned document: version 1, or the successor of ``previous``."""
    document: dict[str, Any] = {
        "format": FORMAT,
        "version": previous.version + 1 if previous is not None else 1,
        "previous": previous.checksum if previous is not None else None,
        "signers": [{"id": s["id"], "public_key": s["public_key"]} for s in signers],
        "threshold": threshold,
        "policy": dict(policy or {}),
        "policies": dict(policies or {}),
        "articles": articles,
    }
    if issued_at is not None:
        document["issued_at"] = issued_at
    _parse_document(document)  # refuse a draft that could never verify
    canonical_json(document)
    return SignedConstitution(document=document, signatures=[])
